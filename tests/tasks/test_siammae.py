"""SiamMAE: the frame-pair sampler, MAE's random masking at 95%, the normalised-pixel loss by
hand, the cross-self decoder, a few optimisation steps, the image ViT on clips, and the paper
config's ViT-S/16 on the meta device."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import tiny_config

from vssl.backbones.vit import ImageViT
from vssl.data import VideoDataset, VideoIndex, VideoItem
from vssl.data.encode import write_video
from vssl.data.sampling import ClipSpec
from vssl.eval.features import clip_tokens
from vssl.tasks import SiamMAE
from vssl.tasks.siammae import (
    CrossSelfBlock,
    FramePairs,
    future_sequence,
    patch_target,
    random_mask,
    siammae_loss,
    visible_count,
)

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "backbone": "vit_tiny_8_image",
    "backbone_kwargs": {"dim": 32, "depth": 1, "heads": 2},
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_heads": 2,
}


def _pairs(sampler, num_frames, draws, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([sampler(num_frames, rng)["video"] for _ in range(draws)])


# ---------------------------------------------------------------- frame pairs
def test_gaps_are_uniform_over_the_range_and_the_past_frame_comes_first():
    pairs = _pairs(FramePairs(4, 48), 200, 9000, seed=0)
    gaps = pairs[:, 1] - pairs[:, 0]
    assert pairs.min() >= 0 and pairs.max() < 200
    counts = np.bincount(gaps, minlength=49)
    assert counts[:4].sum() == 0 and set(np.nonzero(counts)[0]) == set(range(4, 49))
    expected = 9000 / 45
    assert np.abs(counts[4:] - expected).max() < 5 * math.sqrt(expected)
    # the start is uniform over the positions that keep both frames in the video
    assert pairs[:, 0].max() >= 190 and pairs[:, 0].min() == 0


def test_short_videos_clamp_the_gap():
    sampler = FramePairs(4, 48)
    assert sampler.gap_range(20) == (4, 19)
    gaps = np.diff(_pairs(sampler, 20, 2000, seed=1), axis=1).ravel()
    assert gaps.min() == 4 and gaps.max() == 19
    # shorter than min_gap + 1 frames: the first and the last frame; one frame: that one twice
    assert sampler.gap_range(3) == (2, 2)
    assert _pairs(sampler, 3, 5).tolist() == [[0, 2]] * 5
    assert _pairs(sampler, 1, 2).tolist() == [[0, 0]] * 2


def test_pairs_are_deterministic_per_seed():
    sampler = FramePairs(4, 48)
    first = _pairs(sampler, 100, 30, seed=7)
    assert np.array_equal(first, _pairs(sampler, 100, 30, seed=7))
    assert not np.array_equal(first, _pairs(sampler, 100, 30, seed=8))


def test_sampler_rejects_bad_gaps():
    with pytest.raises(ValueError, match="1 <= min_gap <= max_gap, got min_gap 10 and max_gap 5"):
        FramePairs(10, 5)
    with pytest.raises(ValueError, match="1 <= min_gap"):
        FramePairs(0, 5)
    with pytest.raises(ValueError, match="whole frame counts, got 2.5"):
        FramePairs(2.5, 5)
    with pytest.raises(ValueError, match="at least one frame"):
        FramePairs()(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="1 <= min_gap"):
        SiamMAE(**TINY, min_gap=9, max_gap=3)


def test_dataset_serves_the_two_frames_of_a_pair(video_factory, frame_index):
    path = video_factory("a.mp4", num_frames=40, gop=8)
    task = SiamMAE(**TINY, min_gap=5, max_gap=9)
    spec = ClipSpec(clip_len=16, stride=2, crop_size=32)
    index = VideoIndex.build([path], progress=False, cache_dir=Path(path).parent / "cache")
    ds = VideoDataset(
        [VideoItem(Path(path), 0)],
        [index[path]],
        task.clip_sampler("train", spec),
        task.clip_transform("val", spec),
    )
    for _ in range(4):
        video = ds[0]["video"]
        assert video.shape == (2, 3, 32, 32) and video.dtype == torch.uint8
        first, second = (frame_index(f) for f in video)
        assert 5 <= second - first <= 9 and first >= 0 and second < 40


# ---------------------------------------------------------------- masking
def test_future_frame_is_masked_at_95_percent_with_maes_rounding():
    # 196 patches (224 / 16): int(196 * 0.05) = 9 visible, 187 masked (95.4%)
    assert visible_count(196, 0.95) == 9
    assert visible_count(100, 0.95) == 5  # no float error: 100 * 0.05 is 5.000000000000004
    assert visible_count(16, 0.95) == 1  # at least one patch stays visible
    generator = torch.Generator().manual_seed(0)
    mask = random_mask(64, 196, 0.95, generator)
    assert mask.shape == (64, 196) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [187] * 64
    assert len({tuple(row.tolist()) for row in mask}) == 64  # each sample its own
    assert mask.float().mean(dim=0).min() > 0.75  # every position can be visible or masked
    again = random_mask(64, 196, 0.95, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\), got 1.0"):
        visible_count(196, 1.0)
    with pytest.raises(ValueError, match="at least 2 patches"):
        visible_count(1, 0.5)


def test_the_past_frame_is_encoded_whole_and_the_future_only_where_visible(monkeypatch):
    torch.manual_seed(0)
    task = SiamMAE(**TINY)
    seen = []
    encode = task.backbone.encode
    monkeypatch.setattr(task.backbone, "encode", lambda t: seen.append(t.shape) or encode(t))
    task.step({"video": torch.randn(3, 3, 2, 64, 64)}, "train")  # 8 x 8 = 64 patches a frame
    assert seen == [(3, 64, 32), (3, visible_count(64, 0.95), 32)]  # past: all; future: 3


# ---------------------------------------------------------------- loss by hand
def test_target_patches_are_row_column_channel_and_normalised_per_patch():
    frame = torch.arange(8.0).reshape(1, 2, 2, 2)  # channels 0..3 and 4..7
    raw = patch_target(frame, (2, 2), normalize=False)
    assert raw.tolist() == [[[0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]]]
    normed = patch_target(frame, (2, 2))
    values = raw[0, 0]
    expected = (values - values.mean()) / math.sqrt(values.var().item() + 1e-6)
    torch.testing.assert_close(normed[0, 0], expected)


def test_loss_is_the_normalised_pixel_mse_of_the_masked_patches_only():
    # One channel, 4 x 4 frame, 2 x 2 patches: patch k holds {a, a+1, a+4, a+5}; deviations
    # from the mean (-2.5, -1.5, 1.5, 2.5), unbiased variance 17 / 3.
    frame = torch.arange(16.0).reshape(1, 1, 4, 4)
    mask = torch.tensor([[False, True, True, False]])
    zeros = torch.zeros(1, 2, 4)
    expected = 17 / (4 * (17 / 3 + 1e-6))  # mean of the squared normalised values
    assert siammae_loss(zeros, frame, mask, (2, 2)).item() == pytest.approx(expected, rel=1e-6)
    # raw pixels: patches 1 ({2, 3, 6, 7}) and 2 ({8, 9, 12, 13}), mean of squares 556 / 8
    raw = siammae_loss(zeros, frame, mask, (2, 2), normalize=False)
    assert raw.item() == pytest.approx(556 / 8)
    ones = siammae_loss(torch.ones(1, 2, 4), frame, mask, (2, 2), normalize=False)
    assert ones.item() == pytest.approx((556 - 2 * 60 + 8) / 8)  # sum (x - 1)^2, sum x = 60
    # the visible patches (0 and 3) take no part
    changed = frame.clone()
    changed[..., :2, :2] = 100.0
    changed[..., 2:, 2:] = -7.0
    assert siammae_loss(zeros, changed, mask, (2, 2)).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"prediction \(1, 3, 4\) must match the masked"):
        siammae_loss(torch.zeros(1, 3, 4), frame, mask, (2, 2))


def test_step_loss_is_the_loss_of_its_own_prediction():
    torch.manual_seed(0)
    task = SiamMAE(**TINY)
    video = torch.randn(2, 3, 2, 32, 32)
    task._mask_generator = torch.Generator().manual_seed(3)
    loss = task.step({"video": video}, "train").loss
    mask = random_mask(2, 16, 0.95, torch.Generator().manual_seed(3))
    past, future = video[:, :, :1], video[:, :, 1:]
    prediction = task.decode(task.encode(past), task.encode(future, mask), mask)
    assert prediction.shape == (2, 15, 8 * 8 * 3)
    torch.testing.assert_close(loss, siammae_loss(prediction, future[:, :, 0], mask, (8, 8)))


# ---------------------------------------------------------------- decoder
def test_cross_self_block_reads_the_past_frame_and_mixes_the_future_tokens():
    torch.manual_seed(0)
    block = CrossSelfBlock(32, 4).eval()
    x, memory = torch.randn(2, 10, 32), torch.randn(2, 16, 32)
    out = block(x, memory)
    assert out.shape == (2, 10, 32)
    assert block(x, torch.randn(2, 7, 32)).shape == (2, 10, 32)  # any past-frame length
    assert not torch.allclose(block(x, memory + 1.0), out)  # cross-attention reads the past
    nudged = x.clone()
    nudged[:, 0] += torch.randn(32)  # not a constant: the LayerNorms would remove that
    moved = (block(nudged, memory) - out).abs().amax(dim=-1)
    assert (moved[:, 1:] > 1e-4).all()  # self-attention spreads one token to the others
    with pytest.raises(ValueError, match="must share B and D"):
        block(x, torch.randn(2, 16, 8))
    with pytest.raises(ValueError, match="dim 30 must be a positive multiple of heads 4"):
        CrossSelfBlock(30, 4)


def test_future_sequence_puts_visible_tokens_in_place_and_mask_tokens_elsewhere():
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    with pytest.raises(ValueError, match="do not fit the mask"):
        future_sequence(torch.ones(2, 2, 3), mask, torch.zeros(3))  # sample 1 has 1 visible
    mask[1] = torch.tensor([False, True, False, True])
    visible = torch.tensor([[[1.0, 1], [2, 2]], [[3, 3], [4, 4]]])
    token = torch.tensor([-1.0, -2.0])
    out = future_sequence(visible, mask, token)
    assert out.tolist() == [
        [[-1, -2], [1, 1], [-1, -2], [2, 2]],
        [[3, 3], [-1, -2], [4, 4], [-1, -2]],
    ]


def test_decoder_predicts_every_masked_patch_of_the_future_frame():
    torch.manual_seed(0)
    task = SiamMAE(**{**TINY, "decoder_depth": 2})
    video = torch.randn(3, 3, 2, 64, 48)  # 8 x 6 = 48 patches, int(48 * 0.05) = 2 visible
    mask = task.draw_mask(video[:, :, 1:])
    prediction = task.decode(task.encode(video[:, :, :1]), task.encode(video[:, :, 1:], mask), mask)
    assert prediction.shape == (3, 46, 192)


# ---------------------------------------------------------------- training
def test_a_few_optimisation_steps_lower_the_loss():
    torch.manual_seed(0)
    task = SiamMAE(**TINY)
    base = torch.rand(4, 3, 1, 32, 32)
    video = torch.cat([base, base.roll(4, dims=-1)], dim=2)  # the future: the past moved right
    optimiser = torch.optim.AdamW(task.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        task._mask_generator = torch.Generator().manual_seed(0)  # the same masks every step
        return task.step({"video": video}, "train").loss

    with torch.no_grad():
        before = loss().item()
    for _ in range(25):
        optimiser.zero_grad()
        loss().backward()
        optimiser.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.85 * before, (before, after)  # 1.256 -> 0.976 here


def test_weight_decay_groups_and_betas_follow_mae():
    task = SiamMAE(**TINY, num_classes=4)
    names = {id(p): n for n, p in task.named_parameters()}
    task.effective_lr = lambda: 1e-3
    decay, no_decay, probe = task.parameter_groups()
    assert all(g["betas"] == (0.9, 0.95) for g in (decay, no_decay, probe))
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert all(p.ndim > 1 for p in decay["params"])
    assert "mask_token" in {names[id(p)] for p in decay["params"]}  # MAE decays it
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert not any(
        names[id(p)].startswith("backbone.fc_norm") for g in (decay, no_decay) for p in g["params"]
    )


def test_rejects_other_backbones_and_batches():
    with pytest.raises(ValueError, match="SiamMAE needs an image ViT .* got backbone 'vit_tiny_8'"):
        SiamMAE(backbone="vit_tiny_8", decoder_dim=32, decoder_heads=2)
    task = SiamMAE(**TINY)
    with pytest.raises(ValueError, match=r"frame pairs \(B, C, 2, H, W\), got \(2, 3, 4, 32, 32\)"):
        task.step({"video": torch.randn(2, 3, 4, 32, 32)}, "train")


# ---------------------------------------------------------------- evaluation on clips
def test_a_clip_is_encoded_frame_by_frame_and_its_features_averaged():
    torch.manual_seed(0)
    task = SiamMAE(**TINY).eval()
    backbone = task.backbone
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        per_frame = [backbone.encode(backbone.embed(clip[:, :, t : t + 1])) for t in range(4)]
        expected = backbone.fc_norm(torch.stack([f.mean(dim=1) for f in per_frame]).mean(dim=0))
        torch.testing.assert_close(task(clip), expected)
        tokens = clip_tokens(task, clip)
    assert tokens.shape == (2, 4 * 16, 32)
    torch.testing.assert_close(tokens[:, 16:32], per_frame[1])  # frame 1's own tokens
    assert isinstance(backbone, ImageViT)
    uint8 = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)  # (B, T, C, H, W)
    assert task.extract_features(uint8).shape == (2, 32)


def test_paper_config_builds_vit_s_16_on_the_meta_device():
    cfg = yaml.safe_load((REPO / "configs/siammae/vit_s_16_k400.yaml").read_text())
    assert cfg["model"]["class_path"] == "vssl.tasks.SiamMAE"
    with torch.device("meta"):
        task = SiamMAE(**(cfg["model"].get("init_args") or {}))
    encoder = sum(p.numel() for p in task.backbone.parameters())
    assert 21e6 < encoder < 22e6, encoder
    assert task.backbone.tubelet == (1, 16, 16) and task.backbone.out_dim == 384
    assert len(task.backbone.trunk.blocks) == 12
    assert (task.mask_ratio, task.min_gap, task.max_gap) == (0.95, 4, 48)
    assert task.decoder_embed.out_features == 256 and len(task.decoder) == 4
    assert task.decoder[0].self_attn.num_heads == 8
    data = cfg["data"]["init_args"]
    assert data["crop_size"] == 224
    frames = torch.empty(2, 3, 2, 224, 224, device="meta")
    assert visible_count(196, task.mask_ratio) == 9
    assert task.backbone(frames).shape == (2, 384)


# ---------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def colour_videos(tmp_path_factory):
    """Videos under ``train/c{0..3}/`` (4 each) and ``test/c{0..3}/`` (1 each) whose class is
    their colour (a class hue, a colour offset and a texture per video), with a bright square
    moving 1 px a frame: what one frame shows tells the class, as SiamMAE's frame encoder needs
    (the synthetic motion dataset's classes are motions, which no single frame shows). A class
    that lives in a few tokens would not do: the tiny image ViT's pooled, layer-normed features
    of a mostly uniform frame vary little across frames, and the online probe's few steps stay
    at chance on them."""
    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    hues = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]], dtype=float)
    for split, count in (("train", 4), ("test", 1)):
        for c, hue in enumerate(hues):
            for i in range(count):
                texture = rng.uniform(-40, 40, (1, 32, 32, 1))
                frames = np.clip(hue + rng.uniform(-40, 40, 3) + texture, 0, 255).repeat(16, 0)
                top = rng.integers(0, 24)
                for t in range(16):
                    frames[t, top : top + 8, t : t + 8] = 255
                write_video(root / split / f"c{c}" / f"{i}.mp4", frames.astype(np.uint8))
    return root


def test_cli_training_lowers_the_loss_and_the_probe_beats_chance(colour_videos, tmp_path, run_cli):
    epochs = 8  # 16 videos in batches of 4: 32 steps
    cfg = tiny_config(
        colour_videos,
        tmp_path / "cache",
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    cfg["model"] = {
        "class_path": "vssl.tasks.SiamMAE",
        "init_args": {
            **TINY,
            "backbone_kwargs": {**TINY["backbone_kwargs"], "patch_size": 4},
            "lr": 0.003,
            "reference_batch_size": None,
            "warmup_epochs": 0,
            "probe_lr": 0.1,
        },
    }
    cfg["data"]["init_args"].update(
        clip_len=16, stride=1, crop_size=32, decode_size=32, batch_size=4, crop_scale=[0.8, 1.0]
    )
    cfg["checkpoint"] = {"monitor": None}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_cli(["fit", "--config", "run.yaml", "--trainer.logger.init_args.name", "s"], tmp_path)
    rows = list(csv.DictReader((tmp_path / "runs" / "s" / "version_0" / "metrics.csv").open()))
    loss = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    probe = [float(r["train/probe_acc_epoch"]) for r in rows if r.get("train/probe_acc_epoch")]
    assert len(loss) == len(probe) == epochs and all(np.isfinite(loss))
    assert np.mean(loss[-2:]) < 0.8 * loss[0], loss
    # 4 classes: chance is 0.25 (the probe reads the past frame's detached features)
    assert np.mean(probe[-3:]) > 0.5, probe
