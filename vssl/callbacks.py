"""Callbacks that every vssl run gets from the CLI."""

from __future__ import annotations

import json
import platform
import random
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
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


def _log_config_to_wandb(trainer: Trainer, log_dir: Path) -> None:
    """Give each wandb run the resolved CLI config (``config.yaml``, written by LightningCLI
    before fit starts) as config key ``cli_config`` and as the file ``vssl_config.yaml``, and the
    library versions: wandb otherwise records only the task's and the datamodule's
    hyperparameters, not the trainer settings or the seed."""
    from lightning.pytorch.loggers import WandbLogger

    config_file = log_dir / "config.yaml"
    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        run = logger.experiment
        update = {"versions": package_versions()}
        if config_file.is_file():
            update["cli_config"] = yaml.safe_load(config_file.read_text())
            saved = Path(run.dir) / "vssl_config.yaml"  # wandb keeps its own config.yaml there
            shutil.copyfile(config_file, saved)
            run.save(str(saved), base_path=run.dir, policy="now")
        run.config.update(update, allow_val_change=True)


class RunInfo(Callback):
    """Saves the library versions next to the run's logs and says where logs and checkpoints are."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every process must ask
        if trainer.is_global_zero and log_dir:
            path = Path(log_dir) / "versions.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(package_versions(), indent=2) + "\n")
            _log_config_to_wandb(trainer, Path(log_dir))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        lines = [f"vssl: logs in {trainer.log_dir}"]  # log_dir: a collective, asked on every rank
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                if cb.best_model_path:
                    lines.append(f"vssl: best checkpoint {cb.best_model_path}")
                if cb.last_model_path:
                    lines.append(f"vssl: last checkpoint {cb.last_model_path}")
        rank_zero_info("\n".join(lines))


class RNGState(Callback):
    """Keeps the process's random generators (torch, numpy, python) in every checkpoint and
    restores them when a resumed run starts training (after the sanity check, before the
    first batch is augmented), so that it draws the same augmentations and dropout masks as an
    uninterrupted run."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The generators' states, saved into the checkpoint."""
        # Plain lists and tensors only, so that checkpoints load with weights_only=True.
        name, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keeps the checkpoint's states until training starts (restoring them now would be
        undone by what runs before training: the sanity check, dataloader setup)."""
        self._to_restore = dict(state_dict)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._to_restore = self._to_restore, None
        # One process's state: under DDP every rank has its own generators, and giving them
        # all rank 0's would make their random draws identical.
        if state is not None and trainer.world_size == 1:
            torch.set_rng_state(state["torch"])
            name, keys, pos, has_gauss, cached = state["numpy"]
            np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
            random.setstate(state["python"])
