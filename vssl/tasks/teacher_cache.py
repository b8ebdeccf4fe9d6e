"""Cached teacher features for `vssl.tasks.Distillation`: the teachers' forward passes paid once.

A cached feature belongs to one clip, one crop and one flip of one video; a student trained on
random clips, crops and flips would no longer see what the teacher saw. So with a cache the
training views are fixed in advance:

- Every training video has ``K`` views (``cache_views``), drawn once from ``cache_seed`` and the
  same for every video in relative terms: view ``k`` starts at the fraction ``u_k`` of the
  video's valid clip starts (stratified, ``u_k`` in ``[k/K, (k+1)/K)``) and is flipped when its
  coin ``f_k`` says so (only where the data allows flips). The crop is the deterministic
  evaluation crop (short side resized to ``crop_size``, centre crop), the flip is applied on the
  device from the sample's ``cache_flip``. Validation (and test) videos have one view: the
  centre clip, unflipped.
- A training sample is one of its video's ``K`` views, chosen at random each time (the sample
  carries ``index``, the video's row in the dataset, and ``cache_view``, ``k``); the cached row
  of that view is ``index * K + k``. The student sees exactly that view, normalised as the
  teachers' input was, with no photometric augmentation (refused with a cache: the teachers'
  features are not invariant to it).

Storage, in the ``teacher_cache`` folder: one ``.npy`` per teacher and stage
(``teacher<i>.<stage>.npy``, float32 rows ``(videos * views, columns)``: the teacher's pooled
features, then the outputs of its pretext heads when logits are cached), read as read-only
memory maps, and ``manifest.json``: the teachers (absolute checkpoint path, size, mtime and
SHA-256), the view settings, the data settings (clip length, stride, crop, decode size,
normalisation, reader), each stage's dataset (video count and a SHA-256 of its paths and frame
counts) and the column layout. A cache whose manifest disagrees with the run (another teacher
file or contents, other views, other data settings, another dataset) is refused with an error
naming the manifest; a folder with other files and no manifest is not written to. Only a
manifest still marked incomplete (an interrupted fill with the same settings) is filled again.

Reads happen in the training process, in the task's step (the DataLoader workers only decode),
each process opening the files read-only. The fill (`cache_teacher_features`, run by the task
at the start of fitting) works under DDP, in steps that every rank ends together: every rank
reads and checks the folder; rank 0 writes the manifest and creates the files; every rank
computes and writes the rows of its share of the videos (every ``world``-th; a rank may have
fewer videos, or none); rank 0 marks the manifest complete. The end of each step is an
all-gather of every rank's outcome (a barrier that also carries news): an error on one rank
(a stale cache, a failed write) is raised on every rank, the others naming the rank that
failed, instead of leaving them waiting at the next barrier; ranks that see different things
in the folder (a complete cache on one, none on another) all stop with an error saying that
it must be on a file system every rank sees, as does a rank that does not see the files that
rank 0 created.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from vssl.data.sampling import ClipSampler, clip_indices, clip_span
from vssl.data.transforms import ViewTransform, eval_clip_transform
from vssl.errors import InvalidInputError

log = logging.getLogger("vssl")

FORMAT = "vssl-teacher-cache/1"
MANIFEST = "manifest.json"
#: The stages whose videos a fill caches (those the datamodule has splits for).
STAGES = ("train", "val")


class StaleCacheError(InvalidInputError):
    """A teacher cache made for other teachers, views, data settings or videos."""


class OtherRankError(RuntimeError):
    """Another process of the run failed in a step of the cache's fill; this one stops too."""


#: What a rank finds in the folder at the start of a fill, and what each step returns when a
#: rank raised.
NO_CACHE, PARTIAL, COMPLETE, FAILED = 0, 1, 2, -1
_FOUND = {NO_CACHE: "no cache", PARTIAL: "an incomplete cache", COMPLETE: "a complete cache"}


class Ranks:
    """The processes of a trainer (one without), and their agreement at the end of each step
    of a fill (see the module docstring)."""

    def __init__(self, trainer: Any, directory: Path) -> None:
        self.trainer = trainer
        self.directory = directory
        self.world = trainer.world_size if trainer is not None else 1
        self.rank = trainer.global_rank if trainer is not None else 0

    def gather(self, value: int) -> list[int]:
        """Every rank's ``value``, once every rank has given one."""
        if self.world == 1:
            return [value]
        strategy = self.trainer.strategy
        local = torch.tensor([value], dtype=torch.int64, device=strategy.root_device)
        return [int(v) for v in strategy.all_gather(local).flatten()]

    def step(self, what: str, action: Callable[[], int | None]) -> list[int]:
        """Runs ``action`` on this rank and returns every rank's result (an int, 0 for None)
        when all are done. When a rank raised, every rank raises: that rank its own error, the
        others `OtherRankError` naming it."""
        error = None
        try:
            value = int(action() or 0)
        except Exception as err:  # raised again below, after the other ranks have heard of it
            value, error = FAILED, err
        values = self.gather(value)
        if error is not None:
            raise error
        failed = [r for r, v in enumerate(values) if v == FAILED]
        if failed:
            raise OtherRankError(
                f"{self.directory}: the teacher cache's {what} failed on rank "
                f"{', '.join(map(str, failed))} (its error is in its output); rank {self.rank} "
                "stops too"
            )
        return values


def train_views(views: int, seed: int, flip: bool) -> list[tuple[float, bool]]:
    """The ``(start fraction, flip)`` of each of the ``views`` fixed training views: start
    fractions stratified over ``[0, 1)``, flips by a fair coin when ``flip``, drawn from
    ``seed``."""
    if int(views) != views or views < 1:
        raise InvalidInputError(f"cache_views must be a positive integer, got {views!r}")
    rng = np.random.default_rng(int(seed))
    starts = (np.arange(views) + rng.random(views)) / views
    flips = rng.random(views) < 0.5 if flip else np.zeros(views, dtype=bool)
    return [(float(u), bool(f)) for u, f in zip(starts, flips, strict=True)]


#: The one view of validation and test videos: the centre clip, not flipped.
EVAL_VIEWS: list[tuple[float, bool]] = [(0.5, False)]


@dataclass
class CachedViews(ClipSampler):
    """Clips at fixed relative positions: one of them, chosen with ``rng`` (with the targets
    ``cache_view``, its number, and ``cache_flip``), or with ``every`` all of them stacked
    ``(views, clip_len)`` (to fill a cache)."""

    clip_len: int
    stride: int
    views: tuple[tuple[float, bool], ...]
    every: bool = False
    view: str = "video"

    def start(self, fraction: float, num_frames: int) -> int:
        """The start frame at ``fraction`` of the valid starts (0 for a video shorter than a
        clip, which wraps)."""
        last = num_frames - clip_span(self.clip_len, self.stride)
        return min(int(fraction * (last + 1)), last) if last > 0 else 0

    def clip(self, k: int, num_frames: int) -> np.ndarray:
        """Frame indices of view ``k``."""
        start = self.start(self.views[k][0], num_frames)
        return clip_indices(start, self.clip_len, self.stride, num_frames)

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.every:
            return {self.view: np.stack([self.clip(k, num_frames) for k in range(len(self.views))])}
        k = int(rng.integers(len(self.views)))
        return {
            self.view: self.clip(k, num_frames),
            "cache_view": np.int64(k),
            "cache_flip": np.bool_(self.views[k][1]),
        }


def view_transform(crop_size: int) -> Callable:
    """The deterministic worker transform of cached views: short side to ``crop_size``, centre
    crop."""
    return ViewTransform(eval_clip_transform(crop_size))


def flip_views(video: Tensor, flips: Tensor) -> Tensor:
    """Clips ``(B, T, C, H, W)`` with the rows where ``flips`` is true mirrored left-right."""
    flips = flips.to(device=video.device, dtype=torch.bool).view(-1, *[1] * (video.ndim - 1))
    return torch.where(flips, video.flip(-1), video)


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Absolute path, size, mtime and SHA-256 of a teacher checkpoint."""
    path = Path(path).resolve()
    stat = path.stat()
    return {
        "checkpoint": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": _sha256(path),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """The video count and a SHA-256 of the paths and frame counts of a `VideoDataset`, in
    order: a cached row ``index * K + k`` belongs to video ``index`` of this list."""
    table = dataset.table
    digest = hashlib.sha256()
    for i in range(len(table)):
        digest.update(f"{table.path(i)}\t{int(table.num_frames[i])}\n".encode())
    return {"videos": len(table), "sha256": digest.hexdigest()}


def teacher_record(fingerprint: dict[str, Any], out_dim: int, heads: dict[str, int]) -> dict:
    """A teacher's entry in the manifest: its file and the columns of its rows."""
    return {**fingerprint, "out_dim": int(out_dim), "heads": {k: int(v) for k, v in heads.items()}}


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of the cache in ``directory``; None when there is none (an absent or empty
    folder). A folder with other files and no manifest, or a manifest that is not a vssl
    teacher cache's, is refused: nothing is written there."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise StaleCacheError(
                f"{directory}: teacher_cache is not an empty folder and has no {MANIFEST}: it is "
                "not a vssl teacher cache, and nothing in it is overwritten; choose another "
                "teacher_cache"
            )
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        raise StaleCacheError(
            f"{manifest}: not a readable teacher cache manifest ({err})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StaleCacheError(
            f"{manifest}: not a vssl teacher cache manifest (format {FORMAT!r}); nothing in "
            f"{directory} is overwritten; choose another teacher_cache"
        )
    return data


def _stale(manifest: Path, what: str) -> StaleCacheError:
    return StaleCacheError(
        f"{manifest}: this teacher cache was made for {what}; it is not used. Delete "
        f"{manifest.parent} to fill it again, or choose another teacher_cache"
    )


def check_teachers(
    directory: str | Path, manifest: dict[str, Any], teachers: Sequence[str | Path], logits: bool
) -> None:
    """Refuses a cache made for other teacher files (path, or contents when size or mtime
    changed) or without the logits that ``logits`` needs."""
    where = Path(directory) / MANIFEST
    cached = manifest.get("teachers", [])
    paths = [str(Path(t).resolve()) for t in teachers]
    if [c.get("checkpoint") for c in cached] != paths:
        raise _stale(where, f"the teachers {[c.get('checkpoint') for c in cached]}, not {paths}")
    for i, (record, path) in enumerate(zip(cached, paths, strict=True)):
        file = Path(path)
        if not file.is_file():
            raise StaleCacheError(
                f"{where}: teacher {i}: {file}: checkpoint not found, so the cache cannot be "
                "checked against it"
            )
        stat = file.stat()
        same_stat = (stat.st_size, stat.st_mtime_ns) == (record["size"], record["mtime_ns"])
        if not same_stat and _sha256(file) != record["sha256"]:
            raise _stale(where, f"another version of teacher {i} ({file} has changed since)")
    if logits and not manifest.get("logits"):
        raise _stale(where, "match: features (no logits of the teachers' pretext heads)")


def check_settings(directory: str | Path, manifest: dict[str, Any], expected: dict) -> None:
    """Refuses a cache whose view or data settings or datasets differ from ``expected`` (the
    manifest's keys ``views``, ``data`` and ``datasets``), naming the first difference."""
    where = Path(directory) / MANIFEST
    for key in ("views", "data", "datasets"):
        have, want = manifest.get(key, {}), expected[key]
        for name in sorted(set(have) | set(want)):
            if key != "data" and name not in want:
                continue  # a stage this run does not have
            if have.get(name) != want.get(name):
                raise _stale(
                    where, f"{key} {name}={have.get(name)!r}; this run has {want.get(name)!r}"
                )


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, directory / MANIFEST)


def stage_file(directory: str | Path, teacher: int, stage: str) -> Path:
    """The rows of ``teacher`` for ``stage``'s videos."""
    return Path(directory) / f"teacher{teacher}.{stage}.npy"


class TeacherCache:
    """Read-only access to a complete cache: the teachers' rows of ``(stage, index, view)``.

    The memory maps are opened on first use in each process (so a task that is pickled or
    forked carries no open maps)."""

    def __init__(self, directory: str | Path, manifest: dict[str, Any]):
        self.directory = Path(directory)
        self.manifest = manifest
        self.views = {stage: len(v) for stage, v in manifest["views"].items()}
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    def _map(self, teacher: int, stage: str) -> np.ndarray:
        key = (teacher, stage)
        if key not in self._maps:
            self._maps[key] = np.load(stage_file(self.directory, teacher, stage), mmap_mode="r")
        return self._maps[key]

    def rows(self, stage: str, index: Tensor, view: Tensor) -> list[Tensor]:
        """Each teacher's cached rows ``(B, columns)`` of the samples' videos and views."""
        stage = "val" if stage == "test" and "test" not in self.views else stage
        if stage not in self.manifest.get("datasets", {}):
            raise InvalidInputError(
                f"{self.directory / MANIFEST}: the teacher cache has no {stage} videos"
            )
        rows = index.cpu().numpy() * self.views[stage] + view.cpu().numpy()
        return [
            torch.from_numpy(np.ascontiguousarray(self._map(i, stage)[rows]))
            for i in range(len(self.manifest["teachers"]))
        ]

    def split(self, teacher: int, rows: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """A teacher's rows as its features and its pretext heads' outputs."""
        record = self.manifest["teachers"][teacher]
        features, start = rows[:, : record["out_dim"]], record["out_dim"]
        logits = {}
        for name, size in record["heads"].items():
            logits[name], start = rows[:, start : start + size], start + size
        return features, logits


def cache_teacher_features(
    task: Any,
    datamodule: Any,
    directory: str | Path | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
) -> TeacherCache:
    """Fills the teacher cache of a `Distillation` ``task`` (its ``teacher_cache`` folder, or
    ``directory``) with its teachers' rows for every view of the training and validation
    videos of ``datamodule`` (a `VideoDataModule`, whose datasets are built as the task's own
    are); returns the open cache, which the task then reads instead of running its teachers.

    A complete cache made for this run is used as it is; one made for another run is refused
    (`StaleCacheError`) unless ``overwrite``. ``batch_size`` is in videos per forward batch
    (default: the datamodule's batch size divided by the views per video). Inside a trainer
    every rank must call it together (the task does, when fitting starts): each fills its share
    of the videos, and an error on one rank is raised on all (see the module docstring).
    """
    directory = Path(directory if directory is not None else task.teacher_cache)
    ranks = Ranks(task.attached_trainer(), directory)
    if not task.teachers:  # the task found a complete cache and loaded no teacher
        if task.cache is None or task.cache.directory != directory or overwrite:
            raise InvalidInputError(
                f"{directory}: the task loaded no teachers (it uses the complete cache in "
                f"{task.teacher_cache}), so nothing can be filled"
            )

        def verify() -> int:
            verify_cache(task, datamodule, task.cache)
            return COMPLETE

        _same_folder(directory, ranks.step("check", verify))
        return task.cache

    spec = datamodule.clip_spec
    stages = [s for s in STAGES if datamodule.splits.get(s) is not None]
    views = {s: task.cache_view_table(s, spec) for s in stages}
    samplers = {
        s: CachedViews(spec.clip_len, spec.stride, tuple(views[s]), every=True) for s in stages
    }
    transform = view_transform(spec.crop_size)
    datasets = {
        s: datamodule.build_dataset(s, sampler=samplers[s], transform=transform) for s in stages
    }
    heads = task.teacher_head_sizes()
    expected = {
        "format": FORMAT,
        "complete": False,
        "teachers": [
            teacher_record(file_fingerprint(p), t.out_dim, h)
            for p, t, h in zip(task.hparams["teachers"], task.teachers, heads, strict=True)
        ],
        "logits": task.match != "features",
        "views": views,
        "data": cache_data_settings(task, datamodule),
        "datasets": {s: dataset_fingerprint(d) for s, d in datasets.items()},
    }
    found: dict[str, Any] = {}

    def check() -> int:
        # every rank reads the folder before rank 0 writes to it (the next step)
        existing = None if overwrite else read_manifest(directory)
        if existing is None:
            return NO_CACHE
        check_teachers(directory, existing, task.hparams["teachers"], expected["logits"])
        check_settings(directory, existing, json.loads(json.dumps(expected)))
        found["manifest"] = existing
        return COMPLETE if existing.get("complete") else PARTIAL

    if _same_folder(directory, ranks.step("check", check)) == COMPLETE:
        task.cache = TeacherCache(directory, found["manifest"])
        return task.cache
    columns = [r["out_dim"] + sum(r["heads"].values()) for r in expected["teachers"]]

    def create() -> None:
        if ranks.rank != 0:
            return
        directory.mkdir(parents=True, exist_ok=True)
        _write_manifest(directory, expected)
        for s, dataset in datasets.items():
            for i, width in enumerate(columns):
                rows = len(dataset) * len(views[s])
                np.lib.format.open_memmap(
                    stage_file(directory, i, s), mode="w+", dtype=np.float32, shape=(rows, width)
                ).flush()

    ranks.step("creation", create)
    per_batch = batch_size or max(1, datamodule.batch_size // max(len(v) for v in views.values()))

    def fill() -> None:
        if read_manifest(directory) != json.loads(json.dumps(expected)):
            raise InvalidInputError(
                f"{directory}: rank {ranks.rank} does not see the {MANIFEST} that rank 0 has "
                "written there: teacher_cache must be a folder on a file system that every rank "
                "sees"
            )
        for s, dataset in datasets.items():
            _fill_stage(
                task,
                directory,
                s,
                dataset,
                views[s],
                ranks.rank,
                ranks.world,
                per_batch,
                datamodule,
            )

    ranks.step("fill", fill)

    def complete() -> None:
        if ranks.rank == 0:
            _write_manifest(directory, {**expected, "complete": True})

    ranks.step("completion", complete)
    task.cache = TeacherCache(directory, {**json.loads(json.dumps(expected)), "complete": True})
    return task.cache


def _same_folder(directory: Path, states: list[int]) -> int:
    """What every rank found in ``directory`` (`NO_CACHE`, `PARTIAL` or `COMPLETE`), refused
    when the ranks found different things."""
    if len(set(states)) > 1:
        seen = "; ".join(f"rank {r}: {_FOUND[s]}" for r, s in enumerate(states))
        raise InvalidInputError(
            f"{directory}: the ranks see different teacher caches there ({seen}): teacher_cache "
            "must be a folder on a file system that every rank sees"
        )
    return states[0]


def cache_data_settings(task: Any, datamodule: Any) -> dict[str, Any]:
    """The data settings a cached row depends on: clip, crop, decoding and normalisation."""
    spec = datamodule.clip_spec
    decode = datamodule.decode_size
    return {
        "clip_len": int(spec.clip_len),
        "stride": int(spec.stride),
        "crop_size": int(spec.crop_size),
        "decode_size": list(decode) if isinstance(decode, (tuple, list)) else decode,
        "backend": datamodule.backend,
        "mean": [round(float(x), 6) for x in task.augment.mean.flatten()],
        "std": [round(float(x), 6) for x in task.augment.std.flatten()],
    }


@torch.no_grad()
def _fill_stage(
    task: Any,
    directory: Path,
    stage: str,
    dataset: Any,
    views: list[tuple[float, bool]],
    rank: int,
    world: int,
    batch_size: int,
    datamodule: Any,
) -> None:
    """Computes and writes the rows of this rank's share of ``stage``'s videos."""
    mine = list(range(rank, len(dataset), world))
    if not mine:
        return
    maps = [
        np.load(stage_file(directory, i, stage), mmap_mode="r+") for i in range(len(task.teachers))
    ]
    loader = DataLoader(
        Subset(dataset, mine),
        batch_size=batch_size,
        num_workers=datamodule.num_workers,
        pin_memory=getattr(datamodule, "pin_memory", False),
    )
    flips = torch.tensor([f for _, f in views])
    k = len(views)
    skipped = 0
    for batch in loader:
        skipped += int(batch["skipped"].sum())
        video = batch["video"]  # (B, K, T, C, H, W) uint8
        b = video.shape[0]
        clips = flip_views(video.flatten(0, 1), flips.repeat(b))
        rows = (batch["index"].view(-1, 1) * k + torch.arange(k)).flatten().numpy()
        for i, out in enumerate(task.teacher_rows(task._normalise(clips.to(task.device)))):
            maps[i][rows] = out.float().cpu().numpy()
    for m in maps:
        m.flush()
    if skipped:
        log.warning(
            "%s: %d %s videos failed to decode while the teacher cache was filled; their rows "
            "are zeros (a video that fails again in training is replaced, as any unreadable "
            "video is)",
            directory,
            skipped,
            stage,
        )


def verify_cache(task: Any, datamodule: Any, cache: TeacherCache) -> None:
    """Refuses ``cache`` when its views, data settings or videos are not those that
    ``datamodule`` serves ``task`` (the datasets it has built, or builds for the check)."""
    spec = datamodule.clip_spec
    stages = [s for s in STAGES if datamodule.splits.get(s) is not None]
    datasets = {
        s: datamodule.datasets[s] if s in datamodule.datasets else datamodule.build_dataset(s)
        for s in stages
    }
    expected = {
        "views": {s: task.cache_view_table(s, spec) for s in stages},
        "data": cache_data_settings(task, datamodule),
        "datasets": {s: dataset_fingerprint(d) for s, d in datasets.items()},
    }
    check_settings(cache.directory, cache.manifest, json.loads(json.dumps(expected)))
