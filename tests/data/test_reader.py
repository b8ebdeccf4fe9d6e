"""VideoReader: frames by index equal a full sequential decode, resizing, and clear errors."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vssl.data.reader import (
    BACKENDS,
    MIN_SEEK_GAP,
    VideoDecodeError,
    VideoReader,
    open_reader,
    output_size,
)


def sequential_decode(path: Path, keep: set[int] | None = None) -> dict[int, np.ndarray]:
    """Frame i of a plain front-to-back PyAV decode, as (3, H, W) uint8, for i in ``keep``."""
    frames = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if keep is None or i in keep:
                frames[i] = frame.to_ndarray(format="rgb24").transpose(2, 0, 1)
    return frames


INDEX_PATTERNS = {
    "first": [0],
    "last": [79],
    "sorted": list(range(10, 26)),
    "strided": list(range(3, 80, 5)),
    "unsorted": [50, 7, 33, 8, 61],
    "repeated": [4, 4, 9, 4, 9, 9],
    "near_end": [77, 78, 79, 79],
    "loop": [76, 77, 78, 79, 0, 1, 2, 3],
    "far_apart": [2, 2 + MIN_SEEK_GAP + 20, 5, 79],
}


@pytest.mark.parametrize(
    "name,codec", [("clip.mp4", "libx264"), ("clip.webm", "libvpx-vp9"), ("clip.avi", "mpeg4")]
)
def test_frames_equal_sequential_decode(video_factory, frame_index, name, codec):
    path = video_factory(name, num_frames=80, size=(32, 48), gop=6, codec=codec)
    reference = sequential_decode(path)
    assert len(reference) == 80
    with VideoReader(path) as reader:
        assert (reader.num_frames, reader.fps, reader.width, reader.height) == (80, 25.0, 48, 32)
        assert reader.duration == pytest.approx(80 / 25)
        for pattern, indices in INDEX_PATTERNS.items():
            expected = np.stack([reference[i] for i in indices])
            frames = reader.get_frames(indices)  # a reader that has decoded before
            assert frames.dtype == torch.uint8 and frames.shape == (len(indices), 3, 32, 48)
            assert np.array_equal(frames.numpy(), expected), pattern
            assert [frame_index(f) for f in frames] == indices, pattern
            with VideoReader(path, num_frames=80) as fresh:  # as a DataLoader worker opens it
                assert np.array_equal(fresh.get_frames(indices).numpy(), expected), pattern


class SeekSpy:
    """Stands in for a PyAV container (whose methods cannot be patched), recording seeks and
    optionally shifting them later, as demuxers that overshoot do."""

    def __init__(self, container, shift: int = 0) -> None:
        self._container, self._shift, self.seeks = container, shift, []

    def seek(self, offset, **kwargs):
        self.seeks.append(offset)
        return self._container.seek(offset + self._shift, **kwargs)

    def __getattr__(self, name):
        return getattr(self._container, name)


def test_consecutive_calls_continue_without_reseeking(video_factory):
    path = video_factory("clip.mp4", num_frames=48, gop=8)
    reference = sequential_decode(path)
    with VideoReader(path, num_frames=48) as reader:
        reader._container = spy = SeekSpy(reader._container)
        chunks = [reader.get_frames(range(start, start + 16)) for start in (0, 16, 32)]
        assert spy.seeks == []
    expected = np.stack([reference[i] for i in range(48)])
    assert np.array_equal(torch.cat(chunks).numpy(), expected)


def test_seeks_past_a_long_gap(video_factory, monkeypatch):
    path = video_factory("clip.mp4", num_frames=120, gop=4)
    reference = sequential_decode(path, {0, 115})
    decoded = []
    with VideoReader(path, num_frames=120) as reader:
        original = reader._index_of

        def counting_index_of(frame):
            decoded.append(frame.pts)
            return original(frame)

        monkeypatch.setattr(reader, "_index_of", counting_index_of)
        frames = reader.get_frames([0, 115])
    assert np.array_equal(frames.numpy(), np.stack([reference[0], reference[115]]))
    # frame 0, then from the keyframe at or before 115: far fewer than a straight run's 116
    assert len(decoded) < 20


def test_seek_overshoot_falls_back_to_earlier_keyframe(video_factory):
    path = video_factory("clip.mp4", num_frames=100, gop=4)
    reference = sequential_decode(path)
    with VideoReader(path, num_frames=100) as reader:
        reader.get_frames([0])  # learns the start pts from the first frame
        # every seek lands 8 frames (of 512 pts each) later than asked
        reader._container = spy = SeekSpy(reader._container, shift=8 * 512)
        indices = [95, 50, 51]
        frames = reader.get_frames(indices)
    assert np.array_equal(frames.numpy(), np.stack([reference[i] for i in indices]))
    assert len(spy.seeks) > 2  # the overshooting seeks were retried further back ...
    assert reader._container is spy  # ... and that sufficed: no decoding from the start


def test_frames_without_timestamps_are_counted(video_factory, frame_index):
    """A raw H.264 stream has no pts: frames are numbered by counting from the start."""
    path = video_factory("raw.h264", num_frames=30, gop=5)
    reference = sequential_decode(path)
    with VideoReader(path) as reader:
        assert reader.num_frames == 30
        indices = [29, 3, 3, 17]
        frames = reader.get_frames(indices)
        assert np.array_equal(frames.numpy(), np.stack([reference[i] for i in indices]))
        assert [frame_index(f) for f in frames] == indices


def test_resize_in_decoder(video_factory, frame_index):
    path = video_factory("clip.mp4", num_frames=8, size=(48, 80))
    reference = sequential_decode(path)
    with VideoReader(path) as reader:
        short = reader.get_frames([1, 6], size=24)
        assert short.shape == (2, 3, 24, 40)
        exact = reader.get_frames([6], size=(30, 20))
        assert exact.shape == (1, 3, 30, 20)
        assert [frame_index(f) for f in short] == [1, 6]
        # it is a real downscale of the frame: close to area-averaging the decoded frame
        expected = F.interpolate(
            torch.from_numpy(reference[6][None]).float(), size=(24, 40), mode="area"
        )
        assert (short[1:].float() - expected).abs().mean() < 3


def test_output_size_rules():
    assert output_size(240, 320, None) == (240, 320)
    assert output_size(240, 320, 112) == (112, 150)
    assert output_size(320, 240, 112) == (150, 112)
    assert output_size(240, 320, (64, 80)) == (64, 80)
    for bad in (0, -5, (10,), (0, 10), 1.5, "112"):
        with pytest.raises(ValueError, match="size"):
            output_size(240, 320, bad)


def test_probed_count_matches_full_decode(video_factory):
    path = video_factory("clip.mkv", num_frames=23, gop=5)
    with VideoReader(path) as reader:
        assert reader.num_frames == len(sequential_decode(path)) == 23


def test_out_of_range_indices_name_the_file(video_factory):
    path = video_factory("clip.mp4", num_frames=10)
    with VideoReader(path) as reader:
        with pytest.raises(VideoDecodeError, match=r"clip\.mp4: frame indices \[10, 12\] out of"):
            reader.get_frames([3, 10, 12])
        with pytest.raises(VideoDecodeError, match=r"clip\.mp4: frame indices \[-1\]"):
            reader.get_frames([-1])
        with pytest.raises(ValueError, match="clip.mp4: frame indices must be"):
            reader.get_frames([1.5])
        assert reader.get_frames([]).shape == (0, 3, 32, 32)


def test_truncated_file_raises_naming_file_and_indices(video_factory, tmp_path):
    path = video_factory("clip.mkv", num_frames=60, gop=5)
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with VideoReader(cut, num_frames=60) as reader:  # a stale count, as from an old index
        assert reader.get_frames([0]).shape == (1, 3, 32, 32)
        with pytest.raises(VideoDecodeError, match=r"cut\.mkv: frames \[59\] could not be decoded"):
            reader.get_frames([5, 59])


@pytest.mark.parametrize(
    "content,problem",
    [
        (b"", "empty file"),
        (b"hello, not a video\n" * 20, "FFmpeg cannot read it"),
        (None, "not found"),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=rf"bad\.mp4: .*{problem}") as info:
        VideoReader(path)
    assert info.value.path == str(path)


def test_backends_registry(video_factory):
    path = video_factory("clip.mp4", num_frames=4)
    assert BACKENDS["pyav"] is VideoReader
    assert type(open_reader(path, "pyav")) is VideoReader
    with pytest.raises(ValueError, match=r"unknown video backend 'nope'.*decord.*pyav.*torchcodec"):
        open_reader(path, "nope")


@pytest.mark.parametrize(
    "backend,modules,hint",
    [
        ("torchcodec", ["torchcodec", "torchcodec.decoders"], "pip install torchcodec"),
        ("decord", ["decord"], "pip install decord"),
    ],
)
def test_missing_backend_package_says_how_to_install(
    video_factory, monkeypatch, backend, modules, hint
):
    path = video_factory("clip.mp4", num_frames=4)
    for module in modules:  # as if the package were not installed
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=hint):
        open_reader(path, backend)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "name,count,size",
    [
        ("bigbuckbunny.mp4", 132, (720, 1280)),
        ("bikes.mp4", 250, (272, 640)),
        ("vtest.avi", 795, (576, 768)),
    ],
)
def test_real_videos_decode(shared_videos, name, count, size):
    path = shared_videos / name
    indices = [count - 1, 0, count // 2, count // 2 + 1]
    reference = sequential_decode(path, set(indices))
    with VideoReader(path) as reader:
        assert reader.num_frames == count
        assert (reader.height, reader.width) == size
        frames = reader.get_frames(indices)
        assert np.array_equal(frames.numpy(), np.stack([reference[i] for i in indices]))
        assert reader.get_frames([3, 4], size=112).shape[2] == 112


@pytest.mark.timeout(120)
def test_damaged_real_video_does_not_crash_or_hang(shared_videos):
    path = shared_videos / "Megamind_bugy.avi"
    # frames 3 and 103 of its decoding order carry the timestamps of frames 4 and 104
    indices = [3, 4, 103, 104]
    reference = sequential_decode(path, {*indices, 5})
    try:
        with VideoReader(path) as reader:
            frames = reader.get_frames([100, 0, 269, 101], size=64)
            full = reader.get_frames(indices)
    except VideoDecodeError as exc:
        assert "Megamind_bugy.avi" in str(exc)
        return
    assert frames.shape[:3] == (4, 3, 64)
    # its timestamps go backwards, so frames are counted in decoding order, also by a reader
    # that is handed the count and only finds out while decoding
    expected = np.stack([reference[i] for i in indices])
    assert np.array_equal(full.numpy(), expected)
    with VideoReader(path, num_frames=270) as reader:
        assert np.array_equal(reader.get_frames(indices[::-1]).numpy(), expected[::-1])
    with VideoReader(path, num_frames=270) as reader:
        expected = np.stack([reference[4], reference[5]])
        assert np.array_equal(reader.get_frames([4, 5]).numpy(), expected)


def write_with_gaps(path: Path, shown: list[int], codec: str, pix_fmt: str) -> Path:
    """Frames that show ``code_frame(i)`` at pts ``i`` (time base 1/25) for ``i`` in ``shown``
    only: the indices between hold no frame of their own (variable frame rate)."""
    from tests.conftest import code_frame

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = pix_fmt
        stream.time_base = stream.codec_context.time_base = Fraction(1, 25)
        for i in shown:
            frame = av.VideoFrame.from_ndarray(code_frame(i, 32, 32), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    "codec,pix_fmt,name", [("mjpeg", "yuvj420p", "gaps.mkv"), ("libx264", "yuv420p", "gaps.mkv")]
)
def test_indices_without_a_frame_show_the_frame_on_screen(
    tmp_path, frame_index, codec, pix_fmt, name
):
    """Index k shows the last frame whose pts is at most k, also when the reader skipped that
    frame undecoded on its way to a wanted one (intra-only streams skip every unwanted frame)."""
    shown = [i for i in range(62) if i % 7 not in (3, 4)]
    path = write_with_gaps(tmp_path / name, shown, codec, pix_fmt)
    on_screen = {k: max(i for i in shown if i <= k) for k in range(62)}
    for indices in ([3], [4, 11], list(range(1, 62, 2)), list(range(0, 62, 2)), [61, 24, 25, 10]):
        with VideoReader(path) as reader:
            got = [frame_index(f) for f in reader.get_frames(indices)]
        assert got == [on_screen[k] for k in indices], indices


def test_intra_only_streams_decode_only_the_wanted_frames(tmp_path, monkeypatch):
    path = write_with_gaps(tmp_path / "clip.mkv", list(range(64)), "mjpeg", "yuvj420p")
    reference = sequential_decode(path)
    decoded = []
    with VideoReader(path, num_frames=64) as reader:
        original = reader._index_of

        def counting_index_of(frame):
            decoded.append(frame.pts)
            return original(frame)

        monkeypatch.setattr(reader, "_index_of", counting_index_of)
        indices = list(range(5, 36, 2))
        frames = reader.get_frames(indices)
    assert np.array_equal(frames.numpy(), np.stack([reference[i] for i in indices]))
    # the 16 wanted frames (and the first, which fixes the start pts), not the 31 in between
    assert len(decoded) <= len(indices) + 1
