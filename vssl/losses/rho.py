"""The all-pairs losses of the rho-clip tasks (rho-BYOL, rho-MoCo).

Feichtenhofer et al., "A Large-Scale Study on Unsupervised Spatiotemporal Representation
Learning", CVPR 2021, https://arxiv.org/abs/2104.14558 (official code: facebookresearch/SlowFast,
``contrastive_forward``). Each of the rho clips of a video is in turn the query of the other
rho - 1: query ``i``'s loss is the mean of its terms against every other clip ``j``, and the
task's loss is the sum over the queries (the official code back-propagates each query's loss in
turn, so the gradient is that of the sum). For rho = 2 the BYOL loss is BYOL's symmetrised loss.

Inputs are stacks ``(rho, B, D)``: row ``b`` of ``x[i]`` is clip ``i`` of video ``b``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from vssl.losses.moco import info_nce


def _check_stacks(name: str, *stacks: Tensor) -> int:
    shape = stacks[0].shape
    if stacks[0].ndim != 3 or shape[0] < 2:
        raise ValueError(f"{name} expects stacks (rho, B, D) with rho >= 2, got {tuple(shape)}")
    for other in stacks[1:]:
        if other.shape != shape:
            raise ValueError(
                f"{name}: the stacks differ in shape, {tuple(shape)} and {tuple(other.shape)}"
            )
    return shape[0]


def rho_byol_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """``sum_i mean_{j != i} mean_b (2 - 2 cos(p_i^b, z_j^b))``: BYOL's normalised MSE between
    the online prediction of each clip and the target projection of every other clip.

    ``predictions`` are the predictor's outputs, ``targets`` the momentum encoder's projections
    (no gradient flows into them); both are L2-normalised here. The official code's
    ``-cos / T`` with ``T = 0.5`` is the same loss less a constant.
    """
    rho = _check_stacks("rho_byol_loss", predictions, targets)
    p = F.normalize(predictions, dim=-1)
    z = F.normalize(targets.detach(), dim=-1)
    cos = torch.einsum("ibd,jbd->ij", p, z) / p.shape[1]  # (rho, rho): mean over the batch
    others = ~torch.eye(rho, dtype=torch.bool, device=cos.device)
    return (2 - 2 * cos[others]).sum() / (rho - 1)


def rho_info_nce(
    queries: Tensor, keys: Tensor, queue: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """``sum_i mean_{j != i} InfoNCE(q_i, k_j; queue)``: MoCo's loss of each clip's query
    against the key of every other clip of its video, with the queue as negatives.

    Queries and keys must be L2-normalised (keys carry no gradient); ``queue`` ``(K, D)`` is
    not modified. Returns the loss and the share of (query, key) rows whose positive scores
    above every negative.
    """
    rho = _check_stacks("rho_info_nce", queries, keys)
    loss = queries.new_zeros(())
    hits = []
    for i in range(rho):
        terms = []
        for j in range(rho):
            if j != i:
                ce, logits = info_nce(queries[i], keys[j].detach(), queue, temperature)
                terms.append(ce)
                hits.append(logits.argmax(dim=1) == 0)
        loss = loss + torch.stack(terms).mean()
    return loss, torch.cat(hits).float().mean()
