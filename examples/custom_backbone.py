"""Register your own backbone and train a task with it, by name, like the built-in ones.

    python examples/custom_backbone.py --max_steps 100

It validates before and after training (the validation loss and accuracy against chance show
what was learned). A backbone is any `vssl.backbones.Backbone`: a trunk mapping (B, 3, T, H, W) clips to a feature
map (B, D, T', H', W'), and its width D. Registered names work in YAML configs too, once the
module that registers them is imported (e.g. a `class_path` of yours that imports it).
"""

from __future__ import annotations

from _common import run_settings
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from vssl import backbones
from vssl.data import VideoDataModule
from vssl.tasks import Supervised


@backbones.register(
    "separable_tiny",
    input_size=(8, 32),
    source="examples/custom_backbone.py",
    description="a (2+1)D-separable three-layer CNN",
)
def separable_tiny(width: int = 8) -> backbones.Backbone:
    """A spatial 1x3x3 then temporal 3x1x1 convolution per layer, doubling the width each time."""
    layers: list[nn.Module] = []
    channels = 3
    for i in range(3):
        out = width * 2**i
        layers += [
            nn.Conv3d(channels, out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(out, out, (3, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    return backbones.Backbone(nn.Sequential(*layers), out_dim=channels)


def main(argv: list[str] | None = None) -> None:
    """Train the supervised task with the registered backbone; print what the registry says."""
    args = run_settings(__doc__, argv)
    seed_everything(0)
    print(backbones.info("separable_tiny"))
    data = VideoDataModule(
        root=str(args.root),
        clip_len=args.clip_len,
        crop_size=args.crop_size,
        decode_size=32,
        flip=False,
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    task = Supervised(
        backbone="separable_tiny",
        backbone_kwargs={"width": 4},
        num_classes=data.num_classes,
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
    before = trainer.validate(task, datamodule=data, verbose=False)[0]
    trainer.fit(task, datamodule=data)
    after = trainer.validate(task, datamodule=data, verbose=False)[0]
    print(
        f"separable_tiny: out_dim {task.backbone.out_dim}, {trainer.global_step} steps, "
        f"val/loss {before['val/loss']:.3f} -> {after['val/loss']:.3f}, "
        f"val/acc {before['val/acc']:.2f} -> {after['val/acc']:.2f} "
        f"(chance {1 / data.num_classes:.2f})"
    )


if __name__ == "__main__":
    main()
