"""vssl: pluggable self-supervised video pretext tasks for PyTorch Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vssl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
