"""``python -m vssl finetune``: fine-tune a checkpoint's backbone (or a random one) end to end on
the data block's training split, then report clip and video top-1 on its test split.

The library is `vssl.eval.finetune`. The datamodule is the data block's (as ``vssl fit`` builds
it, so its crop scale, subset, backend and cache apply), with the clip settings resolved as the
other evaluations do (command line, else the data block, else the checkpoint's training
settings) and the command's own ``--batch-size`` and ``--workers``.
"""

from __future__ import annotations

from typing import Literal

from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger

from vssl.callbacks import ProgressBar
from vssl.commands.common import (
    add_clip_options,
    add_corruption_options,
    add_model_options,
    add_output_option,
    clip_settings,
    command_parser,
    data_block,
    model_choice,
    parse,
    print_and_write,
    protocol_options,
)
from vssl.data.corruptions import Corruption
from vssl.data.datamodule import VideoDataModule
from vssl.eval.features import show_progress
from vssl.eval.finetune import RunFiles, build_finetune_model, multi_clip_accuracy

PROG = "vssl finetune"


def build_parser() -> ArgumentParser:
    """``vssl finetune``'s options."""
    parser = command_parser(
        PROG,
        "Fine-tunes a checkpoint's backbone (or a random one) on the data block's training "
        "split and reports clip and video top-1 on its test split.",
    )
    add_model_options(parser)
    add_clip_options(parser, flip=True)
    parser.add_argument("--clips", type=int, default=10, help="evenly spaced clips per test video")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per training step")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument(
        "--optimizer", type=Literal["sgd", "adamw", "adam"], default="sgd", help="optimiser"
    )
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout before the classifier")
    parser.add_argument(
        "--accelerator", type=str, default="auto", help="Lightning accelerator (cpu, gpu, ...)"
    )
    parser.add_argument(
        "--devices", type=str, default="auto", help="Lightning devices (a count or 'auto')"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the head, the data order and augmentations"
    )
    parser.add_argument(
        "--run-dir", type=str, default="runs", help="where Lightning logs and checkpoints go"
    )
    add_output_option(parser)
    add_corruption_options(parser)
    return parser


def main(argv: list[str]) -> int:
    """Runs ``vssl finetune ARGV``; 0 when done."""
    args, given = parse(build_parser(), argv)
    name = model_choice(args)
    data, data_given = data_block(args, given)
    clip, sources = clip_settings(PROG, args, given, data_given, flip=True)
    seed_everything(args.seed, workers=True)
    dm = VideoDataModule(
        **{**data, **clip, "batch_size": args.batch_size, "num_workers": args.workers}
    )
    net = build_finetune_model(
        dm.num_classes,
        ckpt=args.ckpt,
        backbone=args.backbone,
        backbone_kwargs=args.backbone_kwargs,
        trust=args.trust_checkpoint,
        ckpt_format=args.ckpt_format,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
    )
    settings = {
        **protocol_options(args),
        **clip,
        "data": {"class_path": args.data.class_path, "init_args": data},
        "data_settings_from": sources,
    }
    progress = show_progress()  # the training epochs, when stderr is a terminal
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=devices,
        logger=CSVLogger(args.run_dir, name="finetune"),
        default_root_dir=args.run_dir,
        enable_progress_bar=progress,
        log_every_n_steps=1,
        callbacks=[RunFiles(settings), *([ProgressBar()] if progress else [])],
    )
    trainer.fit(net, datamodule=dm.attach(net))
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
    print_and_write("fine-tuning", name, rows, record, args.out)
    print(f"vssl finetune: logs and settings in {trainer.log_dir}")
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "best_model_path", ""):
        print(f"vssl finetune: checkpoint {ckpt.best_model_path}")
    return 0


__all__ = ["build_parser", "main"]
