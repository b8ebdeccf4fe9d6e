"""Feature distillation: a student backbone trained to match frozen teachers' features.

Kumar et al., "A Large-Scale Analysis on Contextual Self-Supervised Video Representation
Learning", 2025: backbones pretrained with a pretext task (RSPNet on ShuffleNet and R(2+1)D in
the paper) teach a small student, which learns from their features rather than from a pretext
label.

- Teachers are vssl checkpoints of any task, read with ``weights_only`` loading through
  `vssl.eval.features.load_task`; only their backbones are used. They stay in eval mode (batch
  norm statistics and dropout frozen, whatever ``train()`` is called with), their parameters do
  not require gradients, their forward runs under ``torch.no_grad``, and the optimiser never
  sees them.
- Every teacher sees the clip the student sees: the same sample, after the student's device
  augmentation and normalisation (vssl's default clip and crop in the workers).
- A student whose feature size differs from a teacher's gets a projection for that teacher
  (`vssl.heads.DistillationProjectionHead`, one Linear); an equal size uses the features as
  they are.
- Loss per teacher, with ``s`` the (projected) student features and ``z`` the teacher's:
  ``cosine`` (default) ``2 - 2 cos(s, z)``, the squared distance of the L2-normalised vectors;
  ``mse`` the mean squared error of the raw vectors, over batch and dimensions. The loss is the
  mean over teachers, weighted by ``weights`` when given (``sum w_t L_t / sum w_t``).
- Logit distillation (``match: logits``, or ``both`` for the sum of the two losses): the student
  also matches the outputs of each teacher's pretext heads (`PRETEXT_HEADS`: RSPNet's speed and
  appearance heads, the rotation, playback-rate and class classifiers, CVRL's and TDL's
  projections), as the paper distils its teachers' pretext predictions. A Linear per teacher
  head maps the student's features to that head's output size; the loss of one head is Hinton
  et al.'s ("Distilling the Knowledge in a Neural Network", 2015) ``T^2 KL(softmax(z_t / T) ||
  softmax(z_s / T))`` with ``temperature`` T, averaged over a teacher's heads, then weighted
  over teachers as the feature loss. VCOP's head reads clip pairs, not one clip: a clip-order
  teacher is rejected for logit distillation.
- The teachers' weights are not written to the task's checkpoints (they are the files named by
  ``teachers``, recorded in the hyperparameters as absolute paths): loading a checkpoint of this
  task reads the teacher files again and fills their entries in, so the teacher files must
  still exist where they were. A backbone exported with ``vssl export`` needs them no more.

- Cached teacher features (``teacher_cache``, a folder; `vssl.tasks.teacher_cache` has the
  design): the teachers' features (and pretext-head outputs, with logits) of ``cache_views``
  fixed views per training video (drawn once from ``cache_seed``) and of the centre view of
  each validation video, computed once and read from memory-mapped files. The student then
  trains on exactly those views (deterministic centre crop, the view's flip, no photometric
  augmentation) and the teachers do not run; when the folder holds a complete cache for these
  teachers, they are not even loaded. The cache is filled when fitting starts if it is
  missing, or beforehand with `vssl.tasks.teacher_cache.cache_teacher_features`; a cache made
  for other teachers, views, data or videos is refused, naming its manifest (also when a
  checkpoint of this task is loaded, since it names the folder). Testing reads the validation
  videos' rows, so it runs on the validation split.

Logged: ``teacher<i>_cos``, the mean cosine between the (projected) student features and
teacher ``i``'s (not with ``match: logits``, which has no feature projection); with logits,
``teacher<i>_kl``, that teacher's logit loss.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vssl.data.sampling import ClipSampler, ClipSpec
from vssl.errors import InvalidInputError, UserError
from vssl.heads import DistillationProjectionHead
from vssl.tasks import teacher_cache as tc
from vssl.tasks.base import StepOutput, VSSLTask

LOSSES = ("cosine", "mse")
MATCHES = ("features", "logits", "both")
#: The prefixes of the teachers' entries in the module's state dict (left out of checkpoints):
#: their backbones and, with logits, their pretext heads.
TEACHER_PREFIX = "teachers."
TEACHER_HEADS_PREFIX = "teacher_heads."
#: Task class name -> the attributes of its pretext heads that map pooled clip features to the
#: task's outputs (what logit distillation matches).
PRETEXT_HEADS: dict[str, tuple[str, ...]] = {
    "RSPNet": ("speed_head", "appearance_head"),
    "Rotation": ("head",),
    "PlaybackRate": ("head",),
    "Supervised": ("head",),
    "CVRL": ("head",),
    "TDL": ("head",),
}


def distillation_loss(student: Tensor, teacher: Tensor, loss: str = "cosine") -> Tensor:
    """The feature-matching loss of student features ``(B, D)`` against a teacher's ``(B, D)``:
    ``cosine`` the batch mean of ``2 - 2 cos``, ``mse`` the mean squared error of the raw values."""
    if loss not in LOSSES:
        raise InvalidInputError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student features {tuple(student.shape)} and teacher features "
            f"{tuple(teacher.shape)} differ in shape"
        )
    if loss == "mse":
        return F.mse_loss(student, teacher)
    return (2 - 2 * F.cosine_similarity(student, teacher, dim=1)).mean()


def logit_distillation_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton et al.'s soft-target loss of student logits ``(B, K)`` against a teacher's:
    ``T^2 KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (the
    ``T^2`` keeps the gradient's size independent of ``T``)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits "
            f"{tuple(teacher.shape)} differ in shape"
        )
    if temperature <= 0:
        raise InvalidInputError(f"temperature must be positive, got {temperature}")
    log_student = F.log_softmax(student / temperature, dim=1)
    log_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return temperature**2 * kl


def _load_teacher_task(path: str | Path, index: int) -> nn.Module:
    from vssl.eval.features import load_task

    try:
        return load_task(path)
    except UserError as err:
        raise type(err)(f"Distillation teacher {index}: {err}") from None
    except ValueError as err:
        raise InvalidInputError(f"Distillation teacher {index}: {err}") from None


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def load_teacher(path: str | Path, index: int = 0) -> nn.Module:
    """The frozen backbone of the vssl checkpoint at ``path`` (eval mode, no gradients); errors
    name the file and the teacher's place in the list."""
    return _frozen(_load_teacher_task(path, index).backbone)


def pretext_heads(task: nn.Module, path: str | Path, index: int = 0) -> nn.ModuleDict:
    """The frozen pretext heads (`PRETEXT_HEADS`) of a teacher task loaded from ``path``."""
    name = type(task).__name__
    if name not in PRETEXT_HEADS:
        raise InvalidInputError(
            f"Distillation teacher {index}: {path}: a {name} checkpoint has no pretext head that "
            f"reads one clip's features, so its logits cannot be distilled (tasks with one: "
            f"{', '.join(sorted(PRETEXT_HEADS))}); use match: features"
        )
    return _frozen(nn.ModuleDict({a: getattr(task, a) for a in PRETEXT_HEADS[name]}))


class Distillation(VSSLTask):
    """A student backbone trained to match the features of frozen teacher checkpoints.

    Args:
        teachers: paths of vssl task checkpoints (any task); their backbones are the teachers.
        loss: ``cosine`` (``2 - 2 cos`` of the features) or ``mse`` (of the raw features).
        weights: one positive weight per teacher (default: all equal).
        match: what the student matches: the teachers' ``features``, the ``logits`` of their
            pretext heads, or ``both`` (the sum of the two losses).
        temperature: the softmax temperature of logit distillation.
        teacher_cache: a folder for cached teacher features (None: the teachers run on every
            batch); see the module docstring.
        cache_views: fixed views per training video in the cache.
        cache_seed: the seed the fixed views are drawn from.
        **kwargs: the settings of `VSSLTask` for the student (backbone, optimiser, schedule,
            probe, augment, ...).
    """

    def __init__(
        self,
        teachers: list[str],
        loss: str = "cosine",
        weights: list[float] | None = None,
        match: str = "features",
        temperature: float = 1.0,
        teacher_cache: str | None = None,
        cache_views: int = 4,
        cache_seed: int = 0,
        **kwargs: Any,
    ):
        if isinstance(teachers, (str, Path)) or not teachers:
            raise InvalidInputError(
                f"Distillation needs a list of teacher checkpoint paths, got {teachers!r}"
            )
        if loss not in LOSSES:
            raise InvalidInputError(
                f"Distillation loss must be one of {list(LOSSES)}, got {loss!r}"
            )
        if weights is not None and (
            len(weights) != len(teachers) or min(float(w) for w in weights) <= 0
        ):
            raise InvalidInputError(
                f"Distillation weights must be one positive number per teacher ({len(teachers)}), "
                f"got {list(weights)}"
            )
        if match not in MATCHES:
            raise InvalidInputError(
                f"Distillation match must be one of {list(MATCHES)}, got {match!r}"
            )
        if not float(temperature) > 0:
            raise InvalidInputError(
                f"Distillation temperature must be positive, got {temperature!r}"
            )
        super().__init__(**kwargs)
        self.loss_name = loss
        self.match = match
        self.temperature = float(temperature)
        # absolute paths in the checkpoint, so that it loads from any working folder
        self.hparams["teachers"] = [str(Path(p).resolve()) for p in teachers]
        self.teacher_cache = None if teacher_cache is None else Path(teacher_cache).resolve()
        self.cache: tc.TeacherCache | None = None
        self._cache_checked = False
        if self.teacher_cache is not None:
            self.hparams["teacher_cache"] = str(self.teacher_cache)
            tc.train_views(cache_views, cache_seed, False)  # checks cache_views
            if self.augment.photometric:
                raise InvalidInputError(
                    f"Distillation teacher_cache {self.teacher_cache}: the cached teacher features "
                    "are those of the unaugmented views, so the student's augment may only "
                    "normalise (no jitter, grayscale, blur or solarisation)"
                )
            manifest = tc.read_manifest(self.teacher_cache)
            if manifest is not None:
                tc.check_teachers(self.teacher_cache, manifest, teachers, match != "features")
                if manifest.get("complete"):
                    self.cache = tc.TeacherCache(self.teacher_cache, manifest)
        if self.cache is not None:  # the teachers are not needed: their sizes are in the cache
            tasks = []
            self.teachers = nn.ModuleList()
            records = self.cache.manifest["teachers"]
            dims = [r["out_dim"] for r in records]
            self._head_sizes = [dict(r["heads"]) if match != "features" else {} for r in records]
        else:
            tasks = [_load_teacher_task(p, i) for i, p in enumerate(teachers)]
            self.teachers = nn.ModuleList(_frozen(t.backbone) for t in tasks)
            dims = [t.out_dim for t in self.teachers]
        student = self.backbone.out_dim
        self.projections = nn.ModuleList(
            nn.Identity()
            if dim == student or match == "logits"  # logits only: no feature projection
            else DistillationProjectionHead(student, dim)
            for dim in dims
        )
        if match != "features":
            self.teacher_heads = nn.ModuleList(
                pretext_heads(t, p, i)
                for i, (t, p) in enumerate(zip(tasks, teachers if tasks else [], strict=True))
            )
            if tasks:
                self._head_sizes = [
                    {name: _output_size(head, dim) for name, head in heads.items()}
                    for heads, dim in zip(self.teacher_heads, dims, strict=True)
                ]
            self.logit_heads = nn.ModuleList(
                nn.ModuleDict({name: nn.Linear(student, size) for name, size in sizes.items()})
                for sizes in self._head_sizes
            )
        elif tasks:
            self._head_sizes = [{} for _ in tasks]
        del tasks
        w = torch.tensor([float(x) for x in weights] if weights else [1.0] * len(teachers))
        self.register_buffer("teacher_weights", w / w.sum(), persistent=False)

    def train(self, mode: bool = True) -> Distillation:
        """Sets the student's mode; the teachers stay in eval mode."""
        super().train(mode)
        self.teachers.eval()
        if self.match != "features" and self.teachers:
            self.teacher_heads.eval()
        return self

    @torch.no_grad()
    def teacher_features(self, video: Tensor) -> list[Tensor]:
        """Each teacher's pooled features of the float clips ``(B, C, T, H, W)``."""
        return [teacher(video) for teacher in self.teachers]

    def teacher_head_sizes(self) -> list[dict[str, int]]:
        """Each teacher's pretext heads and their output sizes (empty with ``match:
        features``): the columns a cached row has after the features."""
        return [dict(sizes) for sizes in self._head_sizes]

    @torch.no_grad()
    def teacher_rows(self, video: Tensor) -> list[Tensor]:
        """Each teacher's cache rows of the float clips: its features, then (with logits) the
        outputs of its pretext heads in `teacher_head_sizes` order."""
        rows = []
        for i, features in enumerate(self.teacher_features(video)):
            heads = self.teacher_heads[i].values() if self.match != "features" else []
            rows.append(torch.cat([features, *(head(features) for head in heads)], dim=1))
        return rows

    def cache_view_table(self, stage: str, spec: ClipSpec) -> list[tuple[float, bool]]:
        """The fixed ``(start fraction, flip)`` views of ``stage``'s videos in the cache."""
        if stage == "train":
            return tc.train_views(
                self.hparams["cache_views"], self.hparams["cache_seed"], spec.flip
            )
        return list(tc.EVAL_VIEWS)

    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """With a cache, one of the video's fixed views (`teacher_cache.CachedViews`)."""
        if self.teacher_cache is None:
            return super().clip_sampler(stage, spec)
        views = tuple(self.cache_view_table(stage, spec))
        return tc.CachedViews(spec.clip_len, spec.stride, views)

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """With a cache, the deterministic centre crop (the flip is applied on the device)."""
        if self.teacher_cache is None:
            return super().clip_transform(stage, spec)
        return tc.view_transform(spec.crop_size)

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Flips the cached views that are flipped, then augments and normalises."""
        video = batch.get("video")
        if "cache_flip" in batch and video is not None and video.dtype == torch.uint8:
            batch["video"] = tc.flip_views(video, batch["cache_flip"])
        return super().augment_batch(batch)

    def _cache_datamodule(self) -> Any:
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "build_dataset"):
            raise InvalidInputError(
                f"Distillation teacher_cache {self.teacher_cache}: needs a VideoDataModule "
                "(its samples say which video and view they are), got "
                f"{type(datamodule).__name__}"
            )
        return datamodule

    def on_fit_start(self) -> None:
        """Fills the teacher cache when it is missing, or checks it against the data (on
        every rank together: `teacher_cache.cache_teacher_features`)."""
        if self.teacher_cache is None:
            return
        self.cache = tc.cache_teacher_features(self, self._cache_datamodule())
        self._cache_checked = True

    def _check_cache(self) -> None:
        if self.teacher_cache is None or self._cache_checked:
            return
        if self.cache is None:
            raise InvalidInputError(
                f"Distillation teacher_cache {self.teacher_cache}: no complete cache there; fit "
                "fills it, or vssl.tasks.teacher_cache.cache_teacher_features"
            )
        tc.verify_cache(self, self._cache_datamodule(), self.cache)
        self._cache_checked = True

    def on_validation_start(self) -> None:
        self._check_cache()

    def on_test_start(self) -> None:
        """Checks the cache; it holds the validation videos, which must be the test videos."""
        self._check_cache()
        if self.teacher_cache is None:
            return
        splits = self._cache_datamodule().splits
        if splits.get("test") != splits.get("val"):
            raise InvalidInputError(
                f"Distillation teacher_cache {self.teacher_cache}: the cache holds the "
                f"{splits.get('val')!r} split's teacher features, not those of the test split "
                f"{splits.get('test')!r}; test on the validation split or without teacher_cache"
            )

    def _targets(
        self, batch: dict[str, Tensor], stage: str, video: Tensor
    ) -> tuple[list[Tensor], list[dict[str, Tensor] | None]]:
        """The teachers' features of the batch and (with logits) their heads' outputs: read
        from the cache, or computed by the teachers."""
        if self.cache is None:
            return self.teacher_features(video), [None] * len(self.teachers)
        if "index" not in batch or "cache_view" not in batch:
            raise InvalidInputError(
                f"Distillation teacher_cache {self.teacher_cache}: a batch needs 'index' and "
                "'cache_view' (a VideoDataModule serving the task's views), got keys "
                f"{sorted(batch)}"
            )
        features, logits = [], []
        for i, rows in enumerate(self.cache.rows(stage, batch["index"], batch["cache_view"])):
            z, heads = self.cache.split(i, rows.to(video.device, non_blocking=True))
            features.append(z)
            logits.append(heads)
        return features, logits

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The weighted mean over teachers of the feature-matching loss on the batch's clips
        and/or of the logit loss (the mean over each teacher's pretext heads)."""
        video = batch["video"]
        features = self.backbone(video)
        targets, cached_logits = self._targets(batch, stage, video)
        loss = features.new_zeros(())
        logs: dict[str, Tensor | float] = {}
        for i, (project, target) in enumerate(zip(self.projections, targets, strict=True)):
            if self.match != "logits":
                student = project(features)
                loss = loss + self.teacher_weights[i] * distillation_loss(
                    student, target, self.loss_name
                )
                cos = F.cosine_similarity(student.detach(), target, dim=1).mean()
                logs[f"teacher{i}_cos"] = cos
            if self.match != "features":
                soft = cached_logits[i]
                if soft is None:
                    with torch.no_grad():
                        soft = {n: h(target) for n, h in self.teacher_heads[i].items()}
                kl = torch.stack(
                    [
                        logit_distillation_loss(head(features), soft[n], self.temperature)
                        for n, head in self.logit_heads[i].items()
                    ]
                ).mean()
                loss = loss + self.teacher_weights[i] * kl
                logs[f"teacher{i}_kl"] = kl.detach()
        return StepOutput(loss, logs, features)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leaves the teachers' weights out: they are the files named by ``teachers``."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith((TEACHER_PREFIX, TEACHER_HEADS_PREFIX))]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fills the teachers' entries in from the teachers loaded from their files, so that
        the student's keys are still loaded strictly."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.setdefault("state_dict", {})
        for key, value in self.teachers.state_dict(prefix=TEACHER_PREFIX).items():
            state.setdefault(key, value)
        if self.match != "features":
            for key, value in self.teacher_heads.state_dict(prefix=TEACHER_HEADS_PREFIX).items():
                state.setdefault(key, value)


def _output_size(head: nn.Module, in_dim: int) -> int:
    """The output size of a frozen pretext head reading ``in_dim`` features."""
    with torch.no_grad():
        return int(head(torch.zeros(2, in_dim)).shape[1])
