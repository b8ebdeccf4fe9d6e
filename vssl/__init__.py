"""vssl: pluggable self-supervised video pretext tasks for PyTorch Lightning."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vssl.backbones import Backbone

try:
    __version__ = version("vssl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"


def load_backbone(
    path: str | Path, format: str = "auto", backbone: str | Backbone | None = None, **kwargs: Any
) -> Backbone:
    """A backbone with the weights of ``path``: a vssl checkpoint or export, an official
    VideoMAE / RSPNet / VCOP / PRP checkpoint, a transformers VideoMAE model, or torchvision /
    pytorchvideo weights on disk; ``format="auto"`` reads which from the keys.

    Imported lazily so that ``import vssl`` stays cheap; see `vssl.weights.load_backbone`.
    """
    from vssl.weights import load_backbone as _load

    return _load(path, format, backbone, **kwargs)


__all__ = ["__version__", "load_backbone"]
