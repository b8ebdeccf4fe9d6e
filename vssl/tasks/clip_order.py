"""Video clip order prediction, VCOP.

Xu et al., "Self-supervised Spatiotemporal Learning via Video Clip Order Prediction", CVPR 2019,
https://openaccess.thecvf.com/content_CVPR_2019/html/Xu_Self-Supervised_Spatiotemporal_Learning_via_Video_Clip_Order_Prediction_CVPR_2019_paper.html
(official code: github.com/xudejing/video-clip-order-prediction).

- Sampling (`ClipTupleSampler`, in the DataLoader workers): a tuple of ``tuple_len`` clips (3 by
  default; 4 gives 24 orders) of ``clip_len`` frames (16 in the paper) at the datamodule's stride,
  consecutive in time with ``interval`` frames between one clip's end and the next clip's start
  (8 in the paper; the next clip starts ``clip span + interval`` frames after the previous one,
  as in the official code). The tuple's start is uniform over the positions where it fits;
  shorter videos start at frame 0 and wrap around (`vssl.data.sampling.clip_indices`).
- Label: the sampler draws an order uniformly from the ``tuple_len!`` permutations of
  ``range(tuple_len)`` and returns the clips already shuffled: shuffled clip ``i`` is the clip
  ``order[i]`` in time (``order[i] = 0`` is the earliest). The label is the index of ``order``
  in ``itertools.permutations(range(tuple_len))`` (lexicographic: 0 = (0, 1, 2), 1 = (0, 2, 1),
  ..., 5 = (2, 1, 0)), exactly as the official ``order_class_index``. The label is a 0-d target
  of the sample, so it is what was applied and reproducible under the dataset's seed.
- Augmentation: all clips of a tuple share one random crop and flip (`TupleTransform`, one
  call on the stacked frames in the workers) and one photometric draw on the device
  (`ClipOrder.augment_batch`), so that the order can only be read from motion and not from
  crop or colour differences between clips. The official code (``UCF101VCOPDataset`` and
  ``train_vcop.py``) instead resizes frames to 128x171, draws a separate random 112x112 crop
  (no rescaling) for each clip of a tuple and never flips: ``shared_crop=False`` and
  ``crop="fixed"`` with the datamodule's ``flip: false`` and ``decode_size: [128, 171]`` give
  exactly that. vssl shares the crop by default on purpose. Validation and test take centre
  crops and the same random tuples and orders, seeded by the dataset.
- Model: the shared backbone encodes each clip to a pooled feature (all clips of the batch in
  one pass); each pair ``i < j`` of clip features is concatenated and goes through
  Linear(2D, 512) + ReLU (one layer shared by all pairs); the pair features are concatenated,
  dropout 0.5, Linear to the number of orders; cross-entropy (`vssl.heads.VCOPHead`).
- Optimisation (paper): SGD lr 0.01, momentum 0.9, weight decay 5e-4. (The official code's
  default lr is 1e-3, batch 8, 300 epochs; its plateau scheduler is never stepped.)

Paper (UCF101 split 1 pretraining, fine-tuned top-1 UCF101 / HMDB51): C3D 65.6 / 28.4,
R3D 64.9 / 29.5, R(2+1)D 72.4 / 30.9.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.transforms import v2

from vssl.data.sampling import ClipSampler, ClipSpec, clip_indices, clip_span
from vssl.data.transforms import (
    ClipTransform,
    ViewTransform,
    eval_clip_transform,
    train_clip_transform,
)
from vssl.heads import VCOPHead
from vssl.tasks.base import StepOutput, VSSLTask

__all__ = ["CROPS", "ClipOrder", "ClipTupleSampler", "TupleTransform", "VCOPHead", "clip_orders"]

CROPS = ("resized", "fixed")
"""Training crops of `ClipOrder`: a random resized crop (area in the datamodule's ``crop_scale``)
or a ``crop_size`` window at a random position without rescaling (the official ``RandomCrop``)."""


def clip_orders(tuple_len: int) -> list[tuple[int, ...]]:
    """The label set: permutations of ``range(tuple_len)`` in `itertools.permutations` order."""
    return list(itertools.permutations(range(tuple_len)))


@dataclass
class ClipTupleSampler(ClipSampler):
    """VCOP's views of one video: ``tuple_len`` clips in a random order, and that order's label.

    Returns ``{view: (tuple_len, clip_len) indices, target: 0-d label}``; row ``i`` of the view
    is the clip ``clip_orders(tuple_len)[label][i]`` of the tuple in time order.
    """

    clip_len: int = 16
    stride: int = 1
    interval: int = 8
    tuple_len: int = 3
    view: str = "video"
    target: str = "order"

    def __post_init__(self) -> None:
        clip_span(self.clip_len, self.stride)
        if self.tuple_len < 2:
            raise ValueError(
                f"tuple_len must be at least 2 (one clip has no order), got {self.tuple_len}"
            )
        if self.interval < 0:
            raise ValueError(f"interval must be >= 0 frames, got {self.interval}")
        self.orders = clip_orders(self.tuple_len)

    @property
    def step(self) -> int:
        """Frames from one clip's start to the next clip's start: the clip's span plus the interval."""
        return clip_span(self.clip_len, self.stride) + self.interval

    @property
    def span(self) -> int:
        """Frames covered by a whole tuple."""
        return (self.tuple_len - 1) * self.step + clip_span(self.clip_len, self.stride)

    def draw(self, num_frames: int, rng: np.random.Generator) -> tuple[int, int]:
        """The random part of a sample: the tuple's start frame and the order's label."""
        if num_frames < 1:
            raise ValueError("a video must have at least one frame")
        start = int(rng.integers(0, num_frames - self.span + 1)) if num_frames >= self.span else 0
        return start, int(rng.integers(len(self.orders)))

    def views(self, start: int, label: int, num_frames: int) -> dict[str, np.ndarray]:
        """The shuffled clips of the tuple starting at ``start`` under order ``label``."""
        clips = [
            clip_indices(start + i * self.step, self.clip_len, self.stride, num_frames)
            for i in range(self.tuple_len)
        ]
        shuffled = np.stack([clips[i] for i in self.orders[label]])
        return {self.view: shuffled, self.target: np.array(label, dtype=np.int64)}

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.views(*self.draw(num_frames, rng), num_frames)


class TupleTransform:
    """The worker-side transform of a VCOP sample: one random draw for all clips of a tuple.

    The view is ``(N, T, C, H, W)``; its ``N * T`` frames go through ``transform`` in one call
    (a `ClipTransform`), so every clip gets the same crop and flip.
    """

    def __init__(self, transform: Callable[[Tensor], Tensor], view: str = "video"):
        self.transform = transform
        self.view = view
        self._frames = ClipTransform(transform)

    def __call__(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(sample)
        clips = sample[self.view]
        if clips.ndim != 5:
            raise ValueError(
                f"expected a tuple of clips (N, T, C, H, W), got shape {tuple(clips.shape)}"
            )
        n, t = clips.shape[:2]
        frames = self._frames(clips.flatten(0, 1))
        out[self.view] = frames.reshape(n, t, *frames.shape[1:])
        return out


class ClipOrder(VSSLTask):
    """VCOP: predict the permutation of a shuffled tuple of clips from one video.

    Args:
        tuple_len: clips per tuple (3 in the paper; the number of classes is ``tuple_len!``).
        interval: frames between the end of one clip and the start of the next (paper: 8).
        hidden_dim: width of the pairwise layer (paper: 512).
        dropout: dropout before the order classifier (paper: 0.5).
        optimizer, lr, weight_decay, momentum: the paper's SGD (lr 0.01, momentum 0.9,
            weight decay 5e-4), used as is (no reference batch).
        shared_crop: one crop and flip draw for all clips of a tuple (default, vssl's choice);
            False draws them for each clip separately, as the official code.
        crop: the training crop, ``resized`` (default) or ``fixed`` (`CROPS`; the official
            code's is ``fixed``, a 112 window of 128x171 frames).
        **kwargs: the other settings of `VSSLTask` (backbone, schedule, probe, augment, ...).

    Clip length and stride are the datamodule's. Logged: ``order_acc`` (top-1 of the order).
    The online probe sees the mean of the pooled features of a tuple's clips.
    """

    def __init__(
        self,
        tuple_len: int = 3,
        interval: int = 8,
        hidden_dim: int = 512,
        dropout: float = 0.5,
        optimizer: str = "sgd",
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        shared_crop: bool = True,
        crop: str = "resized",
        **kwargs: Any,
    ):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        super().__init__(
            optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs
        )
        ClipTupleSampler(tuple_len=tuple_len, interval=interval)  # checks the settings
        self.tuple_len, self.interval = tuple_len, interval
        self.shared_crop, self.crop = bool(shared_crop), crop
        self.head = VCOPHead(self.backbone.out_dim, tuple_len, hidden_dim, dropout)

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """A shuffled tuple and its order label, in every stage (random, seeded by the dataset)."""
        return ClipTupleSampler(spec.clip_len, spec.stride, self.interval, self.tuple_len)

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """In training a random crop (and flip, where the data allows) per tuple, or per clip
        without ``shared_crop``; centre crops otherwise."""
        if stage != "train":
            return TupleTransform(eval_clip_transform(spec.crop_size))
        if self.crop == "fixed":
            flip = [v2.RandomHorizontalFlip()] if spec.flip else []
            transform = v2.Compose([v2.RandomCrop(spec.crop_size), *flip])
        else:
            transform = train_clip_transform(spec.crop_size, scale=spec.scale, flip=spec.flip)
        return TupleTransform(transform) if self.shared_crop else ViewTransform(transform)

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """uint8 ``(B, N, T, C, H, W)`` -> float ``(B, N, C, T, H, W)``, one photometric draw per
        tuple (its clips go through `BatchAugment` as one long clip)."""
        video = batch["video"]
        if video.dtype != torch.uint8:
            return batch
        b, n, t = video.shape[:3]
        x = self.augment(video.flatten(1, 2))  # (B, C, N * T, H, W)
        batch["video"] = x.unflatten(2, (n, t)).transpose(1, 2)
        return batch

    # ---------------------------------------------------------------- loss
    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """Cross-entropy of the order logits against the sampled order's label."""
        video, labels = batch["video"], batch["order"]
        b, n = video.shape[:2]
        features = self.backbone(video.flatten(0, 1)).unflatten(0, (b, n))
        logits = self.head(features)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        return StepOutput(loss, {"order_acc": acc}, features.mean(dim=1))
