"""A new pretext task in one short file: the arrow of time (is this clip played backwards?).

    python examples/custom_task.py --max_steps 200

A task subclasses `VSSLTask` and writes only `step`: the base class owns the backbone, the
optimiser and schedule, device-side augmentation, logging and the online linear probe. Tasks that
need other views of a video also override `clip_sampler` / `clip_transform` (see vssl/tasks/).
"""

from __future__ import annotations

from typing import Any

import torch
from _common import run_settings
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor, nn

from vssl.data import VideoDataModule
from vssl.tasks import StepOutput, VSSLTask


class ArrowOfTime(VSSLTask):
    """Reverse half of the clips in time; a linear head tells forward from backward."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head = nn.Linear(self.backbone.out_dim, 2)

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """Cross-entropy of the direction; clips are float (B, C, T, H, W) here."""
        video = batch["video"]
        backwards = torch.rand(video.shape[0], device=video.device) < 0.5
        video = torch.where(backwards[:, None, None, None, None], video.flip(2), video)
        features = self.backbone(video)
        logits = self.head(features)
        target = backwards.long()
        accuracy = (logits.argmax(1) == target).float().mean()
        return StepOutput(nn.functional.cross_entropy(logits, target), {"acc": accuracy}, features)


def main(argv: list[str] | None = None) -> None:
    """Pretrain the arrow-of-time task on the synthetic dataset with the online probe on."""
    args = run_settings(__doc__, argv)
    seed_everything(0)
    data = VideoDataModule(
        root=str(args.root),
        clip_len=args.clip_len,
        crop_size=args.crop_size,
        decode_size=32,
        flip=False,
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    task = ArrowOfTime(
        backbone="tiny3d",
        backbone_kwargs={"width": 8},
        num_classes=data.num_classes,  # only for the online linear probe on the labels
        optimizer="adamw",
        lr=3e-3,
    )
    trainer = Trainer(
        max_steps=args.max_steps,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(task, datamodule=data)
    loss = float(trainer.callback_metrics["train/loss"])
    val = trainer.validate(task, datamodule=data, verbose=False)[0]
    print(
        f"arrow of time: {trainer.global_step} steps, train/loss {loss:.3f}, "
        f"val/acc {val['val/acc']:.2f}, val/probe_acc {val['val/probe_acc']:.2f}"
    )


if __name__ == "__main__":
    main()
