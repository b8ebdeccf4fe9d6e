"""vssl: pluggable self-supervised video pretext tasks for PyTorch Lightning."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vssl.backbones import Backbone

try:
    __version__ = version("vssl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"


def load_backbone(path: str | Path) -> Backbone:
    """Rebuild a backbone written by ``python -m vssl export`` (weights file or its ``.json``).

    Imported lazily so that ``import vssl`` stays cheap; see `vssl.export.load_backbone`.
    """
    from vssl.export import load_backbone as _load

    return _load(path)


__all__ = ["__version__", "load_backbone"]
