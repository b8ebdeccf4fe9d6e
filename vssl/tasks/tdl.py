"""TDL: temporal discriminative learning with temporal triplets and a memory bank.

Wang et al., "Self-supervised Temporal Discriminative Learning for Video Representation
Learning", 2020, https://arxiv.org/abs/2008.02129. Where the paper leaves details open, vssl
follows the official code (github.com/FingerRec/Self-Supervised-Temporal-Discriminative-
Representation-Learning-for-Video-Action-Recognition: ``train_temporal_dis.py``,
``data/dataset.py`` ``get_moco_items``, ``NCE/NCEAverage.py`` ``MemoryMoCo``,
``TC/gen_positive.py``), with the MoCo machinery it builds on (He et al., "Momentum Contrast for
Unsupervised Visual Representation Learning", CVPR 2020, https://arxiv.org/abs/1911.05722):

- Sampling (`TemporalTripletSampler`): per video an anchor segment and a negative segment, each
  of ``clip_len`` frames every ``stride`` frames; the positive reads the anchor's frames. Both
  starts are drawn independently and uniformly from ``[0, N - draw_len * stride]`` (0 when the
  video is shorter): the official ``_sample_indices`` is called with its default length of 32
  frames for 16-frame clips, so starts are drawn as for a clip twice as long (``draw_len``
  None gives ``2 * clip_len``). When the two starts are less than ``min_gap`` (official: 2)
  frames apart, the negative moves on by ``N // 3`` frames, modulo N. Nothing else keeps the
  negative away from the anchor, so the two may overlap in time, as in the official code.
  Clips running past the end wrap around modulo N (vssl's convention; the official reader
  restarts at the first frame).
- Augmentation, temporally consistent (one draw per clip, every frame alike), independent for
  the three clips: in the workers a random rotation of +-10 degrees, a resize of the short side
  to ``8/7`` of the crop (256 for 224, 128 for 112; antialiased bilinear, where the official
  ``Resize`` is nearest-neighbour) and a random crop (no scale jitter, no flip: the
  datamodule's ``crop_scale`` and ``flip`` are not used); on the device colour jitter
  (`TDL_AUGMENT`: brightness 0.5, contrast 0.5, saturation 0.25, hue 0.5, always on) and
  normalisation. The official ``ColorJitter`` puts the four adjustments in a shuffled list but
  applies each to the original frame and keeps the last result, so one adjustment per clip,
  drawn uniformly, takes effect; vssl does the same (`OneAdjustmentJitter`, ``jitter_one_op``;
  ``false`` applies all four in a random order, torchvision's ``ColorJitter``). Then the anchor
  alone gets TCA, the official ``GenPositive`` (intra-video mixup): one weight
  ``lambda ~ U(0, tca_strength)`` per batch (official 0.1) and one random frame per clip, blended
  into every frame: ``x_t <- (1 - lambda) x_t + lambda x_r``. Validation: resize and centre
  crop, no jitter, no TCA.
- Encoders: the anchor and the negative go through the backbone and `TDLProjectionHead` (Linear
  to ``proj_dim``, L2-normalised), in two forward passes (so batch norm sees each set alone, as
  in the official code); the positive goes through a momentum copy of both, updated after every
  optimiser step by ``k <- m k + (1 - m) q`` and never trained, with shuffle-BN across
  processes under DDP (as `vssl.tasks.RSPNet`; on one process there is nothing to shuffle).
- Loss (`tdl_loss`, the official ``MemoryMoCo`` with ``--softmax``): logits
  ``[q.k, q.bank_1 .. q.bank_K, q.n] / tau`` and cross-entropy with the positive as the target:
  the anchor is pulled to its positive and pushed from the other videos' keys in the memory bank
  and from its own video's temporal negative. Gradients reach the anchor and the negative. After
  each training step the positives' keys are written into the bank (a FIFO queue, `KeyQueue`,
  oldest first). The official bank starts as uniform noise; vssl's starts as random unit vectors.

The official triplet margin loss is computed but not part of the loss there, and is left out.
The online probe sees the anchor's backbone features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.transforms import v2

from vssl.data.sampling import ClipSampler, ClipSpec, clip_indices
from vssl.data.transforms import AugmentParams, BatchAugment, ViewTransform
from vssl.heads import TDLProjectionHead
from vssl.losses.moco import KeyQueue
from vssl.tasks.base import StepOutput, VSSLTask
from vssl.tasks.momentum import MomentumEncoder

__all__ = [
    "TDL",
    "TDL_AUGMENT",
    "VIEWS",
    "OneAdjustmentJitter",
    "TemporalTripletSampler",
    "intra_video_mixup",
    "tdl_logits",
    "tdl_loss",
]

VIEWS = ("anchor", "positive", "negative")
"""The three clips of a TDL sample: the anchor, the positive (the anchor's frames, augmented on
their own) and the negative (another segment of the same video)."""

TDL_AUGMENT: dict[str, Any] = {
    "brightness": 0.5,
    "contrast": 0.5,
    "saturation": 0.25,
    "hue": 0.5,
    "jitter_p": 1.0,
}
"""The official code's colour jitter, ``ColorJitter(0.5, 0.5, 0.25, 0.5)`` on every clip."""


@dataclass
class TemporalTripletSampler(ClipSampler):
    """TDL's views of one video: anchor and positive on one segment, the negative on another.

    See the module docstring for the official rules this follows. ``draw_len`` None means
    ``2 * clip_len``.
    """

    clip_len: int = 16
    stride: int = 4
    min_gap: int = 2
    draw_len: int | None = None

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.stride < 1:
            raise ValueError(
                f"clip_len and stride must be >= 1, got {self.clip_len} and {self.stride}"
            )
        if self.min_gap < 0:
            raise ValueError(f"min_gap must be >= 0, got {self.min_gap}")
        if self.draw_len is not None and self.draw_len < 1:
            raise ValueError(f"draw_len must be >= 1 or None, got {self.draw_len}")

    def starts(self, num_frames: int, rng: np.random.Generator) -> tuple[int, int]:
        """The start frames of the anchor (and positive) and of the negative."""
        if num_frames < 1:
            raise ValueError("a video must have at least one frame")
        length = self.draw_len if self.draw_len is not None else 2 * self.clip_len
        last = max(num_frames - length * self.stride, 0)
        anchor, negative = (int(s) for s in rng.integers(0, last + 1, size=2))
        if abs(negative - anchor) < self.min_gap:
            negative = (negative + num_frames // 3) % num_frames
        return anchor, negative

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        anchor, negative = self.starts(num_frames, rng)
        clip = clip_indices(anchor, self.clip_len, self.stride, num_frames)
        return {
            "anchor": clip,
            "positive": clip.copy(),
            "negative": clip_indices(negative, self.clip_len, self.stride, num_frames),
        }


class OneAdjustmentJitter(BatchAugment):
    """`BatchAugment` whose colour jitter applies one adjustment per clip, drawn uniformly.

    What the official TDL ``ColorJitter`` does in effect (see the module docstring): the drawn
    adjustment keeps its random factor, the other three are set to the identity.
    """

    def sample_params(
        self,
        batch: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        params = super().sample_params(batch, device, generator)
        chosen = torch.randint(0, 4, (batch,), generator=generator, device=device)
        one = torch.ones_like(params.brightness)
        params.brightness = torch.where(chosen == 0, params.brightness, one)
        params.contrast = torch.where(chosen == 1, params.contrast, one)
        params.saturation = torch.where(chosen == 2, params.saturation, one)
        params.hue = torch.where(chosen == 3, params.hue, torch.zeros_like(params.hue))
        return params


def intra_video_mixup(
    video: Tensor, strength: float, generator: torch.Generator | None = None
) -> Tensor:
    """TCA: every frame of a clip blended with one random frame of the same clip.

    ``video`` is float ``(B, C, T, H, W)``; one weight ``lambda ~ U(0, strength)`` for the batch
    and one frame ``r`` per clip give ``x_t <- (1 - lambda) x_t + lambda x_r``.
    """
    b, _, t = video.shape[:3]
    lam = float(torch.rand((), generator=generator)) * strength
    frames = torch.randint(0, t, (b,), generator=generator).to(video.device)
    still = video[torch.arange(b, device=video.device), :, frames].unsqueeze(2)
    return (1.0 - lam) * video + lam * still


def tdl_logits(
    anchor: Tensor, positive: Tensor, negative: Tensor, bank: Tensor, tau: float
) -> Tensor:
    """Logits ``(B, 2 + K)``: ``[q.k, q.bank_1 .. q.bank_K, q.n] / tau`` (official order)."""
    pos = (anchor * positive).sum(dim=1, keepdim=True)
    neg = (anchor * negative).sum(dim=1, keepdim=True)
    return torch.cat([pos, anchor @ bank.T, neg], dim=1) / tau


def tdl_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, bank: Tensor, tau: float
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of `tdl_logits` with the positive (index 0) as the target.

    Returns the loss and the logits. ``bank`` must not be modified in place before the backward
    pass: pass a copy if it will be.
    """
    logits = tdl_logits(anchor, positive, negative, bank, tau)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target), logits


class TDL(VSSLTask):
    """Temporal discriminative learning: anchor vs. its positive, its temporal negative and a bank.

    Args:
        proj_dim: size of the embedding (`TDLProjectionHead`; official 128).
        queue_size: keys in the memory bank (official default 16384; its scripts use 5000 on
            UCF101, 3569 on HMDB51); at least the global batch size.
        key_momentum: m of the momentum update ``k <- m k + (1 - m) q`` (official 0.999).
        temperature: tau of the logits (official 0.07).
        min_gap, draw_len: the negative's rules (`TemporalTripletSampler`).
        rotation: the workers' random rotation range in degrees (official 10; 0 switches it off).
        tca_strength: the largest TCA blend weight (official 0.1; 0 switches TCA off).
        jitter_one_op: colour jitter as the official code applies it, one adjustment per clip.
        shuffle_bn: shuffle the positives across processes for batch norm under DDP.
        augment: `BatchAugment` settings (None: `TDL_AUGMENT`; ``{}``: normalisation only).
        optimizer, lr, reference_batch_size, weight_decay, momentum, lr_schedule, lr_milestones,
            lr_gamma: the official SGD (lr 0.003 as is, momentum 0.9, weight decay 1e-4, x0.1
            after epochs 120, 160 and 200 of 240).
        **kwargs: the other settings of `VSSLTask` (backbone, probe, ...).

    Logged: ``nce_acc`` (share of anchors whose positive has the largest logit) and
    ``temporal_acc`` (share of anchors closer to their positive than to their negative, also on
    the progress bar).
    """

    video_keys = VIEWS
    progress_bar_logs = ("temporal_acc",)

    def __init__(
        self,
        proj_dim: int = 128,
        queue_size: int = 16384,
        key_momentum: float = 0.999,
        temperature: float = 0.07,
        min_gap: int = 2,
        draw_len: int | None = None,
        rotation: float = 10.0,
        tca_strength: float = 0.1,
        jitter_one_op: bool = True,
        shuffle_bn: bool = True,
        augment: dict[str, Any] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.003,
        reference_batch_size: int | None = None,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        lr_schedule: str = "step",
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        **kwargs: Any,
    ):
        if augment is None:
            augment = dict(TDL_AUGMENT)  # rebound before the base saves the hyperparameters
        if lr_milestones is None:
            lr_milestones = [120, 160, 200]
        super().__init__(
            augment=augment,
            optimizer=optimizer,
            lr=lr,
            reference_batch_size=reference_batch_size,
            weight_decay=weight_decay,
            momentum=momentum,
            lr_schedule=lr_schedule,
            lr_milestones=lr_milestones,
            lr_gamma=lr_gamma,
            **kwargs,
        )
        if not 0.0 <= key_momentum <= 1.0:
            raise ValueError(f"key_momentum must be in [0, 1], got {key_momentum}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= tca_strength <= 1.0:
            raise ValueError(f"tca_strength must be in [0, 1], got {tca_strength}")
        if rotation < 0:
            raise ValueError(f"rotation must be >= 0 degrees, got {rotation}")
        TemporalTripletSampler(min_gap=min_gap, draw_len=draw_len)  # checks the two
        if jitter_one_op:
            self.augment = OneAdjustmentJitter(**augment)
        self.temperature, self.tca_strength = temperature, tca_strength
        self.min_gap, self.draw_len, self.rotation = min_gap, draw_len, rotation
        self.shuffle_bn = shuffle_bn
        self.head = TDLProjectionHead(self.backbone.out_dim, proj_dim)
        self.momentum_encoder = MomentumEncoder(self._online_encoder(), key_momentum)
        self.queue = KeyQueue(queue_size, proj_dim)

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """The temporal triplet, in every stage."""
        return TemporalTripletSampler(spec.clip_len, spec.stride, self.min_gap, self.draw_len)

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """Training: rotation, resize to 8/7 of the crop, random crop, drawn per clip; otherwise
        the same resize and a centre crop."""
        resize = round(spec.crop_size * 8 / 7)
        if stage != "train":
            return ViewTransform(
                v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(spec.crop_size)]),
                VIEWS,
            )
        if tuple(spec.scale) != ClipSpec().scale:
            rank_zero_warn(
                f"TDL crops a fixed {spec.crop_size} px window of frames resized to {resize} px; "
                f"the datamodule's crop_scale {tuple(spec.scale)} is not used"
            )
        steps: list[v2.Transform] = [v2.RandomRotation(self.rotation)] if self.rotation else []
        steps += [v2.Resize(resize, antialias=True), v2.RandomCrop(spec.crop_size)]
        return ViewTransform(v2.Compose(steps), VIEWS)

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Colour jitter per clip for the three views, then TCA on the anchor in training."""
        mix = self.training and self.tca_strength > 0 and batch["anchor"].dtype == torch.uint8
        batch = super().augment_batch(batch)
        if mix:
            batch["anchor"] = intra_video_mixup(batch["anchor"], self.tca_strength)
        return batch

    # ---------------------------------------------------------------- encoders
    def _online_encoder(self) -> nn.ModuleDict:
        return nn.ModuleDict({"backbone": self.backbone, "head": self.head})

    def embed(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled features and unit embeddings of clips by the online encoder."""
        features = self.backbone(video)
        return features, self.head(features)

    @torch.no_grad()
    def _encode_keys(self, video: Tensor) -> Tensor:
        encoder = self.momentum_encoder.module
        return encoder["head"](encoder["backbone"](video))

    @torch.no_grad()
    def key_embeddings(self, video: Tensor) -> Tensor:
        """Unit embeddings of the positives by the momentum encoder, in input order.

        In training under DDP with ``shuffle_bn``, each process encodes a random slice of the
        global batch of positives, so that its batch-norm statistics come from other samples
        than its anchors'.
        """
        if not self.shuffle_bn:
            return self._encode_keys(video)
        return self.encode_shuffled(video, self._encode_keys)

    @torch.no_grad()
    def update_momentum_encoder(self) -> None:
        """Moves every momentum-encoder parameter by ``1 - key_momentum`` towards the online one
        (buffers are copied, as `AveragedModel` does)."""
        self.momentum_encoder.update(self._online_encoder())

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Writes the keys of every process (in rank order) into the bank; runs on all."""
        if self.world_size() > 1:
            keys = self.all_gather(keys).flatten(0, 1)
        self.queue.enqueue(keys)

    def after_optimizer_step(self) -> None:
        """The momentum update of the key encoder, after every optimiser step."""
        self.update_momentum_encoder()

    # ---------------------------------------------------------------- loss
    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The TDL loss of the triplets against the bank; feeds the bank in training."""
        features, q = self.embed(batch["anchor"])
        _, n = self.embed(batch["negative"])
        k = self.key_embeddings(batch["positive"])
        bank = self.queue.keys.clone()  # enqueue below writes the buffer in place
        loss, logits = tdl_loss(q, k, n, bank, self.temperature)
        if stage == "train":
            self.enqueue(k)
        logs = {
            "nce_acc": (logits.argmax(dim=1) == 0).float().mean(),
            "temporal_acc": (logits[:, 0] > logits[:, -1]).float().mean(),
        }
        return StepOutput(loss, logs, features)
