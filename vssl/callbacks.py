"""Callbacks: those every vssl run gets from the CLI, and the kNN monitor a config can add."""

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
from lightning.pytorch.callbacks import ModelCheckpoint, RichModelSummary, RichProgressBar
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

PACKAGES = (
    "vssl",
    "torch",
    "torchvision",
    "lightning",
    "av",
    "pytorchvideo",
    "opencv-python-headless",
)


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


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose ``last.ckpt`` is always the latest state.

    With ``save_last=True`` Lightning rewrites ``last.ckpt`` only when a top-k checkpoint is
    saved at the same step, so after epochs that do not improve the monitored value it holds an
    older state, and resuming from it, validating it or exporting it silently uses that state.
    This subclass also writes it at every epoch end (or validation end, wherever Lightning would
    save) that saved no top-k checkpoint. Its state key is ModelCheckpoint's, so checkpoints
    written with either resume with the other.
    """

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer: Trainer) -> None:
        # Skipped when this step was saved already (then last.ckpt was written with it), in
        # sanity checks, outside fit and in fast_dev_run, as Lightning's own saves are.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar without ``v_num``: the logger's version number (or wandb's
    run id) is not a metric, and the run's folder is printed when it ends."""

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class ModelSummary(RichModelSummary):
    """Lightning's rich model summary without the FLOPs column and total when they were not
    counted: Lightning counts FLOPs only for a model with an ``example_input_array`` (no vssl
    task has one, its input size is the data's) and otherwise prints 0 for every layer."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            RichModelSummary.summarize(
                summary_data,
                total_parameters,
                trainable_parameters,
                model_size,
                total_training_modes,
                total_flops,
                **summarize_kwargs,
            )
            return
        from lightning.pytorch.utilities.model_summary.model_summary import (
            get_formatted_model_size,
            get_human_readable_count,
        )
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            right = name in ("Params", "Params per Device", "In sizes", "Out sizes")
            table.add_column(
                name, justify="right" if right else "left", style="dim" if name == " " else None
            )
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        for label, value in (
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            (
                "Non-trainable params",
                get_human_readable_count(int(total_parameters - trainable_parameters)),
            ),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", str(total_training_modes["train"])),
            ("Modules in eval mode", str(total_training_modes["eval"])),
        ):
            grid.add_row(f"[bold]{label}[/]: {value}")
        console.print(grid)


def use_vssl_console(trainer: Trainer, keep: list[Callback] | None = None) -> None:
    """Swaps the progress bar and model summary that Lightning added by default for
    `ProgressBar` and `ModelSummary` (same settings); callbacks in ``keep`` (the user's) stay."""
    kept = {id(cb) for cb in keep or []}
    for i, cb in enumerate(trainer.callbacks):
        if id(cb) in kept:
            continue
        if type(cb) is RichProgressBar:
            trainer.callbacks[i] = ProgressBar()
        elif type(cb) is RichModelSummary:
            trainer.callbacks[i] = ModelSummary(max_depth=cb._max_depth, **cb._summarize_kwargs)


class InitialWeights(Callback):
    """Starts training from published or exported backbone weights (``--init_weights.path``):
    loaded strictly into the task's backbone by `vssl.load_backbone` when a run starts, never
    when it resumes from a checkpoint (whose weights are the run's own).

    Args:
        path: the weights: a vssl checkpoint or export, an official VideoMAE / RSPNet / VCOP /
            PRP file, a transformers folder, or a torchvision / pytorchvideo backbone name
            (None: the task's own initialisation).
        format: what ``path`` is (`vssl.weights.FORMATS`; ``auto`` reads it from the keys).
    """

    def __init__(self, path: str | None = None, format: str = "auto") -> None:
        from vssl.weights import FORMATS

        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.path, self.format = path, format

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.path is None or trainer.ckpt_path is not None:
            return
        from vssl.weights import load_backbone

        load_backbone(self.path, format=self.format, backbone=pl_module.backbone)
        if trainer.is_global_zero:
            print(f"vssl: backbone initialised from {self.path} ({self.format})", flush=True)


class RunInfo(Callback):
    """Saves the library versions next to the run's logs and says where logs and checkpoints are.

    Without a logger there is no log folder (Lightning's ``log_dir`` is then the working
    directory), and nothing is written."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every process must ask
        if trainer.is_global_zero and log_dir and trainer.loggers:
            path = Path(log_dir) / "versions.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(package_versions(), indent=2) + "\n")
            _log_config_to_wandb(trainer, Path(log_dir))

    def __init__(self) -> None:
        self.summary: list[str] = []

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Keeps the run's summary in ``summary`` (the CLI prints it once the progress bar has
        closed): the last validation's metrics, then where the logs and checkpoints are."""
        log_dir = trainer.log_dir  # a collective, asked on every rank
        lines = [
            f"vssl: {name} {float(value):.4g}"
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith("val/") and name.count("/") == 1 and value.numel() == 1
        ]
        lines.append(f"vssl: logs in {log_dir}")
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                if cb.best_model_path:
                    lines.append(f"vssl: best checkpoint {cb.best_model_path}")
                if cb.last_model_path:
                    lines.append(f"vssl: last checkpoint {cb.last_model_path}")
        self.summary = lines if trainer.is_global_zero else []


def _process_rng_state() -> dict[str, Any]:
    """This process's torch, numpy and python generator states, as plain lists and tensors (so
    that checkpoints load with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def _set_process_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(state["python"]))


class RNGState(Callback):
    """Keeps the processes' random generators (torch, numpy, python) in every checkpoint and
    restores them when a resumed run starts training (after the sanity check, before the
    first batch is augmented), so that it draws the same augmentations and dropout masks as an
    uninterrupted run.

    Under DDP every process has its own generators and only rank 0 writes the checkpoint, so
    the states of all processes are gathered into it (``ranks``, one entry per process; saving
    is a collective, as `Trainer.save_checkpoint` already is) and each process of a resumed run
    with the same number of processes takes its own. With another number of processes the
    generators are left as seeded (a warning says so): giving every process rank 0's state
    would make their random draws identical.
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._trainer: Trainer | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """This process's generator states and, under DDP, every process's (``ranks``)."""
        state = _process_rng_state()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            ranks: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, state)
            state["ranks"] = ranks
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keeps the checkpoint's states until training starts (restoring them now would be
        undone by what runs before training: the sanity check, dataloader setup)."""
        self._to_restore = dict(state_dict)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._to_restore = self._to_restore, None
        if state is None:
            return
        saved = state.get("ranks") or [state]
        if len(saved) == trainer.world_size:
            _set_process_rng_state(saved[trainer.global_rank])
        else:
            rank_zero_warn(
                f"the checkpoint holds the random generator states of {len(saved)} process(es), "
                f"this run has {trainer.world_size}: the generators are not restored, so "
                "augmentations and dropout after the resume differ from an uninterrupted run"
            )


class KNNMonitor(Callback):
    """Logs ``val/knn_acc``: a weighted kNN classifier on frozen features, as pretraining goes.

    After validation (every ``every_n_epochs`` epochs, not in the sanity check), the model's
    `extract_features` encodes the centre clip (centre crop) of every training video, the
    feature bank, and of every validation video; each validation video takes the label voted
    by its ``k`` most cosine-similar training videos with weights ``exp(sim / temperature)``
    (`vssl.eval.knn_accuracy`, Wu et al. 2018). It needs a labelled datamodule with train and
    val splits (a `VideoDataModule`). Under DDP each process encodes a share of the videos and
    the features are gathered. ``max_train_videos`` caps the bank (a fixed random subset).
    Its DataLoaders draw nothing from the global random generators, so training is the same
    with the monitor as without.
    """

    def __init__(
        self,
        k: int = 20,
        temperature: float = 0.07,
        every_n_epochs: int = 1,
        max_train_videos: int | None = None,
        batch_size: int | None = None,
    ):
        if k < 1 or temperature <= 0 or every_n_epochs < 1:
            raise ValueError(
                f"KNNMonitor needs k >= 1, temperature > 0 and every_n_epochs >= 1, got k={k}, "
                f"temperature={temperature}, every_n_epochs={every_n_epochs}"
            )
        self.k, self.temperature, self.every_n_epochs = k, temperature, every_n_epochs
        self.max_train_videos, self.batch_size = max_train_videos, batch_size
        self._datasets: dict[str, Any] = {}

    def _dataset(self, trainer: Trainer, stage: str) -> Any:
        if stage not in self._datasets:
            from vssl.data.datamodule import default_clip_sampler, default_clip_transform

            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "build_dataset") or dm.splits.get(stage) is None:
                raise ValueError(f"KNNMonitor needs a VideoDataModule with a {stage} split")
            dataset = dm.build_dataset(
                stage,
                default_clip_sampler("val", dm.clip_spec),
                default_clip_transform("val", dm.clip_spec),
            )
            if stage == "train" and self.max_train_videos and len(dataset) > self.max_train_videos:
                keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
                dataset = torch.utils.data.Subset(dataset, keep[: self.max_train_videos].tolist())
            self._datasets[stage] = dataset
        return self._datasets[stage]

    @torch.no_grad()
    def features(
        self, trainer: Trainer, pl_module: LightningModule, stage: str
    ) -> tuple[Tensor, Tensor]:
        """Features and labels of every video of ``stage`` (gathered from all processes)."""
        dataset = self._dataset(trainer, stage)
        world, rank = trainer.world_size, trainer.global_rank
        mine = list(range(rank, len(dataset), world))
        dm = trainer.datamodule
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, mine),
            batch_size=self.batch_size or dm.batch_size,
            num_workers=dm.num_workers,
            generator=torch.Generator().manual_seed(0),
        )
        feats, labels = [], []
        for batch in loader:
            feats.append(pl_module.extract_features(batch["video"].to(pl_module.device)).float())
            labels.append(batch["label"].to(pl_module.device))
        dim = pl_module.backbone.out_dim
        share = -(-len(dataset) // world)  # every process pads its share to the same length
        f = torch.zeros(share, dim, device=pl_module.device)
        y = torch.full((share,), -1, dtype=torch.long, device=pl_module.device)
        if feats:
            f[: len(mine)], y[: len(mine)] = torch.cat(feats), torch.cat(labels)
        if world > 1:
            f, y = pl_module.all_gather(f).flatten(0, 1), pl_module.all_gather(y).flatten(0, 1)
        return f[y >= 0], y[y >= 0]

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        from vssl.eval.classifiers import knn_accuracy

        bank, bank_labels = self.features(trainer, pl_module, "train")
        query, query_labels = self.features(trainer, pl_module, "val")
        if len(bank) == 0 or len(query) == 0:
            rank_zero_warn(
                "KNNMonitor: no labelled videos in the train or val split; val/knn_acc not logged"
            )
            return
        num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
        acc = knn_accuracy(
            bank, bank_labels, query, query_labels, num_classes, self.k, self.temperature
        )
        pl_module.log("val/knn_acc", acc, on_epoch=True, sync_dist=False, rank_zero_only=False)
