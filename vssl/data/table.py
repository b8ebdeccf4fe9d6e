"""`VideoTable`: what a dataset knows about each of its videos, in a handful of numpy arrays.

DataLoader workers are forked from the training process and share its memory pages until a
page is written. Reading a Python object writes its reference count, so a list holding a few
objects per video (a path, its parts, a label, an index entry) is copied page by page into
every worker as shuffled epochs touch it: the known PyTorch problem of "DataLoader
num_workers > 0 causes CPU memory from parent process to be replicated in all child
processes" (pytorch/pytorch issue 13246). A numpy array keeps its values outside any Python
object, so reading an entry writes nothing and the pages stay shared. The paths are one buffer
of encoded bytes with an offset per video, the layout of Apache Arrow's string arrays.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vssl.data.index import VideoInfo
from vssl.data.layouts import VideoItem


def _column(name: str, values: Any, dtype: type, size: int) -> np.ndarray:
    """``values`` as a read-only 1-D array of ``dtype`` and length ``size``, or a clear error."""
    array = np.asarray(values)
    if array.ndim != 1 or len(array) != size:
        raise ValueError(
            f"VideoTable: {name} must be 1-D with one value per path ({size}), "
            f"got shape {array.shape}"
        )
    if size and dtype is np.int64 and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"VideoTable: {name} must be integers, got {array.dtype}")
    array = np.array(array, dtype=dtype)  # an own copy, so that the caller's cannot change it
    array.flags.writeable = False
    return array


class VideoTable:
    """Path, label, frame count, frame rate, width and height of every video of a dataset.

    Rows are in the order given. :meth:`path` and :meth:`label` give one row's values back
    exactly (paths as strings, stored in the file system's encoding, so that names that are not
    valid UTF-8 survive); the columns are read-only numpy arrays. Build one from a
    layout's items and their index entries with :meth:`from_items`.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        labels: Sequence[int] | np.ndarray,
        num_frames: Sequence[int] | np.ndarray,
        fps: Sequence[float] | np.ndarray,
        width: Sequence[int] | np.ndarray,
        height: Sequence[int] | np.ndarray,
    ) -> None:
        encoded = [os.fsencode(p) for p in paths]
        size = len(encoded)
        offsets = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, size), out=offsets[1:])
        offsets.flags.writeable = False
        self._offsets = offsets
        self._path_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)  # read-only
        self._labels = _column("labels", labels, np.int64, size)
        self._num_frames = _column("num_frames", num_frames, np.int64, size)
        self._fps = _column("fps", fps, np.float64, size)
        self._width = _column("width", width, np.int64, size)
        self._height = _column("height", height, np.int64, size)

    @classmethod
    def from_items(cls, items: Sequence[VideoItem], infos: Sequence[VideoInfo]) -> VideoTable:
        """The table of ``items`` (paths, labels) and their aligned index entries ``infos``
        (frame counts, rates, sizes); every entry must be usable (`VideoInfo.ok`)."""
        if len(items) != len(infos):
            raise ValueError(f"{len(items)} items but {len(infos)} index entries")
        bad = [info.path for info in infos if not info.ok]
        if bad:
            raise ValueError(f"unusable videos passed to VideoDataset: {bad[:5]}")
        return cls(
            [item.path for item in items],
            np.fromiter((item.label for item in items), np.int64, len(items)),
            np.fromiter((info.num_frames for info in infos), np.int64, len(infos)),
            np.fromiter((info.fps for info in infos), np.float64, len(infos)),
            np.fromiter((info.width for info in infos), np.int64, len(infos)),
            np.fromiter((info.height for info in infos), np.int64, len(infos)),
        )

    def __len__(self) -> int:
        return len(self._labels)

    def __repr__(self) -> str:
        return f"VideoTable({len(self)} videos, {self.nbytes / 1e6:.1f} MB)"

    def _row(self, index: int) -> int:
        i = operator.index(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"video {i} out of range for a table of {len(self)} videos")
        return i % len(self)

    def path(self, index: int) -> str:
        """The path of video ``index``, as ``str`` of the path given. A string, not a `Path`:
        `Path` interns every part of the name in the interpreter's table of interned strings,
        whose pages a worker would then copy."""
        i = self._row(index)
        raw = self._path_bytes[self._offsets[i] : self._offsets[i + 1]].tobytes()
        return os.fsdecode(raw)

    def label(self, index: int) -> int:
        """The 0-based class label of video ``index`` (-1: unlabeled)."""
        return int(self._labels[self._row(index)])

    def paths(self) -> list[str]:
        """Every path as a string, in order (Python objects: for reports, not for workers)."""
        return [self.path(i) for i in range(len(self))]

    def item(self, index: int) -> VideoItem:
        """Row ``index`` as the layout's `VideoItem`."""
        return VideoItem(Path(self.path(index)), self.label(index))

    def info(self, index: int) -> VideoInfo:
        """Row ``index`` as the index's `VideoInfo`."""
        i = self._row(index)
        return VideoInfo(
            self.path(i),
            int(self._num_frames[i]),
            float(self._fps[i]),
            int(self._width[i]),
            int(self._height[i]),
        )

    @property
    def labels(self) -> np.ndarray:
        """Class labels, int64 (-1: unlabeled)."""
        return self._labels

    @property
    def num_frames(self) -> np.ndarray:
        """Frames the reader can deliver per video, int64."""
        return self._num_frames

    @property
    def fps(self) -> np.ndarray:
        """Frame rates, float64."""
        return self._fps

    @property
    def width(self) -> np.ndarray:
        """Frame widths in pixels, int64."""
        return self._width

    @property
    def height(self) -> np.ndarray:
        """Frame heights in pixels, int64."""
        return self._height

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays."""
        arrays = (
            self._offsets,
            self._path_bytes,
            self._labels,
            self._num_frames,
            self._fps,
            self._width,
            self._height,
        )
        return sum(a.nbytes for a in arrays)
