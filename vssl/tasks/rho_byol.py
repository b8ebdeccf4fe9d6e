"""rho-BYOL: BYOL with rho clips of one video as the views.

Feichtenhofer et al., "A Large-Scale Study on Unsupervised Spatiotemporal Representation
Learning", CVPR 2021, https://arxiv.org/abs/2104.14558 (official code: facebookresearch/SlowFast,
``configs/contrastive_ssl/BYOL_SlowR50_8x8.yaml``); BYOL is Grill et al., "Bootstrap Your Own
Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020.

- Views: rho clips per video, uniform start times, each augmented on its own (`RhoTask`).
- Online network: backbone -> projector (Linear 4096 + BN + ReLU + Linear 256, the official
  two-layer MLP with BN) -> predictor (the same MLP, 256 -> 4096 -> 256); `ProjectionHead`.
- Target: a `MomentumEncoder` of backbone and projector, momentum 0.996 rising to 1 on a cosine
  over training (the official ``MOMENTUM_ANNEALING``), updated after every optimiser step.
- Loss (`vssl.losses.rho.rho_byol_loss`): every clip's prediction against the target projection
  of every other clip, 2 - 2 cos, averaged over the other clips and summed over the queries.
- BYOL has no negatives and so no shuffle-BN (the official code turns it off for BYOL); the
  paper syncs batch norm over 8 GPUs (``trainer.sync_batchnorm: true``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from vssl.heads import ProjectionHead
from vssl.losses.rho import rho_byol_loss
from vssl.tasks.base import StepOutput
from vssl.tasks.momentum import MomentumEncoder
from vssl.tasks.rho import RHO_AUGMENT, RhoTask

__all__ = ["RhoBYOL"]


class RhoBYOL(RhoTask):
    """rho-BYOL pretraining: each clip's online prediction regresses the others' targets.

    Args:
        rho: clips per video (official config 2; the paper's best Kinetics results use 4).
        hidden_dim, projection_dim: the projector MLP (paper: 4096, 256).
        predictor_hidden_dim: the predictor's hidden width (paper: 4096).
        target_momentum, final_target_momentum, momentum_schedule: the target's EMA, from
            0.996 to 1.0 on a cosine over training (`vssl.tasks.momentum.momentum_at`).
        optimizer, lr, reference_batch_size, weight_decay, momentum, lr_schedule, warmup_epochs:
            the official SGD (momentum 0.9, lr 0.6 per 64 videos of global batch for rho 2, 1.2
            for rho 4, scaled linearly, 35 warm-up epochs, cosine, weight decay 1e-6). The
            official runs' LARS, Nesterov momentum, batch norm without weight decay and
            schedule are `RhoTask`'s ``lars``, ``nesterov``, ``norm_weight_decay`` and
            ``slowfast_schedule`` (set in ``configs/rho_byol/slow_r50_k400.yaml``).
        augment: `BatchAugment` settings per clip (None: `vssl.tasks.rho.RHO_AUGMENT`).
        **kwargs: the other settings of `VSSLTask` (backbone_kwargs, online_probe, ...).

    Logged: ``cos``, the mean cosine between predictions and the other clips' targets.
    """

    def __init__(
        self,
        backbone: str = "slow_r50",
        rho: int = 2,
        hidden_dim: int = 4096,
        projection_dim: int = 256,
        predictor_hidden_dim: int = 4096,
        target_momentum: float = 0.996,
        final_target_momentum: float = 1.0,
        momentum_schedule: str = "cosine",
        optimizer: str = "sgd",
        lr: float = 0.6,
        reference_batch_size: int | None = 64,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        lr_schedule: str = "cosine",
        warmup_epochs: float = 35.0,
        augment: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
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
        self.projector = ProjectionHead(self.backbone.out_dim, hidden_dim, 1, projection_dim)
        self.predictor = ProjectionHead(projection_dim, predictor_hidden_dim, 1, projection_dim)
        self.momentum_encoder = MomentumEncoder(
            self.online_encoder(), target_momentum, final_target_momentum, momentum_schedule
        )

    @torch.no_grad()
    def target_projections(self, video: Tensor) -> Tensor:
        """The target network's projections ``(B, projection_dim)`` of clips ``(B, C, T, H, W)``."""
        target = self.momentum_encoder.module
        return target["projector"](target["backbone"](video))

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The all-pairs BYOL loss over the rho clips of each video."""
        clips = self.clips(batch)
        features, predictions, targets = [], [], []
        for i in range(self.rho):
            f = self.backbone(clips[:, i])
            features.append(f)
            predictions.append(self.predictor(self.projector(f)))
            targets.append(self.target_projections(clips[:, i]))
        p, z = torch.stack(predictions), torch.stack(targets)
        with torch.autocast(p.device.type, enabled=False):
            loss = rho_byol_loss(p.float(), z.float())
        with torch.no_grad():
            cos = torch.einsum("ibd,jbd->ijb", F.normalize(p, dim=-1), F.normalize(z, dim=-1))
            others = ~torch.eye(self.rho, dtype=torch.bool, device=cos.device)
            mean_cos = cos[others].float().mean()
        return StepOutput(loss, {"cos": mean_cos}, features[0])
