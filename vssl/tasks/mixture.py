"""`TaskMixture`: several pretext tasks optimised together on one backbone, from YAML alone.

Each member task is an ordinary vssl task (``class_path`` + ``init_args``, as in a config's
``model`` section) built on the mixture's backbone. The mixture's loss on a batch is
``sum(weights[name] * loss_of(name))``, and each member's loss and logs are logged on their own
under ``<stage>/<name>/...``.

How the members share the work:

- Data: every member declares its views as usual; the mixture's sampler calls the members'
  samplers in turn (with one random generator, so a sample stays reproducible) and prefixes the
  view names with ``<name>/``; the dataset decodes the union of all frames once. Each member's
  worker transform and device augmentation see only its own views, under their own names.
- Weights: one backbone module, shared by every member. Members are built with the same random
  seed so that anything a member derives from its backbone at construction (RSPNet's momentum
  encoder) starts from the shared weights; the heads are the members' own.
- Optimisation: the mixture's settings (optimiser, lr, schedule) apply to all parameters; the
  members' own optimiser settings are not used. After each optimiser step every member's
  `after_optimizer_step` runs (momentum encoders follow the shared backbone).
- The online probe is the mixture's, on the features of the first member that returns features.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vssl.data.sampling import ClipSampler, ClipSpec
from vssl.tasks.base import StepOutput, VSSLTask

#: Keys that the dataset adds to every sample; every member sees them unprefixed.
SHARED_KEYS = ("label", "index", "skipped")


def _task_class(class_path: str) -> type[VSSLTask]:
    """The task class of ``class_path`` (``vssl.tasks.CVRL``, or a bare name from `vssl.tasks`)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name or "vssl.tasks")
        cls = getattr(module, name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"task mixture: cannot import the task class {class_path!r}: {err}"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, VSSLTask)) or issubclass(cls, TaskMixture):
        raise ValueError(f"task mixture: {class_path!r} is not a vssl task (a VSSLTask subclass)")
    return cls


def _members(sample: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The keys of member ``name`` without their prefix, plus the shared keys."""
    prefix = f"{name}/"
    out = {k[len(prefix) :]: v for k, v in sample.items() if k.startswith(prefix)}
    out.update({k: sample[k] for k in SHARED_KEYS if k in sample})
    return out


def _prefixed(sample: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {f"{name}/{k}": v for k, v in sample.items() if k not in SHARED_KEYS}


class MixtureSampler(ClipSampler):
    """The views of every member, named ``<member>/<view>``, drawn with one generator."""

    def __init__(self, samplers: Mapping[str, ClipSampler]):
        self.samplers = dict(samplers)

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        views: dict[str, np.ndarray] = {}
        for name, sampler in self.samplers.items():
            views.update(_prefixed(sampler(num_frames, rng), name))
        return views


class MixtureTransform:
    """Applies each member's worker transform to that member's views only."""

    def __init__(self, transforms: Mapping[str, Callable]):
        self.transforms = dict(transforms)

    def __call__(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {k: v for k, v in sample.items() if k in SHARED_KEYS}
        for name, transform in self.transforms.items():
            out.update(_prefixed(transform(_members(sample, name)), name))
        return out


class TaskMixture(VSSLTask):
    """Several pretext tasks on one shared backbone with a weighted sum of their losses.

    Args:
        tasks: member name -> ``{"class_path": ..., "init_args": {...}}``, as a config's ``model``
            section; ``backbone``, ``backbone_kwargs``, ``num_classes`` and ``online_probe`` are
            set by the mixture and must not be given to a member.
        weights: member name -> weight of its loss (1.0 for a member not listed).
        **kwargs: the shared settings of `VSSLTask` (backbone, optimiser, schedule, probe, ...).

    Example (YAML)::

        model:
          class_path: vssl.tasks.TaskMixture
          init_args:
            backbone: r3d_18
            tasks:
              statistics: {class_path: vssl.tasks.SpatioTemporalStatistics}
              cvrl: {class_path: vssl.tasks.CVRL, init_args: {temperature: 0.1}}
            weights: {statistics: 1.0, cvrl: 0.5}
    """

    def __init__(
        self,
        tasks: dict[str, dict[str, Any]],
        weights: dict[str, float] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not tasks:
            raise ValueError("task mixture: `tasks` must name at least one task")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(tasks))
        if unknown:
            raise ValueError(
                f"task mixture: weights given for unknown tasks {unknown}; tasks are {sorted(tasks)}"
            )
        for name in tasks:
            if not name or "/" in name or name in SHARED_KEYS:
                raise ValueError(
                    f"task mixture: {name!r} cannot name a task (no '/', not one of {SHARED_KEYS})"
                )
        self.weights = {name: float(weights.get(name, 1.0)) for name in tasks}
        seed = int(torch.randint(0, 2**62, ()))
        members: dict[str, VSSLTask] = {}
        for name, spec in tasks.items():
            members[name] = self._build_member(name, spec, seed)
        self.tasks = nn.ModuleDict(members)
        shared = next(iter(members.values())).backbone
        for member in members.values():
            member.backbone = shared
        self.backbone = shared
        self.video_keys = tuple(f"{n}/{k}" for n, m in members.items() for k in m.video_keys)
        self.progress_bar_logs = tuple(
            f"{n}/{k}" for n, m in members.items() for k in m.progress_bar_logs
        )

    def _build_member(self, name: str, spec: Mapping[str, Any], seed: int) -> VSSLTask:
        if not isinstance(spec, Mapping) or "class_path" not in spec:
            raise ValueError(
                f"task mixture: task {name!r} needs a class_path (and optional init_args)"
            )
        extra = sorted(set(spec) - {"class_path", "init_args"})
        if extra:
            raise ValueError(f"task mixture: task {name!r} has unknown keys {extra}")
        cls = _task_class(str(spec["class_path"]))
        args = dict(spec.get("init_args") or {})
        owned = sorted({"backbone", "backbone_kwargs", "num_classes", "online_probe"} & set(args))
        if owned:
            raise ValueError(f"task mixture: task {name!r} sets {owned}; the mixture sets those")
        hp = self.hparams
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(
                backbone=hp.backbone,
                backbone_kwargs=hp.backbone_kwargs,
                num_classes=hp.num_classes,
                online_probe=False,
                **args,
            )

    def setup(self, stage: str) -> None:
        """Attaches the mixture's trainer to every member, before anything runs a member.

        Lightning attaches its trainer to a module's direct LightningModule children only, and
        the members sit in a ModuleDict; they need it for what depends on the run (world size,
        ``all_gather``, the strategy's broadcast, the process rank). Lightning calls this hook
        once per ``fit``, ``validate``, ``test`` and ``predict``, after attaching the trainer.
        """
        for member in self.tasks.values():
            member.trainer = self.trainer

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """Every member's views, prefixed with the member's name."""
        return MixtureSampler({n: m.clip_sampler(stage, spec) for n, m in self.tasks.items()})

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """Every member's worker transform, each on its own views."""
        return MixtureTransform({n: m.clip_transform(stage, spec) for n, m in self.tasks.items()})

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Every member's device augmentation, each on its own views."""
        for name, member in self.tasks.items():
            batch.update(_prefixed(member.augment_batch(_members(batch, name)), name))
        return batch

    # ---------------------------------------------------------------- loss and hooks
    def member_outputs(self, batch: dict[str, Tensor], stage: str) -> dict[str, StepOutput]:
        """Each member's `StepOutput` on its part of ``batch``."""
        return {
            name: member.step(_members(batch, name), stage) for name, member in self.tasks.items()
        }

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The weighted sum of the members' losses; each member's loss and logs under its name."""
        outputs = self.member_outputs(batch, stage)
        loss = sum(self.weights[n] * out.loss for n, out in outputs.items())
        logs: dict[str, Any] = {}
        for name, out in outputs.items():
            logs[f"{name}/loss"] = out.loss.detach()
            logs.update({f"{name}/{k}": v for k, v in out.logs.items()})
        features = next(
            (out.features for out in outputs.values() if out.features is not None), None
        )
        return StepOutput(loss, logs, features)

    def after_optimizer_step(self) -> None:
        for member in self.tasks.values():
            member.after_optimizer_step()

    def on_fit_start(self) -> None:
        for member in self.tasks.values():
            member.on_fit_start()
