"""Video retrieval recall at k: every query ranks the whole gallery by cosine similarity."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def _check(feats: Tensor, labels: Tensor, what: str) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{what} features must be (N, D), got shape {tuple(feats.shape)}")
    if labels.ndim != 1 or labels.shape[0] != feats.shape[0]:
        raise ValueError(
            f"{what} labels must be (N,) with N={feats.shape[0]}, got shape {tuple(labels.shape)}"
        )
    if feats.shape[0] == 0:
        raise ValueError(f"{what} set is empty")


def retrieval_recall(
    query_feats: Tensor,
    query_labels: Tensor,
    gallery_feats: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = (1, 5, 10, 20, 50),
) -> dict[int, float]:
    """Fraction of queries with at least one gallery item of their class among their k nearest.

    Similarity is the cosine of the feature vectors. A ``k`` larger than the gallery means the
    whole gallery. Ties: gallery items with equal similarity are ranked in gallery order (the
    lower index first), so results are deterministic and do not depend on the sort backend.
    Returns ``{k: recall}`` with recalls in ``[0, 1]``.
    """
    _check(query_feats, query_labels, "query")
    _check(gallery_feats, gallery_labels, "gallery")
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(
            f"query features have {query_feats.shape[1]} dims but gallery features have "
            f"{gallery_feats.shape[1]}"
        )
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    sim = F.normalize(query_feats.double(), dim=1) @ F.normalize(gallery_feats.double(), dim=1).T
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices
    hits = gallery_labels[order] == query_labels[:, None]
    # first_hit[i]: rank (1-based) of the first gallery item of query i's class; inf if none.
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64).expand_as(hits)
    first_hit = torch.where(hits, ranks, torch.full_like(ranks, float("inf"))).min(dim=1).values
    return {int(k): float((first_hit <= int(k)).double().mean()) for k in ks}
