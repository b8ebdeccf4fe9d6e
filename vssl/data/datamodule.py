"""`VideoDataModule`: a dataset layout on disk, indexed once, served with the task's own sampling.

The datamodule knows where the videos are and how big clips are; the task (the LightningModule
it is trained with) knows which views it needs from a video and how to transform them. The task
declares them (`VSSLTask.clip_sampler` / `VSSLTask.clip_transform`) and the datamodule executes:
``datamodule.attach(task)`` (done by the CLI) hands it the task, whose sampler and transform
every dataset it builds then uses, so that a new task never needs its own dataset class. Without
a task (used as a library), it serves one random clip per video.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from vssl.data.dataset import VideoDataset
from vssl.data.flow import DEFAULT_BOUND, FlowSource, flow_source
from vssl.data.index import VideoIndex
from vssl.data.layouts import VideoItem, load_layout
from vssl.data.sampling import ClipSampler, ClipSpec, RandomClip, UniformClips
from vssl.data.subset import balanced_subset
from vssl.data.table import VideoTable
from vssl.data.transforms import ViewTransform, eval_clip_transform, train_clip_transform
from vssl.errors import InvalidInputError

log = logging.getLogger("vssl")


def default_clip_sampler(stage: str, spec: ClipSpec) -> ClipSampler:
    """One random clip for training; the centre clip for validation and testing."""
    if stage == "train":
        return RandomClip(spec.clip_len, spec.stride)
    return UniformClips(spec.clip_len, spec.stride, num_clips=1, stack=False)


def default_clip_transform(stage: str, spec: ClipSpec) -> Callable:
    """Random resized crop (and flip, where the data allows) for training; centre crop otherwise."""
    if stage == "train":
        return ViewTransform(train_clip_transform(spec.crop_size, scale=spec.scale, flip=spec.flip))
    return ViewTransform(eval_clip_transform(spec.crop_size))


class EpochShuffle(DistributedSampler):
    """A shuffled order that is a function of ``(seed, epoch)`` alone, giving ``(index, epoch)``
    pairs; ``start`` skips the first positions of the next pass (a run resumed mid-epoch).

    Lightning calls :meth:`set_epoch` at each epoch; the default shuffling draws its order from
    the process's RNG, which a resumed run does not share with the run it continues.

    Under DDP (``num_replicas`` processes) the order is the same on every process and process
    ``rank`` takes every ``num_replicas``-th position from ``rank`` on (the tail that does not
    divide evenly is dropped), so that with a per-process batch B the processes' batches of
    step k together are positions ``k * W * B`` to ``(k + 1) * W * B`` of the order: the batch
    one process with batch ``W * B`` trains on at step k. It is a `DistributedSampler`, so
    Lightning uses it as it is instead of putting its own in.
    """

    def __init__(self, size: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(size), num_replicas, rank, shuffle=True, seed=seed, drop_last=True)
        self.size, self.start = size, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next pass gives."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()[: self.total_size]
        start, self.start = self.start, 0
        return iter([(i, self.epoch) for i in order[start + self.rank :: self.num_replicas]])


def _run_seed() -> int | None:
    """The seed ``seed_everything`` set for this run (Lightning puts it in PL_GLOBAL_SEED)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None and seed.lstrip("-").isdigit() else None


def default_num_workers(processes_per_node: int = 1, cap: int = 8) -> int:
    """DataLoader workers per training process when none are configured: the CPUs this process
    may run on, divided among the node's training processes, between 1 and ``cap``.

    Decoding is the CPU-heavy part of a video pipeline and the usual bottleneck on a GPU; more
    than about 8 workers per process rarely helps and multiplies memory.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cap, cpus // max(1, processes_per_node)))


class VideoDataModule(LightningDataModule):
    """Videos of one dataset layout, split into train / val / test, as batches of uint8 clips.

    Args:
        root: the dataset folder (see `vssl.data.layouts` for each layout's files).
        layout: ``ucf101``, ``hmdb51``, ``kinetics``, ``ssv2``, ``folder``, ``csv``, ``unlabeled``.
        train_split / val_split / test_split: split names of the layout (None: no such loader;
            ``test_split`` defaults to ``val_split``).
        fold: the official split number (UCF101, HMDB51: 1-3).
        annotations: where the layout's split or annotation files are, when not in the default place.
        clip_len, stride: frames per clip and the step between them.
        crop_size: the side of the square crops the network sees.
        flip: whether training clips may be flipped horizontally (off for data whose labels
            depend on left/right direction, such as the synthetic motion classes).
        crop_scale: area range of the training random resized crop.
        decode_size: short side (int) or (H, W) that frames are resized to while decoding.
        batch_size: per process; the global batch is this times the number of processes.
        num_workers: DataLoader worker processes per training process (decoding runs there);
            None: the CPUs this process may use, shared by the processes of the node, at most 8
            (`default_num_workers`).
        backend: the reader (`vssl.data.reader.BACKENDS`); ``auto`` reads MJPEG (what
            ``vssl prepare`` writes) with libjpeg-turbo and every other codec with PyAV.
        index_mode: ``fast`` or ``full`` video probing when the index is built (see `VideoIndex`).
        cache_dir: where the video index is cached (default ``$VSSL_CACHE_DIR`` or ~/.cache/vssl).
        max_decode_failures: fraction of failed reads in a worker above which training stops.
        synthetic: settings of `vssl.data.synthetic.make_synthetic` (classes, videos_per_class,
            seed, frames, size); when given, the synthetic dataset is written to ``root`` if it
            is not there yet.
        decode_timeout: seconds one sample's decoding may take before it counts as a decode
            failure and is skipped (None: no limit); see `vssl.data.reader` for what it covers.
        subset: train on part of the training split only: a number of videos (int) or a
            fraction (float in (0, 1]), class-balanced and nested (for one ``subset_seed`` a
            smaller subset lies inside a larger one; see `vssl.data.subset`). None: all.
        subset_seed: the seed of the subset's choice (kept apart from the run's seed, so that
            runs with different seeds train on the same videos).
        flow: precomputed optical flow for the tasks that read flow (the statistics task):
            None (default) computes flow on the fly in the workers; ``"prepared"`` reads the
            flow files ``vssl prepare --flow`` wrote beside each video; a folder reads flow
            images in the two-stream layout ``FLOW/u/<video>/*.jpg`` + ``FLOW/v/<video>/``, or
            per video ``FLOW/<video>/{u,v}/``, where ``<video>`` is the first that exists of
            the video's path below ``root`` without its extension, its folder's name and its
            stem (UCF101: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01``), and its stem alone
            (``v_ApplyEyeMakeup_g01_c01``, as the official ``tvl1_flow`` folders name them). Videos whose flow is missing or does not have frames - 1
            fields are left out with a logged count and the first names (`vssl.data.flow`).
            Clips must then be at stride 1.
        flow_bound: the value range of flow images in a folder: byte ``0..255`` is
            ``-flow_bound..flow_bound`` pixels (20 in the two-stream layout).
    """

    def __init__(
        self,
        root: str = "data/synthetic",
        layout: str = "folder",
        train_split: str | None = "train",
        val_split: str | None = "test",
        test_split: str | None = None,
        fold: int = 1,
        annotations: str | None = None,
        clip_len: int = 16,
        stride: int = 1,
        crop_size: int = 112,
        flip: bool = True,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        decode_size: int | tuple[int, int] | None = 128,
        batch_size: int = 8,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        backend: str = "auto",
        index_mode: str = "fast",
        cache_dir: str | None = None,
        max_decode_failures: float = 0.1,
        synthetic: dict[str, Any] | None = None,
        decode_timeout: float | None = 60.0,
        subset: int | float | None = None,
        subset_seed: int = 0,
        flow: str | None = None,
        flow_bound: float = DEFAULT_BOUND,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self.layout = layout
        self.splits = {
            "train": train_split,
            "val": val_split,
            "test": test_split if test_split is not None else val_split,
        }
        self.fold = fold
        self.annotations = annotations
        self.clip_spec = ClipSpec(clip_len, stride, crop_size, flip, tuple(crop_scale))
        self.decode_size = decode_size
        self.batch_size = batch_size
        self._num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.backend = backend
        self.index_mode = index_mode
        self.cache_dir = cache_dir
        self.max_decode_failures = max_decode_failures
        self.synthetic = synthetic
        self.decode_timeout = decode_timeout
        self.subset, self.subset_seed = subset, subset_seed
        self.flow, self.flow_bound = flow, flow_bound
        self._flow_source: FlowSource | None = None
        self.datasets: dict[str, VideoDataset] = {}
        self._classes: list[str] | None = None
        self._resume_at: tuple[int, int] | None = None
        self._task: Any = None

    @property
    def classes(self) -> list[str]:
        """Class names of the training split (for a synthetic dataset not yet written: its names)."""
        if self._classes is None:
            if self.synthetic is not None and not self.root.exists():
                from vssl.data.synthetic import SYNTHETIC_CLASSES

                k = int(self.synthetic.get("classes", 8))
                return sorted(c.name for c in SYNTHETIC_CLASSES[:k])  # the folder layout's order
            split = self.splits["train"] or self.splits["val"] or "train"
            _, self._classes = self._load_items(split)
        return self._classes

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for an unlabeled dataset)."""
        return len(self.classes)

    def _load_items(self, split: str) -> tuple[list[VideoItem], list[str]]:
        return load_layout(
            self.layout, self.root, split=split, fold=self.fold, annotations=self.annotations
        )

    def _index(self, items: list[VideoItem], progress: bool) -> VideoIndex:
        workers = max(1, min(8, os.cpu_count() or 1))
        return VideoIndex.build(
            [item.path for item in items],
            cache_dir=self.cache_dir,
            workers=workers,
            progress=progress,
            mode=self.index_mode,
        )

    def prepare_data(self) -> None:
        """Writes the synthetic dataset if asked for, and builds (caches) the video indices once."""
        if self.synthetic is not None:
            from vssl.data.synthetic import make_synthetic

            make_synthetic(self.root, **self.synthetic)
        for split in {s for s in self.splits.values() if s is not None}:
            items, _ = self._load_items(split)
            if items:
                self._index(items, progress=True)

    def attach(self, task: Any) -> VideoDataModule:
        """Serve ``task``'s views: its `ClipSampler` and per-clip transform
        (``task.clip_sampler(stage, spec)`` / ``task.clip_transform(stage, spec)``, as
        `VSSLTask` declares them) for every dataset built from now on; returns the datamodule.

        The CLI calls it before fit, validate, test and predict. Without it, the task the
        attached trainer runs is asked instead (a plain ``trainer.fit(task, datamodule=dm)``),
        and without either, one random clip per video (`default_clip_sampler`).
        """
        if not (hasattr(task, "clip_sampler") and hasattr(task, "clip_transform")):
            raise TypeError(
                f"{type(task).__name__} declares no clip_sampler and clip_transform to attach"
            )
        self._task = task
        return self

    def _task_pipeline(self, stage: str) -> tuple[ClipSampler, Callable]:
        task = self._task
        if task is None and self.trainer is not None:
            task = self.trainer.lightning_module
        if task is not None and hasattr(task, "clip_sampler"):
            return task.clip_sampler(stage, self.clip_spec), task.clip_transform(
                stage, self.clip_spec
            )
        return default_clip_sampler(stage, self.clip_spec), default_clip_transform(
            stage, self.clip_spec
        )

    def build_dataset(
        self, stage: str, sampler: ClipSampler | None = None, transform: Callable | None = None
    ) -> VideoDataset:
        """The dataset of ``stage`` (train, val or test), with the attached task's pipeline, or
        with ``sampler`` and ``transform`` when given (a monitor reading the training videos
        with evaluation clips, say)."""
        split = self.splits[stage]
        if split is None:
            raise ValueError(
                f"no {stage} split configured for {self.layout} dataset at {self.root}"
            )
        items, classes = self._load_items(split)
        if self._classes is None and stage == "train":
            self._classes = classes
        if not items:
            raise ValueError(f"{self.layout} dataset at {self.root}: split '{split}' has no videos")
        index = self._index(items, progress=False)
        infos = [index[item.path] for item in items]
        usable = [i for i, info in enumerate(infos) if info.ok]
        if not usable:
            raise ValueError(
                f"{self.layout} dataset at {self.root}, split '{split}': none of the {len(items)} "
                f"videos can be decoded.\n{index.report()}"
            )
        if stage == "train" and self.subset is not None:
            labels = [items[i].label for i in usable]
            usable = [usable[i] for i in balanced_subset(labels, self.subset, self.subset_seed)]
            log.info(
                "%s: training on a class-balanced subset of %d of %d usable videos (subset=%s, "
                "subset_seed=%d)",
                self.root,
                len(usable),
                len(labels),
                self.subset,
                self.subset_seed,
            )
        if sampler is None or transform is None:
            task_sampler, task_transform = self._task_pipeline(stage)
            sampler, transform = sampler or task_sampler, transform or task_transform
        flow = self._flow_for(sampler)
        # The items and index entries are dropped once they are in the table's arrays: a
        # Python object per video would be copied into every DataLoader worker.
        table = VideoTable.from_items([items[i] for i in usable], [infos[i] for i in usable])
        return VideoDataset.from_table(
            table,
            sampler=sampler,
            transform=transform,
            decode_size=self.decode_size,
            backend=self.backend,
            max_failure_fraction=self.max_decode_failures,
            decode_timeout=self.decode_timeout,
            seed=self._resumable_seed(),
            flow=flow,
        )

    def _flow_for(self, sampler: ClipSampler) -> FlowSource | None:
        """The precomputed flow source for ``sampler`` (None without ``flow`` or when the
        sampler reads no flow); raises when the folder is missing or the clips skip frames."""
        if self.flow is None or not getattr(sampler, "needs_flow", False):
            return None
        stride = int(getattr(sampler, "stride", self.clip_spec.stride))
        if stride != 1:
            raise InvalidInputError(
                f"flow={self.flow!r}: precomputed flow joins consecutive frames, but clips are "
                f"sampled at stride {stride}; set stride: 1, or flow: null to compute flow on "
                "the fly"
            )
        if self._flow_source is None:
            self._flow_source = flow_source(self.flow, self.root, self.flow_bound)
        return self._flow_source

    def setup(self, stage: str) -> None:
        """Builds the datasets that ``stage`` (fit, validate, test, predict) needs."""
        wanted = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["test"],
        }
        for name in wanted.get(stage, []):
            if self.splits[name] is not None:
                self.datasets[name] = self.build_dataset(name)

    def _resumable_seed(self) -> int | None:
        """The run's seed (set by ``seed_everything``): a seeded, resumable data order and
        per-sample randomness, the same for any number of processes; None without a seed."""
        return _run_seed() if self.trainer is not None else None

    def _train_sampler(self, size: int) -> EpochShuffle | None:
        """The seeded order, split across processes, positioned where a restored run left off
        within its epoch."""
        seed = self._resumable_seed()
        if seed is None:
            return None
        world = self.trainer.world_size
        sampler = EpochShuffle(size, seed, num_replicas=world, rank=self.trainer.global_rank)
        if self._resume_at is not None:
            epoch, done = self._resume_at
            sampler.set_epoch(epoch)
            if 0 < done * self.batch_size * world < sampler.total_size:
                sampler.start = done * self.batch_size * world
            self._resume_at = None
        return sampler

    def state_dict(self) -> dict[str, Any]:
        """Where training is in the data: the epoch and the batches of it already taken (saved
        in checkpoints, so that a resumed run continues the same order)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        epoch = trainer.current_epoch
        if done >= trainer.num_training_batches:
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the position :meth:`state_dict` saved (Lightning calls this on resume,
        before the training dataloader is built)."""
        if "epoch" in state_dict:
            self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches_done"]))

    @property
    def num_workers(self) -> int:
        """Worker processes of each DataLoader: the ``num_workers`` given, else
        `default_num_workers` for the processes that the attached trainer runs on this node."""
        if self._num_workers is not None:
            return self._num_workers
        per_node = self.trainer.num_devices if self.trainer is not None else 1
        return default_num_workers(per_node)

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        if stage not in self.datasets:
            raise RuntimeError(
                f"no {stage} dataset: call setup() first or configure a {stage} split"
            )
        sampler = self._train_sampler(len(self.datasets[stage])) if shuffle else None
        per_process = len(sampler) if sampler is not None else len(self.datasets[stage])
        seed = self._resumable_seed()
        workers = self.num_workers
        return DataLoader(
            self.datasets[stage],
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=None if seed is None else torch.Generator().manual_seed(seed),
            num_workers=workers,
            pin_memory=self.pin_memory,
            drop_last=shuffle and per_process >= self.batch_size,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
