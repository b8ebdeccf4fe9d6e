"""Shapes that several task test files share: a quiet in-process Trainer, a short ``vssl fit``
whose metrics.csv is read back, and a two-process DDP run that records a momentum task's key
queue on each process.

Subprocesses import `KeyRecorder` as ``training_helpers.KeyRecorder``: tests/ is on their
PYTHONPATH (`cli_helpers.TEST_PATH`, which `cli_helpers.run_vssl` sets).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from cli_helpers import run_vssl
from lightning.pytorch import Callback


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU Trainer that writes and prints nothing (no logger, checkpoints, progress bar or
    model summary); ``kwargs`` add to or override those settings."""
    settings = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**settings, **kwargs})


def cli_fit_rows(
    cfg: dict[str, Any], cwd: Path, run_cli: Callable, *, validate: bool
) -> list[dict[str, str]]:
    """Trains ``cfg`` with ``vssl fit --config`` in-process in ``cwd`` and returns the rows of
    the run's metrics.csv (the CLI's CSV logger, under ``cwd/runs/fit``). Without ``validate``
    the run has no validation and its checkpoint monitors nothing."""
    cfg = {**cfg, "trainer": dict(cfg["trainer"])}
    if not validate:
        cfg["trainer"].update(limit_val_batches=0, num_sanity_val_steps=0)
        cfg["checkpoint"] = {"monitor": None}
    (cwd / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_cli(["fit", "--config", "run.yaml", "--trainer.logger.init_args.name", "fit"], cwd)
    with (cwd / "runs" / "fit" / "version_0" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    """The values of metric ``name`` in the rows that logged it, in order."""
    return [float(r[name]) for r in rows if r.get(name)]


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class KeyRecorder(Callback):
    """Records, on each process of a DDP run, the keys the task enqueued (through its
    ``enqueue``), its key queue at the start and at the end, and how far the keys that
    ``shuffled`` (the task's encoder of keys with MoCo's shuffle-BN) gives are from the plain
    ones of ``_encode_keys``: with the key encoder's batch norm on running statistics a key does
    not depend on its batch, so the shuffled-and-restored keys must equal the plain ones."""

    def __init__(self, out_dir: str, shuffled: str, clips: int = 8, trials: int = 3):
        self.out_dir = Path(out_dir)
        self.shuffled, self.clips, self.trials = shuffled, clips, trials
        self.local: list[torch.Tensor] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.initial = pl_module.queue.keys.clone()
        enqueue = pl_module.enqueue

        def recording(keys: torch.Tensor) -> None:
            self.local.append(keys.detach().clone())
            enqueue(keys)

        pl_module.enqueue = recording

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        training = pl_module.training
        pl_module.momentum_encoder.eval()
        g = torch.Generator().manual_seed(trainer.global_rank)
        errors = []
        for _ in range(self.trials):
            video = torch.randn(self.clips, 3, 4, 24, 24, generator=g)
            shuffled = _first(getattr(pl_module, self.shuffled)(video))
            errors.append(float((shuffled - _first(pl_module._encode_keys(video))).abs().max()))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "initial": self.initial,
                "local": self.local,
                "keys": pl_module.queue.keys.clone(),
                "ptr": int(pl_module.queue.ptr),
                "world_size": trainer.world_size,
                "shuffle_error": max(errors),
                "training": training,
            },
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


def ddp_key_records(cfg: dict[str, Any], cwd: Path, shuffled: str) -> list[dict[str, Any]]:
    """Runs one epoch of ``cfg`` with ``vssl fit`` on two DDP processes (batches of 2, no
    DataLoader workers, no sanity check) in ``cwd`` with a `KeyRecorder`; returns the records of
    rank 0 and rank 1."""
    cfg = {**cfg, "trainer": dict(cfg["trainer"]), "data": dict(cfg["data"])}
    recorder = {
        "class_path": "training_helpers.KeyRecorder",
        "init_args": {"out_dir": str(cwd / "rec"), "shuffled": shuffled},
    }
    cfg["trainer"].update(
        strategy="ddp", devices=2, max_epochs=1, num_sanity_val_steps=0, callbacks=[recorder]
    )
    cfg["data"]["init_args"] = {**cfg["data"]["init_args"], "batch_size": 2, "num_workers": 0}
    (cwd / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_vssl(["fit", "--config", "run.yaml"], cwd)
    return [torch.load(cwd / "rec" / f"rank{r}.pt") for r in (0, 1)]
