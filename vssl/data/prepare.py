"""Preparing a dataset for fast random access: ``python -m vssl prepare SRC DST``.

Raw dataset files (Kinetics from YouTube above all) have long keyframe intervals, B-frames and
large frames, so a random training clip costs decoding hundreds of frames. :func:`prepare`
transcodes every video under ``SRC`` into ``DST`` at a small short side, with a keyframe
every ``gop`` frames and no B-frames, or every frame a keyframe (all-intra MJPEG, the
default: a clip then decodes only its own frames; H.264 through libx264 with
``tune=fastdecode`` takes less disk and reads slower), keeping relative paths (only the extension may change) and copying the
annotation files verbatim, so the same layout loads ``DST`` with the same items and labels.

Output frame ``i`` is the frame :class:`~vssl.data.reader.VideoReader` returns for index ``i``
of the source (timestamps mapped the reader's way, gaps filled with the frame on screen), so
frame counts and durations are unchanged. Each output is written under a temporary name in its
folder, verified (frame count and duration as the reader counts them, size, codec, keyframe
interval, first and last frame decodable), and only then renamed into place and recorded in
``DST/.vssl_prepare/manifest.jsonl`` with the settings and the source's size and mtime. An
MJPEG output gets its frame index beside it, ``<output>.jpgidx``
(:class:`~vssl.data.reader_jpeg.JpegIndex`: each frame's byte range, so the jpeg reader reads
a clip without opening the container), written just before the output is renamed into place. A
rerun skips recorded outputs, finishes what an interrupted run left (leftover temporary files
are deleted; an output renamed but not yet recorded is verified and kept), and refuses to
replace an output made with other settings or from a changed source unless ``overwrite``.
Sources that cannot be read are listed with the reason in ``DST/prepare_report.json`` and on
the console; they never stop the run.

With ``flow`` (``--flow``), each prepared video also gets its optical flow beside it,
``<output>.flow`` (`vssl.data.flow.FlowFile`): DIS flow (`vssl.data.flow.DEFAULT_DIS_PRESET`)
of every pair of consecutive frames as the data pipeline decodes them (backend ``auto``, at the
stored size), which ``VideoDataModule(flow="prepared")`` reads instead of computing flow in the
workers. Flow files follow the same rules: written under a temporary name, verified (frames - 1
fields, first and last decodable), renamed, recorded in the manifest with the video they
describe; a rerun skips them, and one made with other settings or from another version of its
video is replaced only with ``overwrite``. A video that is transcoded again loses its old flow
file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import filecmp
import fractions
import itertools
import json
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

from vssl.data import flow as flowlib
from vssl.data.index import probe_video
from vssl.data.layouts import is_video
from vssl.data.reader import (
    VideoDecodeError,
    VideoReader,
    _open_container,
    _pts_scale,
    _stream_fps,
    output_size,
)
from vssl.data.reader_jpeg import SIDECAR_SUFFIX, build_jpeg_index, read_sidecar
from vssl.errors import UserError

REPORT_NAME = "prepare_report.json"
"""The report file written at the top of ``DST``."""
STATE_DIR = ".vssl_prepare"
"""Hidden folder in ``DST`` holding the manifest and the lock (layouts skip hidden folders)."""
TMP_SUFFIX = ".vssl-tmp"
"""Ending of temporary outputs; not a video extension, so no layout ever picks one up."""
ANNOTATION_EXTENSIONS: frozenset[str] = frozenset(
    {".txt", ".csv", ".tsv", ".json", ".jsonl", ".lst", ".list", ".yaml", ".yml"}
)
"""Non-video files copied verbatim (split lists, annotation tables, label maps)."""

#: codec name -> (output extension, container format, FFmpeg encoder, encoder pixel format)
CODECS: dict[str, tuple[str, str, str, str]] = {
    "h264": (".mp4", "mp4", "libx264", "yuv420p"),
    "mjpeg": (".mp4", "mp4", "mjpeg", "yuvj420p"),
}
# Audio codecs copied into MP4 as they are; others are re-encoded as AAC.
_MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus"})
_MANIFEST_VERSION = 1
REPORT_LIMIT = 1000
"""At most this many files that are neither videos nor annotations are named in the report."""
# Errors that make every further output fail too: the run stops.
_FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class PrepareError(UserError, ValueError):
    """Bad arguments or a ``DST`` that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Settings:
    """What an output depends on besides its source; recorded with every output."""

    short_side: int
    gop: int
    codec: str
    fps: float | None
    crf: int
    keep_audio: bool

    def key(self) -> dict[str, Any]:
        """The settings as recorded in the manifest."""
        return {"version": _MANIFEST_VERSION, **asdict(self)}


@dataclass(frozen=True)
class _Job:
    source: str
    output: str
    rel_source: str
    rel_output: str
    settings: Settings
    adopt: bool  # the output exists unrecorded: verify it instead of transcoding


@dataclass
class _Outcome:
    job: _Job
    status: Literal["done", "adopted", "failed", "conflict", "fatal"]
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    source_key: list[int] | None = None
    output_size: int = 0


@dataclass
class PrepareSummary:
    """What one :func:`prepare` run did; ``lines()`` is what it prints at the end."""

    src: str
    dst: str
    settings: dict[str, Any]
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    annotations_copied: int = 0
    annotations_unchanged: int = 0
    ignored: list[str] = field(default_factory=list)  # the first REPORT_LIMIT of them
    ignored_count: int = 0
    frames: int = 0
    transcode_seconds: float = 0.0
    wall_seconds: float = 0.0
    workers: int = 1
    bytes_before: int = 0
    bytes_after: int = 0
    fatal: str | None = None
    report: str = ""
    flow: bool = False
    flow_done: int = 0
    flow_skipped: int = 0
    flow_fields: int = 0
    flow_seconds: float = 0.0
    flow_bytes: int = 0

    @property
    def videos_per_core_second(self) -> float:
        """Videos transcoded per second of one worker's time (the rate to plan with)."""
        return self.done / self.transcode_seconds if self.transcode_seconds else 0.0

    @property
    def frames_per_core_second(self) -> float:
        """Frames written per second of one worker's time."""
        return self.frames / self.transcode_seconds if self.transcode_seconds else 0.0

    def lines(self) -> list[str]:
        """The summary printed at the end of a run."""
        lines = [
            f"prepared: {self.done} done, {self.skipped} skipped (already done), "
            f"{len(self.failed)} failed, {len(self.conflicts)} conflicts; annotation files: "
            f"{self.annotations_copied} copied, {self.annotations_unchanged} unchanged"
        ]
        if self.done:
            lines.append(
                f"transcode: {self.videos_per_core_second:.3f} videos/s per core, "
                f"{self.frames_per_core_second:.0f} frames/s per core ({self.workers} "
                f"worker{'s' if self.workers > 1 else ''}, "
                f"{self.done / self.wall_seconds:.3f} videos/s in {self.wall_seconds:.1f} s)"
            )
        if self.bytes_before:
            lines.append(
                f"size: {_megabytes(self.bytes_before)} -> {_megabytes(self.bytes_after)} "
                f"({100 * self.bytes_after / self.bytes_before:.1f}%) over "
                f"{self.done + self.skipped} videos"
            )
        if self.flow:
            rate = self.flow_fields / self.flow_seconds if self.flow_seconds else 0.0
            lines.append(
                f"flow: {self.flow_done} done, {self.flow_skipped} skipped (already done)"
                + (f", {rate:.0f} fields/s per core" if self.flow_done else "")
                + f", {_megabytes(self.flow_bytes)} of flow files"
            )
        if self.ignored_count:
            lines.append(
                f"not copied (neither videos nor annotations): {self.ignored_count} "
                f"(first: {self.ignored[0]})"
            )
        if self.fatal:
            lines.append(f"stopped: {self.fatal}")
        lines.append(f"report: {self.report}")
        return lines


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _file_key(path: str) -> list[int]:
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


def _check_settings(settings: Settings, workers: int | None) -> None:
    if not (isinstance(settings.short_side, int) and settings.short_side >= 2):
        raise PrepareError(f"short_side must be an int >= 2, got {settings.short_side!r}")
    if settings.short_side % 2:
        raise PrepareError(
            f"short_side must be even (H.264 and 4:2:0 colour need even sizes), got "
            f"{settings.short_side}"
        )
    if not (isinstance(settings.gop, int) and settings.gop >= 1):
        raise PrepareError(f"gop must be an int >= 1, got {settings.gop!r}")
    if settings.codec not in CODECS:
        raise PrepareError(f"unknown codec {settings.codec!r}; expected one of {sorted(CODECS)}")
    if settings.fps is not None and not (math.isfinite(settings.fps) and settings.fps > 0):
        raise PrepareError(f"fps must be positive (or None to keep), got {settings.fps!r}")
    if not 0 <= settings.crf <= 51:
        raise PrepareError(f"crf must be 0..51, got {settings.crf!r}")
    if workers is not None and workers < 1:
        raise PrepareError(f"workers must be >= 1, got {workers!r}")


def _check_roots(src: Path, dst: Path) -> tuple[Path, Path]:
    """Resolved ``src`` and ``dst``, or PrepareError when they cannot be used together."""
    if not src.is_dir():
        raise PrepareError(f"{src}: source folder not found (no such directory)")
    real_src, real_dst = src.resolve(), dst.resolve()
    if real_dst == real_src:
        raise PrepareError(f"{dst}: DST is SRC; write the prepared copy to another folder")
    if _inside(real_dst, real_src):
        raise PrepareError(
            f"{dst}: DST lies inside SRC ({src}); pick a folder outside it, or SRC's "
            "videos would include the prepared ones"
        )
    if _inside(real_src, real_dst):
        raise PrepareError(f"{src}: SRC lies inside DST ({dst}); pick a DST outside SRC")
    if real_dst.exists() and not real_dst.is_dir():
        raise PrepareError(f"{dst}: DST exists and is not a folder")
    return real_src, real_dst


def _scan_source(src: Path, dst: Path) -> tuple[list[str], list[str], list[str], int]:
    """Relative paths of the videos, the annotation files and the first other files under
    ``src`` (extracted frames can make millions), and how many other files there are.

    Symlinked folders are followed once each (loops and folders inside ``dst`` are left
    out); hidden files and folders are skipped, as the layouts skip them.
    """
    videos, annotations, other, other_count = [], [], [], 0
    seen: set[Path] = set()
    for folder, dirs, names in os.walk(src, followlinks=True):
        real = Path(folder).resolve()
        if real in seen or _inside(real, dst):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = Path(folder).relative_to(src)
        for name in sorted(names):
            if name.startswith("."):
                continue
            rel = (rel_folder / name).as_posix()
            if rel == REPORT_NAME:
                continue
            if is_video(name):
                videos.append(rel)
            elif Path(name).suffix.lower() in ANNOTATION_EXTENSIONS:
                annotations.append(rel)
            else:
                other_count += 1
                if len(other) < REPORT_LIMIT:
                    other.append(rel)
    return videos, annotations, other, other_count


def _safe_output(dst: Path, rel: str) -> Path:
    """``dst / rel``; ValueError when a symlink in DST would lead the write outside it."""
    out = dst / rel
    parent = out.parent
    while not parent.exists() and parent != dst:
        parent = parent.parent
    if not _inside(parent.resolve(), dst) or out.is_symlink():
        raise ValueError(f"{out}: a symlink, or leads outside DST through one; not written")
    return out


def _remove_leftovers(dst: Path) -> int:
    """Delete temporary outputs an interrupted run left in ``dst`` (symlinks not followed)."""
    removed = 0
    for folder, _, names in os.walk(dst):
        for name in names:
            if name.endswith(TMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def _load_manifest(file: Path) -> dict[str, dict[str, Any]]:
    """Records by output path; a line cut short by a killed run is ignored."""
    records: dict[str, dict[str, Any]] = {}
    try:
        handle = open(file, encoding="utf-8")
    except FileNotFoundError:
        return records
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("output"), str):
                records[record["output"]] = record
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _copy_atomic(source: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        shutil.copyfile(source, tmp)
        shutil.copystat(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _settings_difference(recorded: Any, settings: Settings | dict[str, Any]) -> str:
    now = settings.key() if isinstance(settings, Settings) else settings
    if not isinstance(recorded, dict):
        return "unknown settings"
    diffs = [f"{k}={recorded.get(k)!r} (now {v!r})" for k, v in now.items() if recorded.get(k) != v]
    return ", ".join(diffs)


def _existing_output(
    out: Path,
    record: dict[str, Any] | None,
    settings: tuple[str, Any],
    source: tuple[str, Any, str],
    overwrite: bool,
) -> tuple[str, str, int]:
    """What to do with an output path of this run, from its manifest ``record``: ``("new", "",
    -1)`` when nothing is there; ``("skip", "", size)`` when it is done with these settings
    from this source; ``("conflict", why, size)`` when it was made with other ``settings``
    (``(field, wanted)``) or from another version of the source (``(field, key, what)``) and
    ``overwrite`` is off; ``("redo", "", size)`` when it is to be made again; ``("adopt", "",
    size)`` when a file this run did not record is there, to be verified and kept;
    ``("failed", why, -1)`` when it is not a regular file."""
    if not os.path.lexists(out):
        return "new", "", -1
    size = out.stat().st_size if out.is_file() and not out.is_symlink() else -1
    if record is not None and record.get("output_size") == size:
        field, wanted = settings
        if record.get(field) != wanted:
            reason = f"made with {_settings_difference(record.get(field), wanted)}"
            return ("redo", "", size) if overwrite else ("conflict", reason, size)
        source_field, key, what = source
        if record.get(source_field) != key:
            return ("redo", "", size) if overwrite else ("conflict", f"made from {what}", size)
        return "skip", "", size
    if size < 0:
        return "failed", "not a regular file; not written", -1
    return ("redo", "", size) if overwrite else ("adopt", "", size)


# ---------------------------------------------------------------- the worker


def _target_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(H, W)`` at ``short_side`` the way the reader resizes; never upscaled (a smaller
    source keeps its size, cut to even numbers)."""
    if min(height, width) <= short_side:
        return max(2, height - height % 2), max(2, width - width % 2)
    return output_size(height, width, short_side)


def _demuxed(container: Any, streams: list[Any], video: Any) -> Iterator[tuple[Any, Any]]:
    """``(packet or None, decoded video frame or None)`` in file order, tolerating damage as
    the reader does: a packet the decoder rejects is skipped, a broken-off file ends."""
    packets = container.demux(*streams)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError:
            break
        if packet.stream is not video:
            yield packet, None
            continue
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        for frame in frames:
            yield None, frame
    with contextlib.suppress(av.error.FFmpegError):
        for frame in video.codec_context.decode(None):
            yield None, frame


class _AudioOut:
    """The source's first audio stream in the output: copied when the container takes its
    codec, else re-encoded as AAC; shifted by ``offset`` seconds (the first video frame's
    time) so that it keeps its place relative to the video."""

    def __init__(self, out: Any, source: Any, container_format: str, offset: float) -> None:
        self.copy = container_format != "mp4" or source.codec_context.name in _MP4_AUDIO
        if self.copy:
            self.stream = out.add_stream_from_template(source)
            self.time_base = source.time_base
        else:
            rate = source.codec_context.sample_rate or 48000
            self.stream = out.add_stream("aac", rate=rate)
            self.time_base = fractions.Fraction(1, rate)
            self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
            self.stream.layout = "stereo"
            self.next_pts: int | None = None
        self.offset = offset
        self.shift = round(offset / self.time_base) if self.time_base else 0

    def add(self, container: Any, packet: Any) -> None:
        """Copy or re-encode one source packet; what lies before the video start is dropped."""
        if self.copy:
            if packet.pts is None or packet.pts < self.shift:
                return
            packet.pts -= self.shift
            if packet.dts is not None:
                packet.dts = max(0, packet.dts - self.shift)
            packet.stream = self.stream
            container.mux(packet)
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            return
        for frame in frames:
            if frame.time is None or frame.time < self.offset:
                continue
            if self.next_pts is None:
                self.next_pts = round((frame.time - self.offset) / self.time_base)
            self._encode(container, self.resampler.resample(frame))

    def _encode(self, container: Any, frames: list[Any]) -> None:
        for frame in frames:
            frame.pts, frame.time_base = self.next_pts or 0, self.time_base
            self.next_pts = (self.next_pts or 0) + frame.samples
            container.mux(self.stream.encode(frame))

    def close(self, container: Any) -> None:
        """Flush the encoder (a copied stream has nothing to flush)."""
        if not self.copy:
            self._encode(container, self.resampler.resample(None))
            container.mux(self.stream.encode(None))


def _encoder_stream(
    out: Any, settings: Settings, rate: fractions.Fraction, size: tuple[int, int], source: Any
) -> Any:
    """The output video stream: keyframes exactly every ``gop`` frames, no B-frames."""
    _, _, encoder, pix_fmt = CODECS[settings.codec]
    stream = out.add_stream(encoder, rate=rate)
    stream.height, stream.width = size
    stream.pix_fmt = pix_fmt
    stream.time_base = 1 / rate
    context = stream.codec_context
    context.thread_count = 1  # the pool runs one video per core
    context.gop_size = settings.gop
    context.max_b_frames = 0
    if source.codec_context.colorspace:
        context.colorspace = source.codec_context.colorspace
    if encoder == "libx264":
        stream.options = {
            "crf": str(settings.crf),
            "preset": "veryfast",
            "tune": "fastdecode",
            "x264-params": (
                f"keyint={settings.gop}:min-keyint={settings.gop}:scenecut=0:bframes=0:"
                "open-gop=0:mbtree=0"
            ),
        }
    else:
        context.qmin, context.qmax = 2, 4  # near-lossless JPEG
    return stream


def _out_rate(settings: Settings, src_fps: float) -> fractions.Fraction:
    """The output frame rate as the fraction the encoder is given."""
    return fractions.Fraction(settings.fps or src_fps).limit_denominator(1 << 16)


def _out_frames(settings: Settings, num_frames: int, src_fps: float) -> int:
    """Frames in the output: the source's, or as many as fill its duration at ``fps``."""
    if settings.fps is None:
        return num_frames
    return max(1, round(num_frames * float(_out_rate(settings, src_fps)) / src_fps))


def _transcode(job: _Job, tmp: str, num_frames: int) -> tuple[int, tuple[int, int]]:
    """Write ``job``'s output to ``tmp``; returns the frames written and ``(H, W)``.

    Output frame ``k`` shows source frame ``s(k)`` (``k`` itself when the rate is kept): the
    frame the reader returns for that index, i.e. the first decoded frame whose timestamp maps
    to it, else the one before.
    """
    settings = job.settings
    _, container_format, _, pix_fmt = CODECS[settings.codec]
    container, video = _open_container(job.source, threads=1)
    with container:
        src_fps = _stream_fps(video)
        if src_fps is None:
            raise VideoDecodeError(job.source, "unknown frame rate")
        out_rate = _out_rate(settings, src_fps)
        total = _out_frames(settings, num_frames, src_fps)
        # source frame shown by output frame k (the reader's frame arithmetic throughout)
        ratio = 1.0 if settings.fps is None else src_fps / float(out_rate)
        size = _target_size(
            video.codec_context.height, video.codec_context.width, settings.short_side
        )
        scale = _pts_scale(video, src_fps)
        audio_in = (
            container.streams.audio[0] if settings.keep_audio and container.streams.audio else None
        )
        with av.open(tmp, mode="w", format=container_format) as out:
            stream = _encoder_stream(out, settings, out_rate, size, video)
            audio = None
            if audio_in is not None:
                begin = float((video.start_time or 0) * video.time_base) if video.time_base else 0.0
                audio = _AudioOut(out, audio_in, container_format, begin)
            reformatter = VideoReformatter()
            frame_time_base = 1 / out_rate  # the muxer may change the stream's own
            k, last, start, prev_pts, prev = 0, -1, None, None, None

            def emit(image: Any, upto: int) -> None:
                nonlocal k
                while k < total and min(num_frames - 1, math.floor(k * ratio + 1e-9)) <= upto:
                    image.pts, image.time_base = k, frame_time_base
                    out.mux(stream.encode(image))
                    k += 1

            streams = [video] if audio_in is None else [video, audio_in]
            for packet, frame in _demuxed(container, streams, video):
                if packet is not None:
                    if audio is not None:
                        audio.add(out, packet)
                    continue
                if start is None:
                    start = frame.pts
                timed = (
                    scale is not None
                    and frame.pts is not None
                    and start is not None
                    and (prev_pts is None or frame.pts >= prev_pts)
                )
                index = round((frame.pts - start) * scale) if timed else last + 1
                if timed:
                    prev_pts = frame.pts
                if index <= last:
                    continue  # a second frame for one index: the reader shows the first
                image = reformatter.reformat(
                    frame,
                    width=size[1],
                    height=size[0],
                    format=pix_fmt,
                    interpolation=Interpolation.AREA,
                )
                image.pict_type = PictureType.NONE  # the source's I-frames force no keyframes
                if prev is not None:
                    emit(prev, index - 1)
                emit(image, index)
                prev, last = image, index
                if k >= total and audio is None:
                    break
            if k < total:
                raise VideoDecodeError(
                    job.source,
                    f"only {last + 1} of the {num_frames} frames the index counts decode "
                    "(damaged or truncated file?)",
                )
            out.mux(stream.encode(None))
            if audio is not None:
                audio.close(out)
    return total, size


def _tmp_name(output: str) -> str:
    return f"{output}.{os.getpid()}{TMP_SUFFIX}"


def _structure_problem(path: str, settings: Settings, size: tuple[int, int]) -> str | None:
    """What is wrong with the codec, size, keyframe interval or frame order of ``path``."""
    with av.open(path, metadata_errors="ignore") as container:
        if not container.streams.video:
            return "no video stream"
        stream = container.streams.video[0]
        name = stream.codec_context.name
        if name != settings.codec:
            return f"codec {name}, expected {settings.codec}"
        found = (stream.codec_context.height, stream.codec_context.width)
        if found != size:
            return f"size {found[1]}x{found[0]}, expected {size[1]}x{size[0]}"
        if settings.codec == "mjpeg":
            return None
        previous = None
        for n, packet in enumerate(p for p in container.demux(stream) if p.size):
            if packet.is_keyframe != (n % settings.gop == 0):
                return f"packet {n} is{'' if packet.is_keyframe else ' not'} a keyframe (gop {settings.gop})"
            if packet.pts is None or (previous is not None and packet.pts <= previous):
                return f"packet {n} out of presentation order (B-frames?)"
            previous = packet.pts
    return None


def _write_sidecar(video: str, output: str, codec: str) -> None:
    """Write the frame index of ``video`` (the file that is or is about to become ``output``)
    beside ``output`` as ``<output>.jpgidx``, atomically, so that the jpeg reader serves its
    frames without opening the container; remove an old one when there is nothing to index."""
    sidecar = output + SIDECAR_SUFFIX
    index = build_jpeg_index(video) if codec == "mjpeg" else None
    if index is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sidecar)
        return
    tmp = f"{sidecar}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(index.to_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, sidecar)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _verify(
    path: str, settings: Settings, frames: int, duration: float, rate: float, size: tuple[int, int]
) -> str | None:
    """Why the output at ``path`` is not what ``settings`` make of its source (``frames`` at
    ``rate`` lasting ``duration`` seconds, ``size`` as ``(H, W)``), or None when it is."""
    info = probe_video(path)
    if not info.ok:
        return info.error
    if info.num_frames != frames:
        return f"{info.num_frames} frames, expected {frames}"
    if abs(info.num_frames / info.fps - duration) > 0.5 / rate + 1e-6:
        return f"duration {info.num_frames / info.fps:.3f} s, expected {duration:.3f} s"
    problem = _structure_problem(path, settings, size)
    if problem:
        return problem
    try:
        with VideoReader(path, num_frames=info.num_frames) as reader:
            reader.get_frames([0, info.num_frames - 1])
    except VideoDecodeError as exc:
        return exc.problem
    return None


def _expected(settings: Settings, info: Any) -> tuple[int, float, float, tuple[int, int]]:
    """Frames, duration (s), frame rate and ``(H, W)`` the output of a probed source must have."""
    total = _out_frames(settings, info.num_frames, info.fps)
    rate = float(_out_rate(settings, info.fps))
    size = _target_size(info.height, info.width, settings.short_side)
    return total, info.num_frames / info.fps, rate, size


def _run_job(job: _Job) -> _Outcome:
    """Transcode (or, for an unrecorded existing output, verify) one video; never raises."""
    began = time.perf_counter()
    tmp = f"{job.output}.{os.getpid()}{TMP_SUFFIX}"
    try:
        key = _file_key(job.source)
        info = probe_video(job.source)
        if not info.ok:
            return _Outcome(job, "failed", info.error or "unreadable")
        total, duration, rate, size = _expected(job.settings, info)
        if job.adopt:
            problem = _verify(job.output, job.settings, total, duration, rate, size)
            if problem:
                return _Outcome(
                    job,
                    "conflict",
                    f"exists and is not an output of these settings ({problem}); pass "
                    "--overwrite to replace it",
                )
            if job.settings.codec == "mjpeg" and read_sidecar(job.output) is None:
                _write_sidecar(job.output, job.output, job.settings.codec)
            size_now = os.stat(job.output).st_size
            return _Outcome(job, "adopted", frames=total, source_key=key, output_size=size_now)
        Path(job.output).parent.mkdir(parents=True, exist_ok=True)
        written, size = _transcode(job, tmp, info.num_frames)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        problem = _verify(tmp, job.settings, written, duration, rate, size)
        if problem:
            return _Outcome(job, "failed", f"the output failed verification: {problem}")
        if _file_key(job.source) != key:
            return _Outcome(job, "failed", "the source changed while it was transcoded")
        _write_sidecar(tmp, job.output, job.settings.codec)
        os.replace(tmp, job.output)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job.output + flowlib.FLOW_SUFFIX)  # it described the video replaced
        return _Outcome(
            job,
            "done",
            frames=written,
            seconds=time.perf_counter() - began,
            source_key=key,
            output_size=os.stat(job.output).st_size,
        )
    except OSError as exc:
        status: Literal["fatal", "failed"] = "fatal" if exc.errno in _FATAL_ERRNOS else "failed"
        return _Outcome(job, status, exc.strerror or str(exc))
    except VideoDecodeError as exc:
        return _Outcome(job, "failed", exc.problem)
    except Exception as exc:  # a damaged source must never stop the run
        return _Outcome(job, "failed", f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# ---------------------------------------------------------------- optical flow


FLOW_CHUNK = 64
"""Frames decoded at a time while computing a video's flow (memory stays small)."""


def flow_settings() -> dict[str, Any]:
    """What a flow file depends on besides its video; recorded with every flow file."""
    return {
        "version": 1,
        "method": "dis",
        "preset": flowlib.DEFAULT_DIS_PRESET,
        "codec": "jpeg",
        "bound": flowlib.PREPARED_BOUND,
        "quality": flowlib.PREPARED_QUALITY,
    }


@dataclass(frozen=True)
class _FlowJob:
    video: str  # the prepared video
    output: str  # its flow file
    rel_output: str
    frames: int
    video_key: list[int]
    adopt: bool  # the flow file exists unrecorded: verify it instead of computing it


@dataclass
class _FlowOutcome:
    job: _FlowJob
    status: Literal["done", "adopted", "failed", "conflict", "fatal"]
    reason: str = ""
    seconds: float = 0.0
    output_size: int = 0


def _flow_problem(path: str, frames: int) -> str | None:
    """Why the flow file at ``path`` is not a flow file of these settings for a video of
    ``frames`` frames, or None when it is."""
    try:
        file = flowlib.FlowFile(path)
        settings = flow_settings()
        if (file.codec, file.bound, file.quality) != (
            settings["codec"],
            settings["bound"],
            settings["quality"],
        ):
            return f"made with codec {file.codec}, bound {file.bound:g}, quality {file.quality}"
        if file.fields != frames - 1:
            return f"{file.fields} flow fields, expected {frames - 1} (frames - 1)"
        file.read([0, file.fields - 1])
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def _compute_flow_file(video: str, tmp: str, frames: int) -> int:
    """DIS flow of every pair of consecutive frames of ``video`` (decoded as the data pipeline
    decodes them) written to the flow file ``tmp``; returns the fields written."""
    from vssl.data.reader import open_reader

    with flowlib.limit_threads(1), open_reader(video, "auto", num_frames=frames) as reader:
        height, width = output_size(reader.height, reader.width, None)
        with flowlib.FlowFileWriter(
            tmp, frames - 1, height, width, flowlib.PREPARED_BOUND, flowlib.PREPARED_QUALITY
        ) as writer:
            for begin in range(0, frames - 1, FLOW_CHUNK):
                stop = min(frames, begin + FLOW_CHUNK + 1)
                gray = flowlib.to_gray_frames(reader.get_frames(np.arange(begin, stop)))
                out = np.empty((len(gray) - 1, 2, height, width), dtype=np.float32)
                writer.add(flowlib.compute_flow_into(gray, out))
    return frames - 1


def _run_flow_job(job: _FlowJob) -> _FlowOutcome:
    """Compute (or, for an unrecorded existing flow file, verify) one video's flow; never
    raises."""
    began = time.perf_counter()
    tmp = f"{job.output}.{os.getpid()}{TMP_SUFFIX}"
    try:
        if job.adopt:
            problem = _flow_problem(job.output, job.frames)
            if problem:
                return _FlowOutcome(
                    job,
                    "conflict",
                    f"exists and is not a flow file of these settings ({problem}); pass "
                    "--overwrite to replace it",
                )
            return _FlowOutcome(job, "adopted", output_size=os.stat(job.output).st_size)
        if job.frames < 2:
            return _FlowOutcome(job, "failed", "flow: a video of one frame has no flow")
        _compute_flow_file(job.video, tmp, job.frames)
        problem = _flow_problem(tmp, job.frames)
        if problem:
            return _FlowOutcome(
                job, "failed", f"flow: the flow file failed verification: {problem}"
            )
        if _file_key(job.video) != job.video_key:
            return _FlowOutcome(
                job, "failed", "flow: the video changed while its flow was computed"
            )
        os.replace(tmp, job.output)
        return _FlowOutcome(
            job,
            "done",
            seconds=time.perf_counter() - began,
            output_size=os.stat(job.output).st_size,
        )
    except OSError as exc:
        status: Literal["fatal", "failed"] = "fatal" if exc.errno in _FATAL_ERRNOS else "failed"
        return _FlowOutcome(job, status, f"flow: {exc.strerror or exc}")
    except VideoDecodeError as exc:
        return _FlowOutcome(job, "failed", f"flow: {exc.problem}")
    except Exception as exc:  # a damaged video must never stop the run
        return _FlowOutcome(job, "failed", f"flow: {type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _plan_flow(
    dst: Path,
    rels: list[str],
    settings: Settings,
    overwrite: bool,
    manifest: dict[str, dict[str, Any]],
    summary: PrepareSummary,
) -> list[_FlowJob]:
    """Flow jobs for the prepared videos (outputs of ``rels`` made with ``settings`` and in
    place) whose flow file is not done; done ones are counted as skipped."""
    ext = CODECS[settings.codec][0]
    wanted = flow_settings()
    jobs = []
    for rel in rels:
        rel_video = Path(rel).with_suffix(ext).as_posix()
        video_record = manifest.get(rel_video)
        video = dst / rel_video
        if video_record is None or video_record.get("settings") != settings.key():
            continue  # not prepared (failed, or a conflict): nothing to compute flow of
        try:
            video_key = _file_key(str(video))
        except OSError:
            continue
        if video_key[0] != video_record.get("output_size"):
            continue
        rel_flow = rel_video + flowlib.FLOW_SUFFIX
        out = dst / rel_flow
        frames = int(video_record.get("frames", 0))
        state, reason, size = _existing_output(
            out,
            manifest.get(rel_flow),
            ("flow_settings", wanted),
            ("video", video_key, f"another version of {rel_video}"),
            overwrite,
        )
        if state == "skip":
            summary.flow_skipped += 1
            summary.flow_bytes += size
            continue
        if state == "conflict":
            summary.conflicts.append((rel_flow, reason))
            continue
        if state == "failed":
            summary.failed.append((rel_flow, reason))
            continue
        adopt = state == "adopt"
        jobs.append(_FlowJob(str(video), str(out), rel_flow, frames, video_key, adopt))
    return jobs


def _run_flow_jobs(
    jobs: list[_FlowJob], workers: int, manifest_file: Path, summary: PrepareSummary, progress: bool
) -> None:
    """Run the flow jobs in a process pool (in this process for one worker), recording each
    finished flow file as it comes; a fatal error (a full disk) stops the submissions."""
    if not jobs:
        return
    wanted = flow_settings()
    with (
        _outcomes(_run_flow_job, jobs, workers, summary) as outcomes,
        open(manifest_file, "a", encoding="utf-8") as manifest,
        _progress(progress) as bar,
    ):
        task = bar.add_task("optical flow", total=len(jobs), fps=0.0)
        began = time.perf_counter()

        def record(outcome: _FlowOutcome) -> None:
            job = outcome.job
            if outcome.status in ("done", "adopted"):
                line = {
                    "output": job.rel_output,
                    "kind": "flow",
                    "video": job.video_key,
                    "output_size": outcome.output_size,
                    "fields": job.frames - 1,
                    "flow_settings": wanted,
                }
                manifest.write(json.dumps(line) + "\n")
                manifest.flush()
                os.fsync(manifest.fileno())
                summary.flow_bytes += outcome.output_size
                if outcome.status == "done":
                    summary.flow_done += 1
                    summary.flow_fields += job.frames - 1
                    summary.flow_seconds += outcome.seconds
                else:
                    summary.flow_skipped += 1
            elif outcome.status == "conflict":
                summary.conflicts.append((job.rel_output, outcome.reason))
                bar.console.print(f"conflict: {job.rel_output}: {outcome.reason}", markup=False)
            else:
                summary.failed.append((job.rel_output, outcome.reason))
                if outcome.status == "fatal":
                    summary.fatal = f"{job.rel_output}: {outcome.reason}"
                bar.console.print(f"failed: {job.rel_output}: {outcome.reason}", markup=False)
            elapsed = time.perf_counter() - began
            bar.update(task, advance=1, fps=summary.flow_fields / elapsed if elapsed else 0.0)

        for outcome in outcomes:
            record(outcome)


# ---------------------------------------------------------------- the run


def _plan_annotations(
    src: Path, dst: Path, rels: list[str], overwrite: bool, summary: PrepareSummary
) -> list[tuple[Path, Path]]:
    """Annotation files to copy; unchanged ones are counted, different ones are conflicts."""
    copies = []
    for rel in rels:
        source = src / rel
        try:
            out = _safe_output(dst, rel)
            if out.exists() and filecmp.cmp(source, out, shallow=False):
                summary.annotations_unchanged += 1
                continue
        except ValueError as exc:
            summary.failed.append((rel, str(exc)))
            continue
        except OSError as exc:
            summary.failed.append((rel, f"cannot read: {exc.strerror or exc}"))
            continue
        if out.exists() and not overwrite:
            summary.conflicts.append((rel, "DST holds a different file of this name"))
            continue
        copies.append((source, out))
    return copies


def _plan_videos(
    src: Path,
    dst: Path,
    rels: list[str],
    settings: Settings,
    overwrite: bool,
    manifest: dict[str, dict[str, Any]],
    summary: PrepareSummary,
) -> list[_Job]:
    """Jobs for the videos not yet done; done ones are counted as skipped."""
    ext = CODECS[settings.codec][0]
    jobs, taken = [], {}
    for rel in rels:
        rel_out = Path(rel).with_suffix(ext).as_posix()
        if rel_out in taken:
            summary.failed.append(
                (rel, f"its output {rel_out} is also the output of {taken[rel_out]}; rename one")
            )
            continue
        taken[rel_out] = rel
        source = src / rel
        try:
            out = _safe_output(dst, rel_out)
            key = _file_key(str(source))
        except ValueError as exc:
            summary.failed.append((rel, str(exc)))
            continue
        except OSError as exc:
            summary.failed.append((rel, f"cannot read it: {exc.strerror or exc}"))
            continue
        state, reason, out_size = _existing_output(
            out,
            manifest.get(rel_out),
            ("settings", settings.key()),
            ("source", key, f"an earlier version of {rel}"),
            overwrite,
        )
        if state == "skip":
            summary.skipped += 1
            summary.bytes_before += key[0]
            summary.bytes_after += out_size
            continue
        if state == "conflict":
            summary.conflicts.append((rel_out, reason))
            continue
        if state == "failed":
            summary.failed.append((rel, f"its output {rel_out} is {reason}"))
            continue
        adopt = state == "adopt"
        jobs.append(_Job(str(source), str(out), rel, rel_out, settings, adopt))
    return jobs


@contextlib.contextmanager
def _lock(state: Path) -> Iterator[None]:
    """Hold ``state/lock`` so that two runs never write into one DST at once."""
    with open(state / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrepareError(
                f"{state.parent}: another 'vssl prepare' is writing into DST"
            ) from None
        yield


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("videos, {task.fields[fps]:.0f} frames/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


@contextlib.contextmanager
def _recorder(
    manifest_file: Path, summary: PrepareSummary, progress: bool, total: int
) -> Iterator[Callable[[_Outcome], None]]:
    """A function that takes each outcome into the manifest, the summary and the progress bar."""
    began = time.perf_counter()
    with open(manifest_file, "a", encoding="utf-8") as manifest, _progress(progress) as bar:
        task = bar.add_task("transcoding", total=total, fps=0.0)

        def say(text: str) -> None:
            bar.console.print(text, markup=False, highlight=False)

        def record(outcome: _Outcome) -> None:
            job = outcome.job
            if outcome.status in ("done", "adopted"):
                line = {
                    "output": job.rel_output,
                    "source_path": job.rel_source,
                    "source": outcome.source_key,
                    "output_size": outcome.output_size,
                    "frames": outcome.frames,
                    "settings": job.settings.key(),
                }
                manifest.write(json.dumps(line) + "\n")
                manifest.flush()
                os.fsync(manifest.fileno())
                summary.bytes_before += outcome.source_key[0] if outcome.source_key else 0
                summary.bytes_after += outcome.output_size
                if outcome.status == "done":
                    summary.done += 1
                    summary.frames += outcome.frames
                    summary.transcode_seconds += outcome.seconds
                else:
                    summary.skipped += 1
            elif outcome.status == "conflict":
                summary.conflicts.append((job.rel_output, outcome.reason))
                say(f"conflict: {job.rel_output}: {outcome.reason}")
            else:
                summary.failed.append((job.rel_source, outcome.reason))
                if outcome.status == "fatal":
                    summary.fatal = f"{job.rel_output}: {outcome.reason}"
                say(f"failed: {job.rel_source}: {outcome.reason}")
            elapsed = time.perf_counter() - began
            bar.update(task, advance=1, fps=summary.frames / elapsed if elapsed else 0.0)

        yield record


@contextlib.contextmanager
def _outcomes(
    run: Callable[[Any], Any], jobs: list[Any], workers: int, summary: PrepareSummary
) -> Iterator[Iterator[Any]]:
    """The outcomes of ``run`` over ``jobs`` as they finish: in this process for one worker,
    else in a process pool with at most ``4 * workers`` jobs in flight. No job starts once
    ``summary.fatal`` is set (a full disk). The pool's workers are forked on entry, so enter
    this before anything that starts a thread (the progress bar)."""
    if workers <= 1:

        def serial() -> Iterator[Any]:
            for job in jobs:
                yield run(job)
                if summary.fatal:
                    return

        yield serial()
        return
    queue, ahead = iter(jobs), 4 * workers
    with ProcessPoolExecutor(workers) as pool:
        pending = {pool.submit(run, job) for job in itertools.islice(queue, ahead)}

        def pooled() -> Iterator[Any]:
            nonlocal pending
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
                while not summary.fatal and len(pending) < ahead:
                    job = next(queue, None)
                    if job is None:
                        break
                    pending.add(pool.submit(run, job))

        yield pooled()


def _run_jobs(
    jobs: list[_Job], workers: int, manifest_file: Path, summary: PrepareSummary, progress: bool
) -> None:
    """Run the jobs in a process pool (in this process for one worker), recording each
    finished output as it comes; a fatal error (a full disk) stops the submissions."""
    if not jobs:
        return
    with _outcomes(_run_job, jobs, workers, summary) as outcomes:
        with _recorder(manifest_file, summary, progress, len(jobs)) as record:
            for outcome in outcomes:
                record(outcome)


def _write_report(dst: Path, summary: PrepareSummary) -> None:
    report = {
        "src": summary.src,
        "dst": summary.dst,
        "settings": summary.settings,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "videos": {
            "done": summary.done,
            "skipped": summary.skipped,
            "failed": len(summary.failed),
            "conflicts": len(summary.conflicts),
        },
        "failed": [{"path": path, "reason": reason} for path, reason in summary.failed],
        "conflicts": [{"path": path, "reason": reason} for path, reason in summary.conflicts],
        "annotations": {
            "copied": summary.annotations_copied,
            "unchanged": summary.annotations_unchanged,
        },
        "not_copied": {"count": summary.ignored_count, "first": summary.ignored},
        "transcode": {
            "workers": summary.workers,
            "wall_seconds": round(summary.wall_seconds, 3),
            "worker_seconds": round(summary.transcode_seconds, 3),
            "videos_per_core_second": round(summary.videos_per_core_second, 4),
            "frames_per_core_second": round(summary.frames_per_core_second, 1),
            "frames": summary.frames,
        },
        "bytes": {"before": summary.bytes_before, "after": summary.bytes_after},
        "fatal": summary.fatal,
    }
    if summary.flow:
        report["flow"] = {
            "settings": flow_settings(),
            "done": summary.flow_done,
            "skipped": summary.flow_skipped,
            "fields": summary.flow_fields,
            "worker_seconds": round(summary.flow_seconds, 3),
            "bytes": summary.flow_bytes,
        }
    _write_atomic(dst / REPORT_NAME, json.dumps(report, indent=1) + "\n")


def prepare(
    src: str | Path,
    dst: str | Path,
    short_side: int = 128,
    gop: int = 8,
    codec: Literal["mjpeg", "h264"] = "mjpeg",
    fps: float | None = None,
    crf: int = 18,
    workers: int | None = None,
    keep_audio: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    flow: bool = False,
) -> PrepareSummary:
    """Transcode the dataset tree ``src`` into ``dst`` for fast random access.

    Args:
        src: the dataset folder as downloaded (never modified).
        dst: where the prepared copy goes (created; must not overlap ``src``).
        short_side: short side of the output frames in pixels (even; smaller videos keep
            their size); 256 or 320 for models that crop 224.
        gop: keyframe interval in frames (H.264 only): a random clip decodes at most this many
            frames before its first.
        codec: ``mjpeg`` (every frame a keyframe, so a clip decodes only the frames it
            takes: the fastest to read; see README "Preparing a dataset") or ``h264``
            (libx264, no B-frames, ``tune=fastdecode``: about 2.5x fewer bytes, slower to
            read); both in ``.mp4``.
        fps: output frame rate; None keeps the source's (frame counts then stay equal).
        crf: H.264 quality (lower is better and bigger).
        workers: transcoding processes; None uses every CPU this process may run on.
        keep_audio: keep the first audio stream (copied, or re-encoded as AAC when MP4 cannot
            hold its codec); by default audio is dropped.
        overwrite: replace outputs made with other settings or from changed sources, and
            annotation files that differ.
        progress: show a progress bar and print failures and the summary.
        flow: also compute each video's optical flow and store it beside the video
            (``<output>.flow``, read by ``VideoDataModule(flow="prepared")``; see the module
            docstring). Failures are reported as for videos.
    """
    settings = Settings(
        short_side, gop, codec, None if fps is None else float(fps), crf, keep_audio
    )
    _check_settings(settings, workers)
    began = time.perf_counter()
    src_path, dst_path = Path(src), Path(dst)
    real_src, real_dst = _check_roots(src_path, dst_path)
    summary = PrepareSummary(str(src_path), str(dst_path), settings.key(), flow=bool(flow))
    summary.report = str(dst_path / REPORT_NAME)
    real_dst.mkdir(parents=True, exist_ok=True)
    state = real_dst / STATE_DIR
    state.mkdir(exist_ok=True)
    with _lock(state):
        _remove_leftovers(real_dst)
        videos, annotations, summary.ignored, summary.ignored_count = _scan_source(
            real_src, real_dst
        )
        manifest_file = state / "manifest.jsonl"
        manifest = _load_manifest(manifest_file)
        copies = _plan_annotations(real_src, real_dst, annotations, overwrite, summary)
        jobs = _plan_videos(real_src, real_dst, videos, settings, overwrite, manifest, summary)
        if summary.conflicts:
            _write_report(real_dst, summary)
            first = "; ".join(f"{path}: {why}" for path, why in summary.conflicts[:3])
            raise PrepareError(
                f"{dst_path}: {len(summary.conflicts)} existing outputs differ from what this "
                f"run would write ({first}; all in {summary.report}); pass --overwrite to "
                "replace them, or pick another DST"
            )
        for source, out in copies:
            try:
                _copy_atomic(source, out)
                summary.annotations_copied += 1
            except OSError as exc:
                summary.failed.append((str(source.relative_to(real_src)), exc.strerror or str(exc)))
        if progress:
            for path, reason in summary.failed:
                print(f"failed: {path}: {reason}", file=sys.stderr)
        summary.workers = max(1, min(workers or _cpus(), len(jobs)))
        _run_jobs(jobs, summary.workers, manifest_file, summary, progress)
        if flow and not summary.fatal:
            _flow_phase(
                real_dst, videos, settings, overwrite, manifest_file, workers, summary, progress
            )
        _compact_manifest(manifest_file)
        summary.wall_seconds = time.perf_counter() - began
        _write_report(real_dst, summary)
    if progress:
        for line in summary.lines():
            print(line)
    return summary


def _flow_phase(
    dst: Path,
    videos: list[str],
    settings: Settings,
    overwrite: bool,
    manifest_file: Path,
    workers: int | None,
    summary: PrepareSummary,
    progress: bool,
) -> None:
    """Compute the flow files the prepared videos lack; raises PrepareError (after writing
    the report) when existing flow files differ from what this run would write."""
    conflicts = len(summary.conflicts)
    jobs = _plan_flow(dst, videos, settings, overwrite, _load_manifest(manifest_file), summary)
    if len(summary.conflicts) > conflicts:
        _compact_manifest(manifest_file)
        _write_report(dst, summary)
        first = "; ".join(f"{path}: {why}" for path, why in summary.conflicts[conflicts:][:3])
        raise PrepareError(
            f"{summary.dst}: {len(summary.conflicts) - conflicts} existing flow files differ "
            f"from what this run would write ({first}; all in {summary.report}); pass "
            "--overwrite to replace them, or pick another DST"
        )
    count = max(1, min(workers or _cpus(), len(jobs)))
    _run_flow_jobs(jobs, count, manifest_file, summary, progress)


def _compact_manifest(file: Path) -> None:
    """Rewrite the manifest with one line per output (the latest)."""
    records = _load_manifest(file)
    _write_atomic(file, "".join(json.dumps(r) + "\n" for r in records.values()))


_FLAGS = ("--keep_audio", "--overwrite", "--progress", "--flow")


def _normalize_argv(argv: list[str]) -> list[str]:
    """Accept ``--short-side`` for jsonargparse's ``--short_side``, and a bare ``--overwrite``
    (or ``--keep-audio``, ``--progress``, ``--flow``) for ``--overwrite true``."""
    out: list[str] = []
    for n, arg in enumerate(argv):
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
            following = argv[n + 1].lower() if n + 1 < len(argv) else ""
            if arg in _FLAGS and following not in ("true", "false"):
                out += [arg, "true"]
                continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vssl prepare``; returns the exit status: 0 when the run
    went through (sources that cannot be read are listed in the report), 1 when it stopped
    (a full disk), 2 for a user error (one line on stderr)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="python -m vssl prepare",
        description=(
            "Transcode a dataset tree for fast random access (short side; every frame a "
            "keyframe with MJPEG, or with H.264 a keyframe every GOP frames and no B-frames), "
            "keeping relative paths and copying annotation files; with --flow, also store "
            "each video's optical flow beside it. "
            "Options may also be spelled with dashes (--short-side)."
        ),
    )
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML file of these options"
    )
    parser.add_function_arguments(prepare, as_positional=True)
    args = parser.parse_args(_normalize_argv(list(sys.argv[1:] if argv is None else argv)))
    try:
        summary = prepare(**{k: v for k, v in args.as_dict().items() if k != "config"})
    except PrepareError as exc:
        print(f"vssl prepare: error: {exc}", file=sys.stderr)
        return 2
    return 1 if summary.fatal else 0


__all__ = [
    "ANNOTATION_EXTENSIONS",
    "CODECS",
    "PrepareError",
    "PrepareSummary",
    "Settings",
    "flow_settings",
    "main",
    "prepare",
]
