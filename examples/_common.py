"""What the examples share: where the data is and how big a run is, read from the command line
(jsonargparse, as the ``vssl`` commands: ``--max_steps 50``, or ``--config settings.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jsonargparse import auto_cli

from vssl.data import make_synthetic


@dataclass
class RunSettings:
    """Where an example's data is and the sizes of its run.

    Args:
        root: the dataset folder; the synthetic dataset (4 motion classes) is written there
            when it does not exist.
        max_steps: optimiser steps to train.
        clip_len: frames per clip.
        crop_size: height and width of the clips after cropping.
        batch_size: clips per batch.
        workers: DataLoader worker processes.
    """

    root: Path = Path("data/synthetic_example")
    max_steps: int = 200
    clip_len: int = 8
    crop_size: int = 32
    batch_size: int = 8
    workers: int = 2


def run_settings(doc: str, argv: list[str] | None = None) -> RunSettings:
    """The settings given on the command line (``argv``, else ``sys.argv``), with ``--help``
    showing the first paragraph of ``doc``; writes the synthetic dataset when it is missing."""
    settings = auto_cli(RunSettings, args=argv, description=doc.strip().split("\n\n")[0])
    if not settings.root.exists():
        make_synthetic(settings.root, classes=4, videos_per_class=16, frames=16, size=32)
    return settings
