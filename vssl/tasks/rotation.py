"""3D RotNet: predict by how much a whole clip was rotated.

Jing et al., "Self-supervised Spatiotemporal Feature Learning via Video Rotation Prediction",
2018, https://arxiv.org/abs/1811.11387.

- Every frame of a clip is rotated by the same angle, ``90 * k`` degrees for ``k`` in
  {0, 1, 2, 3}, in the spatial plane; the label is ``k``. vssl rotates on the device, after the
  photometric augmentation, with ``torch.rot90(clip, k, dims=(-2, -1))`` on ``(..., H, W)``
  (counter-clockwise as displayed, H downwards and W to the right). Crops must be square
  (a rotated non-square clip would not fit the batch): a clear error says so otherwise.
- Like image RotNet (Gidaris et al., "Unsupervised Representation Learning by Predicting Image
  Rotations", ICLR 2018, https://arxiv.org/abs/1803.07728), the default (``all_rotations: true``) feeds all four
  rotations of every clip of a batch: a batch of B clips becomes ``4B`` clips, rotation-major
  (rows ``r*B .. r*B + B - 1`` are the batch rotated by ``r``), with labels ``0..3``. With
  ``all_rotations: false`` each clip gets one rotation, drawn by the clip sampler in the
  DataLoader workers as a 0-d target (``rotation``), so the labels are reproducible under the
  dataset's seed, in validation as in training.
- Model: backbone -> pooled feature -> one linear layer to 4 logits
  (`vssl.heads.RotationHead`); cross-entropy.
- Sampling and crops are vssl's defaults: one random clip and a random resized crop (and flip)
  in training; the centre clip and a centre crop in validation and test.
- Optimisation defaults: image RotNet's SGD (lr 0.1, momentum 0.9, weight decay 5e-4); they
  are not the 3D paper's schedule.

Paper (3D ResNet-18, Kinetics-400 pretraining, fine-tuned top-1 over 3 splits): UCF101 62.9,
HMDB51 33.7.

The online probe sees the features of the unrotated clips: with ``all_rotations`` they are the
first B rows of the batch; with one rotation per clip they take a second, gradient-free pass
of the unrotated clips (only when a probe is attached).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from vssl.data.datamodule import default_clip_sampler
from vssl.data.sampling import ClipSampler, ClipSpec
from vssl.heads import RotationHead
from vssl.tasks.base import StepOutput, VSSLTask

NUM_ROTATIONS = 4


def _check_square(video: Tensor) -> None:
    h, w = video.shape[-2:]
    if h != w:
        raise ValueError(
            f"Rotation needs square clips (a clip rotated by 90 degrees swaps height and width), "
            f"got {h}x{w}: use a square crop_size"
        )


def rotate_clips(video: Tensor, rotations: Tensor) -> Tensor:
    """Clip ``b`` of ``video`` ``(B, C, T, H, W)`` rotated by ``90 * rotations[b]`` degrees
    (``torch.rot90`` with ``k = rotations[b]`` on the H, W dimensions)."""
    _check_square(video)
    if rotations.shape != video.shape[:1]:
        raise ValueError(
            f"one rotation per clip: {tuple(rotations.shape)} for a batch of {video.shape[0]}"
        )
    out = video.clone()
    for k in range(1, NUM_ROTATIONS):
        rows = (rotations == k).nonzero().flatten()
        if rows.numel():
            out[rows] = torch.rot90(video[rows], k, dims=(-2, -1))
    return out


def all_rotations(video: Tensor) -> tuple[Tensor, Tensor]:
    """Every clip of ``video`` ``(B, ...)`` in all four rotations: ``(4B, ...)`` rotation-major,
    and the labels ``[0] * B + [1] * B + [2] * B + [3] * B``."""
    _check_square(video)
    clips = torch.cat([torch.rot90(video, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)])
    labels = torch.arange(NUM_ROTATIONS, device=video.device).repeat_interleave(video.shape[0])
    return clips, labels


@dataclass
class RotationSampler(ClipSampler):
    """The views of ``clips`` plus a rotation label drawn uniformly from 0..3 (a 0-d target)."""

    clips: ClipSampler
    target: str = "rotation"

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        views = dict(self.clips(num_frames, rng))
        views[self.target] = np.array(rng.integers(NUM_ROTATIONS), dtype=np.int64)
        return views


class Rotation(VSSLTask):
    """3D RotNet: 4-way classification of the rotation applied to a whole clip.

    Args:
        all_rotations: feed the four rotations of every clip (default, as image RotNet); false
            draws one rotation per clip in the data pipeline.
        optimizer, lr, weight_decay, momentum: SGD, lr 0.1, momentum 0.9, weight decay 5e-4.
        **kwargs: the other settings of `VSSLTask` (backbone, schedule, probe, augment, ...).

    Logged: ``rotation_acc`` (top-1 of the rotation).
    """

    def __init__(
        self,
        all_rotations: bool = True,
        optimizer: str = "sgd",
        lr: float = 0.1,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        **kwargs: Any,
    ):
        super().__init__(
            optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs
        )
        self.all_rotations = all_rotations
        self.head = RotationHead(self.backbone.out_dim, NUM_ROTATIONS)

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """vssl's default clip (random in training, central otherwise), plus a drawn rotation
        when each clip gets one rotation."""
        clips = default_clip_sampler(stage, spec)
        return clips if self.all_rotations else RotationSampler(clips)

    # ---------------------------------------------------------------- loss
    def rotated_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The clips the network sees and their rotation labels."""
        video = batch["video"]
        if self.all_rotations:
            return all_rotations(video)
        if "rotation" not in batch:
            raise KeyError(
                "all_rotations is false but the batch has no 'rotation' labels: the data must be "
                "sampled with Rotation.clip_sampler (a VideoDataModule does this when it trains the task)"
            )
        labels = batch["rotation"]
        return rotate_clips(video, labels), labels

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """Cross-entropy of the rotation logits of the rotated clips."""
        clips, labels = self.rotated_batch(batch)
        features = self.backbone(clips)
        logits = self.head(features)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        b = batch["video"].shape[0]
        if self.all_rotations:
            probe_features: Tensor | None = features[:b]
        elif self.probe is not None:
            with torch.no_grad():
                probe_features = self.backbone(batch["video"])
        else:
            probe_features = None
        return StepOutput(loss, {"rotation_acc": acc}, probe_features)
