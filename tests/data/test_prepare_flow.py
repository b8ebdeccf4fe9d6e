"""``vssl prepare --flow``: each prepared video gets a verified flow file of the frames the
pipeline decodes; reruns skip finished flow, finish interrupted flow, and never replace a flow
file they did not write without ``overwrite``."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from vssl.data.datamodule import VideoDataModule
from vssl.data.encode import write_video
from vssl.data.flow import FLOW_SUFFIX, FlowFile, compute_flow, write_flow_file
from vssl.data.prepare import REPORT_NAME, TMP_SUFFIX, PrepareError, main, prepare
from vssl.data.reader import open_reader
from vssl.data.sampling import RandomClip, WithFlow

SPEEDS = (1, 3, 0, 2)  # pixels to the right between frames t and t + 1, cycling


def moving_clip(path: Path, frames: int = 13, size: tuple[int, int] = (48, 64)) -> Path:
    """A smooth texture moving right by ``SPEEDS[t % 4]`` pixels from frame t to t + 1."""
    rng = np.random.default_rng(0)
    h, w = size
    noise = rng.uniform(0, 255, (h, 3 * w)).astype(np.float32)
    texture = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2.5), None, 0, 255, cv2.NORM_MINMAX)
    shifts = np.cumsum([0] + [SPEEDS[t % 4] for t in range(frames - 1)])
    images = [texture[:, w - s : 2 * w - s] for s in shifts]
    clip = np.repeat(np.stack(images).astype(np.uint8)[..., None], 3, axis=3)
    return write_video(path, clip, codec="mjpeg", pix_fmt="yuvj420p")


def run(src: Path, dst: Path, **kwargs):
    kwargs = {"short_side": 48, "workers": 1, "progress": False, "flow": True, **kwargs}
    return prepare(src, dst, **kwargs)


def decoded_flow(video: Path) -> np.ndarray:
    """DIS flow of the frames of ``video`` as the pipeline decodes them, unquantised."""
    with open_reader(video, "auto") as reader:
        return compute_flow(reader.get_frames(np.arange(reader.num_frames)))


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    moving_clip(src / "a.avi")
    moving_clip(src / "b" / "c.avi", frames=9)
    return src, tmp_path / "dst"


def test_each_video_gets_the_flow_of_its_decoded_frames(tree):
    src, dst = tree
    summary = run(src, dst)
    assert (summary.done, summary.flow_done, summary.flow_skipped) == (2, 2, 0)
    assert summary.failed == []
    assert any(
        line.startswith("flow: 2 done, 0 skipped (already done)") for line in summary.lines()
    )
    for rel, frames in (("a.mp4", 13), ("b/c.mp4", 9)):
        file = FlowFile(str(dst / rel) + FLOW_SUFFIX)
        assert (file.fields, file.height, file.width) == (frames - 1, 48, 64)
        stored, exact = file.read(range(file.fields)), decoded_flow(dst / rel)
        assert np.abs(stored - exact).mean() < 0.1  # quantisation and JPEG only
        inner = stored[:, 0, 8:-8, 8:-8].reshape(file.fields, -1)
        speeds = [SPEEDS[t % 4] for t in range(file.fields)]
        np.testing.assert_allclose(np.median(inner, axis=1), speeds, atol=0.35)
    report = json.loads((dst / REPORT_NAME).read_text())
    assert report["flow"]["done"] == 2 and report["flow"]["fields"] == 12 + 8


def test_prepared_flow_reaches_the_sample_through_the_datamodule(tree, tmp_path):
    src, dst = tree
    run(src, dst)
    dm = VideoDataModule(
        str(dst), layout="unlabeled", val_split=None, flow="prepared", decode_size=None,
        cache_dir=str(tmp_path / "cache"), num_workers=0,
    )  # fmt: skip
    ds = dm.build_dataset("train", WithFlow(RandomClip(6, extra_frames=1)), lambda s: s)
    for index in range(len(ds)):
        sample = ds[index]
        flow = sample["flow"].numpy()
        assert flow.shape == (6, 2, 48, 64)
        assert np.abs(flow - compute_flow(sample["video"])).mean() < 0.1


def test_a_rerun_skips_finished_flow_and_finishes_an_interrupted_one(tree):
    src, dst = tree
    run(src, dst)
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in dst.rglob(f"*{FLOW_SUFFIX}")}
    again = run(src, dst)
    assert (again.done, again.skipped, again.flow_done, again.flow_skipped) == (0, 2, 0, 2)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == files

    flow_a = dst / f"a.mp4{FLOW_SUFFIX}"
    flow_a.unlink()  # killed before the rename: only its temporary file is left
    leftover = dst / f"a.mp4{FLOW_SUFFIX}.123{TMP_SUFFIX}"
    leftover.write_bytes(b"half a flow file")
    third = run(src, dst)
    assert (third.flow_done, third.flow_skipped) == (1, 1)
    assert not leftover.exists()
    assert flow_a.read_bytes() == files[flow_a][1]  # the same flow again


def test_flow_is_added_to_a_tree_prepared_without_it(tree):
    src, dst = tree
    first = run(src, dst, flow=False)
    assert first.done == 2 and not list(dst.rglob(f"*{FLOW_SUFFIX}"))
    assert not any(line.startswith("flow:") for line in first.lines())
    second = run(src, dst)
    assert (second.done, second.skipped, second.flow_done) == (0, 2, 2)
    assert FlowFile(dst / f"a.mp4{FLOW_SUFFIX}").fields == 12


def test_a_flow_file_this_run_did_not_write_is_not_replaced(tree, monkeypatch):
    src, dst = tree
    run(src, dst)
    other = dst / "b" / f"c.mp4{FLOW_SUFFIX}"
    write_flow_file(other, np.zeros((3, 2, 48, 64), np.float32))  # 3 fields, not 8
    before = other.read_bytes()
    summary = run(src, dst)
    assert summary.conflicts == [
        (
            "b/c.mp4.flow",
            "exists and is not a flow file of these settings (3 flow fields, expected 8 "
            "(frames - 1)); pass --overwrite to replace it",
        )
    ]
    assert other.read_bytes() == before
    summary = run(src, dst, overwrite=True)
    assert summary.flow_done == 1 and FlowFile(other).fields == 8

    module = importlib.import_module("vssl.data.prepare")  # vssl.data.prepare is the function
    settings = module.flow_settings()
    monkeypatch.setattr(module, "flow_settings", lambda: {**settings, "preset": "medium"})
    with pytest.raises(PrepareError, match=r"2 existing flow files differ .*made with preset="):
        run(src, dst)
    assert other.read_bytes() != before and FlowFile(other).fields == 8
    report = json.loads((dst / REPORT_NAME).read_text())
    assert sorted(c["path"] for c in report["conflicts"]) == ["a.mp4.flow", "b/c.mp4.flow"]


def test_flow_that_cannot_be_computed_is_reported_and_the_rest_done(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    moving_clip(src / "one_frame.avi", frames=1)
    moving_clip(src / "fine.avi", frames=5)
    summary = run(src, dst)
    assert summary.flow_done == 1
    assert summary.failed == [("one_frame.mp4.flow", "flow: a video of one frame has no flow")]
    assert not (dst / f"one_frame.mp4{FLOW_SUFFIX}").exists()


def test_the_flow_flag_on_the_command_line(tree, capsys):
    src, dst = tree
    code = main([str(src), str(dst), "--short-side", "48", "--workers", "1", "--flow"])
    assert code == 0
    assert "flow: 2 done, 0 skipped (already done)" in capsys.readouterr().out
    assert sorted(p.name for p in dst.rglob(f"*{FLOW_SUFFIX}")) == ["a.mp4.flow", "c.mp4.flow"]
    assert not any(name.endswith(TMP_SUFFIX) for _, _, names in os.walk(dst) for name in names)
