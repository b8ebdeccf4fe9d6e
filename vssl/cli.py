"""The command line: ``python -m vssl <subcommand>`` (also the ``vssl`` console script).

``fit``, ``validate``, ``test`` and ``predict`` are a LightningCLI with the task and the
datamodule in subclass mode: any task and any datamodule is picked in YAML with ``class_path``
and ``init_args``. The other subcommands are plain programs with their own arguments.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from collections.abc import Callable

from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from vssl.callbacks import Checkpoint, RNGState, RunInfo
from vssl.data.datamodule import VideoDataModule
from vssl.errors import UserError
from vssl.tasks.base import VSSLTask

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")

TRAINER_DEFAULTS = {"logger": lazy_instance(CSVLogger, save_dir="runs", name="vssl")}


def _lazy(module: str, function: str) -> Callable[[list[str]], int]:
    """A subcommand whose code is imported only when it runs (keeps ``--help`` fast)."""

    def run(argv: list[str]) -> int:
        return getattr(importlib.import_module(module), function)(argv)

    return run


#: Subcommands that are not Trainer methods: name -> (function of argv, one-line help).
EXTRA_COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "make-synthetic": (
        _lazy("vssl.data.synthetic", "main"),
        "write the synthetic motion dataset (real video files)",
    ),
    "show": (
        _lazy("vssl.show", "main"),
        "draw what a pretext task gives the network (show TASK VIDEO --out FILE.png)",
    ),
    "probe": (
        _lazy("vssl.eval.commands", "probe_main"),
        "linear probe (100/10/1% labels) and kNN on frozen features (probe --ckpt CKPT --root DIR)",
    ),
    "retrieve": (
        _lazy("vssl.eval.commands", "retrieve_main"),
        "video retrieval R@k: test videos query training videos (retrieve --ckpt CKPT --root DIR)",
    ),
    "finetune": (
        _lazy("vssl.eval.finetune", "finetune_main"),
        "train a checkpoint's backbone end to end on labels; clip and video top-1 (finetune --ckpt)",
    ),
    "prepare": (
        _lazy("vssl.data.prepare", "main"),
        "transcode a dataset tree for fast random access (prepare SRC DST --short-side 128)",
    ),
    "export": (
        _lazy("vssl.export", "main"),
        "write a checkpoint's backbone weights alone (export CKPT --out FILE.safetensors)",
    ),
}


class VSSLCLI(LightningCLI):
    """LightningCLI with vssl's links and always-on callbacks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(RunInfo, "run_info")
        parser.add_lightning_class_args(RNGState, "rng_state")


# Lightning messages that say nothing about a vssl run: advertising tips, a deprecation inside
# Lightning itself, and the notice that the task (not the datamodule) transforms batches on the
# device, which is how vssl is designed.
_SILENCED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*overridden `on_after_batch_transfer` in `LightningModule` but have passed in a.*",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def _quiet_lightning() -> None:
    """Keeps Lightning's tips and vssl-irrelevant warnings off the console of every run."""
    for pattern in _SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())


def _usage() -> str:
    lines = ["usage: python -m vssl <subcommand> [options]", "", "subcommands:"]
    lines += [f"  {name:<15} Lightning Trainer.{name} (--config FILE ...)" for name in TRAINER_SUBCOMMANDS]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()]
    lines.append("\n'python -m vssl SUBCOMMAND --help' shows the options of one subcommand;")
    lines.append("'--debug' shows the traceback of an error in what was given (a file, a folder, a setting).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vssl`` and the ``vssl`` script."""
    # From the command line LightningCLI reads sys.argv itself (given both, it warns).
    cli_args = None if argv is None else list(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in EXTRA_COMMANDS:
        return EXTRA_COMMANDS[argv[0]][0](argv[1:])
    if argv[0] not in TRAINER_SUBCOMMANDS:
        print(f"vssl: unknown subcommand {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
        if cli_args is None:
            sys.argv.remove("--debug")
        else:
            cli_args.remove("--debug")
    _quiet_lightning()
    try:
        cli = VSSLCLI(
            VSSLTask,
            VideoDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": False},
            parser_kwargs={"prog": "python -m vssl"},
            args=cli_args,
        )
    except UserError as err:
        if debug:
            raise
        print(f"vssl {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    # After the trainer's teardown, so that these are the last lines even when the progress
    # bar prints its final state at teardown (output not a terminal).
    for callback in cli.trainer.callbacks:
        if isinstance(callback, RunInfo) and callback.summary:
            print("\n".join(callback.summary), flush=True)
    return 0


__all__ = ["EXTRA_COMMANDS", "VSSLCLI", "main"]
