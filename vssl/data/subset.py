"""Class-balanced, nested subsets of a training set: the pretraining-size axis of a benchmark.

"A Large-Scale Analysis on Contextual Self-Supervised Video Representation Learning" (Kumar
et al., 2025) pretrains on Kinetics-400 subsets of 10k, 30k, 50k and 100k videos. For such a
comparison to measure the effect of size alone, each subset must hold the classes in equal
shares and each smaller subset must lie inside the larger ones: :func:`balanced_subset` orders
the videos once for a seed (round by round, one video of every class per round, the classes
and the videos of a class in a seeded random order) and takes the first ``n``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vssl.errors import InvalidInputError


def subset_size(size: int | float, total: int) -> int:
    """The number of videos ``size`` asks for out of ``total``: an int is a count, a float in
    (0, 1] a fraction (rounded, at least 1)."""
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"subset must be a number of videos or a fraction, got {size!r}")
    if isinstance(size, (float, np.floating)):
        if not 0 < size <= 1:
            raise InvalidInputError(f"subset fraction must be in (0, 1], got {size}")
        return max(1, round(float(size) * total))
    if size < 1:
        raise InvalidInputError(f"subset must be at least 1 video, got {size}")
    if size > total:
        raise InvalidInputError(
            f"subset of {size} videos asked for, but the split has only {total}"
        )
    return int(size)


def balanced_order(labels: Sequence[int] | np.ndarray, seed: int = 0) -> np.ndarray:
    """Every index of ``labels`` once, in the order subsets take them: round ``r`` holds the
    ``r``-th video of each class that still has one, classes in a seeded order per round."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    order: list[int] = []
    for r in range(max((len(m) for m in members), default=0)):
        for c in rng.permutation(len(classes)):
            if r < len(members[c]):
                order.append(int(members[c][r]))
    return np.asarray(order, dtype=np.int64)


def balanced_subset(
    labels: Sequence[int] | np.ndarray, size: int | float, seed: int = 0
) -> np.ndarray:
    """Indices (ascending) of a class-balanced subset of ``size`` videos (a count or a fraction):
    class counts differ by at most one where classes have enough videos, and for one seed the
    subset of a smaller size is inside that of a larger one. Unlabeled videos (one label for
    all) give a plain seeded random subset."""
    labels = np.asarray(labels)
    n = subset_size(size, len(labels))
    return np.sort(balanced_order(labels, seed)[:n])


__all__ = ["balanced_order", "balanced_subset", "subset_size"]
