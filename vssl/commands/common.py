"""What the evaluation commands share: one jsonargparse parser shape, the dataset from a ``data:``
block, the data settings that default to the checkpoint's, and the printed table.

The dataset is given as in ``vssl fit``: a ``data:`` block (``data.class_path`` and
``data.init_args``), from a preset (``--config configs/data/ucf101.yaml``), a task's whole fit
config (its ``model``, ``trainer`` and other fit-only keys are read and left unused), or the
command line (``--data.init_args.root DIR``, or the short ``--data.root DIR``).
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any, Literal

from jsonargparse import (
    ActionConfigFile,
    ActionYesNo,
    ArgumentError,
    ArgumentParser,
    DefaultHelpFormatter,
    Namespace,
)
from rich.console import Console
from rich.table import Table

from vssl.cli_errors import close_match, explain_parse_error, option_strings
from vssl.data.corruptions import corruption_names
from vssl.data.datamodule import VideoDataModule
from vssl.errors import UserError
from vssl.eval.features import DATA_DEFAULTS, describe_data_settings, resolve_data_settings
from vssl.weights import FORMATS

#: Top-level keys of a ``vssl fit`` config that an evaluation accepts and leaves unused, so that
#: a task's fit config can give an evaluation its dataset (LightningCLI's ``optimizer`` and
#: ``lr_scheduler`` are not among them: vssl's tasks take their optimiser as model arguments,
#: and ``finetune --optimizer`` is its own).
FIT_ONLY_KEYS = (
    "trainer",
    "model",
    "seed_everything",
    "checkpoint",
    "lr_monitor",
    "run_info",
    "rng_state",
    "ckpt_path",
)

#: The clip settings that default to the checkpoint's training settings (`DATA_DEFAULTS`).
CLIP_KEYS = tuple(DATA_DEFAULTS)

#: `VideoDataModule` arguments that change what an evaluation decodes, beyond the dataset's
#: place and split (`FeatureSettings.data_options`).
DECODE_KEYS = ("backend", "index_mode", "decode_timeout", "max_decode_failures")

_DATA_CLASS = f"{VideoDataModule.__module__.rsplit('.', 1)[0]}.{VideoDataModule.__name__}"


def decode_size_type(text: str | int | None) -> int | None:
    """A ``--decode-size`` value: a short side in pixels, or ``none`` / ``null`` (full size)."""
    if text is None or isinstance(text, int):
        return text
    if str(text).lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a number of pixels or none, got {text!r}") from None


class HelpFormatter(DefaultHelpFormatter):
    """The help of vssl's other commands (`vssl.cli_help`): ``(default: X)`` after an option
    whose default is worth reading, not after flags that are off, options that default to
    nothing or that say their own default (the clip settings: the checkpoint's); jsonargparse's
    own text for the data block and the config options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.dest.split(".")[0] in ("data", "config", "help", "print_config") or not text:
            return super()._get_help_string(action)
        if action.default is None or action.default is False or "default:" in text:
            return text
        return f"{text} (default: %(default)s)"


def command_parser(prog: str, description: str) -> ArgumentParser:
    """A parser with ``--config`` and the ``data:`` block of ``vssl fit``; parse errors are
    exceptions (see `parse`), not jsonargparse's own exit."""
    parser = ArgumentParser(
        prog=prog,
        description=description
        + " The dataset is a data block as in 'vssl fit': --config configs/data/NAME.yaml (or a "
        "task's fit config), --data.root DIR, --data.layout NAME, ... ('--data.help "
        "VideoDataModule' lists them). Its clip settings, where set, come before the "
        "checkpoint's; its batch size, workers and subset are the training run's and unused.",
        exit_on_error=False,
        allow_abbrev=False,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-c",
        "--config",
        action=ActionConfigFile,
        help="a YAML file of these options and/or a data block (several: read in order)",
    )
    parser.add_subclass_arguments(
        VideoDataModule, "data", fail_untyped=False, required=False, instantiate=False
    )
    parser.set_defaults({"data": {"class_path": _DATA_CLASS}})
    for key in FIT_ONLY_KEYS:
        parser.add_argument(f"--{key}", type=Any, default=None, help=argparse.SUPPRESS)
    return parser


def add_model_options(parser: ArgumentParser) -> None:
    """``--ckpt`` or ``--backbone`` (exactly one; checked by `model_choice`)."""
    parser.add_argument(
        "--ckpt",
        type=str | None,
        default=None,
        help="checkpoint of any vssl task, or published weights (see --ckpt-format)",
    )
    parser.add_argument(
        "--ckpt-format",
        type=Literal[FORMATS],
        default="auto",
        help="what --ckpt is: auto (read from its keys), vssl, hf, videomae, rspnet, vcop, prp, "
        "torchvision, pytorchvideo (vssl.load_backbone)",
    )
    parser.add_argument(
        "--backbone",
        type=str | None,
        default=None,
        help="a backbone name, randomly initialised (the baseline; instead of --ckpt)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="load --ckpt with weights_only=False (runs pickled code: trusted files only)",
    )
    parser.add_argument(
        "--backbone-kwargs",
        type=dict,
        default={},
        help="keyword arguments of the backbone builder, as JSON (with --backbone)",
    )


def add_clip_options(parser: ArgumentParser, flip: bool | None) -> None:
    """The clip settings that default to the checkpoint's training settings; ``flip``: the
    default of ``--flip`` without a checkpoint's setting (None: no ``--flip`` option)."""
    origin = "default: the data block's, else the checkpoint's training setting, else"
    helps = {
        "clip_len": "frames per clip",
        "stride": "step between a clip's frames",
        "crop_size": "side of the square crops",
    }
    for key, text in helps.items():
        option = "--" + key.replace("_", "-")
        help_ = f"{text} ({origin} {DATA_DEFAULTS[key]})"
        parser.add_argument(option, type=int | None, default=None, help=help_)
    parser.add_argument(
        "--decode-size",
        type=decode_size_type,
        default=None,
        help=f"short side frames are decoded at, or none ({origin} {DATA_DEFAULTS['decode_size']})",
    )
    if flip is not None:
        parser.add_argument(
            "--flip",
            action=ActionYesNo(no_prefix="no-"),
            default=None,
            help="flip training clips at random; not for direction-dependent classes "
            f"({origin} {'on' if flip else 'off'})",
        )


def add_corruption_options(parser: ArgumentParser) -> None:
    """``--corruption NAME --severity N``: noise on the test clips (`vssl.data.corruptions`)."""
    parser.add_argument(
        "--corruption",
        type=str | None,
        default=None,
        help="ImageNet-C noise added to every test clip (after cropping); training clips stay "
        f"clean: {', '.join(corruption_names())}",
    )
    parser.add_argument(
        "--severity", type=Literal[1, 2, 3, 4, 5], default=3, help="corruption severity 1-5"
    )


def add_output_option(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=str | None, default=None, help="write the results and settings as JSON"
    )


def parse(parser: ArgumentParser, argv: list[str]) -> tuple[Namespace, Namespace]:
    """The settings (defaults filled in) and the part of them that was given (in a config file
    or on the command line); a mistake is one `UserError` that names the option or file."""
    try:
        args, given = parser.parse_args(argv), parser.parse_args(argv, defaults=False)
    except ArgumentError as err:
        message = explain_parse_error(str(err), argv, option_strings(parser))
        raise UserError(message) from err
    corruption = args.get("corruption")
    if corruption is not None and corruption not in corruption_names():
        names = corruption_names()
        hint = f"did you mean {match!r}? " if (match := close_match(corruption, names)) else ""
        raise UserError(
            f"--corruption: unknown corruption {corruption!r}; {hint}one of {', '.join(names)}"
        )
    return args, given


def model_choice(args: Namespace) -> str:
    """The model's name for the report (``--ckpt`` or ``--backbone``; exactly one)."""
    if (args.ckpt is None) == (args.backbone is None):
        raise UserError("give one of --ckpt CKPT (a checkpoint) or --backbone NAME (random init)")
    return args.ckpt or args.backbone


def _given_dict(given: Namespace, key: str) -> dict[str, Any]:
    value = given.get(key)
    return value.as_dict() if isinstance(value, Namespace) else dict(value or {})


def data_block(args: Namespace, given: Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data block's ``init_args`` (defaults filled in) and those that were given.

    The dataset's folder must be given (no silent default); only `VideoDataModule` datasets
    are read by the evaluations.
    """
    data = args.data
    if data.class_path != _DATA_CLASS and not data.class_path.endswith(".VideoDataModule"):
        raise UserError(
            f"data.class_path: {data.class_path}: the evaluations read {_DATA_CLASS} datasets"
        )
    init = data.init_args.as_dict()
    init_given = _given_dict(given, "data").get("init_args", {})
    if "root" not in init_given:
        raise UserError(
            "no dataset: give --config configs/data/NAME.yaml (or a fit config) or --data.root DIR"
        )
    if init.get("synthetic") is not None and not Path(init["root"]).exists():
        from vssl.data.synthetic import make_synthetic

        make_synthetic(init["root"], **init["synthetic"])
    return init, init_given


def splits(data: dict[str, Any]) -> tuple[str, str]:
    """The training and test split names of a data block (test: ``test_split``, else
    ``val_split``, as `VideoDataModule`)."""
    test = data.get("test_split") or data.get("val_split")
    if not data.get("train_split") or not test:
        raise UserError("data: an evaluation needs a train_split and a val_split or test_split")
    return data["train_split"], test


def decode_options(data: dict[str, Any]) -> dict[str, Any]:
    """The data block's `DECODE_KEYS` that differ from `VideoDataModule`'s defaults."""
    params = inspect.signature(VideoDataModule).parameters
    return {k: data[k] for k in DECODE_KEYS if k in data and data[k] != params[k].default}


def clip_settings(
    prog: str,
    args: Namespace,
    given: Namespace,
    data_given: dict[str, Any],
    flip: bool | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The clip settings (command line, else the data block, else the checkpoint, else the
    defaults, with ``flip``'s default as given; None: no flip), printed as one line; the values
    and where each came from."""
    defaults = dict(DATA_DEFAULTS)
    if flip is None:
        defaults.pop("flip")
    else:
        defaults["flip"] = flip
    chosen = {key: given[key] for key in defaults if key in given}
    from_data = {key: data_given[key] for key in defaults if key in data_given}
    values, sources = resolve_data_settings(
        chosen, args.ckpt, defaults, trust=args.trust_checkpoint, data_given=from_data
    )
    print(describe_data_settings(prog, values, sources), flush=True)
    return values, sources


def protocol_options(args: Namespace) -> dict[str, Any]:
    """The command's own options (no config files, no data block, no fit-only keys)."""
    skip = {"config", "data", "__path__", *FIT_ONLY_KEYS}
    return {k: v for k, v in args.as_dict().items() if k not in skip}


def print_and_write(
    title: str, model: str, rows: list[tuple[str, str]], record: dict[str, Any], out: str | None
) -> None:
    """Prints ``rows`` as a table and, with ``out``, writes ``record`` there as JSON."""
    print(f"{title} of {model}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
        print(f"wrote {path}")


__all__ = [
    "CLIP_KEYS",
    "FIT_ONLY_KEYS",
    "HelpFormatter",
    "add_clip_options",
    "add_corruption_options",
    "add_model_options",
    "add_output_option",
    "clip_settings",
    "command_parser",
    "data_block",
    "decode_options",
    "decode_size_type",
    "model_choice",
    "parse",
    "print_and_write",
    "protocol_options",
    "splits",
]
