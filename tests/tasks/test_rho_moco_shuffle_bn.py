"""Shuffling BN (vssl.losses.moco) and rho-MoCo's use of it: the shuffle and its inverse,
batch norm over sub-batches by hand, a key normalised without its query's sub-batch, and MoCo's
cross-process shuffle in a 2-process gloo group."""

import os
import socket

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp
from torch import nn

from vssl.losses.moco import encode_shuffled, shuffle, split_encode, splits_for, unshuffle
from vssl.tasks import RhoMoCo

TINY = {"backbone": "tiny3d", "backbone_kwargs": {"width": 4}, "hidden_dim": 16}
MOCO_TINY = {**TINY, "projection_dim": 8, "queue_size": 32, "online_probe": False}


def _bn(x: torch.Tensor) -> torch.Tensor:
    """Batch norm of rows ``(N, D)`` with batch statistics (biased variance), by hand."""
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)


def _train_bn(dim: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(dim, affine=False).train()


# ---------------------------------------------------------------- the pieces
def test_shuffle_then_unshuffle_is_the_identity():
    x = torch.arange(24.0).view(12, 2)
    g = torch.Generator().manual_seed(3)
    shuffled, perm = shuffle(x, g)
    assert sorted(perm.tolist()) == list(range(12)) and perm.tolist() != list(range(12))
    assert torch.equal(shuffled, x[perm])
    assert torch.equal(unshuffle(shuffled, perm), x)
    out = unshuffle((shuffled, 2 * shuffled), perm)  # a tuple of outputs, as RSPNet's keys
    assert torch.equal(out[0], x) and torch.equal(out[1], 2 * x)


def test_splits_need_two_samples_each():
    assert [splits_for(b, 4) for b in (16, 9, 8, 6, 3, 2, 1)] == [4, 4, 4, 3, 1, 1, 1]
    assert splits_for(16, 1) == 1
    for bad in (0, -2, 2.0):
        with pytest.raises(ValueError, match=f"num_splits must be an integer >= 1, got {bad}"):
            splits_for(8, bad)
    with pytest.raises(ValueError, match="num_splits must be an integer >= 1, got 0"):
        RhoMoCo(**MOCO_TINY, num_splits=0)


def test_split_encode_is_batch_norm_over_each_sub_batch():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    out = split_encode(_train_bn(3), x, 3)  # sub-batches of 4, 3, 3
    expected = torch.cat([_bn(x[:4]), _bn(x[4:7]), _bn(x[7:])])
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, _bn(x), atol=1e-2)
    pair = split_encode(lambda v: (v, _train_bn(3)(v)), x, 2)
    assert torch.equal(pair[0], x) and torch.allclose(pair[1], torch.cat([_bn(x[:5]), _bn(x[5:])]))


def test_encode_shuffled_on_one_process_normalises_each_key_with_its_shuffled_sub_batch():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    out = encode_shuffled(_train_bn(3), x, 4, generator=torch.Generator().manual_seed(5))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    expected = torch.empty_like(x)
    for group in perm.view(4, 2):  # sub-batch j holds samples perm[2j], perm[2j + 1]
        expected[group] = _bn(x[group])
    assert torch.allclose(out, expected, atol=1e-5)  # back in input order
    # One sub-batch: a permutation leaves the statistics as they are.
    assert torch.allclose(encode_shuffled(_train_bn(3), x, 1), _bn(x), atol=1e-5)


# ---------------------------------------------------------------- rho-MoCo
def _clips(videos=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(videos, 3, 4, size, size, generator=g)


def _key_group_without(sample: int, other: int, batch: int, splits: int) -> int:
    """A seed whose permutation puts ``sample``'s key in a sub-batch without ``other``."""
    size = batch // splits
    for seed in range(100):
        perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
        group = perm.view(splits, size)[(perm == sample).nonzero().item() // size]
        if other not in group.tolist():
            return seed
    raise AssertionError("no such permutation in 100 seeds")


def test_a_key_does_not_depend_on_its_querys_sub_batch():
    # 8 clips in 4 sub-batches of 2: query 0 is normalised with clip 1; its key, shuffled, with
    # another clip. Changing clip 1 then changes query 0 and leaves key 0 as it was.
    torch.manual_seed(0)
    task = RhoMoCo(**MOCO_TINY, rho=2, num_splits=4).train()
    assert task.bn_splits() == 4
    video, changed = _clips(), _clips()
    changed[1] = _clips(seed=9)[1]
    seed = _key_group_without(0, 1, 8, 4)

    def keys(v):
        torch.manual_seed(seed)
        return task.key_projections(v)

    q, q_changed = task.query_projections(video)[1], task.query_projections(changed)[1]
    assert not torch.allclose(q[0], q_changed[0], atol=1e-4)  # query 0 saw clip 1's statistics
    assert torch.allclose(q[2:], q_changed[2:], atol=1e-6)  # the other sub-batches did not
    k, k_changed = keys(video), keys(changed)
    assert torch.allclose(k[0], k_changed[0], atol=1e-6)
    assert not torch.allclose(k[1], k_changed[1], atol=1e-4)  # (key 1 is clip 1's own)
    # Key 0 is the key encoder on its own sub-batch, by hand.
    torch.manual_seed(seed)
    perm = torch.randperm(8)
    group = perm.view(4, 2)[(perm == 0).nonzero().item() // 2]
    by_hand = task._encode_keys(video[group])[group.tolist().index(0)]
    assert torch.allclose(k[0], by_hand, atol=1e-6)
    # Without shuffling BN, key 0 is normalised with the whole batch, clip 1 included.
    task.shuffle_bn = False
    assert task.bn_splits() == 1
    assert not torch.allclose(task.key_projections(video)[0], task.key_projections(changed)[0])


def test_validation_encodes_whole_batches_with_running_statistics():
    torch.manual_seed(0)
    task = RhoMoCo(**MOCO_TINY, rho=2, num_splits=4).eval()
    video = _clips()
    assert task.bn_splits() == 1
    k = task.key_projections(video)
    assert torch.equal(k, task._encode_keys(video))
    assert torch.allclose(task.key_projections(video[:1]), k[:1], atol=1e-6)  # per sample


def test_a_batch_too_small_for_the_splits_warns_and_uses_as_many_as_fit():
    torch.manual_seed(0)
    task = RhoMoCo(**MOCO_TINY, rho=2, num_splits=4).train()
    video = _clips(videos=4)
    with pytest.warns(UserWarning, match="4 clips per batch make fewer than num_splits=4"):
        out = task.query_projections(video)[1]
    halves = torch.cat([task._encode_queries(video[:2])[1], task._encode_queries(video[2:])[1]])
    assert torch.allclose(out, halves, atol=1e-6)


# ---------------------------------------------------------------- two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    """Rank ``rank`` of 2 (gloo): encodes 4 random rows of its own through a training-mode batch
    norm with shuffling BN, and saves its rows, the slice it encoded and the outputs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # a different local batch on each process
        x = torch.randn(4, 3)
        seen = []
        bn = nn.BatchNorm1d(3, affine=False).train()

        def encode(v: torch.Tensor) -> torch.Tensor:
            seen.append(v.clone())
            return bn(v)

        torch.manual_seed(7)  # the same draw on both processes; rank 0's is broadcast
        keys = encode_shuffled(encode, x, num_splits=4)
        plain = encode_shuffled(lambda v: (2 * v, v.sum(1)), x)  # no batch norm, a tuple
        out = {"x": x, "keys": keys, "slice": seen[0], "plain": plain}
        torch.save(out, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_encode_a_shuffled_slice_and_get_their_own_keys_back(tmp_path):
    # fork: the processes start with the modules loaded (spawn would import them again in each)
    mp.start_processes(
        _ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    recs = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    everything = torch.cat([r["x"] for r in recs])
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(7)).view(2, 4)
    normalised = torch.empty_like(everything)
    for rank, rec in enumerate(recs):
        # Each process encoded its slice of one permutation of the global batch, whole (the
        # sub-batches are for one process only), and got the keys of its own samples back.
        assert torch.equal(rec["slice"], everything[perm[rank]])
        normalised[perm[rank]] = _bn(everything[perm[rank]])
        assert torch.equal(rec["plain"][0], 2 * rec["x"])
        assert torch.allclose(rec["plain"][1], rec["x"].sum(1))
    assert not torch.equal(perm[0].sort().values, torch.arange(4))  # the slices mix processes
    for rank, rec in enumerate(recs):
        assert torch.allclose(rec["keys"], normalised[4 * rank : 4 * rank + 4], atol=1e-5)
