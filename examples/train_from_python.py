"""Pretrain with CVRL from Python, without the CLI: a task, a datamodule and a Lightning Trainer.

    python examples/train_from_python.py --max_steps 200

It validates before and after training: the drop of the validation loss (CVRL's InfoNCE between
two views of each validation clip) is what shows that the network learned the pretext task.
Then the trained backbone gives features for any clips, and `vssl.export` writes its weights.
"""

from __future__ import annotations

import torch
from _common import run_settings
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger

from vssl.data import VideoDataModule
from vssl.tasks import CVRL


def main(argv: list[str] | None = None) -> None:
    """Train CVRL with a tiny 3D CNN on the synthetic dataset and print feature shapes."""
    args = run_settings(__doc__, argv)
    seed_everything(0)
    task = CVRL(
        backbone="tiny3d",
        backbone_kwargs={"width": 8},
        hidden_dim=64,
        projection_dim=32,
        optimizer="adamw",
        lr=3e-3,
    )
    data = VideoDataModule(
        root=str(args.root),
        clip_len=args.clip_len,
        stride=1,
        crop_size=args.crop_size,
        decode_size=32,
        flip=False,  # the synthetic classes are motion directions
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    trainer = Trainer(
        max_steps=args.max_steps,
        accelerator="auto",
        devices=1,
        logger=CSVLogger("runs", name="cvrl_from_python"),
        enable_progress_bar=False,
        log_every_n_steps=1,
    )
    before = trainer.validate(task, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(task, datamodule=data)
    after = trainer.validate(task, datamodule=data, verbose=False)[0]["val/loss"]
    print(f"trained {trainer.global_step} steps, val/loss {before:.3f} before -> {after:.3f} after")

    # The datamodule serves uint8 clips (B, T, C, H, W); extract_features normalises them.
    batch = next(iter(data.val_dataloader()))
    features = task.extract_features(batch["video"].to(task.device))
    print(f"features {tuple(features.shape)}, finite: {bool(torch.isfinite(features).all())}")


if __name__ == "__main__":
    main()
