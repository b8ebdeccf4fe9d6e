"""Pretext tasks: LightningModules that share `VSSLTask`, one file per task."""

from vssl.tasks.base import StepOutput, VSSLTask
from vssl.tasks.supervised import Supervised

__all__ = ["StepOutput", "Supervised", "VSSLTask"]
