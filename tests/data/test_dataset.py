import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vssl.data import (
    ClipSampler,
    RandomClip,
    TooManyDecodeFailures,
    VideoDataModule,
    VideoDataset,
    VideoIndex,
    VideoItem,
)


class FixedViews(ClipSampler):
    def __call__(self, num_frames, rng):
        return {"a": np.array([0, 1, 2]), "b": np.array([[5, 6], [7, 5]])}


def _dataset(paths, sampler, **kwargs):
    index = VideoIndex.build(paths, progress=False, cache_dir=Path(paths[0]).parent / "cache")
    items = [VideoItem(Path(p), i) for i, p in enumerate(paths)]
    return VideoDataset(items, [index[p] for p in paths], sampler, **kwargs)


def test_views_hold_the_sampled_frames(video_factory, frame_index):
    path = video_factory("a.mp4", num_frames=12, gop=4)
    ds = _dataset([path], FixedViews())
    sample = ds[0]
    assert sample["a"].shape == (3, 3, 32, 32) and sample["a"].dtype == torch.uint8
    assert sample["b"].shape == (2, 2, 3, 32, 32)
    assert [frame_index(f) for f in sample["a"]] == [0, 1, 2]
    assert [[frame_index(f) for f in clip] for clip in sample["b"]] == [[5, 6], [7, 5]]
    assert (
        sample["label"].item() == 0
        and sample["index"].item() == 0
        and sample["skipped"].item() == 0
    )


class OneView(ClipSampler):
    def __init__(self, frames):
        self.frames = np.array(frames)

    def __call__(self, num_frames, rng):
        return {"video": self.frames}


@pytest.mark.parametrize("frames", [[1, 4, 9], [9, 4, 4, 1], [10, 11, 0, 1]])
def test_one_view_holds_its_frames_in_order_and_the_scalars_are_int64(
    video_factory, frame_index, frames
):
    """Increasing indices take the decoded frames as they are; repeated, decreasing or wrapped
    ones are put in the sampler's order."""
    path = video_factory("a.mp4", num_frames=12, gop=4)
    ds = _dataset([path, path], OneView(frames))
    sample = ds[1]
    assert [frame_index(f) for f in sample["video"]] == frames
    for key, value in (("label", 1), ("index", 1), ("skipped", 0)):
        assert sample[key].shape == () and sample[key].dtype == torch.int64
        assert sample[key].item() == value


class ViewsAndTarget(ClipSampler):
    def __call__(self, num_frames, rng):
        rate = int(rng.choice([1, 2, 3]))
        return {"video": np.arange(3) * rate, "rate": np.int64(rate)}


def test_sampler_targets_reach_the_sample_undecoded(video_factory, frame_index):
    path = video_factory("a.mp4", num_frames=12, gop=4)
    ds = _dataset([path], ViewsAndTarget(), seed=0)
    for i in range(4):
        sample = ds[(0, i)]
        rate = sample["rate"]
        assert rate.shape == () and rate.dtype == torch.int64
        assert [frame_index(f) for f in sample["video"]] == [0, int(rate), 2 * int(rate)]


def test_random_clip_frames_are_consecutive_at_stride(video_factory, frame_index):
    path = video_factory("a.mp4", num_frames=20, gop=5)
    ds = _dataset([path], RandomClip(clip_len=4, stride=3), decode_size=(16, 16))
    torch.manual_seed(0)
    for _ in range(5):
        video = ds[0]["video"]
        assert video.shape == (4, 3, 16, 16)
        idx = [frame_index(f) for f in video]
        assert np.all(np.diff(idx) == 3) and 0 <= idx[0] <= 20 - 10


def test_decode_failure_is_skipped_counted_and_logged(video_factory, caplog):
    good = video_factory("good.mp4", num_frames=12)
    bad = video_factory("bad.mp4", num_frames=12)
    ds = _dataset([good, bad], RandomClip(4, 1))
    Path(bad).write_bytes(b"not a video any more")  # broken after the index was built
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="vssl"):
        sample = ds[1]
    assert sample["index"].item() == 0 and sample["label"].item() == 0
    assert sample["skipped"].item() >= 1
    assert "bad.mp4" in caplog.text and "skipping a video" in caplog.text


def test_too_many_failures_stop_with_a_clear_message(video_factory):
    paths = [video_factory(f"v{i}.mp4", num_frames=8) for i in range(2)]
    ds = _dataset(paths, RandomClip(4, 1), min_failures=3, max_failure_fraction=0.5)
    for p in paths:
        Path(p).write_bytes(b"")
    with pytest.raises(TooManyDecodeFailures, match=r"(?s)3 of 3 video reads failed.*v[01]\.mp4"):
        ds[0]


def test_datamodule_batches_and_labels(tiny_synthetic):
    dm = VideoDataModule(
        root=str(tiny_synthetic),
        clip_len=4,
        stride=2,
        crop_size=24,
        decode_size=32,
        batch_size=4,
        num_workers=0,
        cache_dir=str(tiny_synthetic.parent / "cache"),
    )
    assert dm.num_classes == 4
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) == 12 and len(val) == 4
    for ds in (train, val):
        assert all(dm.classes[it.label] == it.path.parent.name for it in ds.items)
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 4, 3, 24, 24) and batch["video"].dtype == torch.uint8
    assert batch["label"].shape == (4,)
    val_batch = next(iter(dm.val_dataloader()))
    again = next(iter(dm.val_dataloader()))
    assert torch.equal(
        val_batch["video"], again["video"]
    )  # centre clip, centre crop: deterministic


def test_datamodule_leaves_out_bad_files_and_names_them(tiny_synthetic, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    (root / "train" / "down" / "empty.mp4").write_bytes(b"")
    (root / "train" / "down" / "text.mp4").write_text("hello")
    dm = VideoDataModule(
        root=str(root), clip_len=4, crop_size=24, num_workers=0, cache_dir=str(tmp_path / "cache")
    )
    with caplog.at_level(logging.WARNING, logger="vssl"):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 12
    assert "empty.mp4" in caplog.text and "text.mp4" in caplog.text


def test_datamodule_with_nothing_usable_says_so(tmp_path):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "train" / "a" / "x.mp4").write_bytes(b"")
    dm = VideoDataModule(
        root=str(tmp_path / "data"),
        val_split=None,
        num_workers=0,
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ValueError, match=r"(?s)none of the 1 videos can be decoded.*x\.mp4"):
        dm.setup("fit")


def test_synthetic_num_classes_before_it_is_written(tmp_path):
    dm = VideoDataModule(root=str(tmp_path / "absent"), synthetic={"classes": 6})
    assert dm.num_classes == 6
    assert not (tmp_path / "absent").exists()


def test_default_workers_share_the_cpus_among_the_node_processes(monkeypatch):
    from types import SimpleNamespace

    from vssl.data.datamodule import default_num_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert default_num_workers() == 8  # capped
    assert default_num_workers(4) == 4 and default_num_workers(32) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert default_num_workers() == 2
    dm = VideoDataModule()
    assert dm.num_workers == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    dm.trainer = SimpleNamespace(num_devices=2)  # two training processes on this node
    assert dm.num_workers == 8 and VideoDataModule(num_workers=3).num_workers == 3
    dm.trainer = SimpleNamespace(num_devices=4)
    assert dm.num_workers == 4
