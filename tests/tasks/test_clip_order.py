"""ClipOrder (VCOP): the label set, tuple sampling, decoded clips in the order the label says, one
augmentation draw per tuple, the head and loss by hand, and training through the CLI."""

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
from vssl.tasks import ClipOrder
from vssl.tasks.clip_order import ClipTupleSampler, TupleTransform, VCOPHead, clip_orders

TINY = {"backbone": "tiny3d", "backbone_kwargs": {"width": 4}, "hidden_dim": 8}


def test_labels_index_itertools_permutations():
    assert clip_orders(3) == [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    assert len(clip_orders(4)) == 24 and clip_orders(4)[23] == (3, 2, 1, 0)
    assert ClipOrder(tuple_len=4, **TINY).head.classifier.out_features == 24


def test_sampler_shuffles_the_tuple_as_the_label_says():
    sampler = ClipTupleSampler(clip_len=3, stride=2, interval=4, tuple_len=3)
    assert sampler.step == 9 and sampler.span == 23  # clip span 5, + interval 4; 2 * 9 + 5
    views = sampler.views(start=10, label=3, num_frames=100)  # order (1, 2, 0)
    assert views["video"].tolist() == [[19, 21, 23], [28, 30, 32], [10, 12, 14]]
    assert views["order"].ndim == 0 and int(views["order"]) == 3
    # the paper's geometry: 16-frame clips, 8 frames between them, 64 frames per tuple
    assert ClipTupleSampler(clip_len=16, interval=8).span == 64
    # a video shorter than the tuple starts at 0 and wraps around
    short = ClipTupleSampler(clip_len=2, stride=1, interval=1, tuple_len=3)
    assert short.draw(6, np.random.default_rng(0))[0] == 0
    assert short.views(0, 0, 6)["video"].tolist() == [[0, 1], [3, 4], [0, 1]]


def test_starts_and_orders_are_uniform():
    sampler = ClipTupleSampler(clip_len=2, stride=1, interval=1, tuple_len=3)  # span 8
    rng = np.random.default_rng(0)
    draws = np.array([sampler.draw(20, rng) for _ in range(6000)])
    assert draws[:, 0].min() == 0 and draws[:, 0].max() == 12
    counts = np.bincount(draws[:, 1], minlength=6)
    assert counts.sum() == 6000 and np.all(np.abs(counts - 1000) < 4 * math.sqrt(1000 * 5 / 6))


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="tuple_len must be at least 2"):
        ClipOrder(tuple_len=1, **TINY)
    with pytest.raises(ValueError, match="interval must be >= 0"):
        ClipTupleSampler(interval=-1)


def test_decoded_clips_come_in_the_order_the_label_says(video_factory, frame_index, tmp_path):
    path = video_factory("v.mp4", num_frames=40)
    info = VideoIndex.build([path], cache_dir=tmp_path / "cache", workers=1, progress=False)[path]
    task = ClipOrder(interval=3, **TINY)
    spec = ClipSpec(clip_len=4, stride=2, crop_size=32)  # clip span 7, tuple span 27
    sampler = task.clip_sampler("train", spec)
    dataset = VideoDataset([VideoItem(path, 0)], [info], sampler, task.clip_transform("val", spec))
    labels = set()
    for seed in range(8):
        sample = dataset.load(0, np.random.default_rng(seed))
        label = int(sample["order"])
        labels.add(label)
        assert sample["video"].shape == (3, 4, 3, 32, 32)
        frames = [[frame_index(f) for f in clip] for clip in sample["video"]]
        start = min(clip[0] for clip in frames)
        for position, clip in enumerate(frames):
            first = start + clip_orders(3)[label][position] * 10  # clip span 7 + interval 3
            assert clip == [first, first + 2, first + 4, first + 6]
        assert sample["order"].dtype == torch.int64 and sample["order"].ndim == 0
    assert len(labels) >= 4
    # under the dataset's seed an item is the same tuple in the same order every time
    seeded = VideoDataset(
        [VideoItem(path, 0)], [info], sampler, task.clip_transform("val", spec), seed=3
    )
    a, b = seeded[(0, 0)], seeded[(0, 0)]
    assert int(a["order"]) == int(b["order"]) and torch.equal(a["video"], b["video"])


def test_clips_of_a_tuple_share_their_crop_and_colour_draw():
    torch.manual_seed(0)
    task = ClipOrder(augment={"brightness": 0.8, "hue": 0.3, "jitter_p": 1.0}, **TINY)
    spec = ClipSpec(clip_len=2, crop_size=16, scale=(0.1, 0.3))
    transform = task.clip_transform("train", spec)
    assert isinstance(transform, TupleTransform)
    clip = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    tuples = [
        transform({"video": clip.expand(3, -1, -1, -1, -1).clone()})["video"] for _ in range(2)
    ]
    for t in tuples:
        assert t.shape == (3, 2, 3, 16, 16)
        assert torch.equal(t[0], t[1]) and torch.equal(t[0], t[2])
    assert not torch.equal(tuples[0][0], tuples[1][0])  # a fresh draw per tuple
    batch = task.augment_batch({"video": torch.stack(tuples)})
    video = batch["video"]
    assert video.shape == (2, 3, 3, 2, 16, 16) and video.dtype == torch.float32
    assert torch.equal(video[0, 0], video[0, 1]) and torch.equal(video[0, 0], video[0, 2])
    plain = task._normalise(torch.stack(tuples)[:, 0])
    assert not torch.allclose(video[0, 0], plain[0])  # the colour jitter was applied


def _window_of(frames: torch.Tensor, crop: torch.Tensor) -> tuple[int, int] | None:
    """Where ``crop`` ``(T, C, s, s)`` lies in ``frames`` ``(T, C, H, W)`` unscaled, or None."""
    s = crop.shape[-1]
    for i in range(frames.shape[-2] - s + 1):
        for j in range(frames.shape[-1] - s + 1):
            if torch.equal(frames[..., i : i + s, j : j + s], crop):
                return i, j
    return None


def test_official_crops_one_fixed_window_per_clip_without_flip():
    torch.manual_seed(0)
    task = ClipOrder(shared_crop=False, crop="fixed", **TINY)
    assert task.hparams.shared_crop is False and task.hparams.crop == "fixed"
    spec = ClipSpec(clip_len=2, crop_size=12, flip=False)
    transform = task.clip_transform("train", spec)
    frames = torch.randint(0, 256, (2, 3, 20, 24), dtype=torch.uint8)
    windows = set()
    for _ in range(4):
        out = transform({"video": frames.expand(3, -1, -1, -1, -1).clone()})["video"]
        assert out.shape == (3, 2, 3, 12, 12)
        for clip in out:  # an unscaled, unflipped window of the frames, the same in every frame
            window = _window_of(frames, clip)
            assert window is not None
            windows.add(window)
    assert len(windows) > 4  # each clip of a tuple has its own position
    # the default: one random resized crop shared by the tuple's clips
    shared = ClipOrder(**TINY).clip_transform("train", ClipSpec(clip_len=2, crop_size=12))
    out = shared({"video": frames.expand(3, -1, -1, -1, -1).clone()})["video"]
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_per_clip_resized_crops_differ_within_a_tuple():
    torch.manual_seed(0)
    task = ClipOrder(shared_crop=False, **TINY)
    spec = ClipSpec(clip_len=2, crop_size=8, scale=(0.1, 0.5))
    frames = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = task.clip_transform("train", spec)({"video": frames.expand(3, -1, -1, -1, -1).clone()})
    video = out["video"]
    assert video.shape == (3, 2, 3, 8, 8)
    assert not torch.equal(video[0], video[1]) or not torch.equal(video[0], video[2])


def test_bad_crop_name_is_refused():
    with pytest.raises(ValueError, match="crop must be one of"):
        ClipOrder(crop="centre", **TINY)


def test_head_and_loss_by_hand():
    torch.manual_seed(0)
    head = VCOPHead(in_dim=2, tuple_len=3, hidden_dim=4).eval()
    f = torch.randn(5, 3, 2)
    relu = torch.relu
    pairs = [relu(head.pair(torch.cat([f[:, i], f[:, j]], 1))) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert torch.allclose(head(f), head.classifier(torch.cat(pairs, 1)))
    task = ClipOrder(**TINY).eval()
    video = torch.randn(2, 3, 3, 4, 16, 16)
    labels = torch.tensor([5, 1])
    out = task.step({"video": video, "order": labels}, "val")
    features = torch.stack([task.backbone(video[:, i]) for i in range(3)], 1)
    logits = task.head(features)
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert out.logs["order_acc"].item() == (logits.argmax(1) == labels).float().mean().item()
    assert torch.allclose(out.features, features.mean(1), atol=1e-6)


def test_cli_training_lowers_the_order_loss(tmp_path, run_cli):
    # order is readable from brightness (the synthetic motion classes give no clue to it)
    root = ramp_videos(tmp_path / "ramps")
    cfg = tiny_config(root, tmp_path / "cache", max_epochs=30)
    cfg["model"] = {
        "class_path": "vssl.tasks.ClipOrder",
        "init_args": {
            **TINY,
            "hidden_dim": 32,
            "dropout": 0.0,
            "interval": 1,
            "optimizer": "adamw",
            "lr": 0.01,
            "lr_schedule": "constant",
        },
    }
    cfg["data"]["init_args"].update(clip_len=2, stride=2, batch_size=4, crop_scale=[1.0, 1.0])
    rows = cli_fit_rows(cfg, tmp_path, run_cli, validate=False)
    losses, acc = column(rows, "train/loss_epoch"), column(rows, "train/order_acc_epoch")
    assert len(losses) == len(acc) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
    assert np.mean(acc[-5:]) > 0.6, acc
