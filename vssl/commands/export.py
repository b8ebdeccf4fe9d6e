"""``python -m vssl export CKPT --out FILE``: the options of `vssl.export.main` on jsonargparse, so
that they can come from ``--config FILE`` too (``checkpoint: x.ckpt``, ``out: y.safetensors``).

The export itself stays `vssl.export.main(argv)`: the options parsed here are handed to it as
its own command line.
"""

from __future__ import annotations

from typing import Literal

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from vssl.commands.common import HelpFormatter, parse


def build_parser() -> ArgumentParser:
    """``vssl export``'s options."""
    parser = ArgumentParser(
        prog="vssl export",
        description="Write the backbone weights of a vssl checkpoint (.safetensors and/or .pt) "
        "and a .json of how to rebuild it; load with vssl.load_backbone(FILE). --format hf "
        "writes a video ViT as a transformers VideoMAE folder (config.json, model.safetensors, "
        "README.md).",
        exit_on_error=False,
        allow_abbrev=False,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML file of these options"
    )
    parser.add_argument("checkpoint", type=str, help="a Lightning checkpoint of a vssl task")
    parser.add_argument(
        "--out",
        type=str,
        required=True,
        help="FILE.safetensors, FILE.pt, or FILE without suffix for both; a folder for --format hf",
    )
    parser.add_argument(
        "--format",
        type=Literal["vssl", "hf"],
        default="vssl",
        help="vssl: the weights and a .json; hf: a transformers VideoMAE folder",
    )
    parser.add_argument(
        "--frames",
        type=int | None,
        default=None,
        help="hf: clip length in config.json (default: the checkpoint's)",
    )
    parser.add_argument(
        "--size",
        type=int | None,
        default=None,
        help="hf: crop size in config.json (default: the checkpoint's)",
    )
    parser.add_argument(
        "--probe",
        type=str | None,
        default=None,
        help="hf: a vssl probe --out JSON for the model card (default: one found in the run "
        "folder)",
    )
    parser.add_argument(
        "--overwrite",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="replace existing output files",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="load with weights_only=False (runs pickled code: trusted files only)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Runs ``vssl export ARGV`` (`vssl.export.run` on the parsed options)."""
    from vssl.export import run

    args, _ = parse(build_parser(), argv)
    return run(args)


__all__ = ["build_parser", "main"]
