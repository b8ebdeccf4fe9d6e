"""Precomputed optical flow through the data pipeline: flow image folders (two-stream and
per-video layouts) and flow files reach ``sample["flow"]`` aligned with the clip's frames,
resized with their values scaled, and videos without usable flow are left out at setup."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import code_frame, read_frame_index

from vssl.data.datamodule import VideoDataModule
from vssl.data.encode import write_video
from vssl.data.flow import (
    FLOW_SUFFIX,
    FlowFile,
    FlowFolders,
    encode_flow,
    flow_fields,
    resize_flow,
    write_flow_file,
)
from vssl.data.reader import VideoDecodeError
from vssl.data.sampling import RandomClip, WithFlow

FRAMES, H, W = 12, 32, 48


def coded_flow(frames: int, video: int, h: int = H, w: int = W) -> np.ndarray:
    """Flow whose field ``k`` has u = k - 8 and v = video - 4 everywhere (exact in 8-bit
    steps of 40/255 px after rounding), so a sample's fields name their frames and video."""
    flow = np.empty((frames - 1, 2, h, w), dtype=np.float32)
    flow[:, 0] = (np.arange(frames - 1) - 8)[:, None, None]
    flow[:, 1] = video - 4
    return flow


def make_videos(root: Path, count: int = 2, frames: int = FRAMES) -> list[Path]:
    """``count`` MJPEG clips in class folders ``root/c<i>/v<i>.avi`` whose frame ``k`` shows
    ``k`` (`read_frame_index`)."""
    paths = []
    for i in range(count):
        clip = np.stack([code_frame(k, H, W) for k in range(frames)])
        paths.append(
            write_video(root / f"c{i}" / f"v{i}.avi", clip, codec="mjpeg", pix_fmt="yuvj420p")
        )
    return paths


def write_images(u_dir: Path, v_dir: Path, flow: np.ndarray) -> None:
    """Flow as PNG images over +-20 px, one per field and channel, as TV-L1 tools write them."""
    images = encode_flow(flow)
    for folder, channel in ((u_dir, 0), (v_dir, 1)):
        folder.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(images[:, channel]):
            cv2.imwrite(str(folder / f"frame{k + 1:06d}.png"), image)


def datamodule(root: Path, tmp_path: Path, **kwargs) -> VideoDataModule:
    kwargs = {
        "layout": "folder",
        "decode_size": None,
        "val_split": None,
        "num_workers": 0,
        **kwargs,
    }
    return VideoDataModule(str(root), cache_dir=str(tmp_path / "cache"), **kwargs)


def flow_dataset(dm: VideoDataModule, clip_len: int = 4, stride: int = 1):
    sampler = WithFlow(RandomClip(clip_len, stride, extra_frames=1))
    return dm.build_dataset("train", sampler=sampler, transform=lambda sample: sample)


def check_aligned(sample: dict, video: int) -> None:
    """Field t of the sample's flow is the stored field of its frame t (u = frame - 8)."""
    frames = [read_frame_index(f) for f in sample["video"]]
    assert frames == list(range(frames[0], frames[0] + len(frames)))
    flow = sample["flow"].numpy()
    assert flow.shape == (len(frames) - 1, 2, *sample["video"].shape[-2:])
    assert flow.dtype == np.float32
    np.testing.assert_allclose(flow[:, 0].mean(axis=(1, 2)), np.array(frames[:-1]) - 8, atol=0.1)
    np.testing.assert_allclose(flow[:, 1], video - 4, atol=0.1)


@pytest.mark.parametrize("layout", ["two-stream", "per-video", "two-stream by stem"])
def test_flow_folders_reach_the_sample_aligned_with_its_frames(tmp_path: Path, layout: str):
    data = tmp_path / "data"
    make_videos(data / "videos")  # data/videos/c<i>/v<i>.avi: found by class folder and stem
    flow_root = tmp_path / "tvl1_flow"
    for i in range(2):
        key = f"c{i}/v{i}" if layout != "two-stream by stem" else f"v{i}"
        if layout == "per-video":
            u, v = flow_root / key / "u", flow_root / key / "v"
        else:
            u, v = flow_root / "u" / key, flow_root / "v" / key
        write_images(u, v, coded_flow(FRAMES, i))
    ds = flow_dataset(datamodule(data, tmp_path, layout="unlabeled", flow=str(flow_root)))
    assert isinstance(ds.flow, FlowFolders) and ds.flow.two_stream == (layout != "per-video")
    for n in range(6):
        sample = ds[n % 2]
        check_aligned(sample, video=int(sample["index"]))
    expected = {
        "two-stream": flow_root / "u" / "c1" / "v1",
        "per-video": flow_root / "c1" / "v1" / "u",
        "two-stream by stem": flow_root / "u" / "v1",
    }
    assert ds.flow.folders(ds.path(1))[0] == expected[layout]


def test_flow_files_reach_the_sample_aligned_with_its_frames(tmp_path: Path):
    data = tmp_path / "data"
    for i, path in enumerate(make_videos(data)):
        write_flow_file(str(path) + FLOW_SUFFIX, coded_flow(FRAMES, i), bound=20, codec="png")
    ds = flow_dataset(datamodule(data, tmp_path, flow="prepared"), clip_len=6)
    for n in range(6):
        sample = ds[n % 2]
        check_aligned(sample, video=int(sample["index"]))


def test_stored_flow_of_another_size_is_resized_and_scaled(tmp_path: Path):
    data = tmp_path / "data"
    (path,) = make_videos(data, count=1)
    flow = coded_flow(FRAMES, 0)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    write_flow_file(str(path) + FLOW_SUFFIX, flow, bound=20, codec="png")
    ds = flow_dataset(datamodule(data, tmp_path, flow="prepared", decode_size=(64, 144)))
    sample = ds[0]
    assert tuple(sample["video"].shape[-2:]) == (64, 144)
    got = sample["flow"].numpy()
    assert got.shape == (4, 2, 64, 144)
    # u scaled by the width ratio 3, v by the height ratio 2 (quantisation: 0.08 px stored)
    np.testing.assert_allclose(got[:, 0], 6.0, atol=0.25)
    np.testing.assert_allclose(got[:, 1], -2.0, atol=0.2)


def test_resize_flow_scales_each_component_by_its_own_ratio():
    flow = np.zeros((1, 2, 4, 6), dtype=np.float32)
    flow[0, 0], flow[0, 1] = 1.5, -0.5
    out = resize_flow(flow, 8, 3)  # twice the height, half the width
    assert out.shape == (1, 2, 8, 3)
    np.testing.assert_allclose(out[0, 0], 0.75)
    np.testing.assert_allclose(out[0, 1], -1.0)
    assert resize_flow(flow, 4, 6) is flow


def test_videos_without_usable_flow_are_named_and_left_out(tmp_path: Path, caplog):
    data = tmp_path / "data"
    paths = make_videos(data, count=3)
    flow_root = tmp_path / "flow"
    write_images(flow_root / "u" / "c0/v0", flow_root / "v" / "c0/v0", coded_flow(FRAMES, 0))
    short = coded_flow(FRAMES - 1, 1)  # one field too few
    write_images(flow_root / "u" / "c1/v1", flow_root / "v" / "c1/v1", short)
    dm = datamodule(data, tmp_path, flow=str(flow_root))
    with caplog.at_level(logging.WARNING, logger="vssl"):
        ds = flow_dataset(dm)
    assert ds.table.paths() == [str(paths[0])]
    (message,) = [r.getMessage() for r in caplog.records if "precomputed flow" in r.getMessage()]
    assert message.startswith("2 of 3 videos have no usable precomputed flow")
    assert f"{paths[1]}: 10 flow fields in FlowFolders" in message
    assert "expected 11 (its frames - 1)" in message
    assert f"{paths[2]}: no flow folder (looked for {flow_root / 'u' / 'c2/v2'}" in message
    check_aligned(ds[0], video=0)

    for path in paths[:2]:
        (flow_root / "u" / f"c{paths.index(path)}").rename(tmp_path / f"gone{paths.index(path)}")
    with pytest.raises(ValueError, match=r"none of the 3 videos has usable precomputed flow"):
        flow_dataset(datamodule(data, tmp_path, flow=str(flow_root)))


def test_flow_settings_that_cannot_work_are_refused_at_setup(tmp_path: Path):
    data = tmp_path / "data"
    make_videos(data, count=1)
    with pytest.raises(FileNotFoundError, match="nowhere: flow folder not found"):
        flow_dataset(datamodule(data, tmp_path, flow=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="clips are sampled at stride 2; set stride: 1"):
        flow_dataset(datamodule(data, tmp_path, flow="prepared"), stride=2)
    with pytest.raises(ValueError, match=r"v0.avi.flow: no flow file \(run 'vssl prepare --flow'"):
        flow_dataset(datamodule(data, tmp_path, flow="prepared"))


def test_without_precomputed_flow_the_request_is_dropped(tmp_path: Path):
    data = tmp_path / "data"
    make_videos(data, count=1)
    sample = flow_dataset(datamodule(data, tmp_path))[0]
    assert "flow" not in sample and sample["video"].shape[0] == 5


def test_a_clip_that_wraps_around_gets_zero_flow_across_the_jump(tmp_path: Path):
    data = tmp_path / "data"
    (path,) = make_videos(data, count=1, frames=4)
    write_flow_file(str(path) + FLOW_SUFFIX, coded_flow(4, 0) + 20, bound=40, codec="png")
    sample = flow_dataset(datamodule(data, tmp_path, flow="prepared"), clip_len=5)[0]
    frames = [read_frame_index(f) for f in sample["video"]]
    assert frames == [0, 1, 2, 3, 0, 1]
    means = sample["flow"][:, 0].mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(means, [12, 13, 14, 0, 12], atol=0.2)
    np.testing.assert_array_equal(flow_fields(np.array([0, 1, 1, 2, 0])), [0, -1, 1, -1])
    with pytest.raises(ValueError, match="goes from frame 0 to 2; sample clips at stride 1"):
        flow_fields(np.array([0, 2, 4]))


def test_a_damaged_flow_file_replaces_the_sample_not_the_run(tmp_path: Path):
    data = tmp_path / "data"
    paths = make_videos(data)
    for i, path in enumerate(paths):
        write_flow_file(str(path) + FLOW_SUFFIX, coded_flow(FRAMES, i))
    ds = flow_dataset(datamodule(data, tmp_path, flow="prepared"))
    flow_file = Path(str(paths[0]) + FLOW_SUFFIX)
    flow_file.write_bytes(flow_file.read_bytes()[:-10])  # cut short after setup
    with pytest.raises(VideoDecodeError, match="precomputed flow: .*v0.avi.flow: damaged or cut"):
        ds.load(0, np.random.default_rng(0))
    torch.manual_seed(0)
    sample = ds[0]
    assert int(sample["index"]) == 1 and int(sample["skipped"]) >= 1
    check_aligned(sample, video=1)


def test_flow_file_round_trip_and_bad_files(tmp_path: Path):
    rng = np.random.default_rng(0)
    flow = cv2.GaussianBlur(rng.uniform(-6, 6, (5 * 2 * 13, 20)).astype(np.float32), (0, 0), 2)
    flow = flow.reshape(5, 2, 13, 20)  # 13 rows: the planes are padded to 16 in the file
    path = tmp_path / "x.flow"
    size = write_flow_file(path, flow, bound=10, quality=95)
    assert size == path.stat().st_size
    file = FlowFile(path)
    assert (file.fields, file.height, file.width, file.bound) == (5, 13, 20, 10.0)
    back = file.read([4, 0, 4])
    assert back.shape == (3, 2, 13, 20)
    assert np.abs(back - flow[[4, 0, 4]]).max() < 0.3  # 0.08 px steps plus JPEG loss
    png = tmp_path / "p.flow"
    write_flow_file(png, flow, bound=10, codec="png")
    quantised = (np.rint((flow + 10) * 255 / 20) * 20 / 255 - 10).astype(np.float32)
    np.testing.assert_allclose(FlowFile(png).read(range(5)), quantised, atol=1e-5)
    with pytest.raises(IndexError, match=r"x.flow: flow fields \[5\] out of range for 5"):
        file.read([0, 5])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="x.flow: damaged or cut short"):
        FlowFile(path)
    path.write_bytes(b"not a flow file at all, not at all, really not")
    with pytest.raises(ValueError, match="x.flow: not a vssl flow file"):
        FlowFile(path)
    with pytest.raises(ValueError, match=r"shape \(T, 2, H, W\)"):
        write_flow_file(path, flow[:, 0])


def test_the_statistics_task_trains_on_the_stored_flow(tmp_path: Path):
    """The task asks for flow: with ``flow="prepared"`` its samples carry the stored fields,
    cropped and flipped with the frames (u negated), not DIS flow of the frames."""
    from vssl.data.sampling import ClipSpec
    from vssl.tasks.statistics import SpatioTemporalStatistics

    data = tmp_path / "data"
    for i, path in enumerate(make_videos(data)):
        write_flow_file(str(path) + FLOW_SUFFIX, coded_flow(FRAMES, i), bound=20, codec="png")
    task = SpatioTemporalStatistics(
        backbone="tiny3d", clip_len=4, online_probe=False, labels="device"
    )
    spec = ClipSpec(clip_len=4, crop_size=16, flip=True)
    sampler = task.clip_sampler("train", spec)
    assert sampler.needs_flow
    dm = datamodule(data, tmp_path, flow="prepared")
    transform = task.clip_transform("train", spec)
    transform.flip_p = 1.0
    ds = dm.build_dataset("train", sampler=sampler, transform=transform)
    sample = ds[1]
    flow = sample["flow"].numpy()
    assert flow.shape == (4, 2, 16, 16) and sample["video"].shape == (4, 3, 16, 16)
    u = flow[:, 0].mean(axis=(1, 2))
    assert np.all(np.abs(np.diff(u) + 1) < 0.1)  # field k's u = k - 8, negated by the flip
    np.testing.assert_allclose(flow[:, 1], int(sample["index"]) - 4, atol=0.1)


@pytest.mark.parametrize("flow", ["prepared", "nowhere"])
def test_fit_without_the_flow_it_asks_for_is_one_clear_line(
    tmp_path: Path, capsys, monkeypatch, flow
):
    """`vssl fit` of the statistics task with flow that is not there: exit 2, the folder or
    the first videos named, no traceback (the check runs when the datamodule sets up)."""
    from vssl.cli import main
    from vssl.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "data", classes=2, videos_per_class=2, frames=10, size=32)
    args = [
        "fit",
        "--config",
        str(Path(__file__).parents[2] / "configs/statistics/synthetic_tiny.yaml"),
    ]
    args += ["--data.init_args.root", str(root), "--data.init_args.synthetic", "null"]
    args += ["--data.init_args.flow", flow if flow == "prepared" else str(tmp_path / flow)]
    args += ["--data.init_args.num_workers", "0", "--data.init_args.clip_len", "4"]
    args += ["--model.init_args.clip_len", "4", "--data.init_args.crop_size", "24"]
    args += ["--data.init_args.decode_size", "32", "--trainer.max_epochs", "1"]
    args += ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "runs")]
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("vssl fit: error: ")
    if flow == "prepared":
        assert re.search(r"error: none of the \d+ videos has usable precomputed flow", err)
        assert ".mp4.flow: no flow file (run 'vssl prepare --flow' over the dataset)" in err
    else:
        assert f"{tmp_path / flow}: flow folder not found" in err
