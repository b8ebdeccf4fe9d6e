"""PlaybackRate: the sampled stride is exactly the labelled rate (in decoded frames), starts and
rates are uniform, short videos wrap, bad rate sets are refused, the loss by hand, and training
through the CLI."""

import csv

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import ramp_videos, run_vssl, tiny_config
from torch.nn import functional as F

from vssl.data.dataset import VideoDataset
from vssl.data.index import VideoIndex
from vssl.data.layouts import VideoItem
from vssl.data.sampling import ClipSpec
from vssl.tasks import PlaybackRate
from vssl.tasks.playback_rate import PlaybackRateSampler

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


def test_cli_training_learns_the_playback_rate(tmp_path):
    # The stride between frames is readable from how much brighter each frame is than the one
    # before (4-5 grey levels a frame); in the synthetic motion data speed classes and rates
    # are confounded.
    root = ramp_videos(tmp_path / "ramps", slope=(4, 5), frames=36, train_videos=48)
    cfg = tiny_config(
        root,
        tmp_path / "cache",
        max_epochs=15,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger={
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "runs", "name": "rate"},
        },
    )
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
    cfg["checkpoint"] = {"monitor": None}
    # 4 frames at a stride of up to 8 span 25 of the 36 frames: no clip wraps around
    cfg["data"]["init_args"].update(clip_len=4, stride=1, batch_size=8, crop_scale=[1.0, 1.0])
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_vssl(["fit", "--config", "run.yaml"], tmp_path)
    rows = list(csv.DictReader((tmp_path / "runs" / "rate" / "version_0" / "metrics.csv").open()))
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    acc = [float(r["train/rate_acc_epoch"]) for r in rows if r.get("train/rate_acc_epoch")]
    assert len(losses) == len(acc) == 15
    # chance: loss ln 4 = 1.39, accuracy 1/4 (sd 0.03 over the last 5 epochs' 240 clips);
    # measured 0.75 and 0.71
    assert np.mean(losses[-5:]) < 0.95, losses
    assert np.mean(acc[-5:]) > 0.5, acc
