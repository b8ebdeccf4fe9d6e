"""RSPNet: relative speed perception plus appearance-focused video instance discrimination.

Chen et al., "RSPNet: Relative Speed Perception for Unsupervised Video Representation Learning",
AAAI 2021, https://arxiv.org/abs/2011.07949. Follows the paper and its official code
(github.com/PeihaoChen/RSPNet, ``MoCoDiffLossTwoFc``); the key encoder and queue are MoCo's (He
et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
https://arxiv.org/abs/1911.05722):

- Each sample gives three clips (`SpeedPairSampler`): the query from window A and two keys from
  an independent window B, one at the query's speed and one at the other speed. Which speed of
  the pair plays "same" is drawn per sample with probability 1/2 (the official code splits each
  batch half and half instead).
- Augmentation is drawn per window: the query has its own random resized crop, flip and colour
  jitter; the two keys, two temporal samplings of window B, share one draw (`KeyPairTransform`
  in the workers, `RSPNet.augment_batch` on the device). That is what the official code does
  (it augments each 2n-frame window, then subsamples it), and it makes the two keys differ by
  their speed only; with independent draws the crop scale alone changes the apparent speed.
- One encoder, two projection heads (`vssl.heads.RSPNetProjectionHead`: linear to
  ``proj_dim``, L2-normalised): ``speed`` for the relative speed ranking, ``appearance`` for the
  video-instance contrast (A-VID).
- Keys come from a momentum copy of the backbone and both heads (as in the official code, where
  the key encoder outputs both projections), updated after every optimiser step by
  ``k <- m k + (1 - m) q`` (`vssl.tasks.momentum.MomentumEncoder`), never trained.
- Loss ``avid_weight * (CE_same + CE_other) + rsp_weight * L_rsp``: two InfoNCE terms of the
  appearance query against the same-speed key and against the other-speed key, both with the
  queue as negatives, and the margin ranking loss on the speed projections. The queue is fed
  with the other-speed appearance keys.

Batch norm under DDP: shuffle-BN across processes (MoCo's choice, ``shuffle_bn=True``). The key
clips of all processes are gathered, permuted with one permutation shared by all processes,
encoded in slices, and put back in order, so that a process's key batch-norm statistics come
from other samples than its query statistics. On one process there is nothing to shuffle with
(a permutation inside one batch leaves batch statistics unchanged), as in single-GPU MoCo.
Synchronised BN (``trainer.sync_batchnorm: true``, with ``shuffle_bn: false``) is the
alternative; with both, the synchronised statistics make the shuffle pointless.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vssl.data.sampling import ClipSampler, ClipSpec, clip_indices
from vssl.data.transforms import ClipTransform, eval_clip_transform, train_clip_transform
from vssl.heads import RSPNetProjectionHead
from vssl.losses.moco import KeyQueue, info_nce, relative_speed_loss
from vssl.tasks.base import StepOutput, VSSLTask
from vssl.tasks.momentum import MomentumEncoder

VIEWS = ("query", "key_same", "key_other")
"""The three clips of an RSPNet sample: query, key at the query's speed, key at the other speed."""

RSPNET_AUGMENT: dict[str, Any] = {
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.4,
    "jitter_p": 1.0,
    "grayscale_p": 0.2,
}
"""The paper's photometric augmentation, one draw per window (colour jitter always on, as in the
official code, and grayscale with p=0.2)."""


@dataclass(frozen=True)
class SpeedPair:
    """One draw of `SpeedPairSampler`: the two window starts and the speeds of the sample."""

    query_start: int
    key_start: int
    same_speed: int
    other_speed: int


@dataclass
class SpeedPairSampler(ClipSampler):
    """RSPNet's views of one video: two independent windows, clips at two speeds.

    A window is ``max(speeds) * clip_len * stride`` consecutive frames (2n for speeds 1 and 2)
    with a uniformly random start; the two windows are drawn independently. The clip at speed
    ``s`` of a window takes ``clip_len`` frames every ``s * stride`` frames from its start: at
    speed 1 the first n frames, at speed 2 every second frame of the whole 2n. Per sample two
    different speeds are drawn from ``speeds`` (uniformly, in random order): the first plays
    "same" (query from window A, ``key_same`` from window B), the second "other" (``key_other``
    from window B). Videos shorter than a window start at frame 0 and wrap around, as everywhere
    in `vssl.data.sampling`.
    """

    clip_len: int = 16
    stride: int = 1
    speeds: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        self.speeds = tuple(int(s) for s in self.speeds)
        if len(set(self.speeds)) < 2 or min(self.speeds) < 1:
            raise ValueError(
                f"speeds must hold at least two different positive integers, got {self.speeds}"
            )
        if len(set(self.speeds)) != len(self.speeds):
            raise ValueError(f"speeds must not repeat a speed, got {self.speeds}")
        if self.clip_len < 1 or self.stride < 1:
            raise ValueError(
                f"clip_len and stride must be >= 1, got {self.clip_len} and {self.stride}"
            )

    @property
    def window(self) -> int:
        """Frames of one window, ``max(speeds) * clip_len * stride`` (2n for speeds 1 and 2)."""
        return max(self.speeds) * self.clip_len * self.stride

    def draw(self, num_frames: int, rng: np.random.Generator) -> SpeedPair:
        """The random part of a sample: window starts and which speed plays "same"."""
        if num_frames < 1:
            raise ValueError("a video must have at least one frame")
        last = num_frames - self.window
        query_start, key_start = (
            (int(s) for s in rng.integers(0, last + 1, size=2)) if last >= 0 else (0, 0)
        )
        same, other = (int(s) for s in rng.choice(self.speeds, size=2, replace=False))
        return SpeedPair(query_start, key_start, same, other)

    def views(self, pair: SpeedPair, num_frames: int) -> dict[str, np.ndarray]:
        """The frame indices of the three clips of ``pair``."""

        def clip(start: int, speed: int) -> np.ndarray:
            return clip_indices(start, self.clip_len, speed * self.stride, num_frames)

        return {
            "query": clip(pair.query_start, pair.same_speed),
            "key_same": clip(pair.key_start, pair.same_speed),
            "key_other": clip(pair.key_start, pair.other_speed),
        }

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.views(self.draw(num_frames, rng), num_frames)


class KeyPairTransform:
    """The worker-side clip transform of an RSPNet sample, drawn once per window.

    The query gets its own random parameters; ``key_same`` and ``key_other`` are two temporal
    samplings of one window and get the same parameters (one call on their frames together), as
    in the official code, so that the two keys differ by their speed only.
    """

    def __init__(self, transform: Callable[[Tensor], Tensor]):
        self.transform = transform
        self._frames = ClipTransform(transform)

    def __call__(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(sample)
        out["query"] = self._frames(sample["query"])
        steps = sample["key_same"].shape[0]
        keys = self._frames(torch.cat([sample["key_same"], sample["key_other"]]))
        out["key_same"], out["key_other"] = keys[:steps], keys[steps:]
        return out


class RSPNet(VSSLTask):
    """Relative speed perception (RSP) and appearance-focused video instance discrimination (A-VID).

    Args:
        speeds: the speed set (official: 1 and 2); each sample uses two different ones.
        proj_dim: output size of the two projection heads.
        queue_size: keys in the A-VID queue (must be at least the global batch size).
        key_momentum: m of the momentum encoder update ``k <- m k + (1 - m) q``.
        temperature: tau of both the InfoNCE logits and the speed similarities.
        margin: margin of the ranking loss on ``s+ - s-`` (similarities divided by tau).
        avid_weight, rsp_weight: weights of ``CE_same + CE_other`` and of the ranking loss.
        shuffle_bn: shuffle the key clips across processes for batch norm under DDP.
        lr, reference_batch_size, ...: the paper's optimisation (SGD, lr 0.1 for a global
            batch of 64, scaled linearly, cosine to lr/1000, weight decay 1e-4).
        augment: device-side photometric augmentation per clip (default `RSPNET_AUGMENT`).
            The geometric part (random resized crop with the datamodule's ``crop_scale``; the
            paper's is 0.4..1, and flip where the data allows) runs per clip in the workers.
        **kwargs: the other shared settings of `VSSLTask` (backbone, schedule, probe, ...).

    Logged: ``loss_rsp``, ``loss_avid``, ``ce_same``, ``ce_other``, ``rsp_acc`` (share of samples
    with s+ > s-, also on the progress bar), ``nce_acc`` and ``nce_acc_other`` (InfoNCE top-1 of
    the two terms).
    """

    video_keys = VIEWS
    progress_bar_logs = ("rsp_acc",)

    def __init__(
        self,
        speeds: Sequence[int] = (1, 2),
        proj_dim: int = 128,
        queue_size: int = 16384,
        key_momentum: float = 0.999,
        temperature: float = 0.07,
        margin: float = 2.0,
        avid_weight: float = 1.0,
        rsp_weight: float = 1.0,
        shuffle_bn: bool = True,
        lr: float = 0.1,
        reference_batch_size: int | None = 64,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 1e-3,
        augment: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if augment is None:
            augment = dict(RSPNET_AUGMENT)  # rebound before the base saves the hyperparameters
        super().__init__(
            lr=lr,
            reference_batch_size=reference_batch_size,
            weight_decay=weight_decay,
            momentum=momentum,
            lr_schedule=lr_schedule,
            min_lr_ratio=min_lr_ratio,
            augment=augment,
            **kwargs,
        )
        if not 0.0 <= key_momentum <= 1.0:
            raise ValueError(f"key_momentum must be in [0, 1], got {key_momentum}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.speeds = SpeedPairSampler(speeds=tuple(speeds)).speeds
        self.temperature, self.margin = temperature, margin
        self.avid_weight, self.rsp_weight = avid_weight, rsp_weight
        self.shuffle_bn = shuffle_bn
        self.appearance_head = RSPNetProjectionHead(self.backbone.out_dim, proj_dim)
        self.speed_head = RSPNetProjectionHead(self.backbone.out_dim, proj_dim)
        self.momentum_encoder = MomentumEncoder(self._online_encoder(), key_momentum)
        self.queue = KeyQueue(queue_size, proj_dim)

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """Query and two keys at two speeds from two random windows (every stage)."""
        return SpeedPairSampler(spec.clip_len, spec.stride, self.speeds)

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """Random resized crop (and flip) in training, centre crop otherwise: one draw for the
        query, one shared by the two key clips (`KeyPairTransform`)."""
        if stage == "train":
            return KeyPairTransform(
                train_clip_transform(spec.crop_size, scale=spec.scale, flip=spec.flip)
            )
        return KeyPairTransform(eval_clip_transform(spec.crop_size))

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Photometric augmentation: one draw per query clip, one per pair of key clips."""
        if batch["query"].dtype != torch.uint8:
            return batch
        batch["query"] = self.augment(batch["query"])
        steps = batch["key_same"].shape[1]
        keys = self.augment(torch.cat([batch["key_same"], batch["key_other"]], dim=1))
        batch["key_same"], batch["key_other"] = keys[:, :, :steps], keys[:, :, steps:]
        return batch

    # ---------------------------------------------------------------- encoders
    def _online_encoder(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "backbone": self.backbone,
                "appearance": self.appearance_head,
                "speed": self.speed_head,
            }
        )

    def query_projections(self, video: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pooled features and the normalised appearance and speed projections of query clips."""
        features = self.backbone(video)
        return features, self.appearance_head(features), self.speed_head(features)

    @torch.no_grad()
    def _encode_keys(self, video: Tensor) -> tuple[Tensor, Tensor]:
        encoder = self.momentum_encoder.module
        features = encoder["backbone"](video)
        return encoder["appearance"](features), encoder["speed"](features)

    @torch.no_grad()
    def key_projections(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised appearance and speed projections of key clips by the momentum encoder.

        In training under DDP with ``shuffle_bn``, the batch norm of each process sees a random
        slice of the global key batch (see the module docstring); the result is in input order.
        """
        if not self.shuffle_bn:
            return self._encode_keys(video)
        return self.encode_shuffled(video, self._encode_keys)

    @torch.no_grad()
    def update_momentum_encoder(self) -> None:
        """Moves every momentum-encoder parameter by ``1 - key_momentum`` towards the online one.

        Buffers (batch-norm running statistics) are copied from the online encoder, as
        `AveragedModel` does; in training the key encoder normalises with batch statistics.
        """
        self.momentum_encoder.update(self._online_encoder())

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Adds the keys of every process (in rank order) to the queue; runs on all processes."""
        if self.world_size() > 1:
            keys = self.all_gather(keys).flatten(0, 1)
        self.queue.enqueue(keys)

    def after_optimizer_step(self) -> None:
        """The momentum update of the key encoder, after every optimiser step."""
        self.update_momentum_encoder()

    # ---------------------------------------------------------------- loss
    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """Both A-VID InfoNCE terms and the speed ranking loss; feeds the queue in training."""
        features, q_appearance, q_speed = self.query_projections(batch["query"])
        k_appearance, k_speed = self.key_projections(batch["key_same"])
        o_appearance, o_speed = self.key_projections(batch["key_other"])
        negatives = self.queue.keys.clone()  # enqueue below writes the buffer in place
        ce_same, logits_same = info_nce(q_appearance, k_appearance, negatives, self.temperature)
        ce_other, logits_other = info_nce(q_appearance, o_appearance, negatives, self.temperature)
        rsp, s_pos, s_neg = relative_speed_loss(
            q_speed, k_speed, o_speed, self.temperature, self.margin
        )
        loss = self.avid_weight * (ce_same + ce_other) + self.rsp_weight * rsp
        if stage == "train":
            self.enqueue(o_appearance)
        logs = {
            "loss_rsp": rsp.detach(),
            "loss_avid": (ce_same + ce_other).detach(),
            "ce_same": ce_same.detach(),
            "ce_other": ce_other.detach(),
            "rsp_acc": (s_pos > s_neg).float().mean(),
            "nce_acc": (logits_same.argmax(dim=1) == 0).float().mean(),
            "nce_acc_other": (logits_other.argmax(dim=1) == 0).float().mean(),
        }
        return StepOutput(loss, logs, features)
