import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from vssl.data import RandomClip, VideoDataset, VideoInfo, VideoItem
from vssl.data.table import VideoTable

PATHS = ["/data/k700/train/abseiling/a_000001_000011.mp4", "relative/b.avi", "c.webm"]


def _table(paths=PATHS, labels=(3, -1, 0)):
    n = len(paths)
    return VideoTable(paths, labels, np.arange(n) + 10, [25.0] * n, [320] * n, [240] * n)


def test_rows_come_back_exactly():
    table = _table()
    assert len(table) == 3
    assert [table.path(i) for i in range(3)] == PATHS
    assert table.paths() == PATHS
    assert [table.label(i) for i in range(3)] == [3, -1, 0]
    assert table.labels.dtype == np.int64 and table.labels.tolist() == [3, -1, 0]
    assert table.num_frames.tolist() == [10, 11, 12] and table.fps.dtype == np.float64
    assert table.path(-1) == "c.webm" and table.label(-3) == 3
    assert table.item(0) == VideoItem(Path(PATHS[0]), 3)
    assert table.info(1) == VideoInfo("relative/b.avi", 11, 25.0, 320, 240)


def test_unicode_and_undecodable_names_survive():
    odd = os.fsdecode(b"bad-\xff-byte.mp4")  # not UTF-8: kept as a surrogate escape
    paths = ["vidéos/Ärger/日本語 クリップ.mp4", "emoji 🎬.mkv", odd]
    table = _table(paths, (0, 1, 2))
    assert [table.path(i) for i in range(3)] == paths
    assert os.fsencode(table.path(2)) == b"bad-\xff-byte.mp4"
    # a row is found by its byte offsets, not its character count
    assert table.path(1) == "emoji 🎬.mkv" and table.label(2) == 2


def test_empty_table():
    table = VideoTable([], [], [], [], [], [])
    assert len(table) == 0 and table.paths() == [] and table.nbytes == 8  # one offset
    assert table.labels.shape == (0,) and table.labels.dtype == np.int64
    with pytest.raises(IndexError, match="video 0 out of range for a table of 0 videos"):
        table.path(0)
    with pytest.raises(ValueError, match="the dataset is empty"):
        VideoDataset.from_table(table, RandomClip(4))


def test_columns_are_read_only_copies():
    labels = np.array([1, 2, 3])
    table = _table(labels=labels)
    labels[0] = 99
    assert table.label(0) == 1
    with pytest.raises(ValueError, match="read-only"):
        table.labels[0] = 5
    with pytest.raises(IndexError, match="video 3 out of range for a table of 3 videos"):
        table.path(3)


def test_bad_columns_are_refused_by_name():
    with pytest.raises(ValueError, match=r"num_frames must be 1-D with one value per path \(3\)"):
        VideoTable(PATHS, [0, 1, 2], [5, 6], [25.0] * 3, [1] * 3, [1] * 3)
    with pytest.raises(ValueError, match="labels must be integers, got float64"):
        VideoTable(PATHS, [0.0, 1.5, 2.0], [5] * 3, [25.0] * 3, [1] * 3, [1] * 3)


def test_from_items_checks_alignment_and_usability():
    items = [VideoItem(Path("a.mp4"), 0), VideoItem(Path("b.mp4"), 1)]
    infos = [VideoInfo("a.mp4", 8, 30.0, 64, 48), VideoInfo("b.mp4", 9, 25.0, 32, 24)]
    table = VideoTable.from_items(items, infos)
    assert [table.item(i) for i in range(2)] == items
    assert [table.info(i) for i in range(2)] == infos
    with pytest.raises(ValueError, match="2 items but 1 index entries"):
        VideoTable.from_items(items, infos[:1])
    broken = [infos[0], VideoInfo("b.mp4", 0, 0.0, 0, 0, "no decodable video frames")]
    with pytest.raises(ValueError, match=r"unusable videos passed to VideoDataset: \['b.mp4'\]"):
        VideoTable.from_items(items, broken)


def test_dataset_reads_the_table_and_pickles_without_objects():
    items = [VideoItem(Path(p), i) for i, p in enumerate(PATHS)]
    infos = [VideoInfo(p, 20 + i, 25.0, 64, 48) for i, p in enumerate(PATHS)]
    ds = VideoDataset(items, infos, RandomClip(4))
    assert len(ds) == 3 and ds.path(1) == PATHS[1] and ds.label(2) == 2
    assert ds.labels.tolist() == [0, 1, 2] and ds.items == items and ds.infos == infos
    assert vars(ds).keys().isdisjoint({"items", "infos"})  # no per-video objects are kept
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.table.paths() == PATHS and copy.table.num_frames.tolist() == [20, 21, 22]
    with pytest.raises(ValueError, match="pass infos=None with it"):
        VideoDataset(ds.table, infos, RandomClip(4))
    with pytest.raises(ValueError, match="the index entries .infos. of the items are missing"):
        VideoDataset(items, None, RandomClip(4))
