"""Class-balanced nested training subsets, and VideoDataModule(subset=...)."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

from vssl.data.datamodule import VideoDataModule
from vssl.data.subset import balanced_order, balanced_subset, subset_size
from vssl.errors import InvalidInputError

# 4 classes of unequal size: 10, 6, 3 and 1 videos, interleaved
LABELS = np.array([0] * 10 + [1] * 6 + [2] * 3 + [3] * 1)[np.random.default_rng(5).permutation(20)]


def counts(indices: np.ndarray) -> dict[int, int]:
    return dict(Counter(LABELS[indices].tolist()))


def test_subsets_are_balanced_while_classes_last():
    assert counts(balanced_subset(LABELS, 4)) == {0: 1, 1: 1, 2: 1, 3: 1}
    # round 0 gives 4, round 1 the 3 classes that have a second video, round 2 starts
    eight = counts(balanced_subset(LABELS, 8))
    assert eight[3] == 1 and sorted(eight[c] for c in (0, 1, 2)) == [2, 2, 3]
    # after class 3 (1 video) and class 2 (3 videos) run out, the rest share equally
    assert counts(balanced_subset(LABELS, 14)) == {0: 5, 1: 5, 2: 3, 3: 1}
    assert counts(balanced_subset(LABELS, 20)) == {0: 10, 1: 6, 2: 3, 3: 1}
    for n in range(1, 21):
        got = counts(balanced_subset(LABELS, n))
        full = [c for c in range(4) if got.get(c, 0) < Counter(LABELS.tolist())[c]]
        shares = [got.get(c, 0) for c in full]
        assert not shares or max(shares) - min(shares) <= 1, (n, got)


def test_subsets_are_nested_and_deterministic_per_seed():
    for seed in (0, 1):
        previous: set[int] = set()
        for n in range(1, 21):
            chosen = set(balanced_subset(LABELS, n, seed).tolist())
            assert previous <= chosen and len(chosen) == n
            previous = chosen
    assert np.array_equal(balanced_order(LABELS, 3), balanced_order(LABELS, 3))
    assert not np.array_equal(balanced_subset(LABELS, 8, 0), balanced_subset(LABELS, 8, 1))
    assert sorted(balanced_order(LABELS, 0).tolist()) == list(range(20))


def test_fractions_counts_and_bad_sizes():
    assert subset_size(0.25, 20) == 5 and subset_size(1.0, 20) == 20 and subset_size(0.01, 20) == 1
    assert subset_size(7, 20) == 7
    assert np.array_equal(balanced_subset(LABELS, 1.0), np.arange(20))
    for bad, message in [
        (0, "at least 1"),
        (21, "only 20"),
        (1.5, r"\(0, 1\]"),
        (0.0, r"\(0, 1\]"),
        ("10", "number of videos"),
        (True, "number of videos"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            subset_size(bad, 20)


def test_unlabeled_videos_give_a_random_nested_subset():
    labels = np.full(12, -1)
    small, large = balanced_subset(labels, 3, 0), balanced_subset(labels, 6, 0)
    assert len(small) == 3 and set(small) <= set(large)


def test_datamodule_trains_on_the_subset_and_says_so(tiny_synthetic, tmp_path, caplog):
    def train_videos(**kwargs) -> list[str]:
        dm = VideoDataModule(
            root=str(tiny_synthetic),
            cache_dir=str(tmp_path),
            num_workers=0,
            clip_len=4,
            crop_size=16,
            decode_size=32,
            **kwargs,
        )
        dataset = dm.build_dataset("train")
        return [dataset.table.path(i) for i in range(len(dataset))]

    everything = train_videos()
    with caplog.at_level(logging.INFO, logger="vssl"):
        half = train_videos(subset=0.5)
    quarter = train_videos(subset=3)
    assert len(everything) == 12 and len(half) == 6 and len(quarter) == 3
    assert set(quarter) <= set(half) <= set(everything)
    classes = Counter(path.split("/")[-2] for path in half)
    assert sorted(classes.values()) == [1, 1, 2, 2]
    assert "class-balanced subset of 6 of 12 usable videos" in caplog.text
    assert train_videos(subset=0.5, subset_seed=1) != half
