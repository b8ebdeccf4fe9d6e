"""CVRL: spatiotemporal contrastive video representation learning.

Qian et al., "Spatiotemporal Contrastive Video Representation Learning", CVPR 2021,
https://arxiv.org/abs/2008.03800 (official code: tensorflow/models,
``official/projects/video_ssl``).

Two clips of one video, with a gap drawn from a linearly decreasing density
(`vssl.data.sampling.sample_cvrl_starts`), are a positive pair; the clips of the other videos of
the global batch are the negatives. Each clip gets its own temporally consistent augmentation:
a random resized crop and flip in the DataLoader workers, then colour jitter, grayscale, blur
and (clip 2 only) solarisation batched on the accelerator, with the paper's different blur and
solarisation probabilities for the two clips (two `BatchAugment` instances). Backbone -> MLP
projection head (`vssl.heads.ProjectionHead`) -> NT-Xent over the projections gathered from
every process (`vssl.losses.nt_xent`).

Validation and test use the same two-clip sampling with centre crops and no photometric
augmentation, so ``val/loss`` is the contrastive loss on held-out videos (its clip positions are
random, so it is a little noisy from epoch to epoch). The online probe sees the features of clip 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from vssl.data.sampling import ClipSampler, ClipSpec, CVRLClips
from vssl.data.transforms import (
    BatchAugment,
    ViewTransform,
    eval_clip_transform,
    train_clip_transform,
)
from vssl.heads import ProjectionHead
from vssl.losses.nt_xent import nt_xent
from vssl.tasks.base import StepOutput, VSSLTask

__all__ = ["CVRL", "CVRL_AUGMENT", "CVRL_AUGMENT2", "VIEWS", "ProjectionHead"]

#: The two views of a CVRL sample.
VIEWS = ("video", "video2")

#: `BatchAugment` settings of clip 1 in the paper and official code: SimCLR colour jitter with
#: p 0.8 (strength 1: brightness, contrast, saturation 0.8, hue 0.2, random order), grayscale
#: p 0.2, Gaussian blur p 1.0 (sigma 0.1..2, kernel about 10% of the crop), no solarisation.
CVRL_AUGMENT: dict[str, Any] = {
    "brightness": 0.8,
    "contrast": 0.8,
    "saturation": 0.8,
    "hue": 0.2,
    "jitter_p": 0.8,
    "random_order": True,
    "grayscale_p": 0.2,
    "blur_p": 1.0,
    "blur_sigma": (0.1, 2.0),
    "solarize_p": 0.0,
}

#: How clip 2 differs from clip 1: blur p 0.1 and solarisation p 0.2 (official code).
CVRL_AUGMENT2: dict[str, Any] = {"blur_p": 0.1, "solarize_p": 0.2}


class CVRL(VSSLTask):
    """CVRL pretraining: NT-Xent between two temporally distant, independently augmented clips.

    Args:
        temperature: tau of NT-Xent.
        hidden_dim, hidden_layers, projection_dim: the projection head (`ProjectionHead`); the
            paper's 2048 x 3 then 128. A CPU-sized run can use a narrower head.
        crop_area, crop_aspect: area (fraction of the frame) and aspect ratio ranges of the
            workers' random resized crop, the paper's 0.3..1 and 0.5..2. They replace the
            datamodule's ``crop_scale`` (a warning says so when that was changed); ``flip`` and
            ``crop_size`` come from the datamodule.
        augment: `BatchAugment` settings of clip 1; None gives the paper's (`CVRL_AUGMENT`),
            ``{}`` switches the photometric augmentation off.
        augment2: the settings of clip 2 that differ from clip 1's, merged over ``augment``;
            None gives the paper's (`CVRL_AUGMENT2`: blur p 0.1, solarisation p 0.2).
        optimizer, lr, reference_batch_size, weight_decay, momentum, lr_schedule, warmup_epochs:
            the paper's SGD (momentum 0.9, lr 0.32 per 1024 samples of global batch, scaled
            linearly, 5 warm-up epochs, cosine decay, weight decay 1e-6) as defaults.
        **kwargs: the other settings of `VSSLTask` (backbone_kwargs, online_probe, ...).

    Under DDP the projections of all processes are gathered with gradients, so every sample has
    2N - 2 negatives for a global batch of N; set ``trainer.sync_batchnorm: true`` so that batch
    norm sees the global batch as in the paper (PyTorch supports it on CUDA only).
    """

    video_keys = VIEWS

    def __init__(
        self,
        backbone: str = "r3d_50",
        temperature: float = 0.1,
        hidden_dim: int = 2048,
        hidden_layers: int = 3,
        projection_dim: int = 128,
        crop_area: tuple[float, float] = (0.3, 1.0),
        crop_aspect: tuple[float, float] = (0.5, 2.0),
        augment: dict[str, Any] | None = None,
        augment2: dict[str, Any] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.32,
        reference_batch_size: int | None = 1024,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        lr_schedule: str = "cosine",
        warmup_epochs: float = 5.0,
        **kwargs: Any,
    ):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        for name, (lo, hi) in (("crop_area", crop_area), ("crop_aspect", crop_aspect)):
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < low <= high, got {(lo, hi)}")
        augment = dict(CVRL_AUGMENT) if augment is None else dict(augment)
        augment2 = dict(CVRL_AUGMENT2) if augment2 is None else dict(augment2)
        super().__init__(
            backbone=backbone,
            augment=augment,
            optimizer=optimizer,
            lr=lr,
            reference_batch_size=reference_batch_size,
            weight_decay=weight_decay,
            momentum=momentum,
            lr_schedule=lr_schedule,
            warmup_epochs=warmup_epochs,
            **kwargs,
        )
        self.augment2 = BatchAugment(**{**augment, **augment2})
        self.head = ProjectionHead(self.backbone.out_dim, hidden_dim, hidden_layers, projection_dim)
        self.temperature = temperature
        self.crop_area = (float(crop_area[0]), float(crop_area[1]))
        self.crop_aspect = (float(crop_aspect[0]), float(crop_aspect[1]))

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """Two clips with CVRL's gap distribution, in every stage."""
        return CVRLClips(spec.clip_len, spec.stride, VIEWS)

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """Training: a random resized crop (and flip, if allowed) per clip; else centre crops."""
        if stage == "train":
            if tuple(spec.scale) not in (ClipSpec().scale, self.crop_area):
                rank_zero_warn(
                    f"CVRL crops with model.init_args.crop_area {self.crop_area}; the datamodule's "
                    f"crop_scale {tuple(spec.scale)} is not used"
                )
            crop = train_clip_transform(spec.crop_size, self.crop_area, self.crop_aspect, spec.flip)
            return ViewTransform(crop, VIEWS)
        return ViewTransform(eval_clip_transform(spec.crop_size), VIEWS)

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Clip 1 through ``augment``, clip 2 through ``augment2``, each with its own parameters."""
        for key, augment in zip(VIEWS, (self.augment, self.augment2), strict=True):
            if key in batch and batch[key].dtype == torch.uint8:
                batch[key] = augment(batch[key])
        return batch

    # ---------------------------------------------------------------- model and loss
    def project(self, video: Tensor, video2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projections of both clips and the backbone features of clip 1.

        Both clips go through the backbone as one batch, so batch norm sees all 2n clips (as the
        official code, which concatenates them).
        """
        n = video.shape[0]
        features = self.backbone(torch.cat([video, video2]))
        z = self.head(features)
        return z[:n], z[n:], features[:n]

    def _gather(self, z: Tensor) -> Tensor:
        return self.all_gather(z, sync_grads=True).flatten(0, 1)

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """NT-Xent between the two clips over the global batch."""
        z1, z2, features = self.project(batch["video"], batch["video2"])
        gather = self._gather if self.world_size() > 1 else None
        # In float32 even under mixed precision, as the official code (logits / tau are large).
        with torch.autocast(z1.device.type, enabled=False):
            out = nt_xent(z1.float(), z2.float(), self.temperature, gather, self.global_rank)
        return StepOutput(out.loss, {"contrast_acc": out.accuracy}, features)

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            modules = list(self.modules())
            has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
            if has_bn and not any(isinstance(m, nn.SyncBatchNorm) for m in modules):
                rank_zero_warn(
                    "CVRL under DDP without synchronised batch norm: each process normalises "
                    "with its own statistics. The paper syncs them: set trainer.sync_batchnorm: "
                    "true (PyTorch supports it on CUDA only)."
                )
