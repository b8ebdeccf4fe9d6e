"""`VSSLTask`: the LightningModule every pretext task subclasses.

The base owns what all tasks share: the backbone (by registry name), the optimiser and its
schedule (with the learning-rate scaling rule of the task's paper), the batched augmentation
that runs on the device after transfer, an online linear probe on detached features whenever
the batch has labels, logging, and feature extraction. A task file holds only what is
particular to the task: the views it samples (`clip_sampler`), how each clip is transformed in
the workers (`clip_transform`), its heads (from `vssl.heads`), and its loss (`step`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from vssl import backbones
from vssl.data.datamodule import default_clip_sampler, default_clip_transform
from vssl.data.sampling import ClipSampler, ClipSpec
from vssl.data.transforms import BatchAugment
from vssl.losses import moco

OPTIMIZERS = {"sgd", "adamw", "adam"}
SCHEDULES = {"cosine", "step", "constant"}
#: The stages whose values go through torchmetrics and ``self.log`` on every step (training
#: values go through `VSSLTask._log_train_values`). Metric containers are keyed "<stage>_".
EVAL_STAGES = ("val", "test")


@dataclass
class StepOutput:
    """What a task's `step` returns: the loss, values to log, and pooled features for the probe."""

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)
    features: Tensor | None = None


def _channels_last_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: 5-d clip inputs in the channels-last-3d memory format."""
    return tuple(
        a.contiguous(memory_format=torch.channels_last_3d)
        if isinstance(a, Tensor) and a.ndim == 5
        else a
        for a in args
    )


class VSSLTask(LightningModule):
    """Shared base of the pretext tasks (and of supervised training).

    Args:
        backbone: a name from `vssl.backbones.available()`.
        backbone_kwargs: keyword arguments of that backbone's builder.
        num_classes: classes of the labelled data; linked from the datamodule by the CLI.
            Used by the online probe (and by tasks that classify).
        optimizer: ``sgd``, ``adamw`` or ``adam``.
        lr: the learning rate for a batch of ``reference_batch_size`` (or as is, when that is None).
        reference_batch_size: the batch the paper's lr is given for; the lr used is
            ``lr * global_batch / reference_batch_size`` (the linear scaling rule), the global
            batch being the train dataloader's ``batch_size`` x processes x
            ``accumulate_grad_batches`` (`global_batch_size`).
        weight_decay, momentum: optimiser settings (momentum for SGD only).
        betas: Adam's and AdamW's betas (PyTorch's defaults; the MAE family uses (0.9, 0.95)).
        lr_schedule: ``cosine`` (to ``lr * min_lr_ratio``), ``step`` (x ``lr_gamma`` at each
            epoch of ``lr_milestones``) or ``constant``; stepped every optimisation step.
        warmup_epochs: linear warm-up length, in epochs (fractions allowed).
        online_probe: train a linear classifier on detached pooled features when labels exist.
        probe_lr: its learning rate (not scaled, no weight decay).
        augment: keyword arguments of `vssl.data.transforms.BatchAugment`, the per-clip
            photometric augmentation and normalisation done on the device.
        channels_last: keep the backbone's weights and its input clips in the channels-last-3d
            memory format (faster convolutions on recent GPUs under mixed precision).
        compile_backbone: compile the backbone with `torch.compile` when fitting starts
            (``True``, or a dict of `torch.compile` options such as ``{mode: max-autotune}``);
            the state dict keeps its keys, so checkpoints stay interchangeable.
    """

    #: Views of a batch that are videos to augment on the device.
    video_keys: tuple[str, ...] = ("video",)
    #: Values of `StepOutput.logs` that the progress bar shows besides the loss and the probe's
    #: accuracy (in training as logged: on the steps the logger writes, and the epoch's mean).
    progress_bar_logs: tuple[str, ...] = ()

    def __init__(
        self,
        backbone: str = "r3d_18",
        backbone_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        reference_batch_size: int | None = None,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        min_lr_ratio: float = 0.0,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        online_probe: bool = True,
        probe_lr: float = 0.05,
        augment: dict[str, Any] | None = None,
        channels_last: bool = False,
        compile_backbone: bool | dict[str, Any] = False,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {sorted(SCHEDULES)}, got {lr_schedule!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        self.save_hyperparameters()
        self.backbone = backbones.build(backbone, **(backbone_kwargs or {}))
        self.num_classes = num_classes or 0
        self.augment = BatchAugment(**(augment or {}))
        self.probe: nn.Linear | None = None
        if online_probe and self.num_classes > 0:
            self.probe = nn.Linear(self.backbone.out_dim, self.num_classes)
            # validation and test accuracy (training values go through `_log_train_values`)
            self.probe_acc = nn.ModuleDict(
                {
                    f"{s}_": MulticlassAccuracy(self.num_classes, average="micro")
                    for s in EVAL_STAGES
                }
            )
        #: running (weighted sum, samples) of each training value of `_log_train_values`
        self._train_sums: dict[str, tuple[Tensor | float, int]] = {}

    # ---------------------------------------------------------------- what a task defines
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """The views this task samples from one video at ``stage`` (train, val, test)."""
        return default_clip_sampler(stage, spec)

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """The per-clip transform run in the DataLoader workers on a sample's views."""
        return default_clip_transform(stage, spec)

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The task's loss on a batch whose videos are augmented floats ``(B, C, T, H, W)``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared machinery
    def configure_model(self) -> None:
        """Applies the accelerator options (channels-last, compilation) to the backbone once."""
        if getattr(self, "_accelerator_options_applied", False):
            return
        self._accelerator_options_applied = True
        if self.hparams.get("channels_last"):
            self.backbone.to(memory_format=torch.channels_last_3d)
            self.backbone.register_forward_pre_hook(_channels_last_input)
        options = self.hparams.get("compile_backbone")
        if options:
            self.backbone.compile(**(options if isinstance(options, dict) else {}))

    def forward(self, video: Tensor) -> Tensor:
        """Pooled backbone features ``(B, D)`` of float clips ``(B, C, T, H, W)``."""
        return self.backbone(video)

    @torch.no_grad()
    def extract_features(self, video: Tensor) -> Tensor:
        """Features of clips for evaluation: uint8 ``(B, T, C, H, W)`` are normalised first."""
        if video.dtype == torch.uint8:
            video = self._normalise(video)
        return self.backbone(video)

    def _normalise(self, video: Tensor) -> Tensor:
        was = self.augment.training
        self.augment.eval()
        try:
            return self.augment(video)
        finally:
            self.augment.train(was)

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Turns the uint8 views of a batch into augmented, normalised float clips."""
        for key in self.video_keys:
            if key in batch and batch[key].dtype == torch.uint8:
                batch[key] = self.augment(batch[key])
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict):
            batch = self.augment_batch(batch)
        return batch

    def attached_trainer(self) -> Trainer | None:
        """The trainer running this task, or None outside one (a step run by hand, a benchmark).

        Lightning's `trainer` property raises when no trainer is attached; code that also runs
        without one asks here.
        """
        try:
            return self.trainer
        except RuntimeError:
            return None

    def world_size(self) -> int:
        """Processes of the run: the trainer's world size, 1 outside a trainer."""
        trainer = self.attached_trainer()
        return trainer.world_size if trainer is not None else 1

    def training_progress(self) -> float:
        """How far training is, from 0 at the first optimiser step to 1 at the last (the clock of
        momentum schedules); 0 outside a trainer."""
        trainer = self.attached_trainer()
        if trainer is None:
            return 0.0
        total = trainer.estimated_stepping_batches
        if not total or math.isinf(total):
            return 0.0
        return min(1.0, self.global_step / max(1, total - 1))

    @torch.no_grad()
    def encode_shuffled(self, video: Tensor, encode: Callable[[Tensor], Any]) -> Any:
        """``encode(video)`` (a tensor or a tuple of tensors, one row per clip), in input order,
        with MoCo's shuffle-BN under DDP (`vssl.losses.moco.encode_shuffled`): each process
        encodes a random slice of the global batch, so that a momentum encoder's batch-norm
        statistics come from other samples than the process's queries. On one process, or
        outside training, just ``encode(video)``."""
        if not self.training:
            return encode(video)
        return moco.encode_shuffled(encode, video)

    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        out = self.step(batch, stage)
        train = stage == "train"
        batch_size = next(iter(batch[k] for k in self.video_keys if k in batch)).shape[0]
        opts = {
            "on_step": train,
            "on_epoch": True,
            "batch_size": batch_size,
            "sync_dist": not train,
        }
        # The loss is averaged over processes in every stage, so that its curve is the global
        # batch's whatever the number of processes (no cost on one process).
        self.log(f"{stage}/loss", out.loss, prog_bar=True, **{**opts, "sync_dist": True})
        extras: dict[str, tuple[Tensor, int]] = {}
        for name, value in out.logs.items():
            if train and not isinstance(value, Metric):
                extras[name] = (torch.as_tensor(value), batch_size)
            elif isinstance(value, Metric):
                self.log(
                    f"{stage}/{name}",
                    value,
                    prog_bar=name in self.progress_bar_logs,
                    **{**opts, "sync_dist": False},
                )
            else:
                self.log(f"{stage}/{name}", value, prog_bar=name in self.progress_bar_logs, **opts)
        loss = out.loss
        labels = batch.get("label")
        if self.probe is not None and out.features is not None and labels is not None:
            known = labels >= 0
            if known.any():
                logits = self.probe(out.features.detach()[known])
                probe_loss = nn.functional.cross_entropy(logits, labels[known])
                if train:
                    count = int(known.sum())
                    hits = (logits.argmax(dim=1) == labels[known]).float().mean()
                    extras.update(probe_acc=(hits, count), probe_loss=(probe_loss, count))
                    loss = loss + probe_loss
                else:
                    acc = self.probe_acc[f"{stage}_"]
                    acc(logits, labels[known])
                    self.log(
                        f"{stage}/probe_acc", acc, prog_bar=True, **{**opts, "sync_dist": False}
                    )
                    self.log(f"{stage}/probe_loss", probe_loss, **opts)
        if extras:
            self._log_train_values(extras)
        if "skipped" in batch:
            self.log(
                "data/skipped",
                batch["skipped"].sum().float(),
                reduce_fx="sum",
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=True,
            )
        return loss

    def _log_train_values(self, values: dict[str, tuple[Tensor, int]]) -> None:
        """Logs training values other than the loss, given as ``(value, samples)``.

        Lightning's ``self.log`` has a fixed cost per call, paid every step for every value
        logged, which made up most of vssl's fixed cost per training step (README, section
        "Benchmarks", ``benchmarks/train_step.py``, has the figures). These values are instead
        summed here, weighted by their sample counts, and handed to
        ``self.log`` only on the steps that the logger writes, as ``train/<name>_step``, and as
        the epoch's weighted mean at its end, as ``train/<name>_epoch``: the names and values
        that ``self.log(..., on_step=True, on_epoch=True)`` gives, without its cost on the other
        steps. Like Lightning's for unsynchronised training values, they are each process's own.
        """
        for name, (value, samples) in values.items():
            value = value.detach().float()
            total, count = self._train_sums.get(name, (0.0, 0))
            self._train_sums[name] = (total + value * samples, count + samples)
        trainer = self.attached_trainer()
        if trainer is None:  # a step run by hand: nothing to log to
            return
        every = trainer.log_every_n_steps
        if trainer.fast_dev_run or (
            every and ((trainer.global_step + 1) % every == 0 or trainer.should_stop)
        ):
            for name, (value, samples) in values.items():
                self.log(
                    f"train/{name}_step",
                    value.detach().float(),
                    on_step=True,
                    on_epoch=False,
                    batch_size=samples,
                    prog_bar=name in self.progress_bar_logs,
                )

    def on_train_epoch_end(self) -> None:
        """Logs the epoch means of the values of `_log_train_values` and starts new sums."""
        for name, (total, count) in self._train_sums.items():
            if count:
                self.log(
                    f"train/{name}_epoch",
                    torch.as_tensor(total, dtype=torch.float32) / count,
                    on_step=False,
                    on_epoch=True,
                    prog_bar=name in self.progress_bar_logs,
                )
        self._train_sums.clear()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keeps the running sums of `_log_train_values` (plain floats), so that a run resumed
        mid-epoch logs the same epoch means as an uninterrupted one."""
        checkpoint["vssl_train_sums"] = {
            k: (float(t), int(c)) for k, (t, c) in self._train_sums.items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._train_sums = {
            k: (float(t), int(c)) for k, (t, c) in checkpoint.get("vssl_train_sums", {}).items()
        }

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    # ---------------------------------------------------------------- optimisation
    def per_device_batch_size(self) -> int:
        """Samples per process in a training step: the ``batch_size`` of the trainer's train
        dataloader, whether a datamodule or ``trainer.fit(task, train_dataloaders=...)`` gave it.

        Lightning builds the optimiser (`configure_optimizers`, where the linear scaling rule
        needs this) before its fit loop loads the train dataloader; it is loaded here then, as
        `Trainer.estimated_stepping_batches` does, and Lightning does not load it again.
        """
        trainer = self.attached_trainer()
        if trainer is None:
            raise RuntimeError(
                f"{type(self).__name__}: the batch size is known once a trainer fits this task "
                "(trainer.fit(task, datamodule=...) or trainer.fit(task, train_dataloaders=...))"
            )
        if trainer.train_dataloader is None and trainer.state.fn == TrainerFn.FITTING:
            trainer.fit_loop.setup_data()
        loader = trainer.train_dataloader
        size = getattr(loader, "batch_size", None)
        if size is None:  # a DataLoader given a batch_sampler keeps its batch size there
            size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
        if not isinstance(size, int) or size < 1:
            found = "no train dataloader" if loader is None else f"a {type(loader).__name__}"
            raise RuntimeError(
                f"{type(self).__name__}: the linear lr scaling (reference_batch_size="
                f"{self.hparams.get('reference_batch_size')}) needs the per-process batch size, "
                f"and the trainer has {found} without a batch_size to read it from. Fit with one "
                "torch DataLoader that has a batch_size (or a datamodule whose train_dataloader "
                "returns one), or set reference_batch_size: null to use lr as configured."
            )
        return size

    def global_batch_size(self) -> int:
        """Samples per optimisation step over all processes: the per-process batch size times
        the processes times the batches accumulated per step."""
        per_device = self.per_device_batch_size()
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def effective_lr(self) -> float:
        """The configured lr after the linear scaling rule (when ``reference_batch_size`` is set),
        from "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (Goyal et al., 2017)."""
        ref = self.hparams.reference_batch_size
        if not ref:
            return self.hparams.lr
        return self.hparams.lr * self.global_batch_size() / ref

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: everything but the probe (with weight decay), and the probe; with
        Adam or AdamW every group carries ``betas``."""
        probe_ids = {id(p) for p in self.probe.parameters()} if self.probe is not None else set()
        main = [p for p in self.parameters() if p.requires_grad and id(p) not in probe_ids]
        groups = [
            {"params": main, "lr": self.effective_lr(), "weight_decay": self.hparams.weight_decay}
        ]
        if self.probe is not None:
            groups.append(
                {
                    "params": list(self.probe.parameters()),
                    "lr": self.hparams.probe_lr,
                    "weight_decay": 0.0,
                }
            )
        if self.hparams.optimizer in ("adam", "adamw"):
            betas = tuple(float(b) for b in self.hparams.betas)
            for group in groups:
                group["betas"] = betas
        return groups

    def split_weight_decay(
        self,
        group: dict[str, Any],
        exempt: Callable[[str, nn.Parameter], bool],
        **decay_keys: Any,
    ) -> list[dict[str, Any]]:
        """``group`` as two optimiser groups: the parameters with weight decay (with
        ``decay_keys`` added), and those ``exempt(name, parameter)`` frees of it (biases and
        norms in the ViT recipes); an empty group is dropped."""
        names = {id(p): n for n, p in self.named_parameters()}
        free = [exempt(names[id(p)], p) for p in group["params"]]
        decay = [p for p, f in zip(group["params"], free, strict=True) if not f]
        no_decay = [p for p, f in zip(group["params"], free, strict=True) if f]
        split = [
            {**group, "params": decay, **decay_keys},
            {**group, "params": no_decay, "weight_decay": 0.0},
        ]
        return [g for g in split if g["params"]]

    def lr_factor(self, step: int, total_steps: int, steps_per_epoch: float) -> float:
        """Multiplier of the base lr at optimisation ``step`` (warm-up, then the schedule)."""
        hp = self.hparams
        warmup = hp.warmup_epochs * steps_per_epoch
        if step < warmup:
            return (step + 1) / warmup
        if hp.lr_schedule == "constant":
            return 1.0
        if hp.lr_schedule == "step":
            epoch = step / steps_per_epoch
            return hp.lr_gamma ** sum(epoch >= m for m in (hp.lr_milestones or []))
        progress = min(1.0, (step - warmup) / max(1.0, total_steps - warmup))
        return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then `after_optimizer_step` (where momentum encoders follow)."""
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Runs after every optimiser step; a task with state that follows the weights updates it here."""

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.parameter_groups()
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, momentum=hp.momentum)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(groups)
        else:
            opt = torch.optim.Adam(groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = (
            self.trainer.max_epochs
            if self.trainer.max_epochs and self.trainer.max_epochs > 0
            else 1
        )
        per_epoch = max(1.0, total / epochs)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: self.lr_factor(s, total, per_epoch)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
