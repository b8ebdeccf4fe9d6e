"""``python -m vssl show TASK VIDEO --out FILE.png``: the options of `vssl.show`, one parser per
task, on jsonargparse so that they can come from ``--config FILE`` too (``video: x.mp4``,
``out: x.png``, ``seed: 3``, ...)."""

from __future__ import annotations

from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from vssl.commands.common import HelpFormatter, parse
from vssl.data.flow import FLOW_METHODS
from vssl.errors import UserError


def _common(parser: ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML file of these options"
    )
    parser.add_argument("video", type=str, help="a video file")
    parser.add_argument("--out", type=str, required=True, help="where to write the image (PNG)")
    parser.add_argument("--dpi", type=int, default=100, help="pixels per inch of the PNG")


def build_parser(task: str) -> ArgumentParser:
    """The options of ``vssl show TASK`` (one of `vssl.show.TASKS`)."""
    from vssl.show import _TASK_HELP, TASKS

    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if task == "statistics":
        description = "Draw the motion and appearance statistics labels of one clip of VIDEO."
    else:
        description = (
            f"{_TASK_HELP[task]}: one {task} sample of VIDEO made by the task's own sampler, "
            f"worker transform and batch augmentation, with configs/{task}/synthetic_tiny.yaml's "
            "settings (tiny backbone, no weights), or with --ckpt a checkpoint's task and data "
            "settings."
        )
    parser = ArgumentParser(
        prog=f"vssl show {task}",
        description=description,
        exit_on_error=False,
        allow_abbrev=False,
        formatter_class=HelpFormatter,
    )
    _common(parser)
    if task == "statistics":
        parser.add_argument("--start", type=int, default=0, help="first frame of the clip")
        parser.add_argument("--clip-len", type=int, default=16, help="frames the network sees")
        parser.add_argument("--size", type=int, default=112, help="crop side, divisible by 8")
        parser.add_argument(
            "--decode-size", type=int, default=128, help="short side after decoding"
        )
        parser.add_argument(
            "--flow", type=Literal[tuple(FLOW_METHODS)], default="dis", help="optical flow method"
        )
        return parser
    parser.add_argument("--seed", type=int, default=0, help="data and augmentation seed")
    parser.add_argument(
        "--stage", type=Literal["train", "val"], default="train", help="sampler stage"
    )
    parser.add_argument(
        "--clip-len", type=int | None, default=None, help="frames per clip (default: config's)"
    )
    parser.add_argument(
        "--size", type=int | None, default=None, help="crop side (default: config's)"
    )
    parser.add_argument(
        "--decode-size", type=int | None, default=None, help="short side (default: config's)"
    )
    parser.add_argument(
        "--animate", type=str | None, default=None, help="also write the clips as a GIF (FILE.gif)"
    )
    parser.add_argument(
        "--ckpt", type=str | None, default=None, help="weights from a checkpoint of the task"
    )
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second of the GIF")
    return parser


def parse_show(argv: list[str]) -> Namespace:
    """``vssl show`` ARGV as settings with ``what`` (the task) set; a mistake is a `UserError`."""
    if not argv or argv[0].startswith("-"):
        from vssl.show import TASKS

        if argv and argv[0] in ("-h", "--help"):
            print(
                f"usage: vssl show TASK [--help] VIDEO --out FILE.png ...\ntasks: {', '.join(TASKS)}"
            )
            raise SystemExit(0)
        raise UserError(f"give a task first; tasks: {', '.join(TASKS)}")
    args, _ = parse(build_parser(argv[0]), argv[1:])
    args.what = argv[0]
    return args


__all__ = ["build_parser", "parse_show"]
