"""Playback rate prediction: classify the frame stride a clip was sampled at.

- Yao et al., "Video Playback Rate Perception for Self-supervised Spatio-Temporal
  Representation Learning" (PRP), CVPR 2020, https://arxiv.org/abs/2006.11476
- related: Benaim et al., "SpeedNet: Learning the Speediness in Videos", CVPR 2020,
  https://arxiv.org/abs/2004.06130; Wang et al., "Self-Supervised Video Representation
  Learning by Pace Prediction", ECCV 2020, https://arxiv.org/abs/2008.05861

- Sampling (`PlaybackRateSampler`, in the DataLoader workers): a rate is drawn uniformly from
  ``rates`` (default 1, 2, 4, 8); the clip takes ``clip_len`` frames every ``rate * stride``
  frames (``stride`` is the datamodule's, 1 for the paper's setting), from a uniformly random
  start among those where the clip fits. Videos shorter than the clip's span start at frame 0
  and wrap around (`vssl.data.sampling.clip_indices`), which puts a jump in the clip: keep
  ``(clip_len - 1) * max(rates) * stride + 1`` within the videos' length. The label is the index
  of the rate in ``rates``, returned as a 0-d target, so only the clip's frames are decoded and
  the label is exactly the stride applied (reproducible under the dataset's seed).
- Model: backbone -> pooled feature -> one linear layer to ``len(rates)`` logits
  (`vssl.heads.PlaybackRateHead`); cross-entropy. This is PRP's discriminative branch only; its generative branch (a decoder
  that reconstructs the skipped frames with motion attention) is not part of this task.
- Augmentation: vssl's per-clip random resized crop (and flip) in training, centre crops in
  validation and test, which keep the random rates and starts (seeded by the dataset).
- Optimisation defaults: VCOP's SGD (lr 0.01, momentum 0.9, weight decay 5e-4), the code base
  PRP starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor
from torch.nn import functional as F

from vssl.data.sampling import ClipSampler, ClipSpec, clip_indices, clip_span
from vssl.heads import PlaybackRateHead
from vssl.tasks.base import StepOutput, VSSLTask


def check_rates(rates: Sequence[int]) -> tuple[int, ...]:
    """``rates`` as a tuple of distinct positive ints, or a ValueError that says what is wrong."""
    out = tuple(int(r) for r in rates)
    if len(out) < 2:
        raise ValueError(f"rates must hold at least two playback rates to tell apart, got {out}")
    if (
        min(out) < 1
        or len(set(out)) != len(out)
        or any(r != float(x) for r, x in zip(out, rates, strict=True))
    ):
        raise ValueError(f"rates must be distinct positive integers, got {tuple(rates)}")
    return out


@dataclass
class PlaybackRateSampler(ClipSampler):
    """One clip at a random playback rate: ``{view: (clip_len,) indices, target: 0-d rate index}``."""

    clip_len: int = 16
    stride: int = 1
    rates: tuple[int, ...] = (1, 2, 4, 8)
    view: str = "video"
    target: str = "rate"

    def __post_init__(self) -> None:
        self.rates = check_rates(self.rates)
        clip_span(self.clip_len, self.stride)

    def draw(self, num_frames: int, rng: np.random.Generator) -> tuple[int, int]:
        """The random part of a sample: the rate's index and the clip's start frame."""
        if num_frames < 1:
            raise ValueError("a video must have at least one frame")
        label = int(rng.integers(len(self.rates)))
        span = clip_span(self.clip_len, self.rates[label] * self.stride)
        start = int(rng.integers(0, num_frames - span + 1)) if num_frames >= span else 0
        return label, start

    def views(self, label: int, start: int, num_frames: int) -> dict[str, np.ndarray]:
        """The clip at rate ``rates[label]`` from ``start``, and the label."""
        step = self.rates[label] * self.stride
        return {
            self.view: clip_indices(start, self.clip_len, step, num_frames),
            self.target: np.array(label, dtype=np.int64),
        }

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.views(*self.draw(num_frames, rng), num_frames)


class PlaybackRate(VSSLTask):
    """Classify the playback rate (frame stride) a clip was sampled at.

    Args:
        rates: the rate set (PRP: 1, 2, 4, 8); the label is a rate's index in it. Each rate
            multiplies the datamodule's stride.
        optimizer, lr, weight_decay, momentum: SGD, lr 0.01, momentum 0.9, weight decay 5e-4.
        **kwargs: the other settings of `VSSLTask` (backbone, schedule, probe, augment, ...).

    Logged: ``rate_acc`` (top-1 of the rate).
    """

    def __init__(
        self,
        rates: Sequence[int] = (1, 2, 4, 8),
        optimizer: str = "sgd",
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        **kwargs: Any,
    ):
        super().__init__(
            optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs
        )
        self.rates = check_rates(rates)
        self.head = PlaybackRateHead(self.backbone.out_dim, len(self.rates))

    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """One clip at a random rate, in every stage (random, seeded by the dataset)."""
        return PlaybackRateSampler(spec.clip_len, spec.stride, self.rates)

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """Cross-entropy of the rate logits against the sampled rate's index."""
        features = self.backbone(batch["video"])
        logits = self.head(features)
        labels = batch["rate"]
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        return StepOutput(loss, {"rate_acc": acc}, features)
