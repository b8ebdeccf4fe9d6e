"""rho-MoCo: MoCo with rho clips of one video as the positives.

Feichtenhofer et al., "A Large-Scale Study on Unsupervised Spatiotemporal Representation
Learning", CVPR 2021, https://arxiv.org/abs/2104.14558 (official code: facebookresearch/SlowFast,
``configs/contrastive_ssl/MoCo_SlowR50_8x8.yaml``); MoCo v2 is Chen et al., "Improved Baselines
with Momentum Contrastive Learning", 2020, on He et al., "Momentum Contrast for Unsupervised
Visual Representation Learning", CVPR 2020.

- Views: rho clips per video, uniform start times, each augmented on its own (`RhoTask`).
- Query encoder: backbone -> MLP projection without batch norm (`MoCoProjectionHead`: two hidden
  layers of 2048, then 128; the official ``NUM_MLP_LAYERS: 3``), L2-normalised.
- Key encoder: a `MomentumEncoder` of backbone and projection. The official config starts its
  momentum at 0.994 and raises it to 1 on a cosine (``MOMENTUM_ANNEALING: True``); MoCo v2's
  constant 0.999 is ``momentum_schedule: constant, key_momentum: 0.999``.
- Loss (`vssl.losses.rho.rho_info_nce`): InfoNCE (tau 0.1) of every clip's query against the key
  of every other clip of its video, negatives from a queue of 65536 keys; averaged over the other
  clips, summed over the queries. All rho keys of a step join the queue (the official
  ``MOCO_MULTI_VIEW_QUEUE: True``), gathered from every process.
- Shuffling BN (`vssl.losses.moco.encode_shuffled`), so that batch statistics cannot tell a
  query's positive from the queue: under DDP the key clips of all processes are shuffled across
  them (MoCo's code and the official config); on one process the query and key encoders
  normalise over ``num_splits`` sub-batches, the queries in order and the keys shuffled (the
  one-GPU ``SplitBatchNorm`` of MoCo's CIFAR-10 demo). Without it, one process's query and key
  batches hold the same videos.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.nn import functional as F

from vssl.heads import MoCoProjectionHead
from vssl.losses.moco import KeyQueue, encode_shuffled, split_encode, splits_for
from vssl.losses.rho import rho_info_nce
from vssl.tasks.base import StepOutput
from vssl.tasks.momentum import MomentumEncoder
from vssl.tasks.rho import RHO_AUGMENT, RhoTask

__all__ = ["RhoMoCo"]


class RhoMoCo(RhoTask):
    """rho-MoCo pretraining: InfoNCE between the clips of a video against a queue of keys.

    Args:
        rho: clips per video (official config 4).
        hidden_dim, hidden_layers, projection_dim: the projection MLP (paper: 2048, 2, 128).
        queue_size: keys in the queue (paper: 65536; at least the global batch times rho).
        temperature: tau of InfoNCE (paper: 0.1).
        key_momentum, final_key_momentum, momentum_schedule: the key encoder's EMA, from 0.994
            to 1.0 on a cosine over training (`vssl.tasks.momentum.momentum_at`).
        shuffle_bn: shuffling BN in training: the key clips shuffled across processes under
            DDP, or the ``num_splits`` sub-batches on one process (False: plain batch norm, for
            ``trainer.sync_batchnorm``).
        num_splits: sub-batches of batch norm on one process (each of at least 2 clips: a
            smaller batch is split into as many as fit); not used under DDP.
        optimizer, lr, reference_batch_size, weight_decay, momentum, lr_schedule, warmup_epochs:
            the official SGD (momentum 0.9, lr 0.1 per 64 videos of global batch, scaled
            linearly, 35 warm-up epochs, cosine, weight decay 1e-4). Its Nesterov momentum,
            batch norm without weight decay and schedule are `RhoTask`'s ``nesterov``,
            ``norm_weight_decay`` and ``slowfast_schedule`` (set in the paper config).
        augment: `BatchAugment` settings per clip (None: `vssl.tasks.rho.RHO_AUGMENT`).
        **kwargs: the other settings of `VSSLTask` (backbone_kwargs, online_probe, ...).

    Logged: ``nce_acc``, the share of (query, key) pairs whose positive scores above the queue.
    """

    progress_bar_logs = ("nce_acc",)

    def __init__(
        self,
        backbone: str = "slow_r50",
        rho: int = 2,
        hidden_dim: int = 2048,
        hidden_layers: int = 2,
        projection_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.1,
        key_momentum: float = 0.994,
        final_key_momentum: float = 1.0,
        momentum_schedule: str = "cosine",
        shuffle_bn: bool = True,
        num_splits: int = 2,
        optimizer: str = "sgd",
        lr: float = 0.1,
        reference_batch_size: int | None = 64,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        lr_schedule: str = "cosine",
        warmup_epochs: float = 35.0,
        augment: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if augment is None:
            augment = dict(RHO_AUGMENT)  # rebound before the base saves the hyperparameters
        super().__init__(
            rho=rho,
            augment=augment,
            backbone=backbone,
            optimizer=optimizer,
            lr=lr,
            reference_batch_size=reference_batch_size,
            weight_decay=weight_decay,
            momentum=momentum,
            lr_schedule=lr_schedule,
            warmup_epochs=warmup_epochs,
            **kwargs,
        )
        splits_for(2, num_splits)  # checks num_splits
        self.temperature, self.shuffle_bn, self.num_splits = temperature, shuffle_bn, num_splits
        self.projector = MoCoProjectionHead(
            self.backbone.out_dim, hidden_dim, hidden_layers, projection_dim
        )
        self.momentum_encoder = MomentumEncoder(
            self.online_encoder(), key_momentum, final_key_momentum, momentum_schedule
        )
        self.queue = KeyQueue(queue_size, projection_dim)

    # ---------------------------------------------------------------- encoders
    def bn_splits(self) -> int:
        """Sub-batches of batch norm now: ``num_splits`` in training on one process with
        ``shuffle_bn``, else 1."""
        if self.shuffle_bn and self.training and self.world_size() == 1:
            return self.num_splits
        return 1

    def _encode_queries(self, video: Tensor) -> tuple[Tensor, Tensor]:
        features = self.backbone(video)
        return features, F.normalize(self.projector(features), dim=1)

    def query_projections(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone features and unit query projections of clips ``(B, C, T, H, W)``, in
        `bn_splits` consecutive sub-batches."""
        splits = self.bn_splits()
        if 1 < splits and splits_for(video.shape[0], splits) < splits:
            rank_zero_warn(
                f"RhoMoCo: {video.shape[0]} clips per batch make fewer than num_splits={splits} "
                "sub-batches of 2 for shuffling BN; using as many as fit"
            )
        return split_encode(self._encode_queries, video, splits)

    @torch.no_grad()
    def _encode_keys(self, video: Tensor) -> Tensor:
        encoder = self.momentum_encoder.module
        return F.normalize(encoder["projector"](encoder["backbone"](video)), dim=1)

    @torch.no_grad()
    def key_projections(self, video: Tensor) -> Tensor:
        """Unit key projections by the momentum encoder, in input order; in training with
        ``shuffle_bn``, shuffled across processes under DDP, else shuffled and encoded in
        ``num_splits`` sub-batches (`vssl.losses.moco.encode_shuffled`)."""
        if not (self.shuffle_bn and self.training):
            return self._encode_keys(video)
        return encode_shuffled(self._encode_keys, video, self.num_splits)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Adds the keys of every process (in rank order) to the queue; runs on all processes."""
        if self.world_size() > 1:
            keys = self.all_gather(keys).flatten(0, 1)
        self.queue.enqueue(keys)

    # ---------------------------------------------------------------- loss
    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The all-pairs InfoNCE over the rho clips of each video; feeds the queue in training."""
        clips = self.clips(batch)
        features, queries, keys = [], [], []
        for i in range(self.rho):
            f, q = self.query_projections(clips[:, i])
            features.append(f)
            queries.append(q)
            keys.append(self.key_projections(clips[:, i]))
        negatives = self.queue.keys.clone()  # enqueue below writes the buffer in place
        q, k = torch.stack(queries), torch.stack(keys)
        with torch.autocast(q.device.type, enabled=False):
            loss, accuracy = rho_info_nce(q.float(), k.float(), negatives.float(), self.temperature)
        if stage == "train":
            self.enqueue(k.flatten(0, 1))  # clip 0 of every video, then clip 1, ...
        return StepOutput(loss, {"nce_acc": accuracy}, features[0])
