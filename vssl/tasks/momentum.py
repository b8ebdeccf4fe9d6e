"""Momentum (EMA) encoders: the key encoder of MoCo and RSPNet, the target of BYOL and V-JEPA.

A `MomentumEncoder` is a frozen copy of an online network that follows it after every optimiser
step, ``p_target <- m p_target + (1 - m) p_online``, with buffers (batch-norm statistics) copied.
The momentum ``m`` is constant (MoCo, "Momentum Contrast for Unsupervised Visual Representation
Learning"; RSPNet; TDL), rises from ``m0`` to ``m1`` on a cosine over training (BYOL, "Bootstrap
Your Own Latent"), or rises linearly (V-JEPA, "Revisiting Feature Prediction for Learning Visual
Representations from Video"). It is `torch.optim.swa_utils.AveragedModel` with that schedule, so
its state (``module.*`` and ``n_averaged``) is checkpointed with the task; under DDP every process
starts from the same broadcast copy and applies the same update to the same synchronised online
weights, so the targets' parameters stay identical. Buffers are not synchronised by DDP's
gradients: each process's batch norm updates its own running statistics in its forward pass, so
after the copy `MomentumEncoder.update` broadcasts the target's buffers from process 0 (what DDP's
``broadcast_buffers`` does for the online network before each forward, and what process 0
checkpoints); without it the targets' running statistics drift apart.
"""

from __future__ import annotations

import math

import torch
from torch import distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

SCHEDULES = ("constant", "cosine", "linear")


def momentum_at(
    progress: float, momentum: float, final_momentum: float | None, schedule: str
) -> float:
    """The momentum at ``progress`` (0 at the first step, 1 at the last) of training.

    ``cosine``: ``m1 - (m1 - m0) (cos(pi p) + 1) / 2`` (BYOL's schedule with ``m1 = 1``);
    ``linear``: ``m0 + (m1 - m0) p``; ``constant`` (or ``final_momentum=None``): ``m0``.
    """
    if schedule == "constant" or final_momentum is None:
        return momentum
    p = min(1.0, max(0.0, progress))
    if schedule == "cosine":
        return final_momentum - (final_momentum - momentum) * (math.cos(math.pi * p) + 1) / 2
    return momentum + (final_momentum - momentum) * p


class MomentumEncoder(AveragedModel):
    """A frozen exponential moving average of ``online`` (see the module docstring).

    Args:
        online: the network to follow; it is deep-copied, so build it fully first.
        momentum: ``m`` at the start of training (all of it for ``schedule="constant"``).
        final_momentum: ``m`` at the end of training for the ``cosine`` and ``linear`` schedules.
        schedule: ``constant``, ``cosine`` or ``linear``.
    """

    def __init__(
        self,
        online: nn.Module,
        momentum: float = 0.999,
        final_momentum: float | None = None,
        schedule: str = "constant",
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        for name, value in (("momentum", momentum), ("final_momentum", final_momentum)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if schedule != "constant" and final_momentum is None:
            raise ValueError(f"the {schedule} schedule needs final_momentum")
        super().__init__(online, multi_avg_fn=get_ema_multi_avg_fn(momentum))
        self.requires_grad_(False)
        # The copy already equals the online network; AveragedModel would copy again on its
        # first update instead of averaging, so count the copy as the first average.
        self.n_averaged.fill_(1)
        self.base_momentum, self.final_momentum, self.schedule = momentum, final_momentum, schedule
        self.momentum = momentum

    def momentum_at(self, progress: float) -> float:
        """The momentum this encoder uses at ``progress`` (0 to 1) of training."""
        return momentum_at(progress, self.base_momentum, self.final_momentum, self.schedule)

    @torch.no_grad()
    def update(self, online: nn.Module, progress: float = 0.0) -> None:
        """Moves every parameter by ``1 - m`` towards ``online`` and copies its buffers, with
        ``m`` the momentum at ``progress`` of training."""
        self.momentum = self.momentum_at(progress)
        self.multi_avg_fn = get_ema_multi_avg_fn(self.momentum)
        self.update_parameters(online)
        broadcast_buffers(self.module)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Gives every process process ``src``'s buffers of ``module`` (one broadcast per device and
    dtype); nothing outside a multi-process run."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for buffer in module.buffers():
        groups.setdefault((buffer.device, buffer.dtype), []).append(buffer)
    for buffers in groups.values():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src=src)
        offset = 0
        for b in buffers:
            b.detach().copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()
