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
- The teachers' weights are not written to the task's checkpoints (they are the files named by
  ``teachers``, recorded in the hyperparameters as absolute paths): loading a checkpoint of this
  task reads the teacher files again and fills their entries in, so the teacher files must
  still exist where they were. A backbone exported with ``vssl export`` needs them no more.

Logged: ``teacher<i>_cos``, the mean cosine between the (projected) student features and
teacher ``i``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vssl.errors import InvalidInputError, UserError
from vssl.heads import DistillationProjectionHead
from vssl.tasks.base import StepOutput, VSSLTask

LOSSES = ("cosine", "mse")
#: The prefix of the teachers' entries in the module's state dict (left out of checkpoints).
TEACHER_PREFIX = "teachers."


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


def load_teacher(path: str | Path, index: int = 0) -> nn.Module:
    """The frozen backbone of the vssl checkpoint at ``path`` (eval mode, no gradients); errors
    name the file and the teacher's place in the list."""
    from vssl.eval.features import load_task

    try:
        task = load_task(path)
    except UserError as err:
        raise type(err)(f"Distillation teacher {index}: {err}") from None
    except ValueError as err:
        raise InvalidInputError(f"Distillation teacher {index}: {err}") from None
    backbone = task.backbone.eval()
    backbone.requires_grad_(False)
    return backbone


class Distillation(VSSLTask):
    """A student backbone trained to match the features of frozen teacher checkpoints.

    Args:
        teachers: paths of vssl task checkpoints (any task); their backbones are the teachers.
        loss: ``cosine`` (``2 - 2 cos`` of the features) or ``mse`` (of the raw features).
        weights: one positive weight per teacher (default: all equal).
        **kwargs: the settings of `VSSLTask` for the student (backbone, optimiser, schedule,
            probe, augment, ...).
    """

    def __init__(
        self,
        teachers: list[str],
        loss: str = "cosine",
        weights: list[float] | None = None,
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
        super().__init__(**kwargs)
        self.loss_name = loss
        self.teachers = nn.ModuleList(load_teacher(p, i) for i, p in enumerate(teachers))
        # absolute paths in the checkpoint, so that it loads from any working folder
        self.hparams["teachers"] = [str(Path(p).resolve()) for p in teachers]
        student = self.backbone.out_dim
        self.projections = nn.ModuleList(
            nn.Identity()
            if t.out_dim == student
            else DistillationProjectionHead(student, t.out_dim)
            for t in self.teachers
        )
        w = torch.tensor([float(x) for x in weights] if weights else [1.0] * len(teachers))
        self.register_buffer("teacher_weights", w / w.sum(), persistent=False)

    def train(self, mode: bool = True) -> Distillation:
        """Sets the student's mode; the teachers stay in eval mode."""
        super().train(mode)
        self.teachers.eval()
        return self

    @torch.no_grad()
    def teacher_features(self, video: Tensor) -> list[Tensor]:
        """Each teacher's pooled features of the float clips ``(B, C, T, H, W)``."""
        return [teacher(video) for teacher in self.teachers]

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The weighted mean over teachers of the feature-matching loss on the batch's clips."""
        video = batch["video"]
        features = self.backbone(video)
        targets = self.teacher_features(video)
        loss = features.new_zeros(())
        logs: dict[str, Tensor | float] = {}
        for i, (project, target) in enumerate(zip(self.projections, targets, strict=True)):
            student = project(features)
            loss = loss + self.teacher_weights[i] * distillation_loss(
                student, target, self.loss_name
            )
            logs[f"teacher{i}_cos"] = F.cosine_similarity(student.detach(), target, dim=1).mean()
        return StepOutput(loss, logs, features)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leaves the teachers' weights out: they are the files named by ``teachers``."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fills the teachers' entries in from the teachers loaded from their files, so that
        the student's keys are still loaded strictly."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.setdefault("state_dict", {})
        for key, value in self.teachers.state_dict(prefix=TEACHER_PREFIX).items():
            state.setdefault(key, value)
