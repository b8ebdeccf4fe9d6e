"""PlaybackRate: the sampled stride is exactly the labelled rate (in decoded frames), starts and
rates are uniform, short videos wrap, bad rate sets are refused, the loss by hand, and training
through the CLI."""

import math

import numpy as np
import pytest
import torch
from cli_helpers import ramp_videos, tiny_config
from torch.nn import functional as F
from training_helpers import cli_fit_rows, column

from vssl.data.dataset import VideoDataset
from vssl.data.index import VideoIndex
from vssl.data.layouts import VideoItem
from vssl.data.sampling import ClipSpec
from vssl.heads import PlaybackRateDecoder
from vssl.tasks import PlaybackRate
from vssl.tasks.playback_rate import PlaybackRateSampler, motion_attention, weighted_mse

TINY = {"backbone": "tiny3d", "backbone_kwargs": {"width": 4}}


def test_sampler_views_by_hand():
    sampler = PlaybackRateSampler(clip_len=4, stride=2, rates=(1, 3))
    views = sampler.views(label=1, start=5, num_frames=100)
    assert views["video"].tolist() == [5, 11, 17, 23]  # every 3 * 2 frames
    assert views["rate"].ndim == 0 and int(views["rate"]) == 1
    # a clip longer than the video starts at 0 and wraps around
    short = PlaybackRateSampler(clip_len=4, stride=1, rates=(1, 4))
    rng = np.random.default_rng(0)
    draws = [short.draw(10, rng) for _ in range(50)]
    assert {start for label, start in draws if label == 1} == {0}
    assert short.views(1, 0, 10)["video"].tolist() == [0, 4, 8, 2]


def test_rates_and_starts_are_uniform():
    sampler = PlaybackRateSampler(clip_len=3, stride=1, rates=(1, 2, 4, 8))
    rng = np.random.default_rng(0)
    draws = np.array([sampler.draw(40, rng) for _ in range(8000)])
    counts = np.bincount(draws[:, 0], minlength=4)
    assert np.all(np.abs(counts - 2000) < 160)
    for label, rate in enumerate((1, 2, 4, 8)):
        starts = draws[draws[:, 0] == label, 1]
        assert starts.min() == 0 and starts.max() == 40 - (2 * rate + 1)  # the clip always fits


def test_decoded_frames_are_at_the_labelled_stride(video_factory, frame_index, tmp_path):
    path = video_factory("v.mp4", num_frames=40)
    info = VideoIndex.build([path], cache_dir=tmp_path / "cache", workers=1, progress=False)[path]
    task = PlaybackRate(**TINY)
    spec = ClipSpec(clip_len=4, stride=1, crop_size=32)
    sampler = task.clip_sampler("train", spec)
    dataset = VideoDataset([VideoItem(path, 0)], [info], sampler, task.clip_transform("val", spec))
    seen = set()
    for seed in range(40):
        sample = dataset.load(0, np.random.default_rng(seed))
        rate = (1, 2, 4, 8)[int(sample["rate"])]
        seen.add(rate)
        frames = [frame_index(f) for f in sample["video"]]
        assert np.diff(frames).tolist() == [rate] * 3 and frames[-1] < 40, (rate, frames)
        assert sample["rate"].dtype == torch.int64 and sample["video"].shape == (4, 3, 32, 32)
    assert seen == {1, 2, 4, 8}


def test_rejects_bad_rate_sets():
    with pytest.raises(ValueError, match="at least two playback rates"):
        PlaybackRate(rates=[2], **TINY)
    with pytest.raises(ValueError, match="distinct positive integers"):
        PlaybackRate(rates=[1, 2, 2], **TINY)
    with pytest.raises(ValueError, match="distinct positive integers"):
        PlaybackRateSampler(rates=(0, 1))
    with pytest.raises(ValueError, match="distinct positive integers"):
        PlaybackRateSampler(rates=(1, 1.5))


def test_loss_by_hand():
    torch.manual_seed(0)
    task = PlaybackRate(rates=(1, 2, 4), **TINY).eval()
    video = torch.randn(3, 3, 4, 8, 8)
    labels = torch.tensor([2, 0, 1])
    out = task.step({"video": video, "rate": labels}, "val")
    features = task.backbone(video)
    logits = task.head(features)
    assert logits.shape == (3, 3)
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert out.logs["rate_acc"].item() == (logits.argmax(1) == labels).float().mean().item()
    assert torch.equal(out.features, features)


def test_cli_training_learns_the_playback_rate(tmp_path, run_cli):
    # The stride between frames is readable from how much brighter each frame is than the one
    # before (4-5 grey levels a frame); in the synthetic motion data speed classes and rates
    # are confounded.
    root = ramp_videos(tmp_path / "ramps", slope=(4, 5), frames=36, train_videos=48)
    cfg = tiny_config(root, tmp_path / "cache", max_epochs=15)
    cfg["model"] = {
        "class_path": "vssl.tasks.PlaybackRate",
        "init_args": {
            "backbone": "tiny3d",
            "backbone_kwargs": {"width": 8},
            "rates": [1, 2, 4, 8],
            "optimizer": "adamw",
            "lr": 0.01,
            "lr_schedule": "constant",
        },
    }
    # 4 frames at a stride of up to 8 span 25 of the 36 frames: no clip wraps around
    cfg["data"]["init_args"].update(clip_len=4, stride=1, batch_size=8, crop_scale=[1.0, 1.0])
    rows = cli_fit_rows(cfg, tmp_path, run_cli, validate=False)
    losses, acc = column(rows, "train/loss_epoch"), column(rows, "train/rate_acc_epoch")
    assert len(losses) == len(acc) == 15
    # chance: loss ln 4 = 1.39, accuracy 1/4 (sd 0.03 over the last 5 epochs' 240 clips);
    # measured 0.75 and 0.71
    assert np.mean(losses[-5:]) < 0.95, losses
    assert np.mean(acc[-5:]) > 0.5, acc


# ---------------------------------------------------------------- PRP's generative branch


def test_reconstruction_sampler_targets_exact_frames():
    sampler = PlaybackRateSampler(clip_len=4, stride=1, rates=(1, 2, 4, 8), reconstruction=True)
    two = sampler.views(label=1, start=5, num_frames=100)
    assert two["video"].tolist() == [5, 7, 9, 11] and two["between"].tolist() == [6, 8, 10, 12]
    assert int(two["interpolate"]) == 0 and int(two["rate"]) == 1
    eight = sampler.views(label=3, start=5, num_frames=100)
    assert eight["video"].tolist() == [5, 13, 21, 29]
    assert eight["between"].tolist() == [9, 17, 25, 33]
    # rate 1: no frame lies half-way; the next input frame (the last one: itself) is averaged
    one = sampler.views(label=0, start=5, num_frames=100)
    assert one["video"].tolist() == [5, 6, 7, 8] and one["between"].tolist() == [6, 7, 8, 8]
    assert int(one["interpolate"]) == 1
    odd = PlaybackRateSampler(clip_len=4, stride=3, rates=(1, 2), reconstruction=True)
    assert odd.views(0, 5, 100)["between"].tolist() == [8, 11, 14, 14]
    assert odd.views(1, 5, 100)["between"].tolist() == [8, 14, 20, 26]  # step 6
    # starts leave room for the last in-between frame: rate 8 spans 3 * 8 + 1 + 4 frames
    rng = np.random.default_rng(0)
    starts = [s for label, s in (sampler.draw(40, rng) for _ in range(2000)) if label == 3]
    assert max(starts) == 40 - 29 and min(starts) == 0
    assert set(PlaybackRateSampler(clip_len=4).views(1, 5, 100)) == {"video", "rate"}


def test_reconstruction_decodes_the_in_between_frames_with_one_crop(
    video_factory, frame_index, tmp_path
):
    path = video_factory("v.mp4", num_frames=40)
    info = VideoIndex.build([path], cache_dir=tmp_path / "cache", workers=1, progress=False)[path]
    task = PlaybackRate(reconstruction=True, **TINY)
    spec = ClipSpec(clip_len=4, stride=1, crop_size=32, scale=(0.5, 1.0))
    sampler = task.clip_sampler("train", spec)
    dataset = VideoDataset([VideoItem(path, 0)], [info], sampler, task.clip_transform("val", spec))
    seen = set()
    for seed in range(40):
        sample = dataset.load(0, np.random.default_rng(seed))
        rate = (1, 2, 4, 8)[int(sample["rate"])]
        seen.add(rate)
        video = [frame_index(f) for f in sample["video"]]
        between = [frame_index(f) for f in sample["between"]]
        if rate == 1:
            assert between == video[1:] + video[-1:] and int(sample["interpolate"]) == 1
        else:
            assert between == [v + rate // 2 for v in video], (rate, video, between)
        assert sample["between"].shape == sample["video"].shape == (4, 3, 32, 32)
    assert seen == {1, 2, 4, 8}
    # training crops: one random crop for both views (a frame of each is the same image)
    train = task.clip_transform("train", spec)
    torch.manual_seed(0)
    frames = torch.randint(0, 255, (1, 3, 48, 48), dtype=torch.uint8).expand(4, 3, 48, 48)
    out = train({"video": frames, "between": frames.clone(), "rate": torch.tensor(0)})
    assert torch.equal(out["video"], out["between"]) and out["video"].shape == (4, 3, 32, 32)


def test_motion_attention_by_hand():
    # 3 frames of 16 x 16: side 4, grid step 1; only the block at rows 8..11, cols 4..7 changes
    clip = torch.zeros(1, 3, 3, 16, 16)
    clip[:, :, 1, 8:12, 4:8] = 1.0
    clip[:, :, 0, 0, 0] = 0.5  # a smaller change elsewhere
    weights = motion_attention(clip)
    assert weights.shape == (1, 1, 1, 16, 16)
    cy, cx, sigma = 8 + 2, 4 + 2, 2.0
    g = [
        [math.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)) for x in range(16)]
        for y in range(16)
    ]
    lo, hi = min(map(min, g)), max(map(max, g))
    expected = torch.tensor([[0.8 + 1.2 * (v - lo) / (hi - lo) for v in row] for row in g])
    torch.testing.assert_close(weights[0, 0, 0], expected)
    assert weights[0, 0, 0, cy, cx].item() == pytest.approx(2.0)
    assert weights.min().item() == pytest.approx(0.8)
    with pytest.raises(ValueError, match="2\\+ frames"):
        motion_attention(torch.zeros(1, 3, 1, 16, 16))


def test_weighted_loss_by_hand():
    output = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 2, 2)
    target = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 1, 2, 2)
    weights = torch.tensor([2.0, 1.0, 0.8, 0.5]).view(1, 1, 1, 2, 2)
    # (2 * 1 + 1 * 4 + 0.8 * 4 + 0.5 * 9) / 4
    assert weighted_mse(output, target, weights).item() == pytest.approx(13.7 / 4)
    # weights that broadcast over channels and frames count every element
    out2 = torch.ones(1, 2, 3, 2, 2)
    assert weighted_mse(out2, torch.zeros_like(out2), weights).item() == pytest.approx(4.3 / 4)


@pytest.mark.parametrize(
    ("backbone", "kwargs"), [("c3d", {"pool5": False}), ("r3d_10", {}), ("r2plus1d_10", {})]
)
def test_decoder_output_is_the_target_clip_for_the_paper_sizes(backbone, kwargs):
    with torch.device("meta"):
        task = PlaybackRate(backbone=backbone, backbone_kwargs=kwargs, reconstruction=True)
        fmap = task.backbone.eval().forward_features(torch.empty(2, 3, 16, 112, 112))
        assert task.decoder.eval()(fmap).shape == (2, 3, 32, 112, 112)
    assert task.decoder.scale == (16, 16)
    widths = [m.out_channels for m in task.decoder.modules() if isinstance(m, torch.nn.Conv3d)]
    assert widths == [512, 256, 128, 64, 3]  # the official conv6_rec, up1..up3, outc


def test_decoder_rejects_bad_scales():
    with pytest.raises(ValueError, match="powers of two"):
        PlaybackRateDecoder(16, (3, 8))
    task = PlaybackRate(reconstruction=True, decoder_scale=(4, 8), **TINY)
    batch = {
        "video": torch.randn(2, 3, 4, 16, 16),
        "between": torch.randn(2, 3, 4, 16, 16),
        "rate": torch.tensor([0, 1]),
        "interpolate": torch.tensor([1, 0]),
    }
    with pytest.raises(ValueError, match="decoder_scale"):
        task.step(batch, "train")
    with pytest.raises(ValueError, match="'between' frames"):
        task.step({"video": batch["video"], "rate": batch["rate"]}, "train")


def test_reconstruction_off_keeps_todays_keys_and_loss():
    off = PlaybackRate(**TINY)
    assert off.hparams.reconstruction is False and not hasattr(off, "decoder")
    backbone_keys = {f"backbone.{k}" for k in off.backbone.state_dict()}
    assert set(off.state_dict()) == backbone_keys | {"head.weight", "head.bias"}
    on = PlaybackRate(reconstruction=True, **TINY)
    extra = set(on.state_dict()) - set(off.state_dict())
    assert set(off.state_dict()) < set(on.state_dict()) and all(
        k.startswith("decoder.") for k in extra
    )
    # an old checkpoint's state dict loads strictly into the default task
    PlaybackRate(**TINY).load_state_dict(off.state_dict(), strict=True)
    video, labels = torch.randn(2, 3, 4, 8, 8), torch.tensor([3, 1])
    off.eval()
    out = off.step({"video": video, "rate": labels}, "val")
    expected = F.cross_entropy(off.head(off.backbone(video)), labels)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out.logs) == {"rate_acc"}


def test_reconstruction_loss_by_hand():
    torch.manual_seed(0)
    task = PlaybackRate(reconstruction=True, **TINY).eval()
    video, between = torch.randn(2, 3, 4, 16, 16), torch.randn(2, 3, 4, 16, 16)
    labels, interpolate = torch.tensor([0, 2]), torch.tensor([1, 0])
    batch = {"video": video, "between": between, "rate": labels, "interpolate": interpolate}
    out = task.step(batch, "val")
    # the target: input frames at even positions, in-between frames (sample 0: means) at odd
    target = task.reconstruction_target(batch)
    mean, std = task.augment.mean, task.augment.std
    assert target.shape == (2, 3, 8, 16, 16)
    torch.testing.assert_close(target[:, :, 0::2], video * std + mean)
    torch.testing.assert_close(target[1, :, 1::2], between[1] * std + mean)
    # sample 0 (odd step): the mean of input frame k and the sampler's next frame
    torch.testing.assert_close(target[0, :, 1::2], (video[0] + between[0]) / 2 * std + mean)
    fmap = task.backbone.forward_features(video)
    logits = task.head(fmap.mean(dim=(2, 3, 4)))
    decoded = task.decoder(fmap)
    weights = motion_attention(target[:, :, 0::2])
    rec = (weights * (decoded - target) ** 2).mean()
    ce = F.cross_entropy(logits, labels)
    assert out.loss.item() == pytest.approx((0.1 * ce + 1.0 * rec).item(), rel=1e-5)
    assert out.logs["reconstruction_loss"].item() == pytest.approx(rec.item(), rel=1e-5)
    torch.testing.assert_close(out.features, task.backbone(video))


def test_cli_training_step_with_reconstruction(tmp_path, run_cli):
    root = ramp_videos(tmp_path / "ramps", slope=(4, 5), frames=36, train_videos=8)
    cfg = tiny_config(
        root,
        tmp_path / "cache",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    cfg["model"] = {
        "class_path": "vssl.tasks.PlaybackRate",
        "init_args": {
            "backbone": "tiny3d",
            "backbone_kwargs": {"width": 4},
            "reconstruction": True,
        },
    }
    cfg["checkpoint"] = {"monitor": None}
    cfg["data"]["init_args"].update(clip_len=4, stride=1, batch_size=4)
    rows = cli_fit_rows(cfg, tmp_path, run_cli, validate=True)
    rec = column(rows, "train/reconstruction_loss_step")
    assert len(rec) == 2 and all(math.isfinite(v) and v > 0 for v in rec), rows
    assert any(r.get("val/reconstruction_loss") for r in rows)
    ckpt = sorted((tmp_path / "runs").rglob("*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("decoder.up.") for k in state)
