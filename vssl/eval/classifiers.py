"""Classifiers on frozen features: the linear probe, the kNN classifier, few-label subsets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

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


FeatureNormName = Literal["l2", "center", "standardize"]
FEATURE_NORMS: tuple[str, ...] = get_args(FeatureNormName)


class FeatureNorm(nn.Module):
    """The transform a classifier applies to raw pooled features, fitted on training features.

    ``l2``: each feature divided by its L2 norm (uncentred, the kNN monitor's cosine of Wu et
    al. 2018). ``center``: the training mean subtracted, then L2 (centred cosine). ``standardize``:
    the training mean subtracted and each dimension divided by its training standard deviation
    (MAE's linear probe, a BatchNorm without affine parameters before the linear layer). The
    statistics are buffers, so test features get the training set's transform. Pooled features
    of one network often share a large common component (all-positive ReLU outputs, a ViT's
    near-constant token mean); uncentred L2 keeps it and leaves the classes a small angle apart.
    A dimension that is constant over the training set (standard deviation below 1e-6 of its
    mean's magnitude, or zero) is only centred, as scikit-learn's StandardScaler does.
    """

    def __init__(self, mode: FeatureNormName, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        if mode not in FEATURE_NORMS:
            raise ValueError(f"feature normalisation must be one of {FEATURE_NORMS}, got {mode!r}")
        self.mode = mode
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, mode: FeatureNormName, train_feats: Tensor) -> FeatureNorm:
        """The transform ``mode`` with the mean and standard deviation of ``train_feats`` (N, D)."""
        if mode not in FEATURE_NORMS:
            raise ValueError(f"feature normalisation must be one of {FEATURE_NORMS}, got {mode!r}")
        x = train_feats.float()
        mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False)
        constant = std <= 1e-6 * mean.abs()
        return cls(mode, mean, torch.where(constant, torch.ones_like(std), std))

    def forward(self, feats: Tensor) -> Tensor:
        x = feats.float()
        if self.mode == "l2":
            return F.normalize(x, dim=1)
        if self.mode == "center":
            return F.normalize(x - self.mean, dim=1)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, dim={self.mean.numel()}"


class LinearProbe(nn.Module):
    """A linear classifier on raw pooled features: `FeatureNorm` (fitted on the training
    features), then ``nn.Linear``."""

    def __init__(self, norm: FeatureNorm, linear: nn.Linear) -> None:
        super().__init__()
        self.norm = norm
        self.linear = linear

    @property
    def out_features(self) -> int:
        """The number of classes."""
        return self.linear.out_features

    def forward(self, feats: Tensor) -> Tensor:
        return self.linear(self.norm(feats))


@dataclass(frozen=True)
class ProbeFit:
    """How the probe's optimisation ended on its own training set (full batch, last step's
    weights): cross-entropy and top-1 accuracy."""

    loss: float
    accuracy: float


def train_linear_probe(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    steps: int = 300,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    normalize: FeatureNormName = "standardize",
) -> LinearProbe:
    """A linear classifier trained with cross-entropy on normalised frozen features.

    AdamW for ``steps`` steps with a cosine schedule, full batch when ``batch_size`` is None,
    else random mini-batches. ``normalize`` (see `FeatureNorm`) is fitted on ``feats`` and kept
    in the returned probe, so callers pass raw pooled features for training and for testing;
    ``standardize`` by default (MAE's protocol), which also reaches its final loss within the
    default 300 steps where ``l2``, whose inputs differ little, is still falling.
    """
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(
            f"expected features (N, D) and labels (N,), got {tuple(feats.shape)} "
            f"and {tuple(labels.shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    norm = FeatureNorm.fit(normalize, feats)
    x = norm(feats)
    y = labels.long()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        linear = nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    for _ in range(steps):
        if batch_size is None or batch_size >= x.shape[0]:
            xb, yb = x, y
        else:
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
            xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(linear(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return LinearProbe(norm, linear).eval()


@torch.no_grad()
def probe_fit(probe: LinearProbe, feats: Tensor, labels: Tensor) -> ProbeFit:
    """Cross-entropy and top-1 accuracy of ``probe`` on raw features (its training set, to
    check that the optimisation converged)."""
    logits = probe(feats)
    y = labels.long()
    accuracy = multiclass_accuracy(logits, y, probe.out_features, average="micro")
    return ProbeFit(loss=float(F.cross_entropy(logits, y)), accuracy=float(accuracy))


@torch.no_grad()
def probe_accuracy(probe: LinearProbe, feats: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of a probe from `train_linear_probe` on (raw) features."""
    return probe_fit(probe, feats, labels).accuracy


@torch.no_grad()
def knn_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    normalize: FeatureNormName = "l2",
) -> Tensor:
    """Class scores ``(N_test, C)`` of the weighted kNN classifier used as the usual SSL monitor.

    Each test item's ``k`` most cosine-similar training items vote for their class with weight
    ``exp(similarity / temperature)`` (Wu et al. 2018); ``k`` larger than the training set
    means all of it. The cosine is taken after ``normalize`` (see `FeatureNorm`), fitted on the
    training features: ``l2`` is the plain cosine, ``center`` the cosine after subtracting the
    training mean, ``standardize`` the cosine of standardised features.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(
            f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}"
        )
    norm = FeatureNorm.fit(normalize, train_feats)
    sim = F.normalize(norm(test_feats), dim=1) @ F.normalize(norm(train_feats), dim=1).T
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
    normalize: FeatureNormName = "l2",
) -> float:
    """Top-1 accuracy of `knn_scores` on a labelled test set."""
    scores = knn_scores(
        train_feats, train_labels, test_feats, num_classes, k, temperature, normalize
    )
    return float(multiclass_accuracy(scores, test_labels.long(), num_classes, average="micro"))
