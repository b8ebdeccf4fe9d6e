"""rho-BYOL and rho-MoCo: the rho-clip sampler, both all-pairs losses by hand, the scheduled EMA
after an optimiser step, the queue, and short training runs through the command line."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import tiny_config

from vssl.data import VideoDataset, VideoIndex, VideoItem
from vssl.data.encode import write_video
from vssl.data.sampling import ClipSpec, RhoClips
from vssl.losses.rho import rho_byol_loss, rho_info_nce
from vssl.tasks import RhoBYOL, RhoMoCo

TINY = {"backbone": "tiny3d", "backbone_kwargs": {"width": 4}, "hidden_dim": 16}
BYOL_TINY = {**TINY, "projection_dim": 8, "predictor_hidden_dim": 16}
# One sub-batch: the unit tests here encode batches of 2 or 3 videos (the split is checked in
# tests/tasks/test_rho_moco_shuffle_bn.py).
MOCO_TINY = {**TINY, "projection_dim": 8, "queue_size": 32, "num_splits": 1}


def _starts(sampler, num_frames, draws, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([sampler(num_frames, rng)["clips"][:, 0] for _ in range(draws)])


# ---------------------------------------------------------------- sampling
def test_clips_are_rho_clips_inside_the_video_in_time_order():
    sampler = RhoClips(clip_len=4, stride=3, rho=4)  # span 10
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(500):
        clips = sampler(30, rng)["clips"]
        assert clips.shape == (4, 4)
        assert np.all(np.diff(clips, axis=1) == 3)
        assert np.all(np.diff(clips[:, 0]) >= 0)  # sorted by start
        assert clips.min() >= 0 and clips.max() < 30
        seen.update(clips[:, 0].tolist())
    assert seen == set(range(21))  # every valid start occurs, up to the last one


def test_starts_are_independent_and_uniform_over_the_whole_video():
    # M = 5 valid starts, rho = 2: the sorted pair (a, b) has P = 2/25 for a < b, 1/25 for a = b
    # (two independent uniform draws). CVRL's gap density, by contrast, favours near pairs.
    starts = _starts(RhoClips(clip_len=3, stride=2, rho=2), 9, 4000, seed=1)
    counts = np.zeros((5, 5))
    np.add.at(counts, (starts[:, 0], starts[:, 1]), 1)
    expected = np.triu(np.full((5, 5), 2 / 25)) - np.diag(np.full(5, 1 / 25))
    assert counts[np.tril_indices(5, -1)].sum() == 0
    sigma = np.sqrt(expected * (1 - expected) / len(starts))
    upper = np.triu_indices(5)
    assert np.all(np.abs(counts / len(starts) - expected)[upper] < 5 * sigma[upper])
    # The largest gap (0 and 4) is as likely as any other pair of different starts.
    assert counts[0, 4] / len(starts) == pytest.approx(2 / 25, abs=5 * sigma[0, 4])


def test_sampling_is_deterministic_per_seed():
    sampler = RhoClips(clip_len=4, stride=2, rho=3)
    a = _starts(sampler, 100, 20, seed=7)
    assert np.array_equal(a, _starts(sampler, 100, 20, seed=7))
    assert not np.array_equal(a, _starts(sampler, 100, 20, seed=8))


def test_short_video_draws_starts_over_all_frames_and_wraps():
    # 6 frames, clip span 7: no valid start, so each start is uniform on [0, 6) and clips loop.
    sampler = RhoClips(clip_len=4, stride=2, rho=3)
    starts = _starts(sampler, 6, 2000, seed=2)
    counts = np.bincount(starts.ravel(), minlength=6)
    assert np.abs(counts - 1000).max() < 5 * math.sqrt(1000 * 5 / 6)
    clips = sampler(6, np.random.default_rng(3))["clips"]
    for clip in clips:
        assert clip.tolist() == [(int(clip[0]) + 2 * k) % 6 for k in range(4)]
    assert sampler(1, np.random.default_rng(0))["clips"].tolist() == [[0] * 4] * 3


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rho .* must be an integer >= 2, got 1"):
        RhoClips(rho=1)
    with pytest.raises(ValueError, match="clip_len and stride must be >= 1"):
        RhoClips(clip_len=0)
    with pytest.raises(ValueError, match="at least one frame"):
        RhoClips()(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rho"):
        RhoBYOL(**BYOL_TINY, rho=1)


def test_dataset_serves_the_rho_clips_in_one_stack(video_factory, frame_index):
    path = video_factory("a.mp4", num_frames=40, gop=8)
    task = RhoBYOL(**BYOL_TINY, rho=3)
    spec = ClipSpec(clip_len=4, stride=3, crop_size=32)
    index = VideoIndex.build([path], progress=False, cache_dir=Path(path).parent / "cache")
    ds = VideoDataset(
        [VideoItem(Path(path), 0)],
        [index[path]],
        task.clip_sampler("train", spec),
        task.clip_transform("val", spec),
    )
    for _ in range(3):
        clips = ds[0]["clips"]
        assert clips.shape == (3, 4, 3, 32, 32) and clips.dtype == torch.uint8
        idx = np.array([[frame_index(f) for f in clip] for clip in clips])
        assert np.all(np.diff(idx, axis=1) == 3) and idx.min() >= 0 and idx.max() < 40
        assert np.all(np.diff(idx[:, 0]) >= 0)


# ---------------------------------------------------------------- losses by hand
def test_byol_loss_equals_a_hand_computation():
    # rho = 3, one video: unit (or normalised) 2-d vectors.
    p = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[3.0, 4.0]]])  # p2 -> (0.6, 0.8)
    z = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[-1.0, 0.0]]])  # z1 -> (0, 1)
    # 2 - 2 cos: query 0 vs z1, z2: 2, 4; query 1 vs z0, z2: 2, 2; query 2 vs z0, z1: 0.8, 0.4.
    expected = (2 + 4) / 2 + (2 + 2) / 2 + (0.8 + 0.4) / 2
    assert rho_byol_loss(p, z).item() == pytest.approx(expected, rel=1e-6)
    # rho = 2 is BYOL's symmetrised loss; a batch is averaged over its videos.
    p2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    z2 = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [-1.0, 0.0]]])
    # video 0: cos(p0, z1) = 1, cos(p1, z0) = 1; video 1: cos(p0, z1) = 0, cos(p1, z0) = 0.
    assert rho_byol_loss(p2, z2).item() == pytest.approx((0 + 2) / 2 + (0 + 2) / 2, rel=1e-6)


def test_byol_loss_sends_no_gradient_into_the_targets():
    p = torch.randn(3, 4, 5, requires_grad=True)
    z = torch.randn(3, 4, 5, requires_grad=True)
    rho_byol_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None


def test_losses_reject_mismatched_stacks():
    with pytest.raises(ValueError, match=r"stacks \(rho, B, D\) with rho >= 2, got \(1, 2, 3\)"):
        rho_byol_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match=r"differ in shape, \(2, 2, 3\) and \(2, 3, 3\)"):
        rho_info_nce(torch.zeros(2, 2, 3), torch.zeros(2, 3, 3), torch.zeros(4, 3), 0.1)


def _nll(logits, positive=0):
    return -logits[positive] + math.log(sum(math.exp(v) for v in logits))


def test_moco_all_pairs_info_nce_equals_a_hand_computation():
    q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.6, 0.8]]])
    k = torch.tensor([[[0.6, 0.8]], [[0.0, 1.0]], [[-1.0, 0.0]]])
    queue = torch.tensor([[0.6, -0.8], [-0.8, 0.6]])
    tau = 0.5
    # Logits (positive first, then the queue) / tau, for each query i and other clip j:
    rows = {
        (0, 1): [0.0, 0.6, -0.8],
        (0, 2): [-1.0, 0.6, -0.8],
        (1, 0): [0.8, -0.8, 0.6],
        (1, 2): [0.0, -0.8, 0.6],
        (2, 0): [1.0, -0.28, 0.0],
        (2, 1): [0.8, -0.28, 0.0],
    }
    nll = {ij: _nll([v / tau for v in row]) for ij, row in rows.items()}
    expected = sum((nll[i, j] + nll[i, m]) / 2 for i, j, m in ((0, 1, 2), (1, 0, 2), (2, 0, 1)))
    loss, accuracy = rho_info_nce(q, k, queue, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert accuracy.item() == pytest.approx(3 / 6)  # (1, 0), (2, 0), (2, 1) rank the key first


def _batch(task, videos=3, frames=4, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = torch.randint(0, 256, (videos, task.rho, frames, 3, size, size), generator=g)
    task.eval()  # normalisation only, so the batch is the same on every call
    batch = task.augment_batch({"clips": clips.to(torch.uint8)})
    task.train()
    return batch


def test_byol_step_is_the_loss_of_its_own_predictions_and_targets():
    torch.manual_seed(0)
    task = RhoBYOL(**BYOL_TINY, rho=3)
    batch = _batch(task)
    torch.manual_seed(1)
    out = task.step(batch, "train")
    clips = batch["clips"]
    p = torch.stack([task.predictor(task.projector(task.backbone(clips[:, i]))) for i in range(3)])
    target = task.momentum_encoder.module
    z = torch.stack([target["projector"](target["backbone"](clips[:, i])) for i in range(3)])
    assert out.loss.item() == pytest.approx(rho_byol_loss(p, z).item(), rel=1e-5)
    assert torch.allclose(out.features, task.backbone(clips[:, 0]), atol=1e-6)
    with pytest.raises(ValueError, match=r"batch\['clips'\] as augmented float clips"):
        task.step({"clips": clips[:, :2]}, "train")


def test_moco_train_step_enqueues_every_clips_keys_and_validation_does_not():
    torch.manual_seed(0)
    task = RhoMoCo(**MOCO_TINY, rho=3)
    batch = _batch(task, videos=2)
    before = task.queue.keys.clone()
    out = task.step(batch, "val")
    assert torch.equal(task.queue.keys, before) and task.queue.ptr.item() == 0
    keys = torch.stack([task.key_projections(batch["clips"][:, i]) for i in range(3)])
    queries = torch.stack([task.query_projections(batch["clips"][:, i])[1] for i in range(3)])
    loss, _ = rho_info_nce(queries, keys, before, 0.1)
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    task.step(batch, "train")
    assert task.queue.ptr.item() == 6  # 2 videos x 3 clips
    # clip 0 of both videos, then clip 1, then clip 2, at the head of the queue
    assert torch.allclose(task.queue.keys[:6], keys.flatten(0, 1), atol=1e-6)
    assert torch.equal(task.queue.keys[6:], before[6:])
    assert torch.allclose(task.queue.keys[:6].norm(dim=1), torch.ones(6))


# ---------------------------------------------------------------- the momentum encoder
@pytest.mark.parametrize(
    ("cls", "kwargs", "progress", "m"),
    [
        (RhoBYOL, BYOL_TINY, 0.0, 0.996),  # BYOL: 0.996 at the start ...
        (RhoBYOL, BYOL_TINY, 0.5, 1 - 0.004 * 0.5),  # ... 1 - (1 - m0)(cos(pi p) + 1) / 2 ...
        (RhoBYOL, BYOL_TINY, 1.0, 1.0),  # ... 1 at the end: the target stops
        (RhoMoCo, MOCO_TINY, 0.25, 1 - 0.006 * (math.cos(math.pi / 4) + 1) / 2),
        (RhoMoCo, {**MOCO_TINY, "momentum_schedule": "constant", "key_momentum": 0.9}, 0.7, 0.9),
    ],
)
def test_target_gets_the_scheduled_ema_after_an_optimiser_step(
    cls, kwargs, progress, m, monkeypatch
):
    torch.manual_seed(0)
    task = cls(**kwargs, rho=2, online_probe=False)
    monkeypatch.setattr(cls, "training_progress", lambda self: progress)
    online = task.online_encoder()
    target = task.momentum_encoder.module
    # Make the target differ from the online network first, as it does after some training.
    with torch.no_grad():
        for p in target.parameters():
            p.add_(torch.randn_like(p))
    old = {n: p.detach().clone() for n, p in target.named_parameters()}
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.5)
    batch = _batch(task)

    def closure():
        opt.zero_grad()
        loss = task.step(batch, "train").loss
        loss.backward()
        return loss

    task.optimizer_step(0, 0, opt, closure)  # the optimiser step, then the momentum update
    new_online = dict(online.named_parameters())
    moved = 0
    for name, p in target.named_parameters():
        expected = m * old[name] + (1 - m) * new_online[name].detach()
        assert torch.allclose(p, expected, atol=1e-6), name
        moved += not torch.equal(p, old[name])
    assert (moved > 0) == (m < 1)
    assert not any(p.requires_grad for p in target.parameters())
    assert task.momentum_encoder.momentum == pytest.approx(m)


# ---------------------------------------------------------------- the official optimiser
def test_official_optimiser_groups_nesterov_bn_without_decay_and_lars():
    official = {"nesterov": True, "norm_weight_decay": 0.0, "lars": True}
    task = RhoBYOL(**BYOL_TINY, **official, reference_batch_size=None, num_classes=4)
    others, norms, probe = task.parameter_groups()
    names = {id(p): n for n, p in task.named_parameters()}
    norm_names = {names[id(p)] for p in norms["params"]}
    bn = {
        f"{m}.{n}"
        for m, module in task.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._NormBase)
        and not m.startswith(("momentum_encoder", "probe"))
        for n, _ in module.named_parameters()
    }
    assert norm_names == bn and {"projector.1.weight", "predictor.1.bias"} <= bn
    assert not norm_names & {names[id(p)] for p in others["params"]}
    assert (norms["weight_decay"], norms.get("lars", False), norms["nesterov"]) == (
        0.0,
        False,
        True,
    )
    assert (others["weight_decay"], others["lars_weight_decay"]) == (0.0, 1e-6)
    assert others["lars"] and others["nesterov"] and "nesterov" not in probe
    opt = torch.optim.SGD([others, norms, probe], momentum=0.9)
    assert [g["nesterov"] for g in opt.param_groups] == [True, True, False]
    plain = RhoBYOL(**BYOL_TINY, reference_batch_size=None, num_classes=4).parameter_groups()
    assert len(plain) == 2 and "nesterov" not in plain[0] and plain[0]["weight_decay"] == 1e-6
    with pytest.raises(ValueError, match="nesterov and lars need optimizer sgd"):
        RhoMoCo(**MOCO_TINY, optimizer="adamw", nesterov=True)


def test_lars_scales_the_gradients_as_slowfast():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    bn = torch.nn.Parameter(torch.tensor([[1.0, 1.0]]))
    w.grad, b.grad, bn.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([1.0, 1.0]), torch.ones(1, 2)
    groups = [
        {"params": [w, b], "lars": True, "lars_weight_decay": 0.1, "weight_decay": 0.0},
        {"params": [bn], "weight_decay": 0.0},
    ]
    from vssl.tasks.rho import lars_adapt_

    lars_adapt_(groups)
    adaptive = 0.001 * 5 / (1 + 5 * 0.1 + 1e-8)  # trust |w| / (|g| + wd |w| + eps)
    expected = (torch.tensor([[0.0, 1.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])) * adaptive
    torch.testing.assert_close(w.grad, expected)
    assert torch.equal(b.grad, torch.ones(2)) and torch.equal(bn.grad, torch.ones(1, 2))


def test_slowfast_schedule_is_one_cosine_over_the_training_after_a_warm_up_from_0001():
    task = RhoBYOL(**BYOL_TINY, slowfast_schedule=True)  # lr 0.6, 35 warm-up epochs

    def c(e):
        return (math.cos(math.pi * e / 200) + 1) / 2

    # 200 epochs of 10 steps: the cosine over all 200 epochs, not the last 165.
    start = 0.001 / 0.6
    assert task.lr_factor(0, 2000, 10) == pytest.approx(start)
    assert task.lr_factor(105, 2000, 10) == pytest.approx(start + 10.5 * (c(35) - start) / 35)
    assert task.lr_factor(350, 2000, 10) == pytest.approx(c(35))  # 0.926, not 1
    assert task.lr_factor(1999, 2000, 10) == pytest.approx(c(199.9))
    vssl = RhoBYOL(**BYOL_TINY)
    assert vssl.lr_factor(350, 2000, 10) == pytest.approx(1.0)


# ---------------------------------------------------------------- training through the CLI
@pytest.fixture(scope="module")
def colour_videos(tmp_path_factory):
    """Videos under ``train/c{0..3}/`` (3 each) and ``test/c{0..3}/`` (1 each) whose class is
    their colour: a class hue, a colour offset and a texture per video, a brightness drift over
    time. What stays the same along a video is what tells its class, as rho-BYOL and rho-MoCo
    assume; the synthetic motion dataset's classes are motion directions instead."""
    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    hues = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]], dtype=float)
    for split, count in (("train", 3), ("test", 1)):
        for c, hue in enumerate(hues):
            for i in range(count):
                texture = rng.uniform(-40, 40, (1, 32, 32, 1))
                drift = rng.uniform(-3, 3) * np.arange(16)[:, None, None, None]
                pixels = np.clip(hue + rng.uniform(-40, 40, 3) + texture + drift, 0, 255)
                frames = np.broadcast_to(pixels, (16, 32, 32, 3)).astype(np.uint8)
                write_video(root / split / f"c{c}" / f"{i}.mp4", frames)
    return root


def _config(root, cache, cls, model_args, epochs):
    cfg = tiny_config(root, cache, max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0)
    cfg["model"] = {
        "class_path": f"vssl.tasks.{cls}",
        "init_args": {
            "optimizer": "adamw",
            "lr": 0.003,
            "weight_decay": 0.01,
            "reference_batch_size": None,
            "warmup_epochs": 0,
            "probe_lr": 0.1,
            "augment": {},  # the crops and times alone make the clips of a video differ
            **model_args,
        },
    }
    cfg["data"]["init_args"].update(batch_size=4, crop_scale=[0.6, 1.0])
    cfg["checkpoint"] = {"monitor": None}
    return cfg


@pytest.mark.parametrize(
    ("cls", "model_args"),
    [
        ("RhoBYOL", {**BYOL_TINY, "target_momentum": 0.9}),
        # a queue of one step's keys (4 videos x 2 clips), so that it holds real keys after the
        # first step; tau 0.2 and a fast key encoder for a short run. Batches of 4 stay whole:
        # batch norm over sub-batches of 2 (num_splits 2) is too noisy, the loss then stays flat
        (
            "RhoMoCo",
            {**MOCO_TINY, "queue_size": 8, "temperature": 0.2, "key_momentum": 0.5, "lr": 0.01},
        ),
    ],
)
def test_cli_training_lowers_the_loss_and_the_probe_beats_chance(
    cls, model_args, colour_videos, tmp_path, run_cli
):
    epochs = 8  # 12 videos in batches of 4: 24 steps
    cfg = _config(colour_videos, tmp_path / "cache", cls, model_args, epochs)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_cli(["fit", "--config", "run.yaml", "--trainer.logger.init_args.name", "r"], tmp_path)
    rows = list(csv.DictReader((tmp_path / "runs" / "r" / "version_0" / "metrics.csv").open()))
    loss = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    probe = [float(r["train/probe_acc_epoch"]) for r in rows if r.get("train/probe_acc_epoch")]
    assert len(loss) == len(probe) == epochs
    assert all(np.isfinite(loss))
    # From the second epoch on (MoCo's first steps score against a queue of random vectors):
    # the mean of the last two epochs is well below it.
    assert np.mean(loss[-2:]) < 0.8 * loss[1], loss
    # 4 classes: chance is 0.25. The probe reads detached features, so collapsed features
    # (BYOL's failure mode) would keep it there.
    assert np.mean(probe[-3:]) > 0.5, probe
