"""The torchcodec backend of :class:`~vssl.data.reader.VideoReader`, on the CPU or with NVDEC.

torchcodec scans the whole file when it opens it (``seek_mode="exact"``) and numbers frames in
presentation order, which is the PyAV reader's numbering on constant-frame-rate files. Frames
come back as uint8 RGB ``(T, 3, H, W)`` on the decoder's device; a different output size is made
with torchvision's antialiased resize after decoding (the PyAV reader resizes inside swscale with
area averaging, so resized frames differ by a few grey levels, not in content). torchcodec cannot
be interrupted: ``decode_timeout`` is checked when a call returns, which turns a slow clip into a
:class:`~vssl.data.reader.VideoDecodeError` but does not stop a hang.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vssl.data.reader import VideoDecodeError, VideoReader, _check_file, output_size

INSTALL_HINT = (
    "the 'torchcodec' video backend needs the torchcodec package, which needs the FFmpeg shared "
    "libraries on the system: install FFmpeg (e.g. `apt-get install ffmpeg` or `conda install "
    "ffmpeg`), then `pip install torchcodec` (or `pip install vssl[decode]`); or use backend='pyav'"
)


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased resize of uint8 ``(T, 3, h, w)`` frames to ``(height, width)``."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    from torchvision.transforms.v2.functional import resize

    return resize(frames, [height, width], antialias=True)


class TorchCodecReader(VideoReader):
    """Random access to the frames of one video with torchcodec.

    ``device="cuda"`` (or ``"cuda:N"``) decodes on the GPU with NVDEC and returns frames there;
    ``threads`` is FFmpeg's thread count on the CPU.
    """

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
            from torchcodec.decoders import VideoDecoder
        except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: FFmpeg libs missing
            raise ImportError(f"{INSTALL_HINT} ({type(exc).__name__}: {exc})") from exc
        self._setup(path, threads, decode_timeout)
        self.device = device
        self._decoder = None
        _check_file(self.path)
        if device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"{path}: device={device!r} needs CUDA, which is not available")
        self._start_clock()
        try:
            self._decoder = VideoDecoder(
                self.path,
                dimension_order="NCHW",
                num_ffmpeg_threads=threads,
                seek_mode="exact",
                device=device,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise VideoDecodeError(self.path, f"cannot open: {exc}") from None
        self._check_deadline()
        meta = self._decoder.metadata
        count = num_frames if num_frames is not None else meta.num_frames
        self._set_stream(meta.average_fps, meta.width, meta.height, count)

    def close(self) -> None:
        """Release the decoder."""
        self._decoder = None

    def get_frames(
        self, indices: Sequence[int] | np.ndarray, size: int | tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 RGB ``(T, 3, H, W)`` on
        the decoder's device; ``size`` as in :meth:`VideoReader.get_frames`."""
        idx = self._check_indices(indices)
        height, width = output_size(self.height, self.width, size)
        if len(idx) == 0:
            return torch.empty((0, 3, height, width), dtype=torch.uint8, device=self.device)
        self._start_clock()
        try:
            frames = self._decoder.get_frames_at(indices=idx.tolist()).data
        except (RuntimeError, IndexError, ValueError) as exc:
            raise VideoDecodeError(
                self.path, f"frames {idx[:10].tolist()} could not be decoded: {exc}"
            ) from None
        self._check_deadline()
        return _resize(frames, height, width)
