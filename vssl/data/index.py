"""The video index: frame count, frame rate and size of every video, probed once and cached.

Probing counts frames the way :class:`~vssl.data.reader.VideoReader` numbers them, so every
frame index below ``num_frames`` of a usable video can be read. Files that cannot be used
(empty, not a video, no video stream, nothing decodable, unreadable, missing) are kept in the
index with the reason, left out of :attr:`VideoIndex.good`, and reported in one warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from rich.progress import track

from vssl.data.reader import VideoDecodeError, _open_container, _scan_frames, _stream_fps

logger = logging.getLogger("vssl")

_CACHE_VERSION = 1
# Problems that change without touching the file's size or mtime: never cached.
_TRANSIENT_PROBLEMS = ("file not found", "permission denied")


@dataclass(frozen=True)
class VideoInfo:
    """What the index knows about one video; ``error`` says why an unusable one is unusable.

    ``has_audio`` says whether the file has an audio stream (None: not known, an entry cached
    by an older vssl); it does not take part in comparisons.
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    error: str | None = None
    has_audio: bool | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the video can be sampled from."""
        return self.error is None and self.num_frames > 0


def probe_video(path: str | Path, mode: str = "fast") -> VideoInfo:
    """Probe one file; never raises for a bad file, whose info carries the ``error`` instead.

    ``mode="fast"`` decodes the first frame and the tail after a seek near the end; ``"full"``
    decodes every frame. Either way ``num_frames`` is what the reader can deliver.
    """
    if mode not in ("fast", "full"):
        raise ValueError(f"unknown probe mode {mode!r}; expected 'fast' or 'full'")
    name = str(path)
    try:
        container, stream = _open_container(name, threads=1)
        with container:
            fps = _stream_fps(stream)
            if fps is None:
                raise VideoDecodeError(name, "unknown frame rate")
            scan = _scan_frames(name, container, stream, mode)
            if scan.num_frames == 0:
                raise VideoDecodeError(name, "no decodable video frames")
            width = stream.codec_context.width or scan.width
            height = stream.codec_context.height or scan.height
            has_audio = bool(container.streams.audio)
            return VideoInfo(name, scan.num_frames, fps, width, height, has_audio=has_audio)
    except VideoDecodeError as exc:
        return VideoInfo(name, 0, 0.0, 0, 0, exc.problem)
    except Exception as exc:
        # The promise is "never raises for a bad file": whatever else FFmpeg or PyAV throws at
        # a damaged file is recorded, not propagated.
        return VideoInfo(name, 0, 0.0, 0, 0, f"probe failed: {type(exc).__name__}: {exc}")


def default_cache_dir() -> Path:
    """vssl's cache root: ``$VSSL_CACHE_DIR``, else ``~/.cache/vssl``."""
    return Path(os.environ.get("VSSL_CACHE_DIR") or Path.home() / ".cache" / "vssl")


def _file_key(path: str) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _load_cache(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _cached_info(entry: Any, name: str, key: list[int] | None, mode: str) -> VideoInfo | None:
    """The cached info when the entry is well formed and the file is unchanged, else None."""
    if key is None or not isinstance(entry, dict):
        return None
    if entry.get("key") != key or entry.get("mode") != mode:
        return None
    try:
        return VideoInfo(path=name, **entry["info"])
    except (KeyError, TypeError):
        return None


def _save_cache(file: Path, entries: dict[str, Any]) -> None:
    """Write the cache atomically; a cache that cannot be written only costs a re-probe."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=file.parent, prefix=file.name, suffix=".tmp", delete=False
        ) as tmp:
            json.dump({"version": _CACHE_VERSION, "entries": entries}, tmp)
        os.replace(tmp.name, file)
    except OSError as exc:
        logger.warning("could not write the video index cache %s: %s", file, exc)


def _probe_all(paths: list[str], mode: str, workers: int, progress: bool) -> list[VideoInfo]:
    """Probe ``paths`` in order, in a process pool when there is more than one worker."""
    if not paths:
        return []
    workers = min(workers, len(paths))
    description = f"indexing {len(paths)} videos"
    if workers <= 1:
        results = map(probe_video, paths, repeat(mode))
        return list(track(results, description, total=len(paths), disable=not progress))
    chunksize = max(1, min(32, len(paths) // (workers * 4)))
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(probe_video, paths, repeat(mode), chunksize=chunksize)
        return list(track(results, description, total=len(paths), disable=not progress))


class VideoIndex:
    """Probe results for a list of videos, in the order given; build with :meth:`build`."""

    def __init__(self, infos: Sequence[VideoInfo]) -> None:
        self._infos = list(infos)
        self._by_path = {info.path: info for info in self._infos}
        self._by_resolved: dict[str, VideoInfo] | None = None

    @classmethod
    def build(
        cls,
        paths: Sequence[str | Path],
        *,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        progress: bool = True,
        mode: str = "fast",
    ) -> VideoIndex:
        """Probe ``paths`` in parallel, re-using cached results for files whose size and
        modification time are unchanged; warn once about the files left out.

        The cache is a JSON file under ``<cache_dir>/index/`` (``cache_dir`` defaults to
        :func:`default_cache_dir`) named by a hash of the resolved paths. ``workers`` defaults
        to ``min(8, cpu count)``; 1 probes in this process.
        """
        if mode not in ("fast", "full"):
            raise ValueError(f"unknown probe mode {mode!r}; expected 'fast' or 'full'")
        names = [str(p) for p in paths]
        resolved = [str(Path(p).resolve()) for p in names]
        digest = hashlib.sha1("\n".join(sorted(set(resolved))).encode()).hexdigest()[:20]
        cache_file = Path(cache_dir or default_cache_dir()) / "index" / f"{digest}.json"
        cached = _load_cache(cache_file)

        keys = [_file_key(p) for p in resolved]
        infos: list[VideoInfo | None] = [None] * len(names)
        todo: list[int] = []
        for i, (name, real, key) in enumerate(zip(names, resolved, keys, strict=True)):
            infos[i] = _cached_info(cached.get(real), name, key, mode)
            if infos[i] is None:
                todo.append(i)
        count = workers if workers is not None else min(8, os.cpu_count() or 1)
        probed = _probe_all([names[i] for i in todo], mode, count, progress)
        for i, info in zip(todo, probed, strict=True):
            infos[i] = info

        entries = {}
        for real, key, info in zip(resolved, keys, infos, strict=True):
            if key is not None and info.error not in _TRANSIENT_PROBLEMS:
                fields = dataclasses.asdict(info)
                del fields["path"]
                entries[real] = {"key": key, "mode": mode, "info": fields}
        if todo or entries.keys() != cached.keys():
            _save_cache(cache_file, entries)

        index = cls(infos)
        if index.bad:
            logger.warning("%s\n%s", index.summary(), index.report())
        return index

    @property
    def infos(self) -> list[VideoInfo]:
        """Every video's info, in the order the paths were given."""
        return list(self._infos)

    @property
    def good(self) -> list[VideoInfo]:
        """The usable videos."""
        return [info for info in self._infos if info.ok]

    @property
    def silent(self) -> list[VideoInfo]:
        """The usable videos known to have no audio stream."""
        return [info for info in self._infos if info.ok and info.has_audio is False]

    @property
    def bad(self) -> list[VideoInfo]:
        """The videos left out, each with its reason."""
        return [info for info in self._infos if not info.ok]

    def __getitem__(self, path: str | Path) -> VideoInfo:
        info = self._by_path.get(str(path))
        if info is not None:
            return info
        if self._by_resolved is None:
            self._by_resolved = {str(Path(i.path).resolve()): i for i in self._infos}
        info = self._by_resolved.get(str(Path(path).resolve()))
        if info is None:
            raise KeyError(f"{path}: not in the video index")
        return info

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, (str, Path)):
            return False
        try:
            self[path]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[VideoInfo]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def summary(self) -> str:
        """One line: how many videos are usable and how many were left out."""
        line = f"index: {len(self.good)} of {len(self)} videos usable"
        bad = len(self.bad)
        return f"{line}, {bad} left out (see report)" if bad else line

    def report(self) -> str:
        """One line per video left out: its path and the reason."""
        return "\n".join(f"{info.path}: {info.error or 'no frames'}" for info in self.bad)
