"""Fine-tuning: train the whole network on labelled data from a pretrained backbone (the library
of ``python -m vssl finetune``, whose front-end is `vssl.commands.finetune`).

The protocol of the pretext-task papers: a `Supervised` task whose backbone starts from a
checkpoint's backbone (or from random initialisation, the baseline), trained end to end on the
training split, then tested with N evenly spaced clips per video (centre crop): clip top-1
classifies each clip alone, video top-1 averages the clips' class probabilities. Clip length,
stride, crop, decode size and flip default to the checkpoint's training data settings. Each run
gets a new folder ``RUN_DIR/finetune/version_N`` with its settings (``settings.json``), the
library versions (``versions.json``), the CSV log and the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from rich.console import Console
from rich.progress import track
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from vssl.callbacks import package_versions
from vssl.data.corruptions import Corruption
from vssl.data.datamodule import VideoDataModule
from vssl.data.sampling import UniformClips
from vssl.eval.features import Corrupted, MultiCrop, show_progress
from vssl.tasks.supervised import Supervised


def build_finetune_model(
    num_classes: int,
    ckpt: str | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    trust: bool = False,
    ckpt_format: str = "auto",
    **kwargs: Any,
) -> Supervised:
    """A `Supervised` task whose backbone is the checkpoint's (architecture and weights).

    ``ckpt`` is a vssl checkpoint or published weights of ``ckpt_format`` (see
    `vssl.load_backbone`). Without ``ckpt``, the backbone ``backbone`` is randomly
    initialised. ``trust``: see `vssl.eval.load_task`. ``kwargs`` go to `Supervised`
    (optimiser, lr, dropout, ...).
    """
    if (ckpt is None) == (backbone is None):
        raise ValueError("give exactly one of a checkpoint (ckpt) or a backbone name (backbone)")
    if ckpt is None:
        return Supervised(
            num_classes=num_classes,
            backbone=backbone,
            backbone_kwargs=backbone_kwargs or {},
            **kwargs,
        )
    from vssl.weights import load_task as load_weights

    source = load_weights(ckpt, format=ckpt_format, trust=trust)
    model = Supervised(
        num_classes=num_classes,
        backbone=source.hparams.backbone,
        backbone_kwargs=source.hparams.backbone_kwargs or {},
        **kwargs,
    )
    model.backbone.load_state_dict(source.backbone.state_dict())
    return model


@torch.no_grad()
def multi_clip_accuracy(
    model: Supervised,
    dm: VideoDataModule,
    split_stage: str = "test",
    clips: int = 10,
    batch_size: int = 4,
    num_workers: int = 0,
    progress: bool | None = None,
    corruption: Corruption | None = None,
) -> dict[str, float]:
    """Clip and video top-1 of a classifier on ``clips`` evenly spaced centre-cropped clips
    (with ``corruption`` added to them after cropping, if given).

    ``progress``: a progress bar per batch on stderr (None: when stderr is a terminal).
    """
    spec = dm.clip_spec
    transform: Any = MultiCrop(spec.crop_size, crops=1)
    if corruption is not None:
        transform = Corrupted(transform, corruption)
    sampler = UniformClips(spec.clip_len, spec.stride, num_clips=clips)
    dataset = dm.build_dataset(split_stage, sampler=sampler, transform=transform)
    model.eval()
    clip_logits: list[Tensor] = []
    labels: list[Tensor] = []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    if progress is None:
        progress = show_progress()
    for batch in track(
        loader,
        f"testing on {len(dataset)} videos",
        total=len(loader),
        disable=not progress,
        console=Console(stderr=True),
    ):
        video = batch["video"].to(model.device)
        b, n = video.shape[:2]
        logits = model.head(model.extract_features(video.reshape(b * n, *video.shape[2:])))
        clip_logits.append(logits.reshape(b, n, -1).cpu())
        labels.append(batch["label"])
    logits, y = torch.cat(clip_logits), torch.cat(labels)
    c = model.num_classes
    clip_acc = multiclass_accuracy(
        logits.reshape(-1, c), y.repeat_interleave(logits.shape[1]), c, average="micro"
    )
    video_acc = multiclass_accuracy(logits.softmax(-1).mean(1), y, c, average="micro")
    return {"clip_top1": float(clip_acc), "video_top1": float(video_acc)}


class RunFiles(Callback):
    """Writes a run's resolved settings (``settings.json``) and the library versions
    (``versions.json``) into its log folder when fitting starts (the folder exists by then)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every process asks
        if trainer.is_global_zero and log_dir:
            folder = Path(log_dir)
            folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.settings, indent=2, default=str)
            (folder / "settings.json").write_text(text + "\n")
            (folder / "versions.json").write_text(json.dumps(package_versions(), indent=2) + "\n")


__all__ = ["RunFiles", "build_finetune_model", "multi_clip_accuracy"]
