"""The ``jpeg`` backend: MJPEG frames read as JPEG images and decoded with libjpeg-turbo.

In an MJPEG stream (what ``vssl prepare`` writes by default) every packet is one complete JPEG
image, so a frame is a byte range of the file. :class:`JpegIndex` records each frame's range
once: ``vssl prepare`` writes it beside each output as ``<video>.jpgidx`` (a sidecar), and for an
MJPEG file without one the reader builds it in memory the second time the file is opened in a
process (never writing beside a user's files) and keeps it in a bounded per-process cache. With
an index, a clip is a few ``os.pread`` calls over the bytes its frames span and one JPEG decode
per frame: no container is opened and nothing is demuxed. Without one, the packets of the wanted
frames are demuxed with PyAV, decoding nothing. Either way libjpeg-turbo (through `simplejpeg`)
decodes and converts YCbCr to RGB in one pass, straight into the clip's buffer, roughly half the
CPU time of FFmpeg's decoder followed by swscale's conversion and a copy out of PyAV's frame.
CPU frames come back as a channels-last view of that buffer. Backend ``"jpeg"`` decodes as
OpenCV does; ``"jpeg_fast"`` (:class:`FastJpegReader`, what ``"auto"`` is) uses libjpeg-turbo's
fast IDCT and chroma upsampling, a little faster. A frame wanted below the
stored size is decoded at 1/2, 1/4 or 1/8 scale inside libjpeg (scaled IDCT) when that still
covers the output, then area-resized. ``device="cuda"`` decodes the frames of a call in one
batch on the GPU with nvJPEG (torchcodec's ``decode_jpeg``, else torchvision's) and returns them
there.

Frames are numbered and chosen exactly as by :class:`~vssl.data.reader.VideoReader` (this class
subclasses it): frame ``i`` is the packet whose timestamp maps to ``i``; a wanted index no packet
maps to shows the packet before it. Pixels differ from the PyAV reader's by the JPEG decoders'
rounding and chroma upsampling (a grey level or two on average). A sidecar counts only while
the video's size and modification time (or, for a copied tree, the digest of its last 64 KiB)
are those it was made from, and every frame read through it must start as a JPEG does and
decode to the stored size; otherwise the file is read as if it had none. Every other codec, and
any MJPEG call the fast paths cannot serve exactly (packets without timestamps or out of order,
containers without frame-accurate seeks, a packet libjpeg rejects or that is not a whole frame,
as in interlaced MJPEG with two fields per packet), goes through the PyAV reader unchanged.
Reads through an index are plain file reads: ``decode_timeout`` is checked between frames, but
is not given to a read as FFmpeg's I/O timeout is.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import simplejpeg
import torch

from vssl.data.reader import (
    MIN_SEEK_GAP,
    VideoDecodeError,
    VideoReader,
    _open_container,
    _pts_scale,
    _seeks_exactly,
    _stream_fps,
    output_size,
)

SIDECAR_SUFFIX = ".jpgidx"
"""Ending added to a video's name for its :class:`JpegIndex` file (``x.mp4.jpgidx``)."""

_REDUCED = (8, 4, 2)  # libjpeg's scaled decoding factors, largest first
_MAGIC = b"VSSLJPG1"
_FIELDS = 12  # int64 header fields after the magic
_TAIL = 1 << 16  # bytes at the end of a video whose digest identifies it after a copy
_SLACK = 64  # how far past a packet's position its bytes may start (container block headers)
_READ_GAP = 1 << 16  # frames less than this many bytes apart are read in one pread
_CACHE_FRAMES = 1 << 19  # frames the per-process index cache holds (16 bytes each)
_SEEN_FILES = 1 << 13  # files remembered as opened once (their index is built when next opened)
_SOI = b"\xff\xd8"  # the first bytes of every JPEG image


class _Fallback(Exception):
    """The fast path cannot serve this call exactly: the PyAV reader decodes it instead."""


def _gpu_decode_jpeg() -> Any:
    """The batched nvJPEG decoder: torchcodec's ``decode_jpeg``, else torchvision's."""
    try:
        from torchcodec.decoders import decode_jpeg
    except (ImportError, RuntimeError, OSError):
        from torchvision.io import decode_jpeg
    return decode_jpeg


def reduced_factor(height: int, width: int, out_height: int, out_width: int) -> int:
    """The largest libjpeg scale (1, 2, 4 or 8) whose decoded image still covers
    ``(out_height, out_width)`` from a ``(height, width)`` JPEG."""
    for factor in _REDUCED:
        if -(-height // factor) >= out_height and -(-width // factor) >= out_width:
            return factor
    return 1


def _tail_digest(fd: int, size: int) -> bytes:
    """16-byte BLAKE2b digest of the last 64 KiB of a file (in MP4, MKV and AVI files the
    sample tables, which fix every packet's place)."""
    tail = min(size, _TAIL)
    return hashlib.blake2b(os.pread(fd, tail, size - tail), digest_size=16).digest()


@dataclass(frozen=True, eq=False)
class JpegIndex:
    """Where each frame of an MJPEG file lies: frame ``i`` is the JPEG image of ``sizes[i]``
    bytes at byte ``offsets[i]`` (the packet the reader shows at ``i``), with the stream facts a
    reader needs without opening the container, and the size, modification time (ns) and tail
    digest of the file it was made from."""

    offsets: np.ndarray
    sizes: np.ndarray
    width: int
    height: int
    fps: float
    start_pts: int
    time_base: Fraction
    file_size: int
    mtime_ns: int
    digest: bytes

    @property
    def num_frames(self) -> int:
        """Frames the index covers: the last packet's index + 1, as the video index counts."""
        return len(self.offsets)

    def to_bytes(self) -> bytes:
        """The sidecar file's contents: magic, header fields, then offsets and sizes."""
        header = np.array(
            [
                self.num_frames,
                self.width,
                self.height,
                self.start_pts,
                self.time_base.numerator,
                self.time_base.denominator,
                self.file_size,
                self.mtime_ns,
                *np.frombuffer(self.digest, np.int64),
                np.float64(self.fps).view(np.int64),
                0,
            ],
            dtype="<i8",
        )
        body = np.concatenate([self.offsets, self.sizes]).astype("<i8")
        return _MAGIC + header.tobytes() + body.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> JpegIndex | None:
        """The index in a sidecar file's ``data``; None when it is not a whole, sane one."""
        start = len(_MAGIC) + 8 * _FIELDS
        if len(data) < start or not data.startswith(_MAGIC):
            return None
        head = np.frombuffer(data, "<i8", _FIELDS, len(_MAGIC))
        n, width, height, start_pts, num, den, file_size, mtime_ns = head[:8].tolist()
        if n <= 0 or len(data) != start + 16 * n or min(width, height, num, den) <= 0:
            return None
        body = np.frombuffer(data, "<i8", 2 * n, start).astype(np.int64)
        offsets, sizes = body[:n], body[n:]
        if offsets.min() < 0 or sizes.min() <= 0 or int((offsets + sizes).max()) > file_size:
            return None
        return cls(
            offsets=offsets,
            sizes=sizes,
            width=width,
            height=height,
            fps=float(head[10:11].view(np.float64)[0]),
            start_pts=start_pts,
            time_base=Fraction(num, den),
            file_size=file_size,
            mtime_ns=mtime_ns,
            digest=head[8:10].tobytes(),
        )

    def describes(self, path: str, info: os.stat_result) -> bool:
        """Whether the file at ``path`` (stat ``info``) is the one this index was made from:
        same size, and same modification time or else the same tail digest."""
        if info.st_size != self.file_size:
            return False
        if info.st_mtime_ns == self.mtime_ns:
            return True
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            return _tail_digest(fd, info.st_size) == self.digest
        finally:
            os.close(fd)


def build_jpeg_index(path: str | Path) -> JpegIndex | None:
    """The :class:`JpegIndex` of an MJPEG video, from one pass over its packets (nothing is
    decoded); None when the file is not MJPEG or a frame cannot be served from its bytes alone
    (packets without timestamps, out of order or out of file order, bytes not in the file as
    the packet holds them, a container without frame-accurate seeks, a read error)."""
    path = str(path)
    try:
        container, stream = _open_container(path, threads=1)
    except VideoDecodeError:
        return None
    with container:
        fps = _stream_fps(stream)
        scale = _pts_scale(stream, fps)
        context = stream.codec_context
        if (
            context.name != "mjpeg"
            or scale is None
            or not _seeks_exactly(container)
            or not (context.width and context.height)
        ):
            return None
        width, height = int(context.width), int(context.height)
        time_base = Fraction(stream.time_base)
        pts: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        fd = os.open(path, os.O_RDONLY)
        try:
            before = os.fstat(fd)
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                if (
                    packet.pts is None
                    or packet.pos is None
                    or packet.pos < 0
                    or (pts and (packet.pts <= pts[-1] or packet.pos < offsets[-1] + sizes[-1]))
                ):
                    return None
                data = bytes(packet)
                shift = os.pread(fd, packet.size + _SLACK, packet.pos).find(data)
                if shift < 0 or not data.startswith(_SOI):
                    return None
                pts.append(packet.pts)
                offsets.append(packet.pos + shift)
                sizes.append(packet.size)
            after = os.fstat(fd)
            if not pts or (before.st_size, before.st_mtime_ns) != (
                after.st_size,
                after.st_mtime_ns,
            ):
                return None
            digest = _tail_digest(fd, after.st_size)
        except (av.error.FFmpegError, OSError):
            return None
        finally:
            os.close(fd)
    # frame i: the first packet whose pts maps to i, else the last one mapping below i
    start = pts[0]
    js = np.rint((np.asarray(pts, dtype=np.int64) - start) * scale).astype(np.int64)
    frames = np.arange(js[-1] + 1)
    first = np.searchsorted(js, frames, side="left")
    rows = np.where(js[first] == frames, first, first - 1)
    return JpegIndex(
        offsets=np.asarray(offsets, dtype=np.int64)[rows],
        sizes=np.asarray(sizes, dtype=np.int64)[rows],
        width=width,
        height=height,
        fps=float(fps),
        start_pts=int(start),
        time_base=time_base,
        file_size=int(after.st_size),
        mtime_ns=int(after.st_mtime_ns),
        digest=digest,
    )


def read_sidecar(path: str | Path) -> JpegIndex | None:
    """The index in ``path``'s sidecar (``<path>.jpgidx``) if there is one and it describes
    the file as it is now; else None."""
    path = str(path)
    try:
        info = os.stat(path)
        with open(path + SIDECAR_SUFFIX, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    index = JpegIndex.from_bytes(data)
    return index if index is not None and index.describes(path, info) else None


_Key = tuple[int, ...]


class _IndexCache:
    """Indexes by absolute path for this process, each valid while the file's key (device,
    inode, size, mtime) stays the one it was looked up with; bounded by the frames held, least
    recently used dropped first. ``None`` entries remember files that have no usable index."""

    def __init__(self, max_frames: int, max_seen: int) -> None:
        self.max_frames, self.max_seen = max_frames, max_seen
        self.entries: OrderedDict[str, tuple[_Key, JpegIndex | None]] = OrderedDict()
        self.seen: OrderedDict[str, _Key] = OrderedDict()
        self.frames = 0

    def get(self, path: str, key: _Key) -> tuple[bool, JpegIndex | None]:
        """``(known, index)``: known is False when nothing is cached for this version."""
        entry = self.entries.get(path)
        if entry is None or entry[0] != key:
            return False, None
        self.entries.move_to_end(path)
        return True, entry[1]

    def put(self, path: str, key: _Key, index: JpegIndex | None) -> None:
        self.drop(path)
        self.entries[path] = (key, index)
        self.frames += 1 if index is None else index.num_frames
        while self.frames > self.max_frames and len(self.entries) > 1:
            _, (_, old) = self.entries.popitem(last=False)
            self.frames -= 1 if old is None else old.num_frames

    def drop(self, path: str) -> None:
        entry = self.entries.pop(path, None)
        if entry is not None:
            self.frames -= 1 if entry[1] is None else entry[1].num_frames

    def opened_before(self, path: str, key: _Key) -> bool:
        """Whether this version of ``path`` was opened before; notes that it is now."""
        before = self.seen.get(path) == key
        self.seen[path] = key
        self.seen.move_to_end(path)
        if before:
            return True
        if len(self.seen) > self.max_seen:
            self.seen.popitem(last=False)
        return False

    def clear(self) -> None:
        self.entries.clear()
        self.seen.clear()
        self.frames = 0


_CACHE = _IndexCache(_CACHE_FRAMES, _SEEN_FILES)


def clear_index_cache() -> None:
    """Forget every index this process built or loaded (files are not touched)."""
    _CACHE.clear()


class JpegReader(VideoReader):
    """Random access to the frames of one video; MJPEG decoded with libjpeg-turbo (or nvJPEG
    with ``device="cuda"``), from its :class:`JpegIndex` when it has one, every other codec
    with PyAV as :class:`VideoReader` does. Frames decode exactly as OpenCV's (and PIL's)
    libjpeg-turbo decode does: accurate integer IDCT, smooth chroma upsampling."""

    fast_decode: bool = False
    """Decode with libjpeg-turbo's fast integer IDCT and plain (merged) chroma upsampling on
    the CPU (:class:`FastJpegReader`, backend ``"jpeg_fast"``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 1,
        num_frames: int | None = None,
        decode_timeout: float | None = None,
        device: str = "cpu",
    ) -> None:
        device = str(device)
        if device != "cpu":
            if not device.startswith("cuda"):
                raise ValueError(
                    f"{path}: the 'jpeg' backend decodes on 'cpu' or 'cuda', got device={device!r}"
                )
            if not torch.cuda.is_available():
                raise ValueError(f"{path}: device={device!r} needs CUDA, which is not available")
        self.device = device
        self._index: JpegIndex | None = None
        self._fd: int | None = None
        self._container = None
        self._setup(path, threads, decode_timeout)
        try:
            info = os.stat(self.path)
        except OSError:
            info = None  # the PyAV reader says what is wrong
        self._key = None
        if info is not None:
            self._key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        where, key = os.path.abspath(self.path), self._key
        index = None
        if key is not None:
            known, index = _CACHE.get(where, key)
            if not known:
                index = read_sidecar(self.path)
                if index is not None:
                    _CACHE.put(where, key, index)
        if index is not None:
            self._use_index(index, num_frames)
            return
        super().__init__(
            path, threads=threads, num_frames=num_frames, decode_timeout=decode_timeout
        )
        self.is_jpeg = self._stream.codec_context.name == "mjpeg"
        if device != "cpu" and not self.is_jpeg:
            self.close()
            raise ValueError(
                f"{path}: the 'jpeg' backend decodes only MJPEG on the GPU, this video is "
                f"{self._stream.codec_context.name} (backend='torchcodec' decodes it with NVDEC)"
            )
        if (
            key is not None
            and self.is_jpeg
            and not self._sequential
            and self._exact_seek
            and not _CACHE.get(where, key)[0]
            and _CACHE.opened_before(where, key)
        ):
            index = build_jpeg_index(self.path)
            _CACHE.put(where, key, index)
            if index is not None:
                self._container.close()
                self._container = None
                self._use_index(index, self.num_frames)

    def _use_index(self, index: JpegIndex, num_frames: int | None) -> None:
        """Serve frames from ``index``; the container stays closed."""
        self._index = index
        self.is_jpeg = True
        self._sequential, self._exact_seek = False, True
        self.fps = index.fps
        self.width, self.height = index.width, index.height
        self.num_frames = int(num_frames) if num_frames is not None else index.num_frames
        self.duration = self.num_frames / self.fps

    def _leave_index(self, usable: bool) -> None:
        """Read this file with PyAV from now on; ``usable=False`` also forgets its index in
        this process (a frame read through it was not a whole JPEG image)."""
        if not usable and self._key is not None:
            _CACHE.put(os.path.abspath(self.path), self._key, None)
        self._index = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        deadline = self._deadline
        VideoReader.__init__(
            self,
            self.path,
            threads=self.threads,
            num_frames=self.num_frames,
            decode_timeout=self.decode_timeout,
        )
        self._deadline = deadline

    @property
    def start_time(self) -> float | None:
        """Presentation time of frame 0 in seconds (see :attr:`VideoReader.start_time`)."""
        if self._index is not None:
            return float(self._index.start_pts * self._index.time_base)
        return super().start_time

    def close(self) -> None:
        """Release the file; the reader cannot be used afterwards."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._container is not None:
            super().close()

    def get_frames(
        self, indices: Sequence[int] | np.ndarray, size: int | tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 RGB ``(T, 3, H, W)`` on
        the reader's device; ``size`` as in :meth:`VideoReader.get_frames`."""
        if self._index is None and (not self.is_jpeg or self._sequential or not self._exact_seek):
            return super().get_frames(indices, size)
        idx = self._check_indices(indices)
        height, width = output_size(self.height, self.width, size)
        if len(idx) == 0:
            return torch.empty((0, 3, height, width), dtype=torch.uint8, device=self.device)
        self._start_clock()
        if len(idx) == 1 or bool(np.all(idx[1:] > idx[:-1])):  # a clip: sorted, no repeats
            wanted, inverse = idx, None
        else:
            wanted, inverse = np.unique(idx, return_inverse=True)
        try:
            if self._index is not None:
                if wanted[-1] >= self._index.num_frames:
                    self._leave_index(usable=True)  # past the last packet: PyAV says why
                    raise _Fallback
                keys, images = self._read(wanted)
            else:
                packets = self._packets(wanted.tolist())
                keys = [id(p) for p in packets]
                images = [np.frombuffer(memoryview(p), np.uint8) for p in packets]
            if self.device == "cpu":
                frames = self._decode_cpu(keys, images, height, width)
            else:
                frames = self._decode_gpu(keys, images, height, width)
        except _Fallback:
            if self._index is not None:
                self._leave_index(usable=False)
            frames = super().get_frames(wanted, size).to(self.device)
        if inverse is None:
            return frames
        return frames.index_select(0, torch.from_numpy(inverse.reshape(-1)).to(frames.device))

    def _read(self, wanted: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
        """The JPEG bytes of frames ``wanted`` (sorted, unique) from the index: one pread per
        run of frames less than 64 KiB apart. Returns each frame's offset (frames showing one
        packet share it) and bytes."""
        index = self._index
        offsets, sizes = index.offsets[wanted], index.sizes[wanted]
        ends = offsets + sizes
        breaks = (np.flatnonzero(offsets[1:] > ends[:-1] + _READ_GAP) + 1).tolist()
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                raise _Fallback from None
        starts, lengths = offsets.tolist(), sizes.tolist()
        images: list[np.ndarray] = []
        for lo_row, hi_row in zip([0, *breaks], [*breaks, len(starts)], strict=True):
            lo, hi = starts[lo_row], int(ends[hi_row - 1])
            data = os.pread(self._fd, hi - lo, lo)
            if len(data) != hi - lo:
                raise _Fallback  # the file was cut short after the index was made
            for row in range(lo_row, hi_row):
                at = starts[row] - lo
                if data[at : at + 2] != _SOI:
                    raise _Fallback
                images.append(np.frombuffer(data, np.uint8, lengths[row], at))
        return starts, images

    def _forget_decoder_state(self) -> None:
        """The container was moved: the PyAV path must seek or reopen before it decodes."""
        self._fresh = False
        self._frames, self._pending, self._prev, self._pos = None, None, None, None

    def _packets(self, wanted: list[int]) -> list[Any]:
        """The packet shown at each of ``wanted`` (sorted, unique), read without decoding."""
        if self._start_pts is None:  # frame 0's timestamp: the first packet's, read undecoded
            if not self._fresh:
                self._seek_to(0)
            first = next((p for p in self._demux() if p.size), None)
            if first is None or first.pts is None:
                raise _Fallback
            self._start_pts = first.pts
        start, scale = self._start_pts, self._scale
        out: list[Any] = []
        packets, pos, current, before = None, None, None, None
        for target in wanted:
            if packets is None or pos is None or target - pos > MIN_SEEK_GAP:
                self._seek_to(start + math.floor((target + 0.4) / scale))
                packets, pos, current, before = self._demux(), None, None, None
            while pos is None or pos < target:
                packet = next(packets, None)
                if packet is None:
                    raise _Fallback  # the end came first: the PyAV path says what is wrong
                self._check_deadline()
                if not packet.size:
                    continue
                if packet.pts is None or (current is not None and packet.pts <= current.pts):
                    raise _Fallback
                j = round((packet.pts - start) * scale)
                if pos is None and j > target:
                    raise _Fallback  # the seek landed past the target
                before, current, pos = current, packet, j
            # No packet maps to ``target`` when ``pos`` passed it: the one before is on screen.
            out.append(current if pos == target else before)
        return out

    def _seek_to(self, pts: int) -> None:
        self._forget_decoder_state()
        try:
            self._container.seek(pts, backward=True, any_frame=False, stream=self._stream)
        except av.error.FFmpegError:
            raise _Fallback from None

    def _demux(self) -> Any:
        """The stream's packets from the current position; a read error ends them (the PyAV
        path then handles the damaged file)."""
        self._forget_decoder_state()
        demuxer = self._container.demux(self._stream)
        while True:
            try:
                yield next(demuxer)
            except StopIteration:
                return
            except av.error.ExitError:
                raise VideoDecodeError(self.path, "reading timed out") from None
            except av.error.FFmpegError:
                return

    def _decode_cpu(
        self, keys: list[int], images: list[np.ndarray], height: int, width: int
    ) -> torch.Tensor:
        """Decode the JPEG ``images`` (uint8 arrays) into one ``(T, 3, height, width)`` tensor;
        rows with the same key are one packet, decoded once. libjpeg-turbo writes RGB pixels
        straight into the clip's frames-last buffer, so the tensor comes back in channels-last
        strides (a view of that buffer): the values are those of any other layout, and a crop
        or resize of it needs no copy first."""
        out = np.empty((len(images), height, width, 3), dtype=np.uint8)
        factor = reduced_factor(self.height, self.width, height, width)
        shape = (-(-self.height // factor), -(-self.width // factor), 3)
        scaled = shape[:2] != (height, width)
        scratch = np.empty(shape, dtype=np.uint8) if scaled else None
        timed = self.decode_timeout is not None
        fast = self.fast_decode
        done: dict[int, int] = {}
        for row, (key, data) in enumerate(zip(keys, images, strict=True)):
            if key in done:  # one packet on screen at several wanted indices
                out[row] = out[done[key]]
                continue
            if timed:
                self._check_deadline()
            target = scratch if scaled else out[row]
            try:
                # EXIF orientation is not applied (libjpeg ignores it, as FFmpeg does).
                image = simplejpeg.decode_jpeg(
                    data,
                    "RGB",
                    fastdct=fast,
                    fastupsample=fast,
                    min_height=shape[0],
                    min_width=shape[1],
                    min_factor=factor,
                    buffer=target,
                )
            except ValueError:
                raise _Fallback from None  # damaged, CMYK, or a libjpeg warning
            if image.shape != shape:
                raise _Fallback  # not a whole JPEG frame (interlaced fields) or another size
            if scaled:
                cv2.resize(image, (width, height), dst=out[row], interpolation=cv2.INTER_AREA)
            done[key] = row
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def _decode_gpu(
        self, keys: list[int], images: list[Any], height: int, width: int
    ) -> torch.Tensor:
        unique: dict[int, int] = {}
        data = []
        for key, image in zip(keys, images, strict=True):
            if key not in unique:
                unique[key] = len(data)
                data.append(torch.frombuffer(bytearray(image), dtype=torch.uint8))
        try:
            decoded = _gpu_decode_jpeg()(data, mode="RGB", device=self.device)
        except RuntimeError:
            raise _Fallback from None
        if any(tuple(im.shape) != (3, self.height, self.width) for im in decoded):
            raise _Fallback
        frames = torch.stack(decoded)
        if (height, width) != (self.height, self.width):
            from torchvision.transforms.v2.functional import resize

            frames = resize(frames, [height, width], antialias=True)
        rows = torch.tensor([unique[key] for key in keys], device=frames.device)
        return frames.index_select(0, rows)


class FastJpegReader(JpegReader):
    """:class:`JpegReader` with libjpeg-turbo's fast decode on the CPU (backend ``"jpeg_fast"``,
    and ``"auto"``): the fast integer IDCT (``JDCT_IFAST``) and chroma upsampled by pixel
    replication merged with the colour conversion, instead of the accurate IDCT and the smooth
    (triangle-filter) upsampling. Pixels are no longer OpenCV's: they differ from the exact
    decode by rounding, and most at sharp colour edges (where 4:2:0 coding has already blurred
    the colour), while staying as close to the frames the file was made from (the README's
    data section has the figures). nvJPEG (``device="cuda"``) has no fast mode and decodes as
    :class:`JpegReader`.
    """

    fast_decode = True
