"""Decoding frames by index: PyAV by default; torchcodec (CPU or CUDA) and decord as options.

:func:`open_reader` picks the backend (:class:`VideoReader` is PyAV's); every backend numbers
frames as below and returns ``get_frames`` as uint8 RGB ``(T, 3, H, W)``.

Frame ``i`` of a video is the frame whose presentation timestamp maps to ``i`` by
``round((pts - start_pts) * time_base * fps)``, where ``start_pts`` is the timestamp of the
first decoded frame. The video index (:mod:`vssl.data.index`) counts frames by the same rule,
so every index it reports usable is one the reader delivers. Files whose frames carry no
timestamps, or whose timestamps go backwards in decoding order, fall back to counting decoded
frames from the start. In MPEG program streams (``.mpg``, ``.vob``) FFmpeg's seeks are not
frame-accurate, so their frames are reached, and counted, by decoding from the start.

The reader decodes only what it needs: it seeks to the keyframe at or before the first wanted
frame, decodes forward, converts (and resizes, inside swscale) only the wanted frames straight
into one preallocated ``uint8`` output, and seeks again across gaps longer than a keyframe
interval.

``decode_timeout`` bounds the time one reader spends on a clip: it is given to FFmpeg as the
open and read timeout (a stalled network or FUSE mount raises instead of blocking), and the
decode loop checks the deadline between packets, so a clip that takes longer (a huge or
pathological file) raises :class:`VideoDecodeError`. A single packet inside the decoder is not
interrupted; a packet decodes in milliseconds, so the limit holds to that granularity.
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np
import torch
from av.video.reformatter import Interpolation, VideoReformatter

# Decoding on through a gap shorter than this many frames (or shorter than the keyframe interval
# seen so far) is cheaper than seeking, which lands on a keyframe that may lie behind us.
MIN_SEEK_GAP = 32
# Seeks that land past the wanted frame are retried this many times, further back each time,
# before decoding from the start of the file.
_MAX_SEEK_RETRIES = 4
# Containers whose seeks are not frame-accurate: FFmpeg seeks in MPEG program streams by a
# binary search on timestamps that lands inside a frame, after which the demuxer gives the
# following packets the timestamps of their neighbours (off by a frame or more). Frames of these
# files are reached by decoding from the start instead.
_INEXACT_SEEK_FORMATS = frozenset({"mpeg"})
# swscale's area filter is both the most accurate and the fastest for downscaling.
_INTERPOLATION = Interpolation.AREA
# swscale emits planar G, B, R; these are their channel positions in RGB order.
_GBRP_TO_RGB = (1, 2, 0)


class VideoDecodeError(RuntimeError):
    """A video could not be opened or decoded; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class _Scan(NamedTuple):
    num_frames: int
    start_pts: int | None
    width: int
    height: int


class _NoTimestamps(Exception):
    """A decoded frame has no pts, or pts going backwards (a damaged or packed-B-frame file):
    the reader must count frames from the start instead."""


def _check_file(path: str) -> None:
    """Raise VideoDecodeError unless ``path`` is an existing, non-empty regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "file not found") from None
    except PermissionError:
        raise VideoDecodeError(path, "permission denied") from None
    if not stat.S_ISREG(info.st_mode):
        raise VideoDecodeError(path, "not a regular file")
    if info.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")


def _open_container(path: str, threads: int, timeout: float | None = None) -> tuple[Any, Any]:
    """Open ``path`` and its best video stream, or raise VideoDecodeError saying why not.

    ``timeout`` (seconds) is FFmpeg's limit on a blocking open or read."""
    _check_file(path)
    try:
        container = av.open(path, metadata_errors="ignore", timeout=timeout)
    except PermissionError:
        raise VideoDecodeError(path, "permission denied") from None
    except av.error.ExitError:
        raise VideoDecodeError(path, f"opening timed out (timeout {timeout} s)") from None
    except av.error.InvalidDataError:
        raise VideoDecodeError(
            path, "FFmpeg cannot read it (invalid data: not a video, or damaged/truncated)"
        ) from None
    except (av.error.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise VideoDecodeError(path, f"cannot open: {reason}") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    stream = container.streams.best("video") or container.streams.video[0]
    stream.codec_context.thread_count = threads
    stream.codec_context.thread_type = "SLICE" if threads == 1 else "AUTO"
    return container, stream


def _seeks_exactly(container: Any) -> bool:
    """Whether a seek in this container lands on a frame with its true timestamp."""
    return not _INEXACT_SEEK_FORMATS.intersection(container.format.name.split(","))


def _stream_fps(stream: Any) -> float | None:
    """The stream's frame rate: its average rate, else FFmpeg's guess, else the base rate."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _pts_scale(stream: Any, fps: float | None) -> float | None:
    """Frames per pts tick, or None when the stream has no usable time base."""
    if fps is None or not stream.time_base:
        return None
    return float(stream.time_base) * fps


def _decoded_frames(
    container: Any,
    stream: Any,
    skip_before: Callable[[], int | None] | None = None,
    check: Callable[[], None] | None = None,
    skipped: Callable[[Any], None] | None = None,
) -> Iterator[Any]:
    """Frames from the current position to the end; packets the decoder rejects are skipped.

    ``skip_before`` returns a pts below which nobody wants frames: the decoder then drops the
    non-reference frames there (nothing depends on them), which halves the cost of decoding
    from a keyframe up to a wanted frame in typical H.264. In an intra-only stream (MJPEG, every
    frame a keyframe) no frame depends on another, so those packets are not decoded at all;
    each is handed to ``skipped``, which may keep it to decode later.
    ``check`` runs before each packet (the reader's deadline) and may raise.
    """
    context = stream.codec_context
    context.skip_frame = "DEFAULT"
    intra_only = bool(context.codec.intra_only)
    skipping = False
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            if isinstance(exc, av.error.ExitError):  # FFmpeg's read timeout: not a damaged file
                raise VideoDecodeError(container.name, "reading timed out") from None
            # The file breaks off (truncated or damaged): flush what the decoder still holds.
            try:
                yield from stream.codec_context.decode(None)
            except av.error.FFmpegError:
                pass
            return
        if check is not None:
            check()
        if skip_before is not None:
            limit = skip_before()
            skip = limit is not None and packet.pts is not None and packet.pts < limit
            if skip and intra_only:
                if skipped is not None:
                    skipped(packet)
                continue
            if skip != skipping:
                context.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        yield from frames


def _end_pts(container: Any, stream: Any) -> int | None:
    """The stream's end timestamp as the container states it (may be wrong, never trusted)."""
    start = stream.start_time or 0
    if stream.duration:
        return start + stream.duration
    if container.duration and stream.time_base:
        return start + int(container.duration / av.time_base / stream.time_base)
    return None


def _tail_index(container: Any, stream: Any, start: int, scale: float) -> int | None:
    """Index of the last decodable frame, from a seek near the end; None if that fails."""
    end = _end_pts(container, stream)
    if end is None:
        return None
    try:
        container.seek(end, backward=True, any_frame=False, stream=stream)
    except av.error.FFmpegError:
        return None
    last, previous = None, None
    for frame in _decoded_frames(container, stream):
        if frame.pts is None or (previous is not None and frame.pts < previous):
            return None
        previous = frame.pts
        index = round((frame.pts - start) * scale)
        last = index if last is None else max(last, index)
    return last


def _scan_frames(path: str, container: Any, stream: Any, mode: str) -> _Scan:
    """Count the frames a reader can deliver from a freshly opened container.

    ``mode="fast"`` decodes the first frame and the tail after a seek near the end; ``"full"``
    decodes everything. Both use the reader's pts arithmetic; a file without timestamps is
    counted frame by frame. ``num_frames`` is 0 when nothing decodes.
    """
    if mode not in ("fast", "full"):
        raise ValueError(f"unknown probe mode {mode!r}; expected 'fast' or 'full'")
    frames = _decoded_frames(container, stream)
    first = next(frames, None)
    if first is None:
        return _Scan(0, None, 0, 0)
    width, height = first.width, first.height
    scale = _pts_scale(stream, _stream_fps(stream))
    start = first.pts
    if start is None or scale is None:
        return _Scan(1 + sum(1 for _ in frames), None, width, height)
    if mode == "fast" and _seeks_exactly(container):
        last = _tail_index(container, stream, start, scale)
        if last is not None and last >= 0:
            return _Scan(last + 1, start, width, height)
        container, stream = _open_container(path, threads=1)
        with container:
            return _count_all(_decoded_frames(container, stream), start, scale, width, height)
    return _count_all(itertools.chain([first], frames), start, scale, width, height)


def _count_all(frames: Iterator[Any], start: int, scale: float, width: int, height: int) -> _Scan:
    """Decode every frame: the last pts index + 1, or the plain count when timestamps are
    missing or go backwards (then they cannot be trusted)."""
    count, last, timed, previous = 0, -1, True, None
    for frame in frames:
        count += 1
        if frame.pts is None or (previous is not None and frame.pts < previous):
            timed = False
        elif timed:
            previous = frame.pts
            last = max(last, round((frame.pts - start) * scale))
    if not timed or last < 0:
        return _Scan(count, None if not timed else start, width, height)
    return _Scan(last + 1, start, width, height)


def output_size(height: int, width: int, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """The ``(H, W)`` that ``size`` asks for: None keeps the frame size, an int sets the short
    side (aspect kept, long side rounded to an even number), a pair is taken as ``(H, W)``."""
    if size is None:
        return height, width
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        short, long = min(height, width), max(height, width)
        other = max(2, 2 * round(long * int(size) / short / 2))
        return (int(size), other) if height <= width else (other, int(size))
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, (int, np.integer)) and v > 0 for v in size)
    ):
        return int(size[0]), int(size[1])
    raise ValueError(f"size must be None, a positive int or a pair (H, W) of them, got {size!r}")


class VideoReader:
    """Random access to the frames of one video with PyAV, decoding only what is asked for (the
    default backend; :func:`open_reader` opens any of :data:`BACKENDS`, which subclass this).

    ``num_frames`` from the video index is trusted; without it the file is probed the way the
    index probes it. ``threads`` is the decoder's thread count (1 suits DataLoader workers, 0 lets FFmpeg choose).
    ``decode_timeout`` (seconds, None: no limit) bounds opening the file and each
    :meth:`get_frames` call (see the module notes for what it covers).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 1,
        num_frames: int | None = None,
        decode_timeout: float | None = None,
        device: str = "cpu",
    ) -> None:
        self._setup(path, threads, decode_timeout)
        if device != "cpu":
            raise ValueError(
                f"{path}: the 'pyav' backend decodes on the CPU only, got device={device!r} "
                "(backend='torchcodec' decodes on 'cuda')"
            )
        self._start_clock()
        self._container, self._stream = _open_container(self.path, threads, decode_timeout)
        self._fresh = True
        try:
            fps = _stream_fps(self._stream)
            if fps is None:
                raise VideoDecodeError(self.path, "unknown frame rate")
            self.fps = fps
            self._scale = _pts_scale(self._stream, fps)
            self._sequential = self._scale is None
            self._exact_seek = _seeks_exactly(self._container)
            self._start_pts: int | None = None
            self.width = self._stream.codec_context.width
            self.height = self._stream.codec_context.height
            if num_frames is None:
                scan = _scan_frames(self.path, self._container, self._stream, "fast")
                self._fresh = False
                if scan.num_frames == 0:
                    raise VideoDecodeError(self.path, "no decodable video frames")
                num_frames = scan.num_frames
                self._start_pts = scan.start_pts
                self._sequential = scan.start_pts is None
                self.width = self.width or scan.width
                self.height = self.height or scan.height
            if not (self.width and self.height):
                raise VideoDecodeError(self.path, "unknown frame size")
        except BaseException:
            self._container.close()
            raise
        self.num_frames = int(num_frames)
        self.duration = self.num_frames / self.fps
        self._reformatter = VideoReformatter()
        self._frames: Iterator[Any] | None = None
        self._pending: Any = None  # a frame taken from _frames to look at, not yet processed
        self._skip_before: int | None = None  # pts below which non-reference frames are dropped
        self._pos: int | None = None
        self._prev: Any = None
        self._from_start = False
        self._last_key: int | None = None
        self._gop = 0
        # In an intra-only stream every frame before a wanted one is skipped undecoded (the last
        # is kept as a packet for gap filling); otherwise the frame just before is decoded too.
        self._intra_only = bool(self._stream.codec_context.codec.intra_only)
        self._keep = 0.5 if self._intra_only else 1.5
        self._held: Any = None

    def _set_stream(self, fps: float | None, width: int, height: int, count: int | None) -> None:
        """The stream's rate, size and frame count, checked (the other backends' constructors)."""
        if not fps or not fps > 0:
            raise VideoDecodeError(self.path, "unknown frame rate")
        if not count:
            raise VideoDecodeError(self.path, "no decodable video frames")
        self.fps = float(fps)
        self.width, self.height = int(width), int(height)
        self.num_frames = int(count)
        self.duration = self.num_frames / self.fps

    def _setup(self, path: str | Path, threads: int, decode_timeout: float | None) -> None:
        """The settings every backend shares, checked."""
        self.path = str(path)
        self.threads = threads
        if decode_timeout is not None and not decode_timeout > 0:
            raise ValueError(
                f"{path}: decode_timeout must be positive seconds, got {decode_timeout}"
            )
        self.decode_timeout = decode_timeout
        self._deadline = math.inf

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, {self.num_frames} frames, {self.fps:g} fps, "
            f"{self.width}x{self.height})"
        )

    @property
    def start_time(self) -> float | None:
        """Presentation time of frame 0 in seconds, the clock other streams of the file (its
        audio) line up with; None until frames were read, or when frames carry no timestamps
        (and for backends that do not say)."""
        pts, stream = getattr(self, "_start_pts", None), getattr(self, "_stream", None)
        if pts is None or getattr(self, "_sequential", True) or not stream.time_base:
            return None
        return float(pts * stream.time_base)

    def close(self) -> None:
        """Release the file; the reader cannot be used afterwards."""
        self._frames, self._pending, self._prev = None, None, None
        self._container.close()

    def _start_clock(self) -> None:
        if self.decode_timeout is not None:
            self._deadline = time.monotonic() + self.decode_timeout

    def _check_deadline(self) -> None:
        if time.monotonic() > self._deadline:
            raise VideoDecodeError(
                self.path, f"decoding took longer than decode_timeout={self.decode_timeout:g} s"
            )

    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise ValueError(
                f"{self.path}: frame indices must be a 1-D sequence of ints, got {idx.dtype} "
                f"of shape {idx.shape}"
            )
        idx = idx.astype(np.int64, copy=False)
        bad = idx[(idx < 0) | (idx >= self.num_frames)]
        if bad.size:
            raise VideoDecodeError(
                self.path,
                f"frame indices {sorted(set(bad.tolist()))[:10]} out of range for a video of "
                f"{self.num_frames} frames",
            )
        return idx

    def get_frames(
        self, indices: Sequence[int] | np.ndarray, size: int | tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 RGB ``(T, 3, H, W)``.

        ``size`` resizes inside the colour conversion: an int sets the short side, a pair
        ``(H, W)`` the exact size.
        """
        idx = self._check_indices(indices)
        height, width = output_size(self.height, self.width, size)
        out = torch.empty((len(idx), 3, height, width), dtype=torch.uint8)
        if len(idx) == 0:
            return out
        self._start_clock()
        wanted, inverse, counts = np.unique(idx, return_inverse=True, return_counts=True)
        rows = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
        try:
            self._fill(wanted.tolist(), rows, out.numpy())
        except _NoTimestamps:
            self._sequential = True
            self._frames, self._pending = None, None
            self._fill(wanted.tolist(), rows, out.numpy())
        return out

    def _fill(self, wanted: list[int], rows: list[np.ndarray], out: np.ndarray) -> None:
        if self._start_pts is None and not self._sequential:
            self._find_start()
        p, retries = 0, 0
        while p < len(wanted):
            seeked = not self._can_continue_to(wanted[p])
            if seeked:
                self._seek(wanted[p], retries)
            p, overshot = self._decode_run(wanted, rows, out, p, seeked)
            retries = retries + 1 if overshot else 0

    def _find_start(self) -> None:
        """Learn the first frame's pts (the origin of frame indices), keeping that frame queued."""
        self._rewind()
        first = self._next_frame()
        if first is None:
            raise VideoDecodeError(self.path, "no decodable video frames")
        if first.pts is None:
            raise _NoTimestamps
        self._start_pts = first.pts
        self._pending = first

    def _decode_from_here(self) -> Iterator[Any]:
        self._held = None
        return _decoded_frames(
            self._container,
            self._stream,
            lambda: self._skip_before,
            self._check_deadline,
            self._hold if self._intra_only else None,
        )

    def _hold(self, packet: Any) -> None:
        """Keep the last packet an intra-only stream skipped: it is the frame on screen at a
        wanted index that no frame maps to (see :meth:`_shown_at`)."""
        self._held = packet

    def _shown_at(self, frame: Any) -> Any:
        """The frame on screen just before ``frame``: the last decoded one, or in an intra-only
        stream the last skipped packet after it, decoded now (it depends on no other frame)."""
        held, self._held = self._held, None
        if (
            held is None
            or held.pts is None
            or (self._prev is not None and held.pts <= self._prev.pts)
        ):
            return self._prev
        try:
            frames = held.decode()
        except av.error.EOFError:  # the stream's end flushed the decoder: reset it, try again
            self._stream.codec_context.flush_buffers()
            try:
                frames = held.decode()
            except av.error.FFmpegError:
                return self._prev
        except av.error.FFmpegError:
            return self._prev
        shown = frames[-1] if frames and frames[-1].pts is not None else None
        if shown is None or shown.pts >= frame.pts:
            return self._prev
        self._prev = shown  # also the frame on screen at later wanted indices before ``frame``
        return shown

    def _next_frame(self) -> Any:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        return next(self._frames, None)

    def _check_order(self, frame: Any) -> None:
        """Look at the frame after ``frame``: if its pts goes back, an index that seemed skipped
        is only out of order, and timestamps cannot be trusted."""
        following = self._next_frame()
        if following is not None and (following.pts is None or following.pts < frame.pts):
            raise _NoTimestamps
        self._pending = following

    def _seek_gap(self) -> float:
        if self._sequential or not self._exact_seek:
            return math.inf
        return max(MIN_SEEK_GAP, self._gop)

    def _can_continue_to(self, target: int) -> bool:
        return (
            self._frames is not None
            and self._pos is not None
            and self._pos < target
            and target - self._pos <= self._seek_gap()
        )

    def _rewind(self) -> None:
        """Decode from the first frame of the file (reopening it unless still untouched)."""
        if not self._fresh:
            self._container.close()
            self._container, self._stream = _open_container(
                self.path, self.threads, self.decode_timeout
            )
        self._fresh = False
        self._frames, self._pending = self._decode_from_here(), None
        self._skip_before = None
        self._pos, self._prev = -1, None
        self._from_start, self._last_key = True, None

    def _seek(self, target: int, retries: int) -> None:
        """Position the decoder at the keyframe at or before ``target`` (further back on retry)."""
        if retries:
            target -= 4 << retries
        if self._sequential or not self._exact_seek or target <= 0 or retries > _MAX_SEEK_RETRIES:
            self._rewind()
            return
        pts = self._start_pts + math.floor((target + 0.4) / self._scale)
        try:
            self._container.seek(pts, backward=True, any_frame=False, stream=self._stream)
        except av.error.FFmpegError:
            self._rewind()
            return
        self._fresh = False
        self._frames, self._pending = self._decode_from_here(), None
        self._skip_before = None
        self._pos, self._prev, self._from_start, self._last_key = None, None, False, None

    def _index_of(self, frame: Any) -> int:
        if self._sequential:
            return self._pos + 1
        if frame.pts is None or (self._prev is not None and frame.pts < self._prev.pts):
            raise _NoTimestamps
        if self._start_pts is None:
            self._start_pts = frame.pts
        return round((frame.pts - self._start_pts) * self._scale)

    def _decode_run(
        self, wanted: list[int], rows: list[np.ndarray], out: np.ndarray, p: int, seeked: bool
    ) -> tuple[int, bool]:
        """Decode forward filling ``wanted[p:]``; stop at the end, before a gap worth a seek, or
        (returning ``overshot``) when a seek landed past ``wanted[p]``. After a seek the run
        always reaches ``wanted[p]``, so every call makes progress."""
        n, gap, first = len(wanted), self._seek_gap(), p
        if not self._sequential and self._exact_seek and self._start_pts is not None:
            # Drop what lies before the frame ahead of wanted[p] (kept for gap filling). Not in
            # MPEG program streams: their packets' timestamps are not their pictures', so frames
            # dropped there shift the timestamps of the frames that follow.
            self._skip_before = self._start_pts + math.floor((wanted[p] - self._keep) / self._scale)
        done_frame, done_row = None, -1
        while (frame := self._next_frame()) is not None:
            j = self._index_of(frame)
            if self._pos is None:
                if j > wanted[p] and not self._from_start:
                    return p, True
                # No keyframe lies between the landing point and the target.
                self._gop = max(self._gop, wanted[p] - j)
            if frame.key_frame:
                if self._last_key is not None and j > self._last_key:
                    self._gop = max(self._gop, j - self._last_key)
                self._last_key = j
            if p < n and wanted[p] < j and self._prev is not None and not self._sequential:
                self._check_order(frame)
            while p < n and wanted[p] <= j:
                # A wanted index no frame maps to (variable frame rate, damage) shows the frame
                # on screen at that time: the previous one.
                if wanted[p] == j:
                    source = frame
                else:
                    source = self._shown_at(frame) if self._intra_only else self._prev
                    source = frame if source is None else source
                if source is done_frame:
                    out[rows[p]] = out[done_row]
                else:
                    self._convert(source, out, rows[p])
                    done_frame, done_row = source, rows[p][0]
                p += 1
                if p < n and not self._sequential and self._exact_seek:
                    # Frames between here and the one before wanted[p] are not needed either.
                    self._skip_before = self._start_pts + math.floor(
                        (wanted[p] - self._keep) / self._scale
                    )
            self._prev, self._pos = frame, j
            if p == n or (wanted[p] - j > gap and (p > first or not seeked)):
                return p, False
        self._frames = None
        if self._pos is None and not self._from_start:
            # The seek landed where nothing decodes up to the end (past the last keyframe, or
            # on frames that need an earlier one, as in MPEG transport streams): seek further back.
            return p, True
        last = f"frame {self._pos}" if self._pos is not None and self._pos >= 0 else "no frame"
        raise VideoDecodeError(
            self.path,
            f"frames {wanted[p : p + 10]} could not be decoded: decoding ends at {last} of "
            f"{self.num_frames} (truncated or damaged file?)",
        )

    def _convert(self, frame: Any, out: np.ndarray, rows: np.ndarray) -> None:
        height, width = out.shape[2], out.shape[3]
        first = rows[0]
        if width % 16 and (height, width) == (frame.height, frame.width):
            # swscale's unscaled conversion of 4:2:0 and 4:2:2 video to planar GBR leaves the
            # last columns of such widths unwritten (2 to 8 past a multiple of 16 in the FFmpeg
            # PyAV bundles); its packed RGB conversion is exact and otherwise the same.
            rgb = self._reformatter.reformat(frame, format="rgb24", threads=self.threads)
            plane = rgb.planes[0]
            pixels = np.frombuffer(plane, dtype=np.uint8).reshape(height, plane.line_size)
            out[first] = pixels[:, : 3 * width].reshape(height, width, 3).transpose(2, 0, 1)
        else:
            rgb = self._reformatter.reformat(
                frame,
                width=width,
                height=height,
                format="gbrp",
                interpolation=_INTERPOLATION,
                threads=self.threads,
            )
            for channel, plane in zip(_GBRP_TO_RGB, rgb.planes, strict=True):
                pixels = np.frombuffer(plane, dtype=np.uint8).reshape(height, plane.line_size)
                out[first, channel] = pixels[:, :width]
        if len(rows) > 1:
            out[rows[1:]] = out[first]


BACKENDS: dict[str, type[VideoReader] | str] = {
    "pyav": VideoReader,
    "torchcodec": "vssl.data.reader_torchcodec:TorchCodecReader",
    "decord": "vssl.data.reader_decord:DecordReader",
    "jpeg": "vssl.data.reader_jpeg:JpegReader",
    "jpeg_fast": "vssl.data.reader_jpeg:FastJpegReader",
    "auto": "vssl.data.reader_jpeg:FastJpegReader",
}
"""Reader classes by backend name, a class or ``"module:Class"`` imported on first use; register
a subclass of VideoReader to add one. ``"auto"`` (`VideoDataset`'s default) is ``"jpeg_fast"``:
MJPEG decoded with libjpeg-turbo's fast IDCT and chroma upsampling, every other codec with PyAV;
``"jpeg"`` decodes MJPEG exactly as OpenCV does."""


def reader_class(backend: str, path: str | Path | None = None) -> type[VideoReader]:
    """The reader class of ``backend``; an unknown name raises a ValueError listing the known."""
    entry = BACKENDS.get(backend)
    if entry is None:
        where = f"{path}: " if path is not None else ""
        raise ValueError(f"{where}unknown video backend {backend!r}; available: {sorted(BACKENDS)}")
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = BACKENDS[backend] = getattr(importlib.import_module(module), name)
    return entry


def open_reader(
    path: str | Path,
    backend: str = "pyav",
    *,
    threads: int = 1,
    num_frames: int | None = None,
    decode_timeout: float | None = None,
    device: str = "cpu",
) -> VideoReader:
    """A reader of ``path`` from ``backend`` (see :data:`BACKENDS`); every backend numbers frames
    and returns ``get_frames`` as :class:`VideoReader` does. ``device`` ("cpu", or "cuda" for
    torchcodec's NVDEC decoder) is where frames are decoded and returned."""
    return reader_class(backend, path)(
        path, threads=threads, num_frames=num_frames, decode_timeout=decode_timeout, device=device
    )
