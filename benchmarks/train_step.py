"""Training-step overhead: vssl's training (Lightning Trainer + task + batched augmentation)
against a plain PyTorch loop doing the same work on the same in-memory uint8 samples.

Decoding is excluded from both sides: the task is attached to a `VideoDataModule` on the
synthetic dataset (`VideoDataModule.attach`: its clip sampler and worker transform), whose train
dataloader is run once for ``--batches`` batches of uint8 samples, kept in a list. Both sides
batch that list with the same ``DataLoader(batch_size=--batch)``, so both pay the collation.

- vssl side: ``Trainer.fit(task, train_dataloaders=...)`` as the CLI sets it up (CSVLogger,
  LearningRateMonitor, ModelCheckpoint with ``save_last``, RunInfo, RNGState; progress bar as
  ``--progress-bar``; ``log_every_n_steps`` as ``--log-every``); the task reads its batch size
  (for its lr scaling) from that dataloader, as in any run.
  Everything of a step counts: fetch, ``on_after_batch_transfer`` (the augmentation), the
  task's ``training_step`` (loss, online probe, metrics, ``self.log``), backward, optimiser
  and lr scheduler step, the task's ``after_optimizer_step`` (RSPNet's momentum update),
  callbacks and logger.
- plain side: a loop over the same batches doing ``task.augment_batch`` (the same `BatchAugment`
  draws), ``task.step(batch, "train").loss``, plus the online probe's linear layer and
  cross-entropy on the detached features when the task has a probe and the batch has labels
  (the probe is part of vssl's training objective, so both sides train it), ``backward``,
  ``optimizer.step`` (the task's optimiser class and settings, one parameter group, no lr
  schedule), ``zero_grad``, and ``task.after_optimizer_step()`` (RSPNet's momentum-encoder
  update). No logging, no metrics, no lr schedule, no callbacks.

Each repeat runs both sides back to back on fresh, identically seeded tasks, in alternating
order (vssl first in even repeats, the plain loop first in odd ones), so that neither side
always gets the warmer or the quieter machine; ``--warmup`` steps are excluded from both. A
repeat gives a pair of times per step and their ratio (vssl's time / the plain loop's). The
table prints the repeat whose ratio is the median of the pairs (the lower median for an even
number of repeats), with the min-max of all the pairs' ratios: its clips per second on both
sides, its ratio and its difference (extra ms/step: vssl's fixed cost per step, best seen with
a tiny model) all come from that one pair, so that the columns agree with each other.
A step's time is measured from the end of the previous step to the end of this one, so the
vssl side includes the Trainer's work between steps (logging, the progress bar).

    python benchmarks/train_step.py           # every task: tiny_r2plus1d, 8x64x64 clips, batch 8
    python benchmarks/train_step.py --tasks CVRL --backbone r3d_18 --repeats 5
    python benchmarks/train_step.py --tasks Supervised --profile    # where vssl's step goes
    python benchmarks/train_step.py --backbone tiny3d --width 4 --frames 4 --size 32  # overhead
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from vssl.callbacks import RNGState, RunInfo
from vssl.data.datamodule import VideoDataModule
from vssl.tasks.base import VSSLTask

#: Tasks measured when they exist in `vssl.tasks`, with settings sized for a CPU. A task that
#: needs a backbone family of its own names it here (VideoMAE: a video ViT), instead of
#: ``--backbone``.
TASKS: dict[str, dict[str, Any]] = {
    "Supervised": {"dropout": 0.5},
    "SpatioTemporalStatistics": {},
    "CVRL": {"hidden_dim": 512},
    "RSPNet": {"queue_size": 4096},
    "ClipOrder": {},
    "Rotation": {},
    "PlaybackRate": {},
    "VideoMAE": {
        "backbone": "vit_tiny_8",
        "decoder_dim": 64,
        "decoder_depth": 1,
        "decoder_heads": 2,
    },
}


def task_class(name: str) -> type[VSSLTask] | None:
    """The task class ``name`` from `vssl.tasks`, or None when this checkout does not have it."""
    module = importlib.import_module("vssl.tasks")
    cls = getattr(module, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, VSSLTask) else None


def build_task(name: str, args: argparse.Namespace, num_classes: int) -> VSSLTask:
    """A fresh task with the benchmark's backbone, seeded so that every repeat starts alike."""
    seed_everything(0, verbose=False)
    kwargs: dict[str, Any] = {
        "backbone": args.backbone,
        "num_classes": num_classes,
        "online_probe": not args.no_probe,
        **TASKS.get(name, {}),
    }
    if args.width and kwargs["backbone"] == args.backbone:
        kwargs["backbone_kwargs"] = {"width": args.width}
    if name == "SpatioTemporalStatistics":
        kwargs["clip_len"] = args.frames
    if name == "Supervised":
        kwargs.pop("online_probe")
    return task_class(name)(**kwargs)


def make_samples(name: str, args: argparse.Namespace, root: Path, cache: Path) -> tuple[list, int]:
    """``args.batches * args.batch`` uint8 samples of the task's own data pipeline (the
    datamodule's train dataloader with the task attached), and the class count."""
    dm = VideoDataModule(
        root=str(root),
        clip_len=args.frames,
        stride=1,
        crop_size=args.size,
        decode_size=args.size,
        batch_size=args.batch,
        num_workers=args.workers,
        cache_dir=str(cache),
        flip=True,
        val_split=None,
    )
    dm.prepare_data()
    dm.attach(build_task(name, args, dm.num_classes)).setup("fit")
    wanted = args.batches * args.batch
    samples: list[dict[str, Any]] = []
    while len(samples) < wanted:
        for batch in dm.train_dataloader():
            size = len(next(iter(batch.values())))
            samples += [{k: v[i] for k, v in batch.items()} for i in range(size)]
    return samples[:wanted], dm.num_classes


def batches_of(samples: list, args: argparse.Namespace) -> DataLoader:
    """The batches of both sides: ``samples`` in order, repeated so that the warm-up and timed
    steps fit in one epoch (no epoch-end checkpoint inside the timing)."""
    steps = args.warmup + args.steps
    repeats = steps * args.batch // len(samples) + 1
    return DataLoader(samples * repeats, batch_size=args.batch, shuffle=False)


class StepClock(Callback):
    """Times every training step, from the end of the previous one to the end of this one."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.ends.append(time.perf_counter())

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.ends = [time.perf_counter()]


def run_vssl(
    task: VSSLTask, samples: list, args: argparse.Namespace, out: Path, profiler: Any = None
) -> float:
    """Mean seconds per step of ``Trainer.fit`` after the warm-up steps."""
    clock = StepClock()
    steps = args.warmup + args.steps
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=CSVLogger(out, name="bench"),
        log_every_n_steps=args.log_every,
        enable_progress_bar=args.progress_bar,
        enable_model_summary=False,
        profiler=profiler,
        callbacks=[
            ModelCheckpoint(save_last=True),
            LearningRateMonitor(),
            RunInfo(),
            RNGState(),
            clock,
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, train_dataloaders=batches_of(samples, args))
    times = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)][args.warmup :]
    return sum(times) / len(times)


def _optimizer(task: VSSLTask) -> torch.optim.Optimizer:
    hp = task.hparams
    params = [p for p in task.parameters() if p.requires_grad]
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=hp.momentum, weight_decay=hp.weight_decay)
    cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=1e-3, weight_decay=hp.weight_decay)


def run_plain(task: VSSLTask, samples: list, args: argparse.Namespace) -> float:
    """Mean seconds per step after warm-up of a hand-written loop doing the same work."""
    task.train()
    opt = _optimizer(task)
    batches = iter(batches_of(samples, args))
    ends = [time.perf_counter()]
    for _ in range(args.warmup + args.steps):
        batch = task.augment_batch(next(batches))
        out = task.step(batch, "train")
        loss = out.loss
        labels = batch.get("label")
        if task.probe is not None and out.features is not None and labels is not None:
            loss = loss + nn.functional.cross_entropy(task.probe(out.features.detach()), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        task.after_optimizer_step()
        ends.append(time.perf_counter())
    times = [b - a for a, b in zip(ends, ends[1:], strict=False)][args.warmup :]
    return sum(times) / len(times)


def side_order(repeat: int) -> tuple[str, str]:
    """Which side runs first in repeat ``repeat``: alternating, vssl first in even repeats."""
    return ("vssl", "plain") if repeat % 2 == 0 else ("plain", "vssl")


@dataclass(frozen=True)
class PairedTimes:
    """The median pair of per-step times of the two sides, and the spread of all pairs' ratios."""

    vssl_s: float
    plain_s: float
    ratio: float
    ratio_min: float
    ratio_max: float
    repeat: int

    @property
    def extra_s(self) -> float:
        """vssl's extra seconds per step in the median pair."""
        return self.vssl_s - self.plain_s


def median_pair(vssl_times: list[float], plain_times: list[float]) -> PairedTimes:
    """The repeat whose ratio ``vssl / plain`` is the median of the repeats' ratios (the lower
    median for an even count, so that it is one repeat's pair), with the ratios' min and max."""
    if len(vssl_times) != len(plain_times) or not vssl_times:
        raise ValueError(
            f"need one plain time per vssl time, at least one pair; got "
            f"{len(vssl_times)} and {len(plain_times)}"
        )
    if min(plain_times) <= 0 or min(vssl_times) <= 0:
        raise ValueError(f"times must be positive, got {vssl_times} and {plain_times}")
    ratios = [v / p for v, p in zip(vssl_times, plain_times, strict=True)]
    repeat = ratios.index(statistics.median_low(ratios))
    return PairedTimes(
        vssl_times[repeat], plain_times[repeat], ratios[repeat], min(ratios), max(ratios), repeat
    )


def clips_per_sample(batch: dict[str, Any], task: VSSLTask) -> int:
    """Clips a sample carries (CVRL 2, RSPNet 3, most tasks 1; a stack of N clips counts N)."""
    n = 0
    for key in task.video_keys:
        if key in batch:
            n += batch[key].shape[1] if batch[key].ndim == 6 else 1
    return n


def profile(
    name: str, samples: list, num_classes: int, args: argparse.Namespace, out: Path
) -> None:
    """Lightning's SimpleProfiler over a vssl fit, then torch.profiler's top operators."""
    from lightning.pytorch.profilers import SimpleProfiler

    print(f"\n== {name}: Lightning SimpleProfiler (per hook, all steps incl. warm-up) ==")
    run_vssl(
        build_task(name, args, num_classes),
        samples,
        args,
        out / "simple",
        profiler=SimpleProfiler(extended=False),
    )
    print(f"\n== {name}: torch.profiler, whole fit, top operators by self CPU time ==")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run_vssl(build_task(name, args, num_classes), samples, args, out / "torch")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table; returns a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--backbone", default="tiny_r2plus1d")
    parser.add_argument(
        "--width", type=int, default=0, help="backbone width (tiny ones; 0: the default)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--batches", type=int, default=4, help="distinct batches of samples kept in memory"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers that build the samples once"
    )
    parser.add_argument("--log-every", type=int, default=50, help="Trainer log_every_n_steps")
    parser.add_argument("--progress-bar", action="store_true", help="enable the progress bar")
    parser.add_argument("--no-probe", action="store_true", help="switch the online probe off")
    parser.add_argument("--profile", action="store_true", help="profile vssl's step instead")
    parser.add_argument(
        "--data", default=None, help="synthetic dataset folder (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    if not args.profile:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="vssl-train-step-"))
    root = Path(args.data) if args.data else tmp / "synthetic"
    from vssl.data.synthetic import make_synthetic

    make_synthetic(
        root,
        classes=4,
        videos_per_class=6,
        frames=max(32, 4 * args.frames),
        size=args.size,
        test_fraction=0.25,
    )
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    rows = []
    for name in args.tasks:
        if task_class(name) is None:
            print(f"{name}: not in vssl.tasks, skipped")
            continue
        try:
            samples, num_classes = make_samples(name, args, root, tmp / "cache")
        except ValueError as err:  # a task that refuses these sizes says why; the others run
            print(f"{name}: skipped, {err}")
            continue
        if args.profile:
            profile(name, samples, num_classes, args, tmp / name)
            continue
        vssl_times, plain_times = [], []
        for r in range(args.repeats):
            for side in side_order(r):
                task = build_task(name, args, num_classes)
                if side == "vssl":
                    vssl_times.append(run_vssl(task, samples, args, tmp / name / f"r{r}"))
                else:
                    plain_times.append(run_plain(task, samples, args))
        first = next(iter(batches_of(samples, args)))
        clips = args.batch * clips_per_sample(first, build_task(name, args, num_classes))
        pair = median_pair(vssl_times, plain_times)
        rows.append(
            (
                name,
                TASKS.get(name, {}).get("backbone", args.backbone),
                args.batch,
                f"{args.frames}x{args.size}x{args.size}",
                clips // args.batch,
                clips,
                pair,
            )
        )
        pairs = ", ".join(
            f"{v * 1e3:.1f}/{p * 1e3:.1f}" for v, p in zip(vssl_times, plain_times, strict=True)
        )
        print(
            f"{name}: vssl/plain ms per step by repeat: {pairs}; median pair: repeat {pair.repeat}",
            flush=True,
        )
    if rows:
        head = (
            "task",
            "backbone",
            "batch",
            "clip",
            "clips/sample",
            "vssl clips/s",
            "plain clips/s",
            "ratio (vssl time / plain) [min-max]",
            "extra ms/step",
        )
        print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for name, bb, b, clip, per, clips, pair in rows:
            print(
                f"| {name} | {bb} | {b} | {clip} | {per} | {clips / pair.vssl_s:.1f} "
                f"| {clips / pair.plain_s:.1f} | {pair.ratio:.3f} [{pair.ratio_min:.3f}-"
                f"{pair.ratio_max:.3f}] | {pair.extra_s * 1e3:.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
