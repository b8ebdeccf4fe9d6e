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

import av
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vssl.data.index import VideoInfo
from vssl.data.layouts import VideoItem
from vssl.data.reader import VideoDecodeError, VideoReader
from vssl.data.sampling import ClipSampler

log = logging.getLogger("vssl")

DECODE_ERRORS = (VideoDecodeError, av.FFmpegError, OSError, EOFError)


class TooManyDecodeFailures(RuntimeError):
    """Raised when too large a share of a dataset's videos fails to decode."""


class VideoDataset(Dataset):
    """Videos with labels, sampled into views by ``sampler`` and transformed by ``transform``.

    ``items`` and ``infos`` are aligned: ``infos[i]`` is the video index entry of ``items[i]``
    (only usable entries; the datamodule drops the ones the index reported as bad).
    ``decode_timeout`` (seconds, None: none) limits the decoding of one sample; a sample that
    runs over counts as a decode failure and is replaced like one. With a ``seed``, a
    sample's random choices (clip positions, crops, replacements) are a function of
    ``(seed, epoch, index)`` (the sampler may give ``(index, epoch)`` pairs), so that a run
    resumed mid-epoch sees the same samples as an uninterrupted one.
    A sample is a dict: one uint8 tensor ``(T, 3, H, W)`` (or ``(N, T, 3, H, W)``) per view,
    plus ``label`` (-1 when unlabeled), ``index`` (the item's position) and ``skipped``.
    """

    def __init__(
        self,
        items: Sequence[VideoItem],
        infos: Sequence[VideoInfo],
        sampler: ClipSampler,
        transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
        decode_size: int | tuple[int, int] | None = None,
        backend: str = "pyav",
        decode_threads: int = 1,
        max_failure_fraction: float = 0.1,
        min_failures: int = 10,
        decode_timeout: float | None = None,
        seed: int | None = None,
    ):
        if len(items) != len(infos):
            raise ValueError(f"{len(items)} items but {len(infos)} index entries")
        if not items:
            raise ValueError("the dataset is empty: no usable video was found")
        bad = [info.path for info in infos if not info.ok]
        if bad:
            raise ValueError(f"unusable videos passed to VideoDataset: {bad[:5]}")
        self.items = list(items)
        self.infos = list(infos)
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

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """Samples, decodes and transforms item ``index``; raises on a decode failure."""
        item, info = self.items[index], self.infos[index]
        views = self.sampler(info.num_frames, rng)
        targets = {name: torch.as_tensor(v) for name, v in views.items() if np.ndim(v) == 0}
        views = {name: np.asarray(v) for name, v in views.items() if name not in targets}
        wanted = np.concatenate([v.ravel() for v in views.values()])
        unique, inverse = np.unique(wanted, return_inverse=True)
        with VideoReader(
            item.path,
            backend=self.backend,
            threads=self.decode_threads,
            num_frames=info.num_frames,
            decode_timeout=self.decode_timeout,
        ) as reader:
            frames = reader.get_frames(unique, size=self.decode_size)
        inverse = torch.from_numpy(inverse.reshape(-1))
        sample: dict[str, Tensor] = {}
        offset = 0
        for name, idx in views.items():
            sample[name] = frames[inverse[offset : offset + idx.size]].reshape(*idx.shape, *frames.shape[1:])
            offset += idx.size
        if self.transform is not None:
            sample = self.transform(sample)
        sample.update(targets)
        sample["label"] = torch.tensor(item.label)
        sample["index"] = torch.tensor(index)
        return sample

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
                self._record_failure(self.items[index].path, err)
                skipped += 1
                index = int(torch.randint(0, len(self.items), ()))
                continue
            sample["skipped"] = torch.tensor(skipped)
            return sample

    def _seeded_item(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        """Item ``key`` (an index or an ``(index, epoch)`` pair) with randomness that depends
        only on ``(seed, epoch, index)``: the same sample whichever worker makes it, and after
        a resume. The process's torch RNG is left as it was."""
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
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
                    self._record_failure(self.items[index].path, err)
                    skipped += 1
                    index = int(rng.integers(len(self.items)))
                    continue
            sample["skipped"] = torch.tensor(skipped)
            return sample

    def _record_failure(self, path: Path, err: BaseException) -> None:
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
