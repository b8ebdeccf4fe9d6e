"""MoCo-style contrastive pieces: a FIFO queue of keys, InfoNCE against it, and the relative
speed margin ranking loss of RSPNet.

Conventions: embeddings are L2-normalised rows ``(B, D)``; the queue stores one key per row,
``(K, D)``, oldest overwritten first. Logits are similarities divided by a temperature ``tau``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class KeyQueue(nn.Module):
    """A ring buffer of ``size`` keys of dimension ``dim`` (the negatives of InfoNCE).

    Starts filled with random unit vectors, as in MoCo. ``enqueue`` writes a batch of keys at
    the pointer, wrapping around the end, and moves the pointer on. Both the keys and the
    pointer are buffers, so they are saved in checkpoints and moved to the device with the model.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and key dimension must be >= 1, got {size} and {dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        """Number of keys the queue holds."""
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Overwrites the oldest ``len(keys)`` entries with ``keys`` ``(N, D)``, in order."""
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(
                f"expected keys of shape (N, {self.keys.shape[1]}), got {tuple(keys.shape)}"
            )
        n = keys.shape[0]
        if n > self.size:
            raise ValueError(
                f"{n} keys in one step do not fit a queue of {self.size}: raise queue_size to at "
                "least the global batch size"
            )
        rows = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[rows] = keys.detach().to(self.keys.dtype)
        self.ptr.copy_((self.ptr + n) % self.size)


def info_nce_logits(query: Tensor, key: Tensor, queue: Tensor, tau: float) -> Tensor:
    """Logits ``(B, 1 + K)``: the positive ``query . key`` first, then ``query . queue`` rows."""
    positive = (query * key).sum(dim=1, keepdim=True)
    negative = query @ queue.T
    return torch.cat([positive, negative], dim=1) / tau


def info_nce(query: Tensor, key: Tensor, queue: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """InfoNCE of each query against its key (positive) and the queue (negatives).

    Returns the mean cross-entropy with the positive at index 0, and the logits (for accuracy).
    ``queue`` must not be modified in place before the backward pass: pass a copy if it will be.
    """
    logits = info_nce_logits(query, key, queue, tau)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target), logits


def relative_speed_loss(
    query: Tensor, same: Tensor, other: Tensor, tau: float, margin: float
) -> tuple[Tensor, Tensor, Tensor]:
    """RSPNet's relative speed perception loss: ``mean(max(0, margin - (s+ - s-)))``.

    ``s+ = query . same / tau`` (the key at the query's speed) and ``s- = query . other / tau``
    (the same key window at the other speed). Returns the loss, ``s+`` and ``s-`` ``(B,)``.
    """
    s_pos = (query * same).sum(dim=1) / tau
    s_neg = (query * other).sum(dim=1) / tau
    loss = F.margin_ranking_loss(s_pos, s_neg, torch.ones_like(s_pos), margin=margin)
    return loss, s_pos, s_neg
