"""Classifiers on frozen features: the linear probe, the kNN classifier, few-label subsets."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_accuracy


def label_fraction_indices(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Indices of a per-class stratified subset holding ``fraction`` of each class's items.

    Each class keeps ``max(1, round(fraction * count))`` items drawn at random with ``seed``, so
    a class is never lost however small the fraction. Indices are returned in increasing order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        n = max(1, round(fraction * members.numel()))
        keep.append(members[torch.randperm(members.numel(), generator=gen)[:n]])
    return torch.sort(torch.cat(keep)).values


def train_linear_probe(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    steps: int = 300,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
) -> nn.Linear:
    """A linear classifier trained with cross-entropy on L2-normalised frozen features.

    AdamW for ``steps`` steps, full batch when ``batch_size`` is None, else random mini-batches.
    The features are normalised here, so callers pass raw pooled features.
    """
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(
            f"expected features (N, D) and labels (N,), got {tuple(feats.shape)} "
            f"and {tuple(labels.shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(feats.float(), dim=1)
    y = labels.long()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    for _ in range(steps):
        if batch_size is None or batch_size >= x.shape[0]:
            xb, yb = x, y
        else:
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
            xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(probe(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: nn.Linear, feats: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of a probe from `train_linear_probe` on (raw) features."""
    logits = probe(F.normalize(feats.float(), dim=1))
    return float(multiclass_accuracy(logits, labels.long(), probe.out_features, average="micro"))


@torch.no_grad()
def knn_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> Tensor:
    """Class scores ``(N_test, C)`` of the weighted kNN classifier used as the usual SSL monitor.

    Each test item's ``k`` most cosine-similar training items vote for their class with weight
    ``exp(similarity / temperature)`` (Wu et al. 2018); ``k`` larger than the training set
    means all of it.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(
            f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}"
        )
    sim = F.normalize(test_feats.float(), dim=1) @ F.normalize(train_feats.float(), dim=1).T
    top_sim, top_idx = sim.topk(min(k, sim.shape[1]), dim=1)
    weights = (top_sim / temperature).exp()
    votes = F.one_hot(train_labels.long()[top_idx], num_classes).float()
    return (votes * weights[..., None]).sum(dim=1)


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of `knn_scores` on a labelled test set."""
    scores = knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature)
    return float(multiclass_accuracy(scores, test_labels.long(), num_classes, average="micro"))
