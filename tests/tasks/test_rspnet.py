"""RSPNet: losses by hand, the key queue, the momentum encoder, speed-pair sampling, the shared
key augmentation, DDP (queue gathering and shuffle-BN) and training through the CLI."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_helpers import tiny_config
from torch.nn import functional as F
from torch.utils.data import DataLoader
from training_helpers import cli_fit_rows, column, ddp_key_records, quiet_trainer

from vssl.data.dataset import VideoDataset
from vssl.data.index import VideoIndex
from vssl.data.layouts import VideoItem
from vssl.data.sampling import ClipSpec
from vssl.losses.moco import KeyQueue, info_nce, info_nce_logits, relative_speed_loss
from vssl.tasks import RSPNet
from vssl.tasks.rspnet import VIEWS, KeyPairTransform, SpeedPair, SpeedPairSampler


def make_task(**kwargs) -> RSPNet:
    args = {"backbone": "tiny3d", "backbone_kwargs": {"width": 4}, "proj_dim": 8, "queue_size": 6}
    return RSPNet(**{**args, **kwargs})


def uint8_batch(b: int = 4, t: int = 4, size: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8, generator=g)
        for k in VIEWS
    }


# ------------------------------------------------------------------------------ losses
def test_relative_speed_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same = torch.tensor([[0.6, 0.8], [0.6, 0.8]])
    other = torch.tensor([[0.8, 0.6], [1.0, 0.0]])
    loss, s_pos, s_neg = relative_speed_loss(q, same, other, tau=0.07, margin=2.0)
    assert torch.allclose(s_pos, torch.tensor([0.6 / 0.07, 0.8 / 0.07]))
    assert torch.allclose(s_neg, torch.tensor([0.8 / 0.07, 0.0]))
    # Sample 1: 2 - (0.6 - 0.8) / 0.07 > 0; sample 2: 2 - 0.8 / 0.07 < 0, clipped to 0.
    assert loss.item() == pytest.approx((2.0 + 0.2 / 0.07 + 0.0) / 2, rel=1e-6)


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    logits = info_nce_logits(q, k, queue, tau=0.5)
    assert torch.allclose(logits, torch.tensor([[1.2, 2.0, 0.0, -2.0], [2.0, 0.0, 2.0, 0.0]]))
    loss, _ = info_nce(q, k, queue, tau=0.5)
    ce1 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(2.0) + 1.0 + math.exp(-2.0)))
    ce2 = -math.log(math.exp(2.0) / (2 * math.exp(2.0) + 2.0))
    assert loss.item() == pytest.approx((ce1 + ce2) / 2, rel=1e-6)


def test_step_is_both_infonce_terms_plus_the_ranking_loss():
    torch.manual_seed(0)
    task = make_task(avid_weight=0.5, rsp_weight=3.0, temperature=0.2, margin=1.0).eval()
    batch = task.augment_batch(uint8_batch())
    queue = task.queue.keys.clone()
    features, qa, qm = task.query_projections(batch["query"])
    ka, km = task.key_projections(batch["key_same"])
    oa, om = task.key_projections(batch["key_other"])
    out = task.step(batch, "val")
    ce_same = F.cross_entropy(
        torch.cat([(qa * ka).sum(1, keepdim=True), qa @ queue.T], 1) / 0.2,
        torch.zeros(4, dtype=torch.long),
    )
    ce_other = F.cross_entropy(
        torch.cat([(qa * oa).sum(1, keepdim=True), qa @ queue.T], 1) / 0.2,
        torch.zeros(4, dtype=torch.long),
    )
    s_pos, s_neg = (qm * km).sum(1) / 0.2, (qm * om).sum(1) / 0.2
    rsp = (1.0 - (s_pos - s_neg)).clamp(min=0).mean()
    assert out.loss.item() == pytest.approx(
        (0.5 * (ce_same + ce_other) + 3.0 * rsp).item(), rel=1e-5
    )
    assert out.logs["ce_same"].item() == pytest.approx(ce_same.item(), rel=1e-5)
    assert out.logs["ce_other"].item() == pytest.approx(ce_other.item(), rel=1e-5)
    assert out.logs["rsp_acc"].item() == (s_pos > s_neg).float().mean().item()
    assert torch.equal(out.features, features)
    assert torch.equal(task.queue.keys, queue) and task.queue.ptr.item() == 0  # no enqueue in val
    assert torch.allclose(qa.norm(dim=1), torch.ones(4)) and torch.allclose(
        km.norm(dim=1), torch.ones(4)
    )


# ------------------------------------------------------------------------------ queue
def test_key_queue_writes_in_order_and_wraps():
    queue = KeyQueue(5, 2)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(5))
    first = torch.arange(6.0).view(3, 2)
    second = torch.arange(6.0, 12.0).view(3, 2)
    queue.enqueue(first)
    assert torch.equal(queue.keys[:3], first) and queue.ptr.item() == 3
    queue.enqueue(second)
    assert torch.equal(
        queue.keys, torch.stack([second[2], first[1], first[2], second[0], second[1]])
    )
    assert queue.ptr.item() == 1
    with pytest.raises(ValueError, match="6 keys in one step do not fit a queue of 5"):
        queue.enqueue(torch.zeros(6, 2))
    with pytest.raises(ValueError, match=r"expected keys of shape \(N, 2\)"):
        queue.enqueue(torch.zeros(2, 3))


def test_training_steps_enqueue_the_other_speed_keys():
    torch.manual_seed(0)
    task = make_task(queue_size=6).train()
    batches = [task.augment_batch(uint8_batch(seed=s)) for s in (1, 2)]
    expected = []
    for batch in batches:
        other, _ = task.key_projections(batch["key_other"])
        same, _ = task.key_projections(batch["key_same"])
        expected.append(other)
        task.step(batch, "train")
        assert not torch.allclose(other, same)
    a, b = expected
    # 4 keys, then 4 more into a queue of 6: the second batch wraps around to rows 0 and 1.
    assert torch.allclose(task.queue.keys, torch.cat([b[2:], a[2:], b[:2]]), atol=1e-6)
    assert task.queue.ptr.item() == 2


# ------------------------------------------------------------------------------ momentum encoder
def test_momentum_update_moves_by_exactly_one_minus_m():
    task = make_task(key_momentum=0.9)
    online = dict(task.backbone.named_parameters())
    with torch.no_grad():
        for p in online.values():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in task.momentum_encoder.module["backbone"].named_parameters()}
    task.update_momentum_encoder()
    for name, p in task.momentum_encoder.module["backbone"].named_parameters():
        assert torch.allclose(p, before[name] + 0.1 * (online[name] - before[name]), atol=1e-6)
    assert all(not p.requires_grad for p in task.momentum_encoder.parameters())


def test_momentum_encoder_follows_each_optimiser_step_and_is_not_trained():
    torch.manual_seed(0)
    task = make_task(key_momentum=0.75, reference_batch_size=None, lr=0.5, lr_schedule="constant")
    head_before = task.momentum_encoder.module["speed"].weight.clone()
    assert torch.equal(head_before, task.speed_head.weight)  # starts as a copy
    data = [{k: v[0] for k, v in uint8_batch(b=1, seed=s).items()} for s in range(4)]
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(task, DataLoader(data, batch_size=4))
    online = task.speed_head.weight
    assert not torch.allclose(online, head_before)  # the online head was trained
    assert torch.allclose(
        task.momentum_encoder.module["speed"].weight,
        head_before + 0.25 * (online - head_before),
        atol=1e-6,
    )
    trained = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not trained & {id(p) for p in task.momentum_encoder.parameters()}


def test_rsp_acc_is_shown_on_the_progress_bar():
    # configs/rspnet/synthetic_tiny.yaml says to watch train/rsp_acc and val/rsp_acc
    torch.manual_seed(0)
    task = make_task(reference_batch_size=None)
    data = [{k: v[0] for k, v in uint8_batch(b=1, seed=s).items()} for s in range(4)]
    trainer = quiet_trainer(
        max_epochs=1,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
    bar = trainer.progress_bar_metrics
    assert {"train/rsp_acc_step", "train/rsp_acc_epoch", "val/rsp_acc"} <= set(bar)
    assert not {"train/nce_acc_step", "train/nce_acc_epoch", "val/nce_acc"} & set(bar)
    assert bar["val/rsp_acc"] == pytest.approx(float(trainer.callback_metrics["val/rsp_acc"]))


def test_lr_scales_with_the_global_batch_over_64():
    task = make_task()
    assert task.hparams.reference_batch_size == 64
    task.trainer = SimpleNamespace(
        train_dataloader=DataLoader([], batch_size=32),
        state=SimpleNamespace(fn="fit"),
        world_size=4,
        accumulate_grad_batches=1,
    )
    assert task.effective_lr() == pytest.approx(0.1 * 128 / 64)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="at least two different positive integers"):
        make_task(speeds=[2])
    with pytest.raises(ValueError, match="key_momentum must be in"):
        make_task(key_momentum=1.5)


# ------------------------------------------------------------------------------ sampling
def test_speed_clips_are_frames_of_their_window():
    sampler = SpeedPairSampler(clip_len=4, stride=1, speeds=(1, 2))
    assert sampler.window == 8
    views = sampler.views(SpeedPair(query_start=3, key_start=10, same_speed=2, other_speed=1), 40)
    assert views["query"].tolist() == [3, 5, 7, 9]  # every second frame of frames 3..10
    assert views["key_same"].tolist() == [10, 12, 14, 16]
    assert views["key_other"].tolist() == [10, 11, 12, 13]  # the first half of the key window
    views = sampler.views(SpeedPair(0, 5, 1, 2), 40)
    assert views["query"].tolist() == [0, 1, 2, 3] and views["key_other"].tolist() == [5, 7, 9, 11]
    # stride and a third speed: speed s takes every s * stride frames; the window fits the fastest.
    sampler = SpeedPairSampler(clip_len=3, stride=2, speeds=(1, 2, 4))
    assert sampler.window == 24
    assert sampler.views(SpeedPair(1, 2, 4, 2), 40)["query"].tolist() == [1, 9, 17]
    # a video shorter than a window: start at 0 and wrap around
    sampler = SpeedPairSampler(clip_len=4, speeds=(1, 2))
    rng = np.random.default_rng(0)
    pair = sampler.draw(6, rng)
    assert (pair.query_start, pair.key_start) == (0, 0)
    assert sampler.views(SpeedPair(0, 0, 2, 1), 6)["query"].tolist() == [0, 2, 4, 0]


def test_windows_are_independent_and_same_speed_is_a_fair_coin():
    sampler = SpeedPairSampler(clip_len=4, speeds=(1, 2))
    rng = np.random.default_rng(0)
    pairs = [sampler.draw(20, rng) for _ in range(4000)]
    a = np.array([p.query_start for p in pairs])
    b = np.array([p.key_start for p in pairs])
    assert a.min() == b.min() == 0 and a.max() == b.max() == 12  # uniform over 0..20-8
    counts = np.zeros((13, 13))
    np.add.at(counts, (a, b), 1)
    expected = np.outer(np.bincount(a, minlength=13), np.bincount(b, minlength=13)) / len(pairs)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 210  # 144 degrees of freedom: p > 0.0002 under independence
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
    same_is_one = np.mean([p.same_speed == 1 for p in pairs])
    assert 0.47 < same_is_one < 0.53
    assert all({p.same_speed, p.other_speed} == {1, 2} for p in pairs)
    sampled = sampler(20, np.random.default_rng(1))
    assert sorted(sampled) == sorted(VIEWS)


def test_three_speeds_draw_every_ordered_pair():
    sampler = SpeedPairSampler(clip_len=2, speeds=(1, 2, 4))
    rng = np.random.default_rng(0)
    seen = {(p.same_speed, p.other_speed) for p in (sampler.draw(50, rng) for _ in range(300))}
    assert seen == {(1, 2), (2, 1), (1, 4), (4, 1), (2, 4), (4, 2)}


def test_sampler_rejects_bad_speed_sets():
    with pytest.raises(ValueError, match="must not repeat"):
        SpeedPairSampler(speeds=(1, 2, 2))
    with pytest.raises(ValueError, match="at least two different positive"):
        SpeedPairSampler(speeds=(0, 1))


def test_dataset_decodes_the_sampled_frames(video_factory, frame_index, tmp_path):
    path = video_factory("v.mp4", num_frames=24)
    info = VideoIndex.build([path], cache_dir=tmp_path / "cache", workers=1, progress=False)[path]
    task = make_task()
    spec = ClipSpec(clip_len=4, stride=1, crop_size=32)
    dataset = VideoDataset(
        [VideoItem(path, 0)],
        [info],
        task.clip_sampler("train", spec),
        task.clip_transform("val", spec),
    )
    seed = 5
    sample = dataset.load(0, np.random.default_rng(seed))
    wanted = task.clip_sampler("train", spec)(24, np.random.default_rng(seed))
    for view in VIEWS:
        assert sample[view].shape == (4, 3, 32, 32)
        assert [frame_index(f) for f in sample[view]] == wanted[view].tolist()


# ------------------------------------------------------------------------------ augmentation
def test_the_two_keys_share_their_augmentation_and_the_query_does_not():
    torch.manual_seed(0)
    task = make_task()
    spec = ClipSpec(clip_len=4, crop_size=16, scale=(0.2, 0.5))
    frames = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = task.clip_transform("train", spec)({k: frames.clone() for k in VIEWS})
    assert isinstance(task.clip_transform("train", spec), KeyPairTransform)
    assert out["key_same"].shape == (4, 3, 16, 16)
    assert torch.equal(out["key_same"], out["key_other"])
    assert not torch.equal(out["query"], out["key_same"])
    batch = task.augment_batch({k: v.unsqueeze(0).repeat(3, 1, 1, 1, 1) for k, v in out.items()})
    assert batch["key_same"].shape == (3, 3, 4, 16, 16)
    assert torch.equal(batch["key_same"], batch["key_other"])
    assert not torch.allclose(batch["query"], batch["key_same"])


# ------------------------------------------------------------------------------ DDP and the CLI
def rspnet_config(root: Path, cache: Path, **model) -> dict:
    cfg = tiny_config(root, cache)
    cfg["model"] = {
        "class_path": "vssl.tasks.RSPNet",
        "init_args": {
            "backbone": "tiny3d",
            "backbone_kwargs": {"width": 4},
            "proj_dim": 8,
            "optimizer": "adamw",
            "lr": 0.003,
            "reference_batch_size": None,
            "weight_decay": 0.01,
            **model,
        },
    }
    return cfg


def test_ddp_every_process_queues_the_keys_of_both(tiny_synthetic, tmp_path):
    cfg = rspnet_config(tiny_synthetic, tmp_path / "cache", queue_size=8)
    recs = ddp_key_records(cfg, tmp_path, shuffled="key_projections")
    assert all(r["world_size"] == 2 for r in recs)
    assert [len(r["local"]) for r in recs] == [3, 3]  # 12 videos, 2 processes, batches of 2
    assert torch.equal(recs[0]["initial"], recs[1]["initial"])
    expected = KeyQueue(8, 8)
    expected.keys.copy_(recs[0]["initial"])
    for step in range(3):
        expected.enqueue(torch.cat([recs[0]["local"][step], recs[1]["local"][step]]))
    assert not torch.allclose(recs[0]["local"][2], recs[1]["local"][2])
    for r in recs:
        assert torch.equal(r["keys"], expected.keys)  # 12 keys in a queue of 8: it wrapped
        assert r["ptr"] == 4
        assert r["training"] and r["shuffle_error"] < 1e-5


def test_cli_training_learns_relative_speed(tiny_synthetic, tmp_path, run_cli):
    # Photometric augmentation off and a lighter A-VID weight: the tiny network then learns to
    # rank speeds within a few hundred steps (the paper's colour jitter slows that down a lot).
    cfg = rspnet_config(
        tiny_synthetic,
        tmp_path / "cache",
        queue_size=16,
        key_momentum=0.9,
        avid_weight=0.1,
        augment={},
        lr_schedule="constant",
    )
    cfg["trainer"]["max_epochs"] = 100
    cfg["data"]["init_args"].update(
        clip_len=3, stride=2, batch_size=4, crop_scale=[1.0, 1.0], num_workers=1
    )
    rows = cli_fit_rows(cfg, tmp_path, run_cli, validate=False)
    acc = column(rows, "train/rsp_acc_step")
    assert len(acc) == 300  # 12 videos in batches of 4, 100 epochs
    first, last = np.mean(acc[:100]), np.mean(acc[-100:])
    assert last > 0.75 and last > first + 0.05, (first, last)
    assert all(r.get("train/nce_acc_step") is not None for r in rows if r.get("train/rsp_acc_step"))
