"""The help format of vssl's plain subcommands (probe, retrieve, finetune, export)."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with ``(default: X)`` after every option that has a default worth
    reading: not after required options, flags that are off, or options that default to
    nothing (None) or say their default in their own help (``argparse.SUPPRESS``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if (
            action.required
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return action.help or ""
        return super()._get_help_string(action) or ""


__all__ = ["HelpFormatter"]
