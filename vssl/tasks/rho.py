"""What rho-BYOL and rho-MoCo share: rho clips of a video, each augmented on its own.

Feichtenhofer et al., "A Large-Scale Study on Unsupervised Spatiotemporal Representation
Learning", CVPR 2021, https://arxiv.org/abs/2104.14558 (official code: facebookresearch/SlowFast,
``slowfast/models/contrastive.py`` and ``configs/contrastive_ssl/``). Image frameworks become
video ones by taking their positives from time: the views of a sample are rho clips of one video
with start times drawn uniformly over the whole video (`vssl.data.sampling.RhoClips`), so that
the features must persist over up to the video's whole length.

- The sample holds one stack of rho clips (view ``clips``, ``(rho, T, C, H, W)`` uint8), decoded
  in one pass; each clip gets its own random resized crop and flip in the workers (the
  datamodule's ``crop_scale``; the paper's area 0.2..0.766, aspect 3/4..4/3) and its own draw of
  the photometric augmentation on the device (`RHO_AUGMENT`).
- The clips go through the encoders one position at a time, each a batch of B (the official
  ``SEQUENTIAL: True``), so batch norm sees the clips of one position of every video.
- Validation and test sample the same way with centre crops and no photometric augmentation, so
  ``val/loss`` is the task's loss on held-out videos. The online probe sees the backbone
  features of the first clip.
- The official optimiser (SlowFast's ``construct_optimizer``, ``LARS`` and
  ``lr_policy.get_lr_at_epoch``), opt-in and set in the paper configs: ``nesterov``
  (``SOLVER.NESTEROV``, SlowFast's default True), ``norm_weight_decay`` (``BN.WEIGHT_DECAY``:
  the parameters of every batch-norm layer in a group of their own), ``lars`` (``LARS_ON``: the
  other parameters' gradients scaled by `lars_adapt_`, trust 0.001, no clipping, 1-d parameters
  left alone) and ``slowfast_schedule`` (``COSINE_AFTER_WARMUP: False``: the cosine spans the
  whole training and the warm-up rises linearly from ``warmup_start_lr`` to the cosine's value at
  its end; `RhoTask.lr_factor`). Without them: vssl's SGD, weight decay on every parameter, and
  the cosine after a warm-up from 0 (the CPU configs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from vssl.data.sampling import ClipSampler, ClipSpec, RhoClips
from vssl.data.transforms import ViewTransform, eval_clip_transform, train_clip_transform
from vssl.tasks.base import VSSLTask

VIEW = "clips"
"""The view of a rho-clip sample: a stack of rho clips, ``(B, rho, C, T, H, W)`` once augmented."""

RHO_AUGMENT: dict[str, Any] = {
    "brightness": 0.6,
    "contrast": 0.6,
    "saturation": 0.6,
    "hue": 0.15,
    "jitter_p": 0.8,
    "grayscale_p": 0.2,
    "blur_p": 0.5,
    "contrast_mean": "clip",
}
"""The paper's photometric augmentation per clip (official configs: ``SSL_MOCOV2_AUG`` with
brightness, contrast and saturation 0.6, hue 0.15, grayscale 0.2): MoCo v2's colour jitter with
p 0.8 in random order, grayscale, Gaussian blur with p 0.5 and sigma 0.1..2. The official code
jitters a clip as one tall image, so contrast blends toward one grey mean per clip."""

#: SlowFast's LARS trust coefficient (``LARS(optimizer, trust_coefficient=0.001, clip=False)``).
LARS_TRUST = 0.001


@torch.no_grad()
def lars_adapt_(
    param_groups: Iterable[dict[str, Any]], trust: float = LARS_TRUST, eps: float = 1e-8
):
    """SlowFast's ``LARS.step`` before the wrapped SGD step, in place on the gradients: in each
    group marked ``lars``, every parameter with more than one dimension and non-zero weights and
    gradient gets ``g <- (g + wd p) * trust |p| / (|g| + wd |p| + eps)`` with ``wd`` the group's
    ``lars_weight_decay`` (the group's own ``weight_decay`` is 0, as LARS sets it for the step);
    1-d parameters are left alone (``ignore_1d_param``), so they get no weight decay either."""
    for group in param_groups:
        if not group.get("lars"):
            continue
        wd = float(group.get("lars_weight_decay", 0.0))
        for p in group["params"]:
            if p.grad is None or p.ndim == 1:
                continue
            param_norm, grad_norm = torch.norm(p), torch.norm(p.grad)
            if param_norm != 0 and grad_norm != 0:
                adaptive = trust * param_norm / (grad_norm + param_norm * wd + eps)
                p.grad.add_(p, alpha=wd).mul_(adaptive)


class RhoTask(VSSLTask):
    """Base of the rho-clip tasks: the sampler, the per-clip transforms, the clip stack.

    A subclass builds ``projector`` (on the backbone) and ``momentum_encoder`` (a
    `MomentumEncoder` of `online_encoder`), which follows after every optimiser step.

    Args:
        rho: clips per video (the paper's configs: 2 and 4).
        augment: `BatchAugment` settings per clip; None gives `RHO_AUGMENT`, ``{}`` switches the
            photometric augmentation off.
        nesterov: Nesterov momentum for SGD (the official ``SOLVER.NESTEROV`` True).
        norm_weight_decay: weight decay of the batch-norm layers' parameters (the official
            ``BN.WEIGHT_DECAY`` 0.0); None: the others' ``weight_decay``.
        lars: SlowFast's LARS (`lars_adapt_`) on every parameter but the batch-norm ones (the
            official BYOL config's ``LARS_ON``); SGD only.
        slowfast_schedule: the official ``cosine`` schedule (`RhoTask.lr_factor`).
        warmup_start_lr: the lr at the start of that warm-up, per ``reference_batch_size``
            videos as ``lr`` (the official ``WARMUP_START_LR`` 0.001).
        **kwargs: the other settings of `VSSLTask`.
    """

    video_keys = (VIEW,)

    def __init__(
        self,
        rho: int = 2,
        augment: dict[str, Any] | None = None,
        nesterov: bool = False,
        norm_weight_decay: float | None = None,
        lars: bool = False,
        slowfast_schedule: bool = False,
        warmup_start_lr: float = 0.001,
        **kwargs: Any,
    ):
        if augment is None:
            augment = dict(RHO_AUGMENT)  # rebound before the base saves the hyperparameters
        super().__init__(augment=augment, **kwargs)
        self.rho = RhoClips(rho=rho).rho
        hp = self.hparams
        if (nesterov or lars) and hp.optimizer != "sgd":
            raise ValueError(f"nesterov and lars need optimizer sgd, got {hp.optimizer!r}")
        if nesterov and hp.momentum <= 0:
            raise ValueError(f"nesterov needs a positive momentum, got {hp.momentum}")
        if warmup_start_lr < 0:
            raise ValueError(f"warmup_start_lr must be >= 0, got {warmup_start_lr}")
        self.nesterov, self.lars = bool(nesterov), bool(lars)
        self.norm_weight_decay = norm_weight_decay
        self.slowfast_schedule, self.warmup_start_lr = bool(slowfast_schedule), warmup_start_lr

    # ---------------------------------------------------------------- optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The base groups; with ``norm_weight_decay`` or ``lars`` the main group is split into
        the batch-norm parameters (``norm_weight_decay``, no LARS) and the others (marked
        ``lars``, their weight decay moved to ``lars_weight_decay``), as SlowFast's
        ``construct_optimizer``; with ``nesterov`` those groups use Nesterov momentum. The
        online probe's group is left as it is."""
        main, *rest = super().parameter_groups()
        groups = [main]
        if self.norm_weight_decay is not None or self.lars:
            norm_ids = {
                id(p)
                for m in self.modules()
                if isinstance(m, _NormBase)
                for p in m.parameters(recurse=False)
            }
            norm_decay = main["weight_decay"]
            if self.norm_weight_decay is not None:
                norm_decay = float(self.norm_weight_decay)
            split = [
                {**main, "params": [p for p in main["params"] if id(p) not in norm_ids]},
                {
                    **main,
                    "params": [p for p in main["params"] if id(p) in norm_ids],
                    "weight_decay": norm_decay,
                },
            ]
            groups = [g for g in split if g["params"]]
            if self.lars:
                others = groups[0]
                others.update(lars=True, lars_weight_decay=others["weight_decay"], weight_decay=0.0)
        if self.nesterov:
            for group in groups:
                group["nesterov"] = True
        return groups + rest

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """With ``lars``, SlowFast's LARS scaling of the gradients (`lars_adapt_`)."""
        if self.lars:
            lars_adapt_(optimizer.param_groups)

    def lr_factor(self, step: int, total_steps: int, steps_per_epoch: float) -> float:
        """With ``slowfast_schedule`` and the cosine schedule, SlowFast's ``get_lr_at_epoch``
        with ``COSINE_AFTER_WARMUP: False`` as a multiple of ``lr``, at ``e = step /
        steps_per_epoch`` of ``E`` epochs: ``c(e) = m + (1 - m) (cos(pi e / E) + 1) / 2`` (``m``
        = ``min_lr_ratio``, the official ``COSINE_END_LR`` 0), and during the ``W`` warm-up
        epochs ``s + e (c(W) - s) / W`` from ``s = warmup_start_lr / lr``. Else the base's."""
        hp = self.hparams
        if not self.slowfast_schedule or hp.lr_schedule != "cosine":
            return super().lr_factor(step, total_steps, steps_per_epoch)
        epoch, epochs = step / steps_per_epoch, max(1.0, total_steps / steps_per_epoch)
        low = hp.min_lr_ratio

        def cosine(e: float) -> float:
            return low + (1 - low) * (math.cos(math.pi * e / epochs) + 1) * 0.5

        warmup = hp.warmup_epochs
        if epoch < warmup:
            start = self.warmup_start_lr / hp.lr
            return start + epoch * (cosine(warmup) - start) / warmup
        return cosine(epoch)

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """``rho`` clips with uniform start times, in every stage."""
        return RhoClips(spec.clip_len, spec.stride, self.rho, VIEW)

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """Training: a random resized crop (and flip, where allowed) per clip; else centre crops."""
        if stage == "train":
            crop = train_clip_transform(spec.crop_size, scale=tuple(spec.scale), flip=spec.flip)
            return ViewTransform(crop, (VIEW,))
        return ViewTransform(eval_clip_transform(spec.crop_size), (VIEW,))

    def clips(self, batch: dict[str, Tensor]) -> Tensor:
        """The augmented clip stack ``(B, rho, C, T, H, W)`` of a batch, checked."""
        clips = batch[VIEW]
        if clips.ndim != 6 or clips.shape[1] != self.rho or not clips.is_floating_point():
            raise ValueError(
                f"expected batch[{VIEW!r}] as augmented float clips (B, rho={self.rho}, C, T, H, "
                f"W), got {tuple(clips.shape)} {clips.dtype}"
            )
        return clips

    def online_encoder(self) -> nn.ModuleDict:
        """The modules the momentum encoder follows (backbone and projector)."""
        return nn.ModuleDict({"backbone": self.backbone, "projector": self.projector})

    def after_optimizer_step(self) -> None:
        """The momentum encoder follows the online one, at the scheduled momentum."""
        self.momentum_encoder.update(self.online_encoder(), self.training_progress())
