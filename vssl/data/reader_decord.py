"""The decord backend of :class:`~vssl.data.reader.VideoReader` (CPU).

decord (the package of "Decord: an efficient video reader" of the DMLC group, as used by
VideoMAE and many action recognition repositories) builds a frame index from the packets when
it opens a file and numbers frames in presentation order. It ships its own FFmpeg. Frames come
back as uint8 RGB ``(T, 3, H, W)``; a different output size is made with torchvision's
antialiased resize, as in the torchcodec backend. ``decode_timeout`` is checked when a call
returns (decord cannot be interrupted).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vssl.data.reader import VideoDecodeError, VideoReader, _check_file, output_size
from vssl.data.reader_torchcodec import _resize

INSTALL_HINT = (
    "the 'decord' video backend needs the decord package: `pip install decord` (or "
    "`pip install vssl[decode]`); or use backend='pyav'"
)


class DecordReader(VideoReader):
    """Random access to the frames of one video with decord; ``threads`` is its decoder's."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 1,
        num_frames: int | None = None,
        decode_timeout: float | None = None,
        device: str = "cpu",
    ) -> None:
        try:
            import decord
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        self._setup(path, threads, decode_timeout)
        self._reader = None
        if device != "cpu":
            raise ValueError(
                f"{path}: the 'decord' backend decodes on the CPU here, got device={device!r} "
                "(backend='torchcodec' decodes on 'cuda')"
            )
        _check_file(self.path)
        self._start_clock()
        try:
            self._reader = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=threads)
        except Exception as exc:  # decord raises its own DECORDError, or RuntimeError
            raise VideoDecodeError(self.path, f"cannot open: {str(exc).strip()[:300]}") from None
        self._check_deadline()
        height, width = self._reader[0].shape[:2]
        self._reader.seek(0)
        count = num_frames if num_frames is not None else len(self._reader)
        self._set_stream(self._reader.get_avg_fps(), width, height, count)

    def close(self) -> None:
        """Release the decoder."""
        self._reader = None

    def get_frames(
        self, indices: Sequence[int] | np.ndarray, size: int | tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 RGB ``(T, 3, H, W)``;
        ``size`` as in :meth:`VideoReader.get_frames`."""
        idx = self._check_indices(indices)
        height, width = output_size(self.height, self.width, size)
        if len(idx) == 0:
            return torch.empty((0, 3, height, width), dtype=torch.uint8)
        self._start_clock()
        try:
            batch = self._reader.get_batch(idx.tolist()).asnumpy()
        except Exception as exc:  # decord raises its own DECORDError
            raise VideoDecodeError(
                self.path, f"frames {idx[:10].tolist()} could not be decoded: {str(exc)[:300]}"
            ) from None
        self._check_deadline()
        frames = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
        return _resize(frames, height, width)
