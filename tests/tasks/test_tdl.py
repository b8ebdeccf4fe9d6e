"""TDL: the temporal triplet sampler, the loss by hand, the memory bank, the momentum encoder,
the augmentations (per-clip transforms, one colour adjustment per clip, TCA) and CLI training."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import tiny_config
from torch.nn import functional as F
from training_helpers import cli_fit_rows, column, ddp_key_records

from vssl.data.sampling import ClipSpec
from vssl.heads import TDLProjectionHead
from vssl.tasks import TDL
from vssl.tasks.tdl import (
    VIEWS,
    OneAdjustmentJitter,
    TemporalTripletSampler,
    intra_video_mixup,
    tdl_logits,
    tdl_loss,
)


def make_task(**kwargs) -> TDL:
    args = {"backbone": "tiny3d", "backbone_kwargs": {"width": 4}, "proj_dim": 8, "queue_size": 6}
    return TDL(**{**args, **kwargs})


def uint8_batch(b: int = 4, t: int = 4, size: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8, generator=g)
        for k in VIEWS
    }


class FixedStarts:
    """A stand-in generator whose ``integers`` returns the given starts."""

    def __init__(self, *starts: int):
        self.starts = np.array(starts)

    def integers(self, low: int, high: int, size: int) -> np.ndarray:
        return self.starts


# ------------------------------------------------------------------------------ sampling
def test_anchor_and_positive_share_a_segment_and_the_negative_is_elsewhere():
    sampler = TemporalTripletSampler(clip_len=4, stride=2)
    # 100 frames: starts are drawn from [0, 100 - 2 * 4 * 2] = [0, 84], as the official code
    # draws them for a clip twice as long.
    anchor, negative = (int(s) for s in np.random.default_rng(3).integers(0, 85, size=2))
    assert abs(anchor - negative) >= 2
    views = sampler(100, np.random.default_rng(3))
    assert views["anchor"].tolist() == [anchor, anchor + 2, anchor + 4, anchor + 6]
    assert views["positive"].tolist() == views["anchor"].tolist()
    assert views["negative"].tolist() == [negative, negative + 2, negative + 4, negative + 6]
    starts = [sampler.starts(100, np.random.default_rng(s)) for s in range(400)]
    firsts = {a for a, _ in starts}
    assert min(firsts) == 0 and max(firsts) == 84 and len(firsts) > 80


def test_a_negative_too_close_to_the_anchor_moves_on_by_a_third_of_the_video():
    sampler = TemporalTripletSampler(clip_len=4, stride=2)
    views = sampler(100, FixedStarts(10, 11))  # 1 frame apart: moved by 100 // 3
    assert views["anchor"].tolist() == [10, 12, 14, 16]
    assert views["negative"].tolist() == [44, 46, 48, 50]
    assert sampler(100, FixedStarts(10, 12))["negative"].tolist() == [12, 14, 16, 18]
    assert sampler(100, FixedStarts(80, 80))["negative"].tolist() == [13, 15, 17, 19]
    # min_gap 5: 4 frames apart is too close
    wide = TemporalTripletSampler(clip_len=4, stride=2, min_gap=5)
    assert wide(100, FixedStarts(10, 14))["negative"].tolist() == [47, 49, 51, 53]


def test_short_videos_start_at_zero_and_wrap():
    # 10 frames, clips of 4 every 2nd frame: no room, both start at 0, the negative moves to 3
    views = TemporalTripletSampler(clip_len=4, stride=2)(10, np.random.default_rng(0))
    assert views["anchor"].tolist() == [0, 2, 4, 6]
    assert views["negative"].tolist() == [3, 5, 7, 9]
    views = TemporalTripletSampler(clip_len=4, stride=3, draw_len=4)(10, FixedStarts(0, 1))
    assert views["negative"].tolist() == [4, 7, 0, 3]


def test_draw_len_sets_the_start_range():
    sampler = TemporalTripletSampler(clip_len=4, stride=2, draw_len=4)
    starts = {sampler.starts(20, np.random.default_rng(s))[0] for s in range(200)}
    assert starts == set(range(13))  # [0, 20 - 4 * 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_len": 0}, "clip_len and stride must be >= 1"),
        ({"min_gap": -1}, "min_gap must be >= 0"),
        ({"draw_len": 0}, "draw_len must be >= 1 or None"),
    ],
)
def test_sampler_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TemporalTripletSampler(**kwargs)


# ------------------------------------------------------------------------------ loss
def test_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    n = torch.tensor([[0.8, 0.6], [1.0, 0.0]])
    bank = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    logits = tdl_logits(q, k, n, bank, tau=0.5)
    assert torch.allclose(logits, torch.tensor([[1.2, 2.0, -2.0, 1.6], [2.0, 0.0, 0.0, 0.0]]))
    loss, _ = tdl_loss(q, k, n, bank, tau=0.5)
    e = math.exp
    ce1 = -math.log(e(1.2) / (e(1.2) + e(2.0) + e(-2.0) + e(1.6)))
    ce2 = -math.log(e(2.0) / (e(2.0) + 3.0))
    assert loss.item() == pytest.approx((ce1 + ce2) / 2, rel=1e-6)


def test_step_is_the_loss_of_the_three_embeddings_and_the_bank():
    torch.manual_seed(0)
    task = make_task(temperature=0.2).eval()
    batch = task.augment_batch(uint8_batch())
    bank = task.queue.keys.clone()
    features, q = task.embed(batch["anchor"])
    _, n = task.embed(batch["negative"])
    k = task.key_embeddings(batch["positive"])
    out = task.step(batch, "val")
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ bank.T, (q * n).sum(1, keepdim=True)], 1)
    expected = F.cross_entropy(logits / 0.2, torch.zeros(4, dtype=torch.long))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.logs["temporal_acc"].item() == ((q * k).sum(1) > (q * n).sum(1)).float().mean()
    assert torch.equal(out.features, features)
    assert torch.allclose(q.norm(dim=1), torch.ones(4)) and torch.allclose(
        k.norm(dim=1), torch.ones(4)
    )
    assert torch.equal(task.queue.keys, bank) and task.queue.ptr.item() == 0  # no update in val


def test_gradients_reach_the_anchor_and_the_negative_not_the_key_encoder():
    torch.manual_seed(0)
    task = make_task().train()
    batch = task.augment_batch(uint8_batch())
    batch["negative"].requires_grad_(True)
    task.step(batch, "train").loss.backward()
    assert batch["negative"].grad.abs().sum() > 0
    assert all(p.grad is None for p in task.momentum_encoder.parameters())
    assert task.head.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ memory bank
def test_training_steps_write_the_positive_keys_into_the_bank():
    torch.manual_seed(0)
    task = make_task(queue_size=6).train()
    expected = []
    for seed in (1, 2):
        batch = task.augment_batch(uint8_batch(seed=seed))
        keys = task.key_embeddings(batch["positive"])
        anchors = task.embed(batch["anchor"])[1]
        task.step(batch, "train")
        expected.append(keys)
        assert not torch.allclose(keys, anchors)
    a, b = expected
    # 4 keys, then 4 more into a bank of 6: the second batch wraps around to rows 0 and 1
    assert torch.allclose(task.queue.keys, torch.cat([b[2:], a[2:], b[:2]]), atol=1e-6)
    assert task.queue.ptr.item() == 2


def test_momentum_encoder_moves_by_one_minus_m():
    task = make_task(key_momentum=0.9)
    with torch.no_grad():
        for p in task.backbone.parameters():
            p.add_(torch.randn_like(p))
    keys = task.momentum_encoder.module["backbone"]
    before = {name: p.clone() for name, p in keys.named_parameters()}
    task.after_optimizer_step()
    for name, p in task.backbone.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p
        assert torch.allclose(dict(keys.named_parameters())[name], expected, atol=1e-6), name


# ------------------------------------------------------------------------------ augmentation
def test_each_view_gets_its_own_crop_and_rotation_in_training_only():
    torch.manual_seed(0)
    task = make_task()
    spec = ClipSpec(clip_len=4, crop_size=24)
    frames = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    sample = {k: frames.clone() for k in VIEWS}
    train = task.clip_transform("train", spec)(sample)
    assert all(v.shape == (4, 3, 24, 24) for v in train.values())
    assert not torch.equal(train["anchor"], train["positive"])
    assert not torch.equal(train["anchor"], train["negative"])
    evaluation = task.clip_transform("val", spec)(sample)
    assert torch.equal(evaluation["anchor"], evaluation["positive"])
    # resize to 8/7 of the crop (27 px for 24), then the centre crop
    assert evaluation["anchor"].shape == (4, 3, 24, 24)


def test_crop_scale_is_not_used_and_says_so():
    with pytest.warns(UserWarning, match=r"crop_scale \(0.5, 1.0\) is not used"):
        make_task().clip_transform("train", ClipSpec(scale=(0.5, 1.0)))


def test_colour_jitter_applies_one_adjustment_per_clip():
    augment = OneAdjustmentJitter(brightness=0.5, contrast=0.5, saturation=0.25, hue=0.5)
    p = augment.sample_params(200, generator=torch.Generator().manual_seed(0))
    changed = torch.stack(
        [p.brightness != 1, p.contrast != 1, p.saturation != 1, p.hue != 0], dim=1
    )
    assert changed.sum(dim=1).tolist() == [1] * 200
    assert (changed.sum(dim=0) > 30).all()  # each adjustment drawn about a quarter of the time
    assert p.brightness.min() >= 0.5 and p.brightness.max() <= 1.5 and p.hue.abs().max() <= 0.5
    assert isinstance(make_task().augment, OneAdjustmentJitter)
    assert not isinstance(make_task(jitter_one_op=False).augment, OneAdjustmentJitter)


def test_intra_video_mixup_by_hand():
    video = torch.randn(3, 2, 5, 4, 4)
    lam = float(torch.rand((), generator=torch.Generator().manual_seed(7))) * 0.1
    g = torch.Generator().manual_seed(7)
    torch.rand((), generator=g)
    frames = torch.randint(0, 5, (3,), generator=g)
    mixed = intra_video_mixup(video, 0.1, torch.Generator().manual_seed(7))
    for i in range(3):
        still = video[i, :, frames[i]].unsqueeze(1)
        assert torch.allclose(mixed[i], (1 - lam) * video[i] + lam * still)
    assert 0 < lam < 0.1


def test_tca_mixes_the_anchor_in_training_only():
    batch = uint8_batch()
    torch.manual_seed(0)
    plain = make_task(tca_strength=0.0, augment={}).train().augment_batch(dict(batch))
    torch.manual_seed(0)
    task = make_task(tca_strength=1.0, augment={}).train()
    mixed = task.augment_batch(dict(batch))
    assert not torch.allclose(mixed["anchor"], plain["anchor"])
    assert torch.equal(mixed["positive"], plain["positive"])
    assert torch.equal(mixed["negative"], plain["negative"])
    evaluated = task.eval().augment_batch(dict(batch))
    assert torch.equal(evaluated["anchor"], plain["anchor"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_momentum": 1.5}, "key_momentum must be in"),
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"tca_strength": -0.1}, "tca_strength must be in"),
        ({"rotation": -1.0}, "rotation must be >= 0"),
        ({"min_gap": -2}, "min_gap must be >= 0"),
    ],
)
def test_task_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_task(**kwargs)


def test_heads_and_bank_under_their_checkpoint_names():
    task = make_task()
    assert isinstance(task.head, TDLProjectionHead)
    assert isinstance(task.momentum_encoder.module["head"], TDLProjectionHead)
    assert {
        "head.weight",
        "head.bias",
        "momentum_encoder.module.head.weight",
        "momentum_encoder.module.backbone.trunk.0.weight",
        "queue.keys",
        "queue.ptr",
    } <= set(task.state_dict())


def test_defaults_are_the_official_recipe():
    task = make_task()
    hp = task.hparams
    assert (hp.optimizer, hp.lr, hp.reference_batch_size, hp.weight_decay) == (
        "sgd",
        0.003,
        None,
        1e-4,
    )
    assert (hp.lr_schedule, hp.lr_milestones, hp.lr_gamma) == ("step", [120, 160, 200], 0.1)
    assert (hp.temperature, hp.key_momentum, hp.tca_strength, hp.min_gap) == (0.07, 0.999, 0.1, 2)
    assert hp.augment == {
        "brightness": 0.5,
        "contrast": 0.5,
        "saturation": 0.25,
        "hue": 0.5,
        "jitter_p": 1.0,
    }


# ------------------------------------------------------------------------------ training
def tdl_config(root: Path, cache: Path, **model) -> dict:
    cfg = tiny_config(root, cache)
    cfg["model"] = {
        "class_path": "vssl.tasks.TDL",
        "init_args": {
            "backbone": "tiny3d",
            "backbone_kwargs": {"width": 4},
            "proj_dim": 8,
            "key_momentum": 0.9,
            "augment": {},
            "optimizer": "adamw",
            "weight_decay": 0.01,
            **model,
        },
    }
    cfg["data"]["init_args"].update(stride=1, batch_size=4, num_workers=1)
    return cfg


def test_ddp_every_process_writes_the_keys_of_both(tiny_synthetic: Path, tmp_path: Path):
    cfg = tdl_config(tiny_synthetic, tmp_path / "cache", queue_size=8)
    recs = ddp_key_records(cfg, tmp_path, shuffled="key_embeddings")
    assert all(r["world_size"] == 2 for r in recs)
    assert [len(r["local"]) for r in recs] == [3, 3]  # 12 videos, 2 processes, batches of 2
    assert torch.equal(recs[0]["initial"], recs[1]["initial"])
    expected = recs[0]["initial"].clone()
    row = 0
    for step in range(3):
        for key in torch.cat([recs[0]["local"][step], recs[1]["local"][step]]):
            expected[row % 8] = key
            row += 1
    for r in recs:
        assert torch.equal(r["keys"], expected)  # 12 keys in a bank of 8: it wrapped
        assert r["ptr"] == 4 and r["shuffle_error"] < 1e-5


def test_cli_training_lowers_the_loss(tiny_synthetic: Path, tmp_path: Path, run_cli):
    cfg = tdl_config(tiny_synthetic, tmp_path / "cache", queue_size=16)
    cfg["trainer"]["max_epochs"] = 30
    losses = column(cli_fit_rows(cfg, tmp_path, run_cli, validate=False), "train/loss_step")
    assert len(losses) == 90  # 12 videos in batches of 4, 30 epochs
    first, last = np.mean(losses[:15]), np.mean(losses[-15:])
    assert last < 0.8 * first, (first, last)
