"""Playback rate prediction: classify the frame stride a clip was sampled at (and, as PRP's
full method, reconstruct the clip at twice its frame rate).

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
  (`vssl.heads.PlaybackRateHead`); cross-entropy. This is PRP's discriminative branch, and all
  of the task with ``reconstruction: false``. That is the default although PRP's main results
  use both branches: checkpoints saved before the branch existed hold no ``reconstruction``
  hyperparameter, and a default on would give them a decoder their weights lack; the task is
  also SpeedNet's and Pace Prediction's setting. Off, the keys and the loss are as before.
- Generative branch (``reconstruction: true``, PRP's full method, which its main results use;
  the PRP paper configs turn it on): a decoder (`vssl.heads.PlaybackRateDecoder`, the official
  ``SSCN_OneClip`` layers) maps the backbone's unpooled map (``forward_features``) to the clip
  at twice the input's frame rate, ``2 * clip_len`` frames: frame ``2k`` is input frame ``k``,
  frame ``2k + 1`` the frame half a step after it (``start + k * step + step / 2``; the official
  ``recon_rate 2``). For an odd step (rate 1 at stride 1) no frame lies half-way: the in-between
  frame is the mean of input frames ``k`` and ``k + 1``, the last one a copy of the last input
  frame, as the official code does for rate 1. The sampler asks only for these frames (the
  ``between`` view; ``T`` more frames for an even step, none for an odd one), the crop, flip
  and photometric draw are shared with the input clip, and the target is the clip in [0, 1]
  (the official frames; vssl's normalisation undone). Loss ``rate_weight * CE +
  reconstruction_weight * mean(w * (decoded - target)^2)`` with the official 0.1 and 1
  (``train_predict.py``: ``loss_recon + loss_class * 0.1``, the official ``Motion_MSEloss``).
  An even-step sample spans ``step / 2`` frames more than its input clip (the last in-between
  frame), and starts are drawn so that it fits.
- Motion attention ``w`` (`motion_attention`): the patch of side ``H // 4`` (28 at 112), on a
  grid of step ``side // 4`` (7), whose frames differ most (sum over consecutive frames of the
  patch's mean squared difference) centres a Gaussian (sigma ``side / 2``) that is min-max
  scaled to [0.8, 2.0] and weights every pixel of every frame, as the official
  ``patch_region.getPatchLossMask_stepsize`` and ``PredictDataset``. Departures: the official
  code computes one map per 16 source frames, from their frames 0, 5, 10 and 15, which needs
  frames the clip does not hold; vssl computes one map per clip from the consecutive frames of
  the input clip (no extra decoding). Ties go to the first patch (official: the last).
- Other departures from the official code: its classifier has one more Conv3d + BN + ReLU
  (``conv6_cls``) before the pooling, and its ``fc8`` gets 10x the lr; vssl keeps the linear
  head on the pooled features, so that checkpoints without the branch keep their keys.
  The decoder's ``decoder_scale`` is inferred from the backbone (its map at the registry's
  input size, on the meta device): ``(16, 16)`` for C3D and R3D-10 at 16 x 112, as official.
- Augmentation: vssl's per-clip random resized crop (and flip) in training, centre crops in
  validation and test, which keep the random rates and starts (seeded by the dataset).
- Optimisation defaults: VCOP's SGD (lr 0.01, momentum 0.9, weight decay 5e-4), the code base
  PRP starts from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from vssl import backbones
from vssl.data.sampling import ClipSampler, ClipSpec, clip_indices, clip_span
from vssl.data.transforms import ClipTransform, eval_clip_transform, train_clip_transform
from vssl.heads import PlaybackRateDecoder, PlaybackRateHead
from vssl.tasks.base import StepOutput, VSSLTask

#: Range of the motion-attention weights (the official min-max scaling of the Gaussian).
MOTION_WEIGHTS = (0.8, 2.0)


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
    """One clip at a random playback rate: ``{view: (clip_len,) indices, target: 0-d rate index}``.

    With ``reconstruction``, also ``between``: the ``clip_len`` frames half a step after each
    input frame (for an odd step, input frame ``k + 1`` and, last, the last input frame, to be
    averaged with input frame ``k``), and ``interpolate``, 1 where the step is odd.
    """

    clip_len: int = 16
    stride: int = 1
    rates: tuple[int, ...] = (1, 2, 4, 8)
    view: str = "video"
    target: str = "rate"
    reconstruction: bool = False

    def __post_init__(self) -> None:
        self.rates = check_rates(self.rates)
        clip_span(self.clip_len, self.stride)

    def span(self, step: int) -> int:
        """Source frames a sample at ``step`` covers (input clip, and its in-between frames)."""
        extra = step // 2 if self.reconstruction and step % 2 == 0 else 0
        return clip_span(self.clip_len, step) + extra

    def draw(self, num_frames: int, rng: np.random.Generator) -> tuple[int, int]:
        """The random part of a sample: the rate's index and the clip's start frame."""
        if num_frames < 1:
            raise ValueError("a video must have at least one frame")
        label = int(rng.integers(len(self.rates)))
        span = self.span(self.rates[label] * self.stride)
        start = int(rng.integers(0, num_frames - span + 1)) if num_frames >= span else 0
        return label, start

    def views(self, label: int, start: int, num_frames: int) -> dict[str, np.ndarray]:
        """The clip at rate ``rates[label]`` from ``start``, the label (and the in-between
        frames)."""
        step = self.rates[label] * self.stride
        out = {
            self.view: clip_indices(start, self.clip_len, step, num_frames),
            self.target: np.array(label, dtype=np.int64),
        }
        if self.reconstruction:
            odd = step % 2 == 1
            between = clip_indices(
                start + (step if odd else step // 2), self.clip_len, step, num_frames
            )
            if odd:
                between[-1] = out[self.view][-1]
            out["between"] = between
            out["interpolate"] = np.array(int(odd), dtype=np.int64)
        return out

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.views(*self.draw(num_frames, rng), num_frames)


class SharedCropTransform:
    """The worker-side transform of a reconstruction sample: one crop and flip for the input
    clip and its in-between frames (one call on their frames together)."""

    def __init__(self, transform: Callable[[Tensor], Tensor]):
        self.transform = transform
        self._frames = ClipTransform(transform)

    def __call__(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(sample)
        steps = sample["video"].shape[0]
        frames = self._frames(torch.cat([sample["video"], sample["between"]]))
        out["video"], out["between"] = frames[:steps], frames[steps:]
        return out


def motion_attention(clip: Tensor, low: float = 0.8, high: float = 2.0) -> Tensor:
    """PRP's motion-attention weights ``(B, 1, 1, H, W)`` of clips ``(B, C, T, H, W)``.

    The patch of side ``H // 4`` on a grid of step ``max(side // 4, 1)`` with the largest sum,
    over consecutive frames, of its mean squared difference (first one on ties) centres a
    Gaussian of sigma ``side / 2``, min-max scaled to ``[low, high]``.
    """
    b, _, t, h, w = clip.shape
    if t < 2 or min(h, w) < 4:
        raise ValueError(f"motion attention needs 2+ frames of 4+ pixels, got {tuple(clip.shape)}")
    side = min(h, w) // 4
    step = max(side // 4, 1)
    change = (clip[:, :, 1:] - clip[:, :, :-1]).pow(2).mean(dim=1).sum(dim=1)  # (B, H, W)
    scores = F.avg_pool2d(change.unsqueeze(1), side, stride=step).flatten(1)
    cols = (w - side) // step + 1
    best = scores.argmax(dim=1)
    cy = (best // cols).to(clip.dtype) * step + side / 2
    cx = (best % cols).to(clip.dtype) * step + side / 2
    ys = torch.arange(h, device=clip.device, dtype=clip.dtype)
    xs = torch.arange(w, device=clip.device, dtype=clip.dtype)
    sigma2 = (side / 2) ** 2
    gy = torch.exp(-0.5 * (ys[None] - cy[:, None]) ** 2 / sigma2)
    gx = torch.exp(-0.5 * (xs[None] - cx[:, None]) ** 2 / sigma2)
    g = gy[:, :, None] * gx[:, None, :]  # (B, H, W)
    lo = g.flatten(1).min(dim=1).values[:, None, None]
    hi = g.flatten(1).max(dim=1).values[:, None, None]
    g = low + (high - low) * (g - lo) / (hi - lo)
    return g[:, None, None]


def weighted_mse(output: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """``mean(weights * (output - target)^2)`` over every element (the official
    ``Motion_MSEloss``); ``weights`` broadcasts against the clips."""
    return (weights * (output - target).pow(2)).expand_as(output).mean()


class PlaybackRate(VSSLTask):
    """Classify the playback rate (frame stride) a clip was sampled at; with ``reconstruction``
    also decode the clip at twice its frame rate (PRP's full method).

    Args:
        rates: the rate set (PRP: 1, 2, 4, 8); the label is a rate's index in it. Each rate
            multiplies the datamodule's stride.
        reconstruction: add PRP's generative branch (default off: the discriminative task,
            whose checkpoints and loss are unchanged; the PRP paper configs turn it on).
        rate_weight, reconstruction_weight: the loss weights with the branch on (official:
            0.1 on the cross-entropy, 1 on the motion-weighted MSE); unused without it.
        decoder_scale: ``(temporal, spatial)`` upsampling of the decoder from the backbone's
            map to the ``2 * clip_len`` frames; None infers it from the backbone.
        optimizer, lr, weight_decay, momentum: SGD, lr 0.01, momentum 0.9, weight decay 5e-4.
        **kwargs: the other settings of `VSSLTask` (backbone, schedule, probe, augment, ...).

    Logged: ``rate_acc`` (top-1 of the rate); with the branch, ``rate_loss`` and
    ``reconstruction_loss``.
    """

    def __init__(
        self,
        rates: Sequence[int] = (1, 2, 4, 8),
        reconstruction: bool = False,
        rate_weight: float = 0.1,
        reconstruction_weight: float = 1.0,
        decoder_scale: Sequence[int] | None = None,
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
        self.reconstruction = bool(reconstruction)
        self.rate_weight, self.reconstruction_weight = (
            float(rate_weight),
            float(reconstruction_weight),
        )
        if self.reconstruction:
            scale = decoder_scale or self.infer_decoder_scale()
            self.decoder = PlaybackRateDecoder(self.backbone.out_dim, scale)

    def infer_decoder_scale(self) -> tuple[int, int]:
        """The decoder's ``(temporal, spatial)`` upsampling for this backbone: ``2 T / T'`` and
        ``H / H'`` of its map ``T' x H'`` at the registry's input size ``T x H`` (a copy built
        on the meta device, so nothing is computed)."""
        name = self.hparams.backbone
        frames, pixels = backbones.info(name).input_size
        with torch.device("meta"):
            probe = backbones.build(name, **(self.hparams.backbone_kwargs or {})).eval()
            shape = probe.forward_features(torch.empty(1, 3, frames, pixels, pixels)).shape
        t, h = int(shape[2]), int(shape[3])
        if (2 * frames) % t or pixels % h:
            raise ValueError(
                f"cannot infer decoder_scale for backbone {name!r}: its map is {t} x {h} for "
                f"{frames} x {pixels} clips; set model.init_args.decoder_scale"
            )
        return 2 * frames // t, pixels // h

    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """One clip at a random rate, in every stage (random, seeded by the dataset)."""
        return PlaybackRateSampler(
            spec.clip_len, spec.stride, self.rates, reconstruction=self.reconstruction
        )

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """The default crops; with the branch, one crop for a clip and its in-between frames."""
        if not self.reconstruction:
            return super().clip_transform(stage, spec)
        if stage == "train":
            return SharedCropTransform(
                train_clip_transform(spec.crop_size, scale=spec.scale, flip=spec.flip)
            )
        return SharedCropTransform(eval_clip_transform(spec.crop_size))

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """With the branch, one photometric draw for a clip and its in-between frames."""
        if not self.reconstruction or "between" not in batch or batch["video"].dtype != torch.uint8:
            return super().augment_batch(batch)
        steps = batch["video"].shape[1]
        frames = self.augment(torch.cat([batch["video"], batch["between"]], dim=1))
        batch["video"], batch["between"] = frames[:, :, :steps], frames[:, :, steps:]
        return batch

    def reconstruction_target(self, batch: dict[str, Tensor]) -> Tensor:
        """The clip at twice the input's frame rate ``(B, C, 2T, H, W)``, in [0, 1] pixels."""
        video, between = batch["video"], batch["between"]
        mean = batch["interpolate"].view(-1, 1, 1, 1, 1).bool()
        between = torch.where(mean, (video + between) / 2, between)
        target = torch.stack([video, between], dim=3).flatten(2, 3)
        return target * self.augment.std + self.augment.mean

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """Cross-entropy of the rate logits against the sampled rate's index; with the branch,
        weighted with the motion-weighted reconstruction MSE."""
        labels = batch["rate"]
        if not self.reconstruction:
            features = self.backbone(batch["video"])
            logits = self.head(features)
            loss = F.cross_entropy(logits, labels)
            acc = (logits.argmax(dim=1) == labels).float().mean()
            return StepOutput(loss, {"rate_acc": acc}, features)
        if "between" not in batch:
            raise ValueError(
                "PlaybackRate(reconstruction=True) needs the batch's 'between' frames, sampled "
                "by its clip_sampler (a VideoDataModule does this when it trains the task)"
            )
        fmap = self.backbone.forward_features(batch["video"])
        features = fmap.mean(dim=(2, 3, 4))
        logits = self.head(features)
        rate_loss = F.cross_entropy(logits, labels)
        target = self.reconstruction_target(batch)
        decoded = self.decoder(fmap)
        if decoded.shape != target.shape:
            raise ValueError(
                f"the decoder gives {tuple(decoded.shape)} for a target of "
                f"{tuple(target.shape)}: set model.init_args.decoder_scale (now "
                f"{self.decoder.scale}) to the backbone's (temporal, spatial) downsampling, "
                "temporal doubled"
            )
        weights = motion_attention(target[:, :, 0::2], *MOTION_WEIGHTS)
        rec_loss = weighted_mse(decoded, target, weights)
        loss = self.rate_weight * rate_loss + self.reconstruction_weight * rec_loss
        acc = (logits.argmax(dim=1) == labels).float().mean()
        logs = {
            "rate_acc": acc,
            "rate_loss": rate_loss.detach(),
            "reconstruction_loss": rec_loss.detach(),
        }
        return StepOutput(loss, logs, features)
