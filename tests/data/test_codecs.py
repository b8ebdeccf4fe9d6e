"""Every backend on every codec and container datasets use: frame counts and exact frames.

Each clip is written here with PyAV (frame ``i`` shows the bits of ``i``, see conftest) and
decoded once front to back as the reference: ``probe_video`` must count exactly its frames, and
``get_frames`` of unsorted, repeated indices (the first and the last frame included) must equal
its frames, converted to RGB the way the PyAV reader converts them.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import Interpolation
from conftest import code_frame, read_frame_index

from vssl.data.index import probe_video
from vssl.data.reader import VideoReader, open_reader

HEIGHT, WIDTH = 48, 64
# name: (file name, encoder, frames, pixel format, encoder options, gop, max B-frames)
CLIPS: dict[str, tuple[str, str, int, str, dict[str, str], int | None, int | None]] = {
    "h264-open-gop-mp4": (
        "h264.mp4",
        "libx264",
        40,
        "yuv420p",
        {
            "preset": "veryfast",
            "x264-params": "open-gop=1:bframes=3:keyint=12:min-keyint=12:scenecut=0:mbtree=0",
        },
        None,
        None,
    ),
    "h264-open-gop-mkv": (
        "h264.mkv",
        "libx264",
        40,
        "yuv420p",
        {
            "preset": "veryfast",
            "x264-params": "open-gop=1:bframes=3:keyint=12:min-keyint=12:scenecut=0:mbtree=0",
        },
        None,
        None,
    ),
    # what `vssl prepare` writes: closed GOPs of 8, no B-frames, tuned for fast decoding
    "h264-prepared-mp4": (
        "prepared.mp4",
        "libx264",
        40,
        "yuv420p",
        {
            "preset": "veryfast",
            "tune": "fastdecode",
            "x264-params": "keyint=8:min-keyint=8:scenecut=0:bframes=0:mbtree=0",
        },
        None,
        0,
    ),
    "hevc-mp4": (
        "hevc.mp4",
        "libx265",
        40,
        "yuv420p",
        {
            "preset": "ultrafast",
            "x265-params": "keyint=12:min-keyint=12:bframes=3:open-gop=1:"
            "log-level=error:pools=1:frame-threads=1",
        },
        None,
        None,
    ),
    "vp9-webm": ("vp9.webm", "libvpx-vp9", 40, "yuv420p", {}, 12, None),
    "mpeg4-avi": ("mpeg4.avi", "mpeg4", 40, "yuv420p", {}, 12, 2),
    "mjpeg-avi": ("mjpeg.avi", "mjpeg", 40, "yuvj420p", {}, None, None),
    # 150 frames: the length at which the MPEG program stream bug was found
    "mpeg2-mpg": ("mpeg2.mpg", "mpeg2video", 150, "yuv420p", {}, 12, 2),
    "mpeg2-ts": ("mpeg2.ts", "mpeg2video", 150, "yuv420p", {}, 12, 2),
    "av1-mkv": ("av1.mkv", "libsvtav1", 40, "yuv420p", {"preset": "12"}, 12, None),
    "av1-webm": ("av1.webm", "libsvtav1", 40, "yuv420p", {"preset": "12"}, 12, None),
    "h264-10bit-mkv": (
        "h264_10.mkv",
        "libx264",
        40,
        "yuv420p10le",
        {"preset": "veryfast", "x264-params": "keyint=12:bframes=2:mbtree=0"},
        None,
        None,
    ),
    "hevc-10bit-mp4": (
        "hevc_10.mp4",
        "libx265",
        40,
        "yuv420p10le",
        {"preset": "ultrafast", "x265-params": "keyint=12:log-level=error:pools=1:frame-threads=1"},
        None,
        None,
    ),
}
BACKENDS = ("pyav", "torchcodec", "decord")
# Largest difference (grey levels) of a backend's RGB from PyAV's, per codec: backends convert
# 10-bit video to 8-bit RGB with a different rounding; 8-bit video converts identically.
TOLERANCE = {"h264-10bit-mkv": 3, "hevc-10bit-mp4": 3}
# What the other backends get wrong, as measured with torchcodec 0.17 and decord 0.6: xfail
# strict, so that a release that fixes one shows up as a failure to remove here.
_TORCHCODEC_OPEN_GOP = (
    "torchcodec cannot decode the last frame of an open-GOP H.264 file after a seek "
    "('no more frames left to decode')"
)
_DECORD_OPEN_GOP = "decord returns the wrong frames after seeks in open-GOP H.264 and HEVC"
KNOWN_WRONG = {
    ("torchcodec", "h264-open-gop-mp4"): _TORCHCODEC_OPEN_GOP,
    ("torchcodec", "h264-open-gop-mkv"): _TORCHCODEC_OPEN_GOP,
    ("torchcodec", "mpeg4-avi"): "torchcodec numbers the frames of an AVI with packed "
    "B-frames one off",
    ("torchcodec", "mpeg2-mpg"): "torchcodec's seeks in MPEG program streams miss frames",
    ("torchcodec", "mpeg2-ts"): "torchcodec's seeks in MPEG transport streams miss frames",
    ("decord", "h264-open-gop-mp4"): _DECORD_OPEN_GOP,
    ("decord", "h264-open-gop-mkv"): _DECORD_OPEN_GOP,
    ("decord", "hevc-mp4"): _DECORD_OPEN_GOP,
    ("decord", "hevc-10bit-mp4"): _DECORD_OPEN_GOP,
    ("decord", "mpeg4-avi"): "decord returns wrong frames of an AVI with packed B-frames",
    ("decord", "mpeg2-mpg"): "decord returns wrong frames after seeks in MPEG program streams",
    ("decord", "mpeg2-ts"): "decord returns wrong frames after seeks in MPEG transport streams",
    ("decord", "av1-mkv"): "decord's bundled FFmpeg has no AV1 decoder",
    ("decord", "av1-webm"): "decord's bundled FFmpeg has no AV1 decoder",
}


def _write(
    path: Path,
    codec: str,
    frames: int,
    pix_fmt: str,
    options: dict[str, str],
    gop: int | None,
    bframes: int | None,
) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width, stream.pix_fmt = HEIGHT, WIDTH, pix_fmt
        stream.codec_context.thread_count = 1
        if gop is not None:
            stream.codec_context.gop_size = gop
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        stream.options = options
        for i in range(frames):
            image = av.VideoFrame.from_ndarray(code_frame(i, HEIGHT, WIDTH), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())


def _rgb(frame: Any) -> np.ndarray:
    """``(3, H, W)`` uint8 RGB of a decoded frame, by the PyAV reader's conversion."""
    planes = frame.reformat(format="gbrp", interpolation=Interpolation.AREA).planes
    g, b, r = (
        np.frombuffer(p, np.uint8).reshape(frame.height, p.line_size)[:, : frame.width]
        for p in planes
    )
    return np.stack([r, g, b])


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    """Each codec's clip and the frames of its sequential decode, written once per module."""
    folder = tmp_path_factory.mktemp("codecs")
    out = {}
    for name, (file, codec, *settings) in CLIPS.items():
        if codec not in av.codecs_available:
            continue
        path = folder / file
        _write(path, codec, *settings)
        with av.open(str(path)) as container:
            frames = np.stack([_rgb(f) for f in container.decode(container.streams.video[0])])
        out[name] = (path, frames)
    return out


def _clip(clips: dict[str, tuple[Path, np.ndarray]], name: str) -> tuple[Path, np.ndarray]:
    if name not in clips:
        pytest.skip(f"this PyAV build has no {CLIPS[name][1]} encoder")
    return clips[name]


@functools.cache
def _missing(backend: str) -> str | None:
    """Why ``backend`` cannot be used here (package absent or not loadable), or None."""
    if backend == "pyav":
        return None
    try:
        importlib.import_module({"torchcodec": "torchcodec.decoders"}.get(backend, backend))
    except Exception as exc:  # torchcodec raises RuntimeError when FFmpeg's libraries are missing
        return f"{backend} cannot be imported: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def _params() -> list[Any]:
    params = []
    for backend in BACKENDS:
        for name in CLIPS:
            marks = []
            if _missing(backend):
                marks.append(pytest.mark.skip(reason=_missing(backend)))
            elif (backend, name) in KNOWN_WRONG:
                marks.append(pytest.mark.xfail(reason=KNOWN_WRONG[backend, name], strict=True))
            params.append(pytest.param(backend, name, marks=marks, id=f"{backend}-{name}"))
    return params


@pytest.mark.parametrize("name", list(CLIPS))
def test_clip_is_what_it_claims(clips, name):
    path, frames = _clip(clips, name)
    file, codec, count, pix_fmt, *_ = CLIPS[name]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.pix_fmt == pix_fmt
    assert len(frames) == count
    assert [read_frame_index(f) for f in frames] == list(range(count))


@pytest.mark.parametrize("mode", ["fast", "full"])
@pytest.mark.parametrize("name", list(CLIPS))
def test_probe_counts_every_decoded_frame(clips, name, mode):
    path, frames = _clip(clips, name)
    info = probe_video(path, mode)
    assert info.error is None
    assert (info.num_frames, info.width, info.height, info.fps) == (len(frames), WIDTH, HEIGHT, 25)


def _indices(count: int) -> list[int]:
    """Unsorted, repeated, random indices with the first and the last frame."""
    rng = np.random.default_rng(count)
    picks = rng.integers(0, count, 10).tolist()
    return [count - 1, 0, *picks[:5], 3, 3, count - 1, *picks[5:], count // 2, 1, count - 2, 0]


@pytest.mark.parametrize("backend,name", _params())
def test_frames_equal_sequential_decode(clips, backend, name):
    path, frames = _clip(clips, name)
    count = len(frames)
    indices = _indices(count)
    expected = frames[indices]
    tolerance = 0 if backend == "pyav" else TOLERANCE.get(name, 0)
    with open_reader(path, backend) as reader:
        assert reader.num_frames == count
        assert (reader.width, reader.height, reader.fps) == (WIDTH, HEIGHT, 25)
        got = reader.get_frames(indices)
        assert got.dtype == torch.uint8 and got.shape == (len(indices), 3, HEIGHT, WIDTH)
        assert [read_frame_index(f) for f in got] == indices
        difference = np.abs(got.numpy().astype(np.int16) - expected).max()
        assert difference <= tolerance
        # in order, right after: continuing the decode, or seeking back
        again = reader.get_frames(list(range(count - 6, count)) + [2])
        assert [read_frame_index(f) for f in again] == [*range(count - 6, count), 2]
    # as a DataLoader worker opens it, with the count from the index
    with open_reader(path, backend, num_frames=count) as fresh:
        assert (
            np.abs(fresh.get_frames(indices[::-1]).numpy().astype(np.int16) - expected[::-1]).max()
            <= tolerance
        )


@pytest.mark.parametrize("stride", [2, 3, 5])
@pytest.mark.parametrize("name", list(CLIPS))
def test_strided_clips_equal_sequential_decode(clips, name, stride):
    # Training clips take every k-th frame: the frames between the wanted ones are skipped
    # where that is safe (non-reference frames; every frame of an intra-only codec), and what
    # comes out must still be exactly the frames of a full decode.
    path, frames = _clip(clips, name)
    count = len(frames)
    with open_reader(path, num_frames=count) as reader:
        for start in (0, 1, count // 3, count - 2 * stride - 1):
            indices = [(start + stride * i) % count for i in range(8)]  # the last one wraps
            got = reader.get_frames(indices)
            assert [read_frame_index(f) for f in got] == indices
            assert np.array_equal(got.numpy(), frames[indices])


@pytest.mark.parametrize("backend,name", _params())
def test_resized_frames_agree_with_pyav(clips, backend, name):
    path, frames = _clip(clips, name)
    indices = _indices(len(frames))
    with VideoReader(path) as reader:
        reference = reader.get_frames(indices, size=32).float()
    with open_reader(path, backend) as reader:
        resized = reader.get_frames(indices, size=32)
        assert resized.shape == (len(indices), 3, 32, 42)
        assert [read_frame_index(f) for f in resized] == indices
        exact = reader.get_frames([1], size=(24, 40))
        assert exact.shape == (1, 3, 24, 40)
    # PyAV resizes inside swscale (area), the others with torchvision (antialiased bilinear)
    assert (resized.float() - reference).abs().mean() < 3


def test_backend_factory_and_errors(clips):
    path, _ = _clip(clips, "h264-open-gop-mp4")
    assert type(open_reader(path)) is VideoReader
    with pytest.raises(ValueError, match=r"h264\.mp4: unknown video backend 'nope'.*decord"):
        open_reader(path, "nope")
    with pytest.raises(ValueError, match=r"h264\.mp4: the 'pyav' backend decodes on the CPU"):
        open_reader(path, device="cuda")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "pyav"])
def test_backend_errors_name_the_file(tmp_path, backend):
    if _missing(backend):
        pytest.skip(_missing(backend))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"hello, not a video\n" * 20)
    with pytest.raises(Exception, match=r"bad\.mp4: cannot open"):
        open_reader(bad, backend)
    with pytest.raises(Exception, match=r"missing\.mp4: file not found"):
        open_reader(tmp_path / "missing.mp4", backend)


def _torchcodec_or_skip() -> None:
    if _missing("torchcodec"):
        pytest.skip(_missing("torchcodec"))


def test_torchcodec_cuda_without_cuda_is_refused(clips, monkeypatch):
    _torchcodec_or_skip()
    path, _ = _clip(clips, "h264-prepared-mp4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"prepared\.mp4: device='cuda' needs CUDA"):
        open_reader(path, "torchcodec", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (NVDEC)")
@pytest.mark.parametrize("name", ["h264-prepared-mp4", "hevc-mp4", "vp9-webm", "av1-mkv"])
def test_torchcodec_cuda_decodes_the_same_frames(clips, name):
    _torchcodec_or_skip()
    path, frames = _clip(clips, name)
    indices = _indices(len(frames))
    with open_reader(path, "torchcodec", device="cuda") as reader:
        assert reader.num_frames == len(frames)
        got = reader.get_frames(indices)
        resized = reader.get_frames(indices, size=32)
    assert got.is_cuda and got.dtype == torch.uint8 and got.shape == (len(indices), 3, 48, 64)
    assert resized.is_cuda and resized.shape == (len(indices), 3, 32, 42)
    assert [read_frame_index(f) for f in got.cpu()] == indices
    # NVDEC's colour conversion rounds differently from swscale's: close, not identical
    difference = (got.cpu().float() - torch.from_numpy(frames[indices]).float()).abs().mean()
    assert difference < 3
