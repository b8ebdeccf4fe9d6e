"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR and CVRL, over a global batch.

Each of the N samples of the global batch has two views. For an anchor view, the positive is the
other view of the same sample and the negatives are both views of every other sample: 2N - 2
negatives, 2N - 1 candidates. Projections are L2-normalised and compared by dot product / tau.

Normalisation (as in CVRL's official code, ``contrastive_loss`` of tensorflow/models
``official/projects/video_ssl``): the loss is ``loss_a + loss_b``, where ``loss_a`` is the mean
over the anchors of view 1 of their cross-entropy and ``loss_b`` the same for view 2. That is
twice the "mean over all 2N anchors" convention of many PyTorch ports; it sets the scale that
the paper's learning rate (0.32 per 1024 samples) goes with.

Under data parallelism, each process computes the rows of its own n = N / W anchors against the
projections gathered from all W processes (with gradients), so the loss a process returns is the
mean over its own anchors. DDP averages gradients over processes, so the objective optimised is
the mean of the per-process losses, which equals the loss of one process on the whole batch (the
tests check both the value and the gradients). The official TensorFlow code sums the replicas'
gradients instead (its optimiser does not divide by the number of TPU cores); vssl uses the mean
so that one process and W processes with the same global batch take the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F


class NTXentOutput(NamedTuple):
    """The loss and the share of anchors whose positive scores highest among all candidates."""

    loss: Tensor
    accuracy: Tensor


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.1,
    gather: Callable[[Tensor], Tensor] | None = None,
    rank: int = 0,
) -> NTXentOutput:
    """NT-Xent of this process's projections ``z1``, ``z2`` (``(n, D)``, row i = sample i's views).

    ``gather`` maps a local ``(n, D)`` tensor to the global ``(W * n, D)`` one, rank-major and
    differentiable (e.g. ``LightningModule.all_gather(z, sync_grads=True)`` flattened); None means
    one process. ``rank`` is this process's position in that order, which places the positives.
    Returns ``loss_a + loss_b`` (see the module docstring) and the contrastive top-1 accuracy.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"nt_xent needs two projection batches of the same shape (n, D), got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    z1_all = gather(z1) if gather is not None else z1
    z2_all = gather(z2) if gather is not None else z2
    n, total = z1.shape[0], z1_all.shape[0]
    if z2_all.shape[0] != total or total % n:
        raise ValueError(f"gather returned {total} and {z2_all.shape[0]} rows for {n} local rows")
    positives = rank * n + torch.arange(n, device=z1.device)
    self_mask = F.one_hot(positives, total).bool()

    def direction(anchor: Tensor, other_all: Tensor, same_all: Tensor) -> tuple[Tensor, Tensor]:
        cross = anchor @ other_all.T / temperature
        same = (anchor @ same_all.T / temperature).masked_fill(self_mask, float("-inf"))
        logits = torch.cat([cross, same], dim=1)
        hits = (logits.argmax(dim=1) == positives).float().mean()
        return F.cross_entropy(logits, positives), hits

    loss_a, acc_a = direction(z1, z2_all, z1_all)
    loss_b, acc_b = direction(z2, z1_all, z2_all)
    return NTXentOutput(loss_a + loss_b, ((acc_a + acc_b) / 2).detach())
