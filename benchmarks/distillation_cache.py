"""Distillation with the teachers run on every batch against cached teacher features.

One teacher (a randomly initialised ``--teacher-backbone`` saved as a Rotation checkpoint: the
cost of a forward pass does not depend on what the weights learned) teaches a tiny3d student on
the synthetic dataset for ``--epochs`` epochs, twice: on the fly (``teacher_cache`` None), then
with a fresh ``teacher_cache`` of ``--views`` views per video, which the run fills when fitting
starts. Printed per mode: the seconds from ``fit`` to the first training batch (the cache's
fill, for the cached run), each epoch's seconds, the total, and the teacher's forward calls
while the student trained. A fill costs ``--views`` teacher passes per training video and an
on-the-fly epoch one, so the cache pays for itself after about ``--views`` epochs, and every
later epoch (and every later run with the same teacher and data) saves the teacher's share.

    python benchmarks/distillation_cache.py --root data/synthetic --teacher-backbone r3d_18
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from vssl.data.datamodule import VideoDataModule
from vssl.data.synthetic import make_synthetic
from vssl.eval.features import save_task
from vssl.tasks import Distillation, Rotation


class Clock(Callback):
    """Seconds to the first training batch, per epoch, and the teacher's calls in training."""

    def __init__(self, calls: list[int]) -> None:
        self.calls, self.epochs = calls, []
        self.start = time.perf_counter()
        self.to_training = 0.0
        self.calls_at_start = 0

    def on_train_start(self, trainer: Trainer, module: Distillation) -> None:
        self.to_training = time.perf_counter() - self.start
        self.calls_at_start = self.calls[0]

    def on_train_epoch_start(self, trainer: Trainer, module: Distillation) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, module: Distillation) -> None:
        self.epochs.append(time.perf_counter() - self.epoch_start)


def save_teacher(path: Path, backbone: str) -> Path:
    """A Rotation checkpoint of ``backbone`` as LightningCLI writes one."""
    return save_task(Rotation(backbone=backbone, online_probe=False), path)


def run(args: argparse.Namespace, teacher: Path, cache: Path | None) -> Clock:
    seed_everything(0)
    task = Distillation(
        teachers=[str(teacher)],
        teacher_cache=None if cache is None else str(cache),
        cache_views=args.views,
        backbone="tiny3d",
        backbone_kwargs={"width": 8},
        optimizer="adamw",
        lr=0.003,
        online_probe=False,
    )
    calls = [0]
    task.teachers[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    data = VideoDataModule(
        args.root,
        clip_len=4,
        stride=2,
        crop_size=args.crop_size,
        decode_size=args.decode_size,
        flip=False,
        batch_size=args.batch_size,
        num_workers=args.workers,
    ).attach(task)
    clock = Clock(calls)
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    clock.start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    return clock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default="data/synthetic", help="a dataset folder (written if absent)"
    )
    parser.add_argument("--teacher-backbone", default="r3d_18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--views", type=int, default=2, help="cache_views")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=56)
    parser.add_argument("--decode-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if not Path(args.root).exists():
        make_synthetic(args.root)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = save_teacher(Path(tmp) / "teacher.ckpt", args.teacher_backbone)
        rows = [("on the fly", run(args, teacher, None))]
        rows.append((f"cached ({args.views} views)", run(args, teacher, Path(tmp) / "cache")))
    print(
        f"teacher {args.teacher_backbone}, student tiny3d width 8, {args.epochs} epochs, "
        f"batch {args.batch_size}, 4x{args.crop_size}px clips, torch threads "
        f"{torch.get_num_threads()}"
    )
    print("| mode | s to first batch | s per epoch | total s | teacher calls in training |")
    print("|---|---|---|---|---|")
    for name, clock in rows:
        epochs = ", ".join(f"{t:.1f}" for t in clock.epochs)
        total = clock.to_training + sum(clock.epochs)
        trained = clock.calls[0] - clock.calls_at_start
        print(f"| {name} | {clock.to_training:.1f} | {epochs} | {total:.1f} | {trained} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
