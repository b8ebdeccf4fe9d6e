"""The map-style dataset shared by every task: index entry -> sampled views -> decoded, transformed clips.

Each item decodes the union of the frames that the task's `ClipSampler` asked for in one pass,
splits them into views, and applies the task's per-clip transform, all inside a DataLoader
worker. Being map-style, it is split across DDP processes by Lightning's distributed sampler.

A video that fails to decode during training is logged, counted, and replaced by another
random video; the count travels with the sample (``"skipped"``) so the task can log it. The run
stops with one clear error when the failures of a worker pass ``max_failure_fraction`` of its
attempts (after at least ``min_failures``), so a broken dataset cannot spin forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vssl.data.flow import FlowSource, flow_fields
from vssl.data.index import VideoInfo
from vssl.data.layouts import VideoItem
from vssl.data.reader import VideoDecodeError, open_reader
from vssl.data.sampling import AudioSpan, ClipSampler, FlowOf
from vssl.data.table import VideoTable
from vssl.errors import InvalidInputError

log = logging.getLogger("vssl")

DECODE_ERRORS = (VideoDecodeError, av.FFmpegError, OSError, EOFError)


def _int_tensor(value: int) -> Tensor:
    """``torch.tensor(value)`` (a 0-d int64 tensor), made through numpy, which costs less, for
    the few scalars every sample carries."""
    return torch.from_numpy(np.array(value, dtype=np.int64))


class TooManyDecodeFailures(RuntimeError):
    """Raised when too large a share of a dataset's videos fails to decode."""


def _with_audio(table: VideoTable) -> VideoTable:
    """The rows of ``table`` whose file has an audio stream (its header says so); the others
    are left out with one logged count. Raises an `InvalidInputError` (a ValueError) when none
    has one."""
    from vssl.data.audio import probe_audio

    keep = []
    for i in range(len(table)):
        try:
            if probe_audio(table.path(i)) is not None:
                keep.append(i)
        except VideoDecodeError as err:
            log.warning("leaving out a video: %s", err)
    if not keep:
        raise InvalidInputError(
            f"none of the {len(table)} videos has an audio stream (first: {table.path(0)}), and "
            "the task needs audio"
        )
    if len(keep) < len(table):
        log.warning(
            "%d of %d videos have no audio stream and are left out: the task needs audio",
            len(table) - len(keep),
            len(table),
        )
        table = _rows(table, keep)
    return table


def _rows(table: VideoTable, keep: list[int]) -> VideoTable:
    """The rows ``keep`` of ``table``."""
    rows = np.asarray(keep, dtype=np.int64)
    return VideoTable(
        [table.path(i) for i in keep],
        table.labels[rows],
        table.num_frames[rows],
        table.fps[rows],
        table.width[rows],
        table.height[rows],
    )


def _with_flow(table: VideoTable, flow: FlowSource) -> VideoTable:
    """The rows of ``table`` whose precomputed flow is there with one field per pair of frames
    (frames - 1); the others are left out with one logged count and the first problems. Raises
    an `InvalidInputError` (a ValueError) when none has usable flow."""
    keep, problems = [], []
    for i in range(len(table)):
        path, expected = table.path(i), int(table.num_frames[i]) - 1
        try:
            fields = flow.fields(path)
        except (OSError, ValueError) as err:
            problems.append(str(err) if path in str(err) else f"{path}: {err}")
            continue
        if fields != expected:
            problems.append(
                f"{path}: {fields} flow fields in {flow}, expected {expected} (its frames - 1)"
            )
            continue
        keep.append(i)
    first = "\n  ".join(problems[:5])
    if not keep:
        raise InvalidInputError(
            f"none of the {len(table)} videos has usable precomputed flow ({flow}), and the "
            f"task reads flow; first problems:\n  {first}"
        )
    if problems:
        log.warning(
            "%d of %d videos have no usable precomputed flow (%s) and are left out; first:\n  %s",
            len(problems),
            len(table),
            flow,
            first,
        )
        table = _rows(table, keep)
    return table


class VideoDataset(Dataset):
    """Videos with labels, sampled into views by ``sampler`` and transformed by ``transform``.

    ``items`` and ``infos`` are aligned: ``infos[i]`` is the video index entry of ``items[i]``
    (only usable entries; the datamodule drops the ones the index reported as bad). They are
    kept as a `VideoTable` (numpy arrays, which forked DataLoader workers share instead of
    copying); ``items`` may be such a table itself, with ``infos`` None (see `from_table`).
    ``decode_timeout`` (seconds, None: none) limits the decoding of one sample; a sample that
    runs over counts as a decode failure and is replaced like one. With a ``seed``, a
    sample's random choices (clip positions, crops, replacements) are a function of
    ``(seed, epoch, index)`` (the sampler may give ``(index, epoch)`` pairs), so that a run
    resumed mid-epoch sees the same samples as an uninterrupted one. ``backend`` names the
    reader (see `vssl.data.reader.BACKENDS`); the default ``"auto"`` decodes MJPEG (what
    ``vssl prepare`` writes) with libjpeg-turbo and every other codec with PyAV.
    A sample is a dict: one uint8 tensor ``(T, 3, H, W)`` (or ``(N, T, 3, H, W)``) per view,
    plus ``label`` (-1 when unlabeled), ``index`` (the item's position) and ``skipped``; an
    audio view (`AudioSpan`) is a float32 waveform ``(C, N)``. When the sampler needs audio,
    the videos without an audio stream are left out here, with one logged count. ``flow`` (a
    `vssl.data.flow.FlowSource`, None: none) is where precomputed optical flow is read from
    for the sampler's flow views (`FlowOf`: float32 ``(T, 2, H, W)`` pixels at the decoded
    frames' size); when the sampler needs flow, the videos whose flow is missing or does not
    have frames - 1 fields are left out here, with one logged count and the first names.
    Without ``flow``, flow views are dropped (the transform computes flow itself).
    """

    def __init__(
        self,
        items: Sequence[VideoItem] | VideoTable,
        infos: Sequence[VideoInfo] | None,
        sampler: ClipSampler,
        transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
        decode_size: int | tuple[int, int] | None = None,
        backend: str = "auto",
        decode_threads: int = 1,
        max_failure_fraction: float = 0.1,
        min_failures: int = 10,
        decode_timeout: float | None = None,
        seed: int | None = None,
        flow: FlowSource | None = None,
    ):
        if isinstance(items, VideoTable):
            if infos is not None:
                raise ValueError(
                    "VideoDataset: a VideoTable already holds the index entries; "
                    "pass infos=None with it"
                )
            table = items
        elif infos is None:
            raise ValueError("VideoDataset: the index entries (infos) of the items are missing")
        else:
            table = VideoTable.from_items(items, infos)
        if not len(table):
            raise InvalidInputError("the dataset is empty: no usable video was found")
        if getattr(sampler, "needs_audio", False):
            table = _with_audio(table)
        if flow is not None and getattr(sampler, "needs_flow", False):
            table = _with_flow(table, flow)
        self.table = table
        self.flow = flow
        self.sampler = sampler
        self.transform = transform
        self.decode_size = decode_size
        self.backend = backend
        self.decode_threads = decode_threads
        self.max_failure_fraction = max_failure_fraction
        self.min_failures = min_failures
        self.decode_timeout = decode_timeout
        self.seed = seed
        self.attempts = 0
        self.failures: list[str] = []

    @classmethod
    def from_table(cls, table: VideoTable, sampler: ClipSampler, **kwargs: Any) -> VideoDataset:
        """The dataset of ``table``'s videos; ``kwargs`` as for the constructor."""
        return cls(table, None, sampler, **kwargs)

    def __len__(self) -> int:
        return len(self.table)

    def path(self, index: int) -> str:
        """The path of video ``index``."""
        return self.table.path(index)

    def label(self, index: int) -> int:
        """The label of video ``index`` (-1: unlabeled)."""
        return self.table.label(index)

    @property
    def labels(self) -> np.ndarray:
        """Every video's label, an int64 array (-1: unlabeled)."""
        return self.table.labels

    @property
    def items(self) -> list[VideoItem]:
        """The videos as `VideoItem` s, made on each call (for inspection; workers read
        `table`)."""
        return [self.table.item(i) for i in range(len(self.table))]

    @property
    def infos(self) -> list[VideoInfo]:
        """The videos' index entries as `VideoInfo` s, made on each call (for inspection)."""
        return [self.table.info(i) for i in range(len(self.table))]

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """Samples, decodes and transforms item ``index``; raises on a decode failure."""
        num_frames = int(self.table.num_frames[index])
        views = self.sampler(num_frames, rng)
        spans = {name: v for name, v in views.items() if isinstance(v, AudioSpan)}
        flows = {name: v for name, v in views.items() if isinstance(v, FlowOf)}
        targets = {
            name: torch.as_tensor(v)
            for name, v in views.items()
            if name not in spans and name not in flows and np.ndim(v) == 0
        }
        views = {
            name: np.asarray(v)
            for name, v in views.items()
            if name not in targets and name not in spans and name not in flows
        }
        if len(views) == 1:
            wanted = next(iter(views.values())).ravel()
        else:
            wanted = np.concatenate([v.ravel() for v in views.values()])
        # One view of increasing indices (most clips) is the decoded frames as they are.
        as_decoded = len(views) == 1 and bool(np.all(wanted[1:] > wanted[:-1]))
        if as_decoded:
            unique = wanted
        else:
            unique, inverse = np.unique(wanted, return_inverse=True)
        with open_reader(
            self.table.path(index),
            self.backend,
            threads=self.decode_threads,
            num_frames=num_frames,
            decode_timeout=self.decode_timeout,
        ) as reader:
            frames = reader.get_frames(unique, size=self.decode_size)
            video_start = reader.start_time if spans else None
        sample: dict[str, Tensor] = {}
        if as_decoded:
            ((name, idx),) = views.items()
            sample[name] = frames.reshape(*idx.shape, *frames.shape[1:])
        else:
            inverse = torch.from_numpy(inverse.reshape(-1))
            offset = 0
            for name, idx in views.items():
                # index_select: torch's advanced indexing copies uint8 frames about 20x slower
                rows = frames.index_select(0, inverse[offset : offset + idx.size])
                sample[name] = rows.reshape(*idx.shape, *frames.shape[1:])
                offset += idx.size
        if spans:
            sample.update(self._audio(index, spans, video_start))
        if flows and self.flow is not None:
            sample.update(self._flow(index, flows, views, frames.shape[-2:]))
        if self.transform is not None:
            sample = self.transform(sample)
        sample.update(targets)
        sample["label"] = _int_tensor(self.table.label(index))
        sample["index"] = _int_tensor(index)
        return sample

    def _audio(
        self, index: int, spans: dict[str, AudioSpan], video_start: float | None
    ) -> dict[str, Tensor]:
        """The waveforms of the audio views of video ``index``."""
        from vssl.data.audio import read_audio

        fps = float(self.table.fps[index])
        return {
            name: read_audio(
                self.table.path(index),
                span.start_time(fps),
                span.num_samples,
                span.sample_rate,
                span.mono,
                video_start=video_start,
                timeout=self.decode_timeout,
            )
            for name, span in spans.items()
        }

    def _flow(
        self,
        index: int,
        flows: dict[str, FlowOf],
        views: dict[str, np.ndarray],
        size: tuple[int, int],
    ) -> dict[str, Tensor]:
        """The precomputed flow of the flow views of video ``index`` at ``size`` (H, W); a
        flow file that cannot be read raises a `VideoDecodeError` (the sample is replaced)."""
        path = self.table.path(index)
        out = {}
        for name, request in flows.items():
            if request.view not in views:
                raise ValueError(
                    f"flow view {name!r} asks for the flow of view {request.view!r}, which the "
                    f"sampler did not return (views: {sorted(views)})"
                )
            frames = views[request.view]
            clips = frames.reshape(-1, frames.shape[-1])
            for clip in clips:
                flow_fields(clip)  # a clip at stride > 1 is the sampler's error: raise it
            try:
                if len(clips) == 1:  # one clip: no copy
                    flow = self.flow.clip(path, clips[0], *size)[None]
                else:
                    flow = np.stack([self.flow.clip(path, clip, *size) for clip in clips])
            except (OSError, ValueError, IndexError) as err:
                raise VideoDecodeError(path, f"precomputed flow: {err}") from None
            out[name] = torch.from_numpy(flow.reshape(*frames.shape[:-1], *flow.shape[1:]))
        return out

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Tensor]:
        if self.seed is not None:
            return self._seeded_item(index)
        skipped = 0
        while True:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            self.attempts += 1
            try:
                sample = self.load(index, rng)
            except DECODE_ERRORS as err:
                self._record_failure(self.table.path(index), err)
                skipped += 1
                index = int(torch.randint(0, len(self.table), ()))
                continue
            sample["skipped"] = _int_tensor(skipped)
            return sample

    def _seeded_item(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        """Item ``key`` (an index or an ``(index, epoch)`` pair) with randomness that depends
        only on ``(seed, epoch, index)``: the same sample whichever worker makes it, and after
        a resume. The process's torch RNG is left as it was."""
        index, epoch = (
            (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        )
        first, skipped = index, 0
        while True:
            seeds = np.random.SeedSequence([self.seed, epoch, first, skipped])
            rng = np.random.default_rng(seeds)
            self.attempts += 1
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seeds.generate_state(1, np.uint64)[0] >> 1))
                try:
                    sample = self.load(index, rng)
                except DECODE_ERRORS as err:
                    self._record_failure(self.table.path(index), err)
                    skipped += 1
                    index = int(rng.integers(len(self.table)))
                    continue
            sample["skipped"] = _int_tensor(skipped)
            return sample

    def _record_failure(self, path: str | Path, err: BaseException) -> None:
        problem = str(err) if str(path) in str(err) else f"{path}: {err}"
        self.failures.append(problem)
        n = len(self.failures)
        log.warning("skipping a video: %s (%d skipped so far in this worker)", problem, n)
        if n >= self.min_failures and n > self.max_failure_fraction * self.attempts:
            recent = "\n  ".join(self.failures[-5:])
            raise TooManyDecodeFailures(
                f"{n} of {self.attempts} video reads failed, more than the allowed fraction "
                f"{self.max_failure_fraction:g}. Check the dataset (the video index report lists "
                f"unreadable files) or raise max_decode_failures. Last failures:\n  {recent}"
            )
