"""The ``jpeg`` backend: MJPEG frames read by byte range (a sidecar index written by ``vssl
prepare``, or one built in memory) or demuxed with PyAV, decoded with libjpeg-turbo (OpenCV).

Clips are written here with PyAV (frame ``i`` shows the bits of ``i``, see conftest). The
backend must pick exactly the frames the PyAV reader picks (the index read back from each
frame), with pixels within JPEG decoders' rounding of PyAV's, and hand every other codec, and
every MJPEG call it cannot serve exactly, to the PyAV reader unchanged. A stale, truncated or
wrong sidecar must never give wrong frames, and the reader never writes beside a video.
"""

from __future__ import annotations

import io
import math
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import simplejpeg
import torch
from conftest import code_frame, read_frame_index
from PIL import Image

from vssl.data.prepare import prepare
from vssl.data.reader import VideoDecodeError, VideoReader, open_reader, reader_class
from vssl.data.reader_jpeg import (
    SIDECAR_SUFFIX,
    FastJpegReader,
    JpegIndex,
    JpegReader,
    _IndexCache,
    build_jpeg_index,
    clear_index_cache,
    read_sidecar,
    reduced_factor,
)

HEIGHT, WIDTH, COUNT = 48, 64, 40


def _write(path: Path, codec: str, pix_fmt: str, width: int = WIDTH, pts=None) -> Path:
    """``COUNT`` frames at 25 fps; ``pts`` (frame i's timestamp in 1/25 s) defaults to i."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width, stream.pix_fmt = HEIGHT, width, pix_fmt
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "x264-params": "keyint=8:bframes=0"}
        for i in range(COUNT):
            image = av.VideoFrame.from_ndarray(code_frame(i, HEIGHT, width), format="rgb24")
            image.pts = i if pts is None else pts[i]
            image.time_base = Fraction(1, 25)
            container.mux(stream.encode(image))
        container.mux(stream.encode())
    return path


@pytest.fixture(autouse=True)
def fresh_cache():
    """Every test starts with no index in this process's cache."""
    clear_index_cache()
    yield
    clear_index_cache()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("jpeg")
    # a timestamp skipped: pts jump from 9 to 11
    gap = [i if i < 10 else i + 1 for i in range(COUNT)]
    return {
        "mjpeg-mp4": _write(folder / "clip.mp4", "mjpeg", "yuvj420p"),  # as `vssl prepare`
        "mjpeg-avi": _write(folder / "clip.avi", "mjpeg", "yuvj420p"),
        "mjpeg-mkv-422": _write(folder / "clip.mkv", "mjpeg", "yuvj422p"),
        "mjpeg-gap": _write(folder / "gap.mp4", "mjpeg", "yuvj420p", pts=gap),
        "h264": _write(folder / "h264.mp4", "libx264", "yuv420p"),
        "mjpeg-228": _write(folder / "wide.mp4", "mjpeg", "yuvj420p", width=228),
        "h264-228": _write(folder / "wide_h264.mp4", "libx264", "yuv420p", width=228),
    }


def _indices(count: int) -> list[int]:
    """Unsorted, repeated indices with the first and the last frame."""
    picks = np.random.default_rng(count).integers(0, count, 10).tolist()
    return [count - 1, 0, *picks[:5], 3, 3, count - 1, *picks[5:], count // 2, 1, count - 2, 0]


def _mean_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


def test_the_backend_is_registered(files):
    with open_reader(files["mjpeg-mp4"], "jpeg") as reader:
        assert type(reader) is JpegReader and reader.is_jpeg
        assert (reader.num_frames, reader.width, reader.height, reader.fps) == (COUNT, 64, 48, 25)
    with pytest.raises(ValueError, match=r"unknown video backend 'nope'.*'jpeg'"):
        open_reader(files["mjpeg-mp4"], "nope")


@pytest.mark.parametrize("name", ["mjpeg-mp4", "mjpeg-avi", "mjpeg-mkv-422", "mjpeg-228"])
def test_frames_are_the_pyav_readers(files, name):
    indices = _indices(COUNT)
    with VideoReader(files[name]) as reference:
        expected = reference.get_frames(indices)
    with open_reader(files[name], "jpeg", num_frames=COUNT) as reader:
        got = reader.get_frames(indices)
        assert got.dtype == torch.uint8 and got.shape == expected.shape
        assert [read_frame_index(f) for f in got] == indices
        # libjpeg-turbo's and FFmpeg's decoders round and upsample chroma a little differently
        assert _mean_difference(got, expected) < 1.5
        # continuing forward, then seeking back, then a training clip at stride 2
        again = reader.get_frames([*range(COUNT - 6, COUNT), 2])
        assert [read_frame_index(f) for f in again] == [*range(COUNT - 6, COUNT), 2]
        clip = reader.get_frames(np.arange(5, 36, 2))
        assert [read_frame_index(f) for f in clip] == list(range(5, 36, 2))
        assert reader.get_frames([]).shape == (0, 3, HEIGHT, reader.width)


def test_a_wanted_index_no_packet_maps_to_shows_the_one_before(files):
    # 40 frames over 41 ticks: the average rate is 40/41 of 25 fps, so index 10 falls in the
    # gap (no packet maps to it) and packets 20 and 21 map to one index (the first is shown)
    path = files["mjpeg-gap"]
    indices = [8, 9, 10, 11, 19, 20, 21, 10, 39, 0]
    with VideoReader(path) as reference:
        assert reference.num_frames == COUNT
        expected = [read_frame_index(f) for f in reference.get_frames(indices)]
    assert expected == [8, 9, 9, 10, 18, 19, 21, 9, 39, 0]
    with open_reader(path, "jpeg") as reader:
        assert [read_frame_index(f) for f in reader.get_frames(indices)] == expected
        assert [read_frame_index(f) for f in reader.get_frames([10, 10])] == [9, 9]
        every = [read_frame_index(f) for f in reader.get_frames(range(COUNT))]
    with VideoReader(path) as reference:
        assert every == [read_frame_index(f) for f in reference.get_frames(range(COUNT))]


@pytest.mark.parametrize(
    "size,shape,scaled", [(24, (24, 32), True), ((20, 30), (20, 30), True), (40, (40, 54), False)]
)
def test_resized_frames_agree_with_pyav(files, size, shape, scaled):
    path = files["mjpeg-mp4"]
    indices = _indices(COUNT)
    with VideoReader(path) as reference:
        expected = reference.get_frames(indices, size=size)
    assert (reduced_factor(HEIGHT, WIDTH, *shape) > 1) == scaled  # libjpeg's scaled IDCT used
    with open_reader(path, "jpeg") as reader:
        got = reader.get_frames(indices, size=size)
    assert got.shape == (len(indices), 3, *shape)
    assert [read_frame_index(f) for f in got] == indices
    assert _mean_difference(got, expected) < 3  # libjpeg's scaled IDCT and OpenCV's area resize


def test_reduced_factor_is_the_largest_scale_that_covers_the_output():
    assert reduced_factor(128, 228, 128, 228) == 1
    assert reduced_factor(128, 228, 112, 112) == 1
    assert reduced_factor(128, 228, 64, 114) == 2
    assert reduced_factor(256, 456, 64, 114) == 4
    assert reduced_factor(256, 456, 32, 57) == 8
    assert reduced_factor(256, 456, 33, 57) == 4
    assert reduced_factor(255, 455, 32, 57) == 8  # ceil(255 / 8)


@pytest.mark.parametrize(
    "size,flag",
    [
        (None, cv2.IMREAD_COLOR),
        ((HEIGHT // 2, WIDTH // 2), cv2.IMREAD_REDUCED_COLOR_2),
        ((HEIGHT // 4, WIDTH // 4), cv2.IMREAD_REDUCED_COLOR_4),
    ],
)
def test_frames_are_exactly_opencvs_libjpeg_decode(files, size, flag):
    """The same libjpeg-turbo decode (and scaled IDCT) as OpenCV's, pixel for pixel, in RGB."""
    path = files["mjpeg-mp4"]
    index = build_jpeg_index(path)
    data = Path(path).read_bytes()
    indices = [0, 5, COUNT - 1]
    with open_reader(path, "jpeg") as reader:
        got = reader.get_frames(indices, size=size)
    for frame, i in zip(got, indices, strict=True):
        start, length = int(index.offsets[i]), int(index.sizes[i])
        jpeg = np.frombuffer(data, np.uint8, length, start)
        bgr = cv2.imdecode(jpeg, flag | cv2.IMREAD_IGNORE_ORIENTATION)
        assert torch.equal(frame, torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1))


def test_cpu_frames_are_a_channels_last_view_with_the_same_values(files):
    path = files["mjpeg-mp4"]
    with open_reader(path, "jpeg") as reader:
        got = reader.get_frames([1, 2, 3])
        contiguous = got.contiguous()
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, contiguous) and got.shape == (3, 3, HEIGHT, WIDTH)


def test_other_codecs_decode_exactly_as_pyav(files):
    indices = _indices(COUNT)
    with VideoReader(files["h264"]) as reference:
        expected = reference.get_frames(indices)
    with open_reader(files["h264"], "jpeg") as reader:
        assert not reader.is_jpeg
        assert torch.equal(reader.get_frames(indices), expected)


def test_a_packet_libjpeg_rejects_goes_to_the_pyav_reader(files, monkeypatch):
    indices = _indices(COUNT)
    with VideoReader(files["mjpeg-mp4"]) as reference:
        expected = reference.get_frames(indices)
    data = Path(files["mjpeg-mp4"]).read_bytes()
    index = build_jpeg_index(files["mjpeg-mp4"])
    cut = data[int(index.offsets[0]) : int(index.offsets[0]) + int(index.sizes[0]) // 2]
    with pytest.raises(ValueError):  # what libjpeg's warnings become in simplejpeg's strict mode
        simplejpeg.decode_jpeg(cut, "RGB")

    def reject(*args, **kwargs):
        raise ValueError("Corrupt JPEG data: premature end of data segment")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", reject)
    with open_reader(files["mjpeg-mp4"], "jpeg") as reader:
        assert torch.equal(reader.get_frames(indices), expected)  # PyAV's pixels exactly


def test_a_packet_that_is_not_a_whole_frame_goes_to_the_pyav_reader(files, monkeypatch):
    # interlaced MJPEG carries two fields per packet: libjpeg decodes one, half the height
    real = simplejpeg.decode_jpeg
    monkeypatch.setattr(
        simplejpeg, "decode_jpeg", lambda data, *args, **kwargs: real(data, *args)[::2]
    )
    with VideoReader(files["mjpeg-mp4"]) as reference:
        expected = reference.get_frames([4, 30])
    with open_reader(files["mjpeg-mp4"], "jpeg") as reader:
        assert torch.equal(reader.get_frames([4, 30]), expected)


def test_errors_name_the_file(files, tmp_path, monkeypatch):
    path = files["mjpeg-mp4"]
    with pytest.raises(VideoDecodeError, match=r"clip\.mp4: frame indices \[40\] out of range"):
        open_reader(path, "jpeg").get_frames([0, 40])
    reader = open_reader(path, "jpeg", decode_timeout=5.0)
    reader.decode_timeout = 1e-9  # the packet loop checks the deadline the call starts
    with pytest.raises(
        VideoDecodeError, match=r"clip\.mp4: decoding took longer than decode_timeout=1e-09 s"
    ):
        reader.get_frames([0, 1])
    with pytest.raises(ValueError, match=r"clip\.mp4: the 'jpeg' backend decodes on 'cpu' or"):
        open_reader(path, "jpeg", device="mps")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"hello, not a video\n" * 20)
    with pytest.raises(VideoDecodeError, match=r"bad\.mp4: FFmpeg cannot read it"):
        open_reader(bad, "jpeg")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"clip\.mp4: device='cuda' needs CUDA"):
        open_reader(path, "jpeg", device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match=r"h264\.mp4: the 'jpeg' backend decodes only MJPEG on"):
        open_reader(files["h264"], "jpeg", device="cuda")


@pytest.mark.parametrize("name", ["mjpeg-228", "h264-228"])
def test_pyav_frames_at_their_own_size_have_every_column(files, name):
    # swscale's unscaled planar-GBR conversion leaves the last 4 columns of a 228-pixel-wide
    # 4:2:0 frame unwritten (whatever memory held): the reader converts those widths exactly.
    with av.open(str(files[name])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    expected = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    for _ in range(3):
        with VideoReader(files[name]) as reader:
            assert torch.equal(reader.get_frames(range(COUNT)), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_nvjpeg_decodes_the_same_frames(files):
    indices = _indices(COUNT)
    with VideoReader(files["mjpeg-mp4"]) as reference:
        expected = reference.get_frames(indices)
        expected_small = reference.get_frames(indices, size=24)
    with open_reader(files["mjpeg-mp4"], "jpeg", device="cuda") as reader:
        got = reader.get_frames(indices)
        small = reader.get_frames(indices, size=24)
    assert got.is_cuda and got.dtype == torch.uint8 and got.shape == expected.shape
    assert small.is_cuda and small.shape == (len(indices), 3, 24, 32)
    assert [read_frame_index(f) for f in got.cpu()] == indices
    assert _mean_difference(got.cpu(), expected) < 3
    assert _mean_difference(small.cpu(), expected_small) < 3


# ---------------------------------------------------------------- the frame index


def _packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


def _with_sidecar(path: Path, folder: Path) -> Path:
    """A copy of ``path`` in ``folder`` with its sidecar, as ``vssl prepare`` leaves it."""
    folder.mkdir(exist_ok=True)
    copy = folder / path.name
    copy.write_bytes(path.read_bytes())
    index = build_jpeg_index(copy)
    assert index is not None
    (folder / (path.name + SIDECAR_SUFFIX)).write_bytes(index.to_bytes())
    return copy


def _opened_from_index(path: Path, **kwargs) -> JpegReader:
    reader = open_reader(path, "jpeg", **kwargs)
    assert reader._index is not None and reader._container is None
    return reader


def test_the_index_is_each_frames_packet_bytes(files):
    packets = _packets(files["mjpeg-mkv-422"])  # in MKV a packet's bytes follow a block header
    index = build_jpeg_index(files["mjpeg-mkv-422"])
    assert index.num_frames == COUNT and (index.width, index.height, index.fps) == (64, 48, 25)
    data = files["mjpeg-mkv-422"].read_bytes()
    for i in range(COUNT):
        assert data[index.offsets[i] : index.offsets[i] + index.sizes[i]] == packets[i]
    # pts 0..9 then 11..40 at 40/41 of 25 fps: index 10 shows packet 9, packets 20 and 21
    # (indices 20 and 20.5 -> 20, rounded half to even) give index 20 the first of them
    gap = build_jpeg_index(files["mjpeg-gap"])
    starts = [int(o) for o in gap.offsets]
    order = sorted(set(starts))
    assert [order.index(o) for o in starts[8:12]] == [8, 9, 9, 10]
    assert gap.num_frames == COUNT
    again = JpegIndex.from_bytes(index.to_bytes())
    assert np.array_equal(again.offsets, index.offsets)
    assert np.array_equal(again.sizes, index.sizes)
    assert (again.width, again.height, again.fps, again.start_pts, again.time_base) == (
        64,
        48,
        25.0,
        index.start_pts,
        index.time_base,
    )
    assert (again.file_size, again.mtime_ns, again.digest) == (
        index.file_size,
        index.mtime_ns,
        index.digest,
    )


def test_only_mjpeg_is_indexed(files, tmp_path):
    assert build_jpeg_index(files["h264"]) is None
    assert build_jpeg_index(tmp_path / "missing.mp4") is None
    for _ in range(3):
        with open_reader(files["h264"], "jpeg") as reader:
            assert reader._index is None and not reader.is_jpeg


@pytest.mark.parametrize(
    "name", ["mjpeg-mp4", "mjpeg-avi", "mjpeg-mkv-422", "mjpeg-228", "mjpeg-gap"]
)
@pytest.mark.parametrize("source", ["sidecar", "memory"])
def test_frames_from_the_index_are_the_pyav_readers(files, tmp_path, name, source):
    path = files[name]
    if source == "sidecar":
        path = _with_sidecar(path, tmp_path)
    else:
        open_reader(path, "jpeg").close()  # opened once: the second open builds the index
    indices = [*_indices(COUNT), *range(COUNT)]
    with VideoReader(path) as reference:
        expected = reference.get_frames(indices)
        expected_small = reference.get_frames(indices, size=24)
        start_time, fps = reference.start_time, reference.fps
    with _opened_from_index(path, num_frames=COUNT) as reader:
        assert (reader.num_frames, reader.width, reader.fps) == (COUNT, expected.shape[-1], fps)
        got = reader.get_frames(indices)
        assert [read_frame_index(f) for f in got] == [read_frame_index(f) for f in expected]
        assert _mean_difference(got, expected) < 1.5
        assert _mean_difference(reader.get_frames(indices, size=24), expected_small) < 3
        assert reader.start_time == start_time
        assert reader.get_frames([]).shape == (0, 3, HEIGHT, reader.width)


def test_a_file_opened_once_is_not_indexed_and_nothing_is_written_beside_it(files):
    path = files["mjpeg-avi"]
    before = sorted(path.parent.iterdir())
    with open_reader(path, "jpeg") as first:
        assert first._index is None and first.is_jpeg
    with open_reader(path, "jpeg") as second:
        assert second._index is not None
    with open_reader(path, "jpeg", num_frames=COUNT) as third:
        assert third._index is not None
    assert sorted(path.parent.iterdir()) == before
    assert read_sidecar(path) is None


def test_prepare_writes_the_sidecar_and_the_reader_opens_no_container(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _write(src / "v.mp4", "libx264", "yuv420p")
    summary = prepare(src, dst, short_side=HEIGHT, codec="mjpeg", workers=1, progress=False)
    assert summary.done == 1
    sidecar = dst / ("v.mp4" + SIDECAR_SUFFIX)
    assert sorted(p.name for p in src.iterdir()) == ["v.mp4"]  # nothing beside the source
    index = read_sidecar(dst / "v.mp4")
    assert index is not None and index.num_frames == COUNT
    assert index.to_bytes() == sidecar.read_bytes()
    with VideoReader(dst / "v.mp4") as reference:
        expected = reference.get_frames(range(COUNT))

    def no_container(*args, **kwargs):
        raise AssertionError("a container was opened")

    monkeypatch.setattr(av, "open", no_container)
    with _opened_from_index(dst / "v.mp4", num_frames=COUNT) as reader:
        got = reader.get_frames(range(COUNT))
    assert [read_frame_index(f) for f in got] == list(range(COUNT))
    assert _mean_difference(got, expected) < 1.5
    monkeypatch.undo()
    # an output found unrecorded (the manifest lost) is verified, kept and given its sidecar
    sidecar.unlink()
    (dst / ".vssl_prepare" / "manifest.jsonl").unlink()
    again = prepare(src, dst, short_side=HEIGHT, codec="mjpeg", workers=1, progress=False)
    assert (again.done, again.skipped) == (0, 1)
    assert read_sidecar(dst / "v.mp4").to_bytes() == index.to_bytes()
    # an H.264 output has no sidecar; preparing over it again with --overwrite removes it
    prepare(src, dst, short_side=HEIGHT, codec="h264", workers=1, progress=False, overwrite=True)
    assert not sidecar.exists()


def test_a_stale_or_truncated_sidecar_is_ignored(files, tmp_path):
    path = _with_sidecar(files["mjpeg-mp4"], tmp_path)
    sidecar = tmp_path / ("clip.mp4" + SIDECAR_SUFFIX)
    good = sidecar.read_bytes()
    for bad in (good[:-8], good[:40], b"", b"not an index at all" * 10):
        sidecar.write_bytes(bad)
        assert read_sidecar(path) is None
        clear_index_cache()
        with open_reader(path, "jpeg", num_frames=COUNT) as reader:
            assert reader._index is None  # opened as a file without a sidecar
            assert [read_frame_index(f) for f in reader.get_frames([0, 39, 7])] == [0, 39, 7]
    sidecar.write_bytes(good)
    assert read_sidecar(path) is not None
    # a copy without its modification time is still the same file: its tail digest says so
    os.utime(path, ns=(0, 123_456_789))
    assert read_sidecar(path) is not None
    # the video rewritten: another size, or the same size with other bytes, and another mtime
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[:-1]))
    assert read_sidecar(path) is None
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert read_sidecar(path) is None
    _write(path, "mjpeg", "yuvj420p", pts=[i if i < 10 else i + 1 for i in range(COUNT)])
    assert read_sidecar(path) is None
    with open_reader(path, "jpeg") as reader:
        assert reader._index is None
        assert [read_frame_index(f) for f in reader.get_frames([9, 10, 11])] == [9, 9, 10]


def test_a_sidecar_pointing_at_the_wrong_bytes_gives_the_pyav_readers_frames(files, tmp_path):
    path = _with_sidecar(files["mjpeg-mp4"], tmp_path)
    sidecar = tmp_path / ("clip.mp4" + SIDECAR_SUFFIX)
    index = JpegIndex.from_bytes(sidecar.read_bytes())
    shifted = JpegIndex(**{**vars(index), "offsets": index.offsets + 3})
    sidecar.write_bytes(shifted.to_bytes())
    indices = _indices(COUNT)
    with VideoReader(path) as reference:
        expected = reference.get_frames(indices)
    with _opened_from_index(path) as reader:
        assert torch.equal(reader.get_frames(indices), expected)  # PyAV's pixels exactly
        assert reader._index is None
    with open_reader(path, "jpeg") as reader:  # this process no longer trusts that sidecar
        assert reader._index is None


def test_a_video_cut_short_under_its_index_raises_naming_the_file(files, tmp_path):
    path = _with_sidecar(files["mjpeg-mp4"], tmp_path)
    with _opened_from_index(path) as reader:
        assert [read_frame_index(f) for f in reader.get_frames([0, 30])] == [0, 30]
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(VideoDecodeError, match=r"clip\.mp4: "):
            reader.get_frames([35, 39])
    with pytest.raises(VideoDecodeError, match=r"clip\.mp4: "):
        open_reader(path, "jpeg", num_frames=COUNT).get_frames([39])


def test_frames_past_the_index_go_to_the_pyav_reader(files, tmp_path):
    path = _with_sidecar(files["mjpeg-mp4"], tmp_path)
    # the video index counted one frame more than the file holds
    with _opened_from_index(path, num_frames=COUNT + 1) as reader:
        with pytest.raises(VideoDecodeError, match=r"clip\.mp4: frames \[40\] could not be"):
            reader.get_frames([3, COUNT])
    with _opened_from_index(path, num_frames=COUNT + 1) as reader:  # still trusted
        assert [read_frame_index(f) for f in reader.get_frames([3, 39])] == [3, 39]


def test_the_cache_keeps_the_most_recently_used_indexes_up_to_its_frames(files):
    index = build_jpeg_index(files["mjpeg-mp4"])
    cache = _IndexCache(max_frames=2 * COUNT + 1, max_seen=2)
    cache.put("a", (1, 1), index)
    cache.put("b", (1, 1), index)
    assert cache.get("a", (1, 1)) == (True, index)  # a is now the most recently used
    cache.put("c", (1, 1), None)  # a file without an index counts as one frame
    assert cache.frames == 2 * COUNT + 1
    cache.put("d", (1, 1), None)
    assert cache.get("b", (1, 1)) == (False, None)
    assert cache.get("a", (2, 1)) == (False, None)  # the file changed since
    assert cache.frames == COUNT + 2
    assert [cache.opened_before(p, (1, 1)) for p in "xyxzx"] == [False, False, True, False, True]
    assert list(cache.seen) == ["z", "x"]


def test_an_exif_rotation_is_ignored_as_ffmpeg_ignores_it(tmp_path):
    # camera MJPEG may carry an EXIF orientation; OpenCV applies it by default (here a 180
    # degree turn, which keeps the shape), FFmpeg and so the PyAV reader do not
    path = tmp_path / "exif.mp4"
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width = stream.height = HEIGHT
        stream.pix_fmt = "yuvj420p"
        for i in range(8):
            image = io.BytesIO()
            Image.fromarray(code_frame(i, HEIGHT, HEIGHT)).save(image, "JPEG", exif=exif.tobytes())
            packet = av.Packet(image.getvalue())
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base = Fraction(1, 25)
            out.mux(packet)
    with VideoReader(path) as reference:
        assert [read_frame_index(f) for f in reference.get_frames(range(8))] == list(range(8))
    for _ in range(2):  # demuxed, then from the index built on the second open
        with open_reader(path, "jpeg") as reader:
            assert [read_frame_index(f) for f in reader.get_frames([5, 1, 7])] == [5, 1, 7]
    assert reader._index is not None


def _colour_frame(i: int) -> np.ndarray:
    """A colour gradient with two saturated squares moving by ``i`` pixels: sharp chroma
    edges, where the fast chroma upsampling departs most from the smooth one."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([x * 255 // (WIDTH - 1), y * 255 // (HEIGHT - 1), np.full_like(x, 128)], -1)
    image[6 + i : 22 + i, 8:30] = (220, 30, 40)
    image[24:44, 34 + i : 56 + i] = (20, 60, 230)
    return image.astype(np.uint8)


def _write_colour(path: Path) -> Path:
    """8 colour frames as ``vssl prepare`` writes MJPEG (yuvj420p, quantiser 2 to 4)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.height, stream.width, stream.pix_fmt = HEIGHT, WIDTH, "yuvj420p"
        stream.codec_context.qmin, stream.codec_context.qmax = 2, 4
        for i in range(8):
            image = av.VideoFrame.from_ndarray(_colour_frame(i), format="rgb24")
            image.pts, image.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(image))
        container.mux(stream.encode())
    return path


def test_auto_is_the_fast_decode_and_jpeg_the_exact_one(files):
    assert reader_class("auto") is FastJpegReader and reader_class("jpeg_fast") is FastJpegReader
    assert reader_class("jpeg") is JpegReader and not JpegReader.fast_decode
    indices = _indices(COUNT)
    for name in ("mjpeg-mp4", "mjpeg-gap"):
        with open_reader(files[name], "jpeg") as exact, open_reader(files[name], "auto") as fast:
            assert type(fast) is FastJpegReader and fast.fast_decode
            got = fast.get_frames(indices)
            assert [read_frame_index(f) for f in got] == [
                read_frame_index(f) for f in exact.get_frames(indices)
            ]
            clip = fast.get_frames(np.arange(3, 34, 2))
            assert [read_frame_index(f) for f in clip] == [
                read_frame_index(f) for f in exact.get_frames(np.arange(3, 34, 2))
            ]
            assert clip.is_contiguous(memory_format=torch.channels_last)


def test_fast_frames_are_libjpeg_turbos_fast_decode_as_close_to_the_source(tmp_path):
    path = _write_colour(tmp_path / "colour.mp4")
    index = build_jpeg_index(path)
    data = path.read_bytes()
    source = torch.from_numpy(np.stack([_colour_frame(i) for i in range(8)])).permute(0, 3, 1, 2)
    with open_reader(path, "jpeg") as exact_reader, open_reader(path, "jpeg_fast") as reader:
        exact = exact_reader.get_frames(range(8))
        fast = reader.get_frames(range(8))
        half = (HEIGHT // 2, WIDTH // 2)  # libjpeg's scaled decoding, 1/2
        scaled = reader.get_frames(range(8), size=half)
        assert _mean_difference(scaled, exact_reader.get_frames(range(8), size=half)) < 4
    for i in range(8):
        jpeg = data[index.offsets[i] : index.offsets[i] + index.sizes[i]]
        expected = simplejpeg.decode_jpeg(jpeg, "RGB", fastdct=True, fastupsample=True)
        assert torch.equal(fast[i], torch.from_numpy(expected).permute(2, 0, 1))
    assert not torch.equal(fast, exact)
    assert _mean_difference(fast, exact) < 4  # rounding, and chroma edges a pixel sharper

    def error(frames: torch.Tensor) -> float:
        return _mean_difference(frames, source)

    def psnr(frames: torch.Tensor) -> float:
        mse = float(((frames.float() - source.float()) ** 2).mean())
        return 10 * math.log10(255**2 / mse)

    # what training sees is as close to the frames the file was made from either way
    assert error(fast) < error(exact) + 0.5
    assert psnr(fast) > psnr(exact) - 0.5


def test_a_sidecar_whose_largest_frame_is_not_its_last_is_read(files, tmp_path):
    """Each frame must lie inside the file; the largest offset plus the largest size need not."""
    index = build_jpeg_index(files["mjpeg-mp4"])
    offsets = np.array([0, 5000, 5010], dtype=np.int64)
    sizes = np.array([4000, 10, 90], dtype=np.int64)  # 5010 + 4000 is past the end
    fields = {**vars(index), "offsets": offsets, "sizes": sizes, "file_size": 5100}
    again = JpegIndex.from_bytes(JpegIndex(**fields).to_bytes())
    assert again is not None and again.sizes.tolist() == [4000, 10, 90]
    past = JpegIndex(**{**fields, "sizes": np.array([4000, 10, 91], dtype=np.int64)})
    assert JpegIndex.from_bytes(past.to_bytes()) is None  # the last frame ends past the file
