"""Callbacks that every vssl run gets from the CLI."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

PACKAGES = ("vssl", "torch", "torchvision", "lightning", "av", "pytorchvideo", "opencv-python-headless")


def package_versions() -> dict[str, str]:
    """Versions of vssl and the libraries whose behaviour a run's numbers depend on."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


class RunInfo(Callback):
    """Saves the library versions next to the run's logs and says where logs and checkpoints are."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every process must ask
        if trainer.is_global_zero and log_dir:
            path = Path(log_dir) / "versions.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(package_versions(), indent=2) + "\n")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        lines = [f"vssl: logs in {trainer.log_dir}"]  # log_dir: a collective, asked on every rank
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                if cb.best_model_path:
                    lines.append(f"vssl: best checkpoint {cb.best_model_path}")
                if cb.last_model_path:
                    lines.append(f"vssl: last checkpoint {cb.last_model_path}")
        rank_zero_info("\n".join(lines))
