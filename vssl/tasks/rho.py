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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

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


class RhoTask(VSSLTask):
    """Base of the rho-clip tasks: the sampler, the per-clip transforms, the clip stack.

    A subclass builds ``projector`` (on the backbone) and ``momentum_encoder`` (a
    `MomentumEncoder` of `online_encoder`), which follows after every optimiser step.

    Args:
        rho: clips per video (the paper's configs: 2 and 4).
        augment: `BatchAugment` settings per clip; None gives `RHO_AUGMENT`, ``{}`` switches the
            photometric augmentation off.
        **kwargs: the other settings of `VSSLTask`.
    """

    video_keys = (VIEW,)

    def __init__(self, rho: int = 2, augment: dict[str, Any] | None = None, **kwargs: Any):
        if augment is None:
            augment = dict(RHO_AUGMENT)  # rebound before the base saves the hyperparameters
        super().__init__(augment=augment, **kwargs)
        self.rho = RhoClips(rho=rho).rho

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
