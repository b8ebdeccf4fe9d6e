"""``python -m vssl finetune``: train the whole network on labelled data from a pretrained backbone.

The protocol of the pretext-task papers: a `Supervised` task whose backbone starts from a
checkpoint's backbone (or from random initialisation, the baseline), trained end to end on the
training split, then tested with N evenly spaced clips per video (centre crop): clip top-1
classifies each clip alone, video top-1 averages the clips' class probabilities. Clip length,
stride, crop, decode size and flip default to the checkpoint's training data settings. Each run
gets a new folder ``RUN_DIR/finetune/version_N`` with its settings (``settings.json``), the
library versions (``versions.json``), the CSV log and the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console
from rich.progress import track
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from vssl.callbacks import ProgressBar, package_versions
from vssl.cli_help import HelpFormatter
from vssl.data.corruptions import Corruption
from vssl.data.datamodule import VideoDataModule
from vssl.data.sampling import UniformClips
from vssl.eval.commands import (
    add_corruption_options,
    add_data_options,
    apply_data_settings,
    print_and_write,
)
from vssl.eval.features import Corrupted, MultiCrop, load_task, show_progress
from vssl.tasks.supervised import Supervised


def build_finetune_model(
    num_classes: int,
    ckpt: str | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    trust: bool = False,
    **kwargs: Any,
) -> Supervised:
    """A `Supervised` task whose backbone is the checkpoint's (architecture and weights).

    Without ``ckpt``, the backbone ``backbone`` is randomly initialised. ``trust``: see
    `vssl.eval.load_task`. ``kwargs`` go to `Supervised` (optimiser, lr, dropout, ...).
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
    source = load_task(ckpt, trust=trust)
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
    dataset = dm.build_dataset(split_stage)
    dataset.sampler = UniformClips(spec.clip_len, spec.stride, num_clips=clips)
    dataset.transform = MultiCrop(spec.crop_size, crops=1)
    if corruption is not None:
        dataset.transform = Corrupted(dataset.transform, corruption)
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


def finetune_main(argv: list[str]) -> int:
    """Fine-tunes a checkpoint's backbone (or a random one) and reports clip and video top-1."""
    p = argparse.ArgumentParser(
        prog="vssl finetune",
        description=finetune_main.__doc__,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="checkpoint of any vssl task")
    model.add_argument("--backbone", help="a backbone name, randomly initialised (the baseline)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load --ckpt with weights_only=False (runs pickled code: trusted files only)",
    )
    p.add_argument(
        "--backbone-kwargs",
        type=json.loads,
        default={},
        help="JSON keyword arguments of the backbone builder (with --backbone)",
    )
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--layout", default="folder", help="dataset layout (as VideoDataModule)")
    p.add_argument("--train-split", default="train", help="split the network is trained on")
    p.add_argument("--test-split", default="test", help="split it is validated and tested on")
    p.add_argument("--fold", type=int, default=1, help="official split number (UCF101, HMDB51)")
    p.add_argument("--annotations", default=None, help="folder of the layout's split files")
    add_data_options(p, flip=True)
    p.add_argument("--clips", type=int, default=10, help="evenly spaced clips per test video")
    p.add_argument("--batch-size", type=int, default=8, help="videos per training step")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw", "adam"), help="optimiser")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout before the classifier")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, ...)")
    p.add_argument("--devices", default="auto", help="Lightning devices (a count or 'auto')")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the head, the data order and augmentations"
    )
    p.add_argument("--run-dir", default="runs", help="where Lightning logs and checkpoints go")
    p.add_argument("--out", type=Path, default=None, help="write the results and settings as JSON")
    add_corruption_options(p)
    args = p.parse_args(argv)
    sources = apply_data_settings("vssl finetune", args, flip=True)
    seed_everything(args.seed, workers=True)
    dm = VideoDataModule(
        root=args.root,
        layout=args.layout,
        train_split=args.train_split,
        val_split=args.test_split,
        fold=args.fold,
        annotations=args.annotations,
        clip_len=args.clip_len,
        stride=args.stride,
        crop_size=args.crop_size,
        flip=args.flip,
        decode_size=args.decode_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    net = build_finetune_model(
        dm.num_classes,
        ckpt=args.ckpt,
        backbone=args.backbone,
        backbone_kwargs=args.backbone_kwargs,
        trust=args.trust_checkpoint,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
    )
    settings = {
        **vars(args),
        "out": None if args.out is None else str(args.out),
        "data_settings_from": sources,
    }
    progress = show_progress()  # the training epochs, when stderr is a terminal
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        logger=CSVLogger(args.run_dir, name="finetune"),
        default_root_dir=args.run_dir,
        enable_progress_bar=progress,
        log_every_n_steps=1,
        callbacks=[RunFiles(settings), *([ProgressBar()] if progress else [])],
    )
    trainer.fit(net, datamodule=dm)
    if not trainer.is_global_zero:
        return 0
    results = multi_clip_accuracy(
        net.cpu(),
        dm,
        "test",
        clips=args.clips,
        batch_size=args.batch_size,
        num_workers=args.workers,
        corruption=None
        if args.corruption is None
        else Corruption(args.corruption, args.severity, seed=args.seed),
    )
    record = {
        "protocol": "finetune",
        "settings": settings,
        "classes": dm.classes,
        "results": results,
    }
    rows = [
        (f"clip top-1 ({args.clips} clips)", f"{100 * results['clip_top1']:.2f}"),
        ("video top-1", f"{100 * results['video_top1']:.2f}"),
    ]
    print_and_write("fine-tuning", args.ckpt or args.backbone, rows, record, args.out)
    print(f"vssl finetune: logs and settings in {trainer.log_dir}")
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "best_model_path", ""):
        print(f"vssl finetune: checkpoint {ckpt.best_model_path}")
    return 0


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


__all__ = ["RunFiles", "build_finetune_model", "finetune_main", "multi_clip_accuracy"]
