"""The ``jpeg`` backend: MJPEG frames demuxed with PyAV and decoded as JPEG images.

In an MJPEG stream (what ``vssl prepare`` writes by default) every packet is one complete JPEG
image. This backend reads the packets of the wanted frames with PyAV, decoding nothing, and
hands their bytes to libjpeg-turbo through OpenCV, which decodes and converts YCbCr to RGB in
one pass, roughly half the CPU time of FFmpeg's decoder followed by swscale's conversion and a
copy out of PyAV's frame. A frame wanted below the stored size is decoded at 1/2, 1/4 or 1/8
scale inside libjpeg (scaled IDCT) when that still covers the output, then area-resized.
``device="cuda"`` decodes the packets of a call in one batch on the GPU with nvJPEG
(torchcodec's ``decode_jpeg``, else torchvision's) and returns the frames there.

Frames are numbered and chosen exactly as by :class:`~vssl.data.reader.VideoReader` (this class
subclasses it): frame ``i`` is the packet whose timestamp maps to ``i``; a wanted index no packet
maps to shows the packet before it. Pixels differ from the PyAV reader's by the JPEG decoders'
rounding and chroma upsampling (a grey level or two on average). Every other codec, and any
MJPEG call the fast path cannot serve exactly (packets without timestamps or out of order,
containers without frame-accurate seeks, a packet libjpeg rejects or that is not a whole frame,
as in interlaced MJPEG with two fields per packet), goes through the PyAV reader unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch

from vssl.data.reader import MIN_SEEK_GAP, VideoDecodeError, VideoReader, output_size

# libjpeg's scaled decoding: (factor, OpenCV flag), largest first.
_REDUCED = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


class _Fallback(Exception):
    """The fast path cannot serve this call exactly: the PyAV reader decodes it instead."""


def _gpu_decode_jpeg() -> Any:
    """The batched nvJPEG decoder: torchcodec's ``decode_jpeg``, else torchvision's."""
    try:
        from torchcodec.decoders import decode_jpeg
    except (ImportError, RuntimeError, OSError):
        from torchvision.io import decode_jpeg
    return decode_jpeg


def reduced_flag(height: int, width: int, out_height: int, out_width: int) -> tuple[int, int]:
    """The largest libjpeg scale (1, 2, 4 or 8) whose decoded image still covers
    ``(out_height, out_width)`` from a ``(height, width)`` JPEG, and its OpenCV flag."""
    for factor, flag in _REDUCED:
        if -(-height // factor) >= out_height and -(-width // factor) >= out_width:
            return factor, flag
    return 1, cv2.IMREAD_COLOR


class JpegReader(VideoReader):
    """Random access to the frames of one video; MJPEG decoded with libjpeg-turbo (or nvJPEG
    with ``device="cuda"``), every other codec with PyAV as :class:`VideoReader` does."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 1,
        num_frames: int | None = None,
        decode_timeout: float | None = None,
        device: str = "cpu",
    ) -> None:
        device = str(device)
        if device != "cpu":
            if not device.startswith("cuda"):
                raise ValueError(
                    f"{path}: the 'jpeg' backend decodes on 'cpu' or 'cuda', got device={device!r}"
                )
            if not torch.cuda.is_available():
                raise ValueError(f"{path}: device={device!r} needs CUDA, which is not available")
        super().__init__(
            path, threads=threads, num_frames=num_frames, decode_timeout=decode_timeout
        )
        self.device = device
        self.is_jpeg = self._stream.codec_context.name == "mjpeg"
        if device != "cpu" and not self.is_jpeg:
            self.close()
            raise ValueError(
                f"{path}: the 'jpeg' backend decodes only MJPEG on the GPU, this video is "
                f"{self._stream.codec_context.name} (backend='torchcodec' decodes it with NVDEC)"
            )

    def get_frames(
        self, indices: Sequence[int] | np.ndarray, size: int | tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 RGB ``(T, 3, H, W)`` on
        the reader's device; ``size`` as in :meth:`VideoReader.get_frames`."""
        if not self.is_jpeg or self._sequential or not self._exact_seek:
            return super().get_frames(indices, size)
        idx = self._check_indices(indices)
        height, width = output_size(self.height, self.width, size)
        if len(idx) == 0:
            return torch.empty((0, 3, height, width), dtype=torch.uint8, device=self.device)
        self._start_clock()
        wanted, inverse = np.unique(idx, return_inverse=True)
        try:
            packets = self._packets(wanted.tolist())
            if self.device == "cpu":
                frames = self._decode_cpu(packets, height, width)
            else:
                frames = self._decode_gpu(packets, height, width)
        except _Fallback:
            frames = super().get_frames(wanted, size).to(self.device)
        if np.array_equal(wanted, idx):  # sorted, without repeats: the frames as decoded
            return frames
        return frames.index_select(0, torch.from_numpy(inverse.reshape(-1)).to(frames.device))

    def _forget_decoder_state(self) -> None:
        """The container was moved: the PyAV path must seek or reopen before it decodes."""
        self._fresh = False
        self._frames, self._pending, self._prev, self._pos = None, None, None, None

    def _packets(self, wanted: list[int]) -> list[Any]:
        """The packet shown at each of ``wanted`` (sorted, unique), read without decoding."""
        if self._start_pts is None:  # frame 0's timestamp: the first packet's, read undecoded
            if not self._fresh:
                self._seek_to(0)
            first = next((p for p in self._demux() if p.size), None)
            if first is None or first.pts is None:
                raise _Fallback
            self._start_pts = first.pts
        start, scale = self._start_pts, self._scale
        out: list[Any] = []
        packets, pos, current, before = None, None, None, None
        for target in wanted:
            if packets is None or pos is None or target - pos > MIN_SEEK_GAP:
                self._seek_to(start + math.floor((target + 0.4) / scale))
                packets, pos, current, before = self._demux(), None, None, None
            while pos is None or pos < target:
                packet = next(packets, None)
                if packet is None:
                    raise _Fallback  # the end came first: the PyAV path says what is wrong
                self._check_deadline()
                if not packet.size:
                    continue
                if packet.pts is None or (current is not None and packet.pts <= current.pts):
                    raise _Fallback
                j = round((packet.pts - start) * scale)
                if pos is None and j > target:
                    raise _Fallback  # the seek landed past the target
                before, current, pos = current, packet, j
            # No packet maps to ``target`` when ``pos`` passed it: the one before is on screen.
            out.append(current if pos == target else before)
        return out

    def _seek_to(self, pts: int) -> None:
        self._forget_decoder_state()
        try:
            self._container.seek(pts, backward=True, any_frame=False, stream=self._stream)
        except av.error.FFmpegError:
            raise _Fallback from None

    def _demux(self) -> Any:
        """The stream's packets from the current position; a read error ends them (the PyAV
        path then handles the damaged file)."""
        self._forget_decoder_state()
        demuxer = self._container.demux(self._stream)
        while True:
            try:
                yield next(demuxer)
            except StopIteration:
                return
            except av.error.ExitError:
                raise VideoDecodeError(self.path, "reading timed out") from None
            except av.error.FFmpegError:
                return

    def _decode_cpu(self, packets: list[Any], height: int, width: int) -> torch.Tensor:
        out = np.empty((len(packets), 3, height, width), dtype=np.uint8)
        factor, flag = reduced_flag(self.height, self.width, height, width)
        shape = (-(-self.height // factor), -(-self.width // factor), 3)
        done: dict[int, int] = {}
        for row, packet in enumerate(packets):
            if id(packet) in done:  # one packet on screen at several wanted indices
                out[row] = out[done[id(packet)]]
                continue
            self._check_deadline()
            image = cv2.imdecode(np.frombuffer(memoryview(packet), np.uint8), flag)
            if image is None or image.shape != shape:
                raise _Fallback  # not a whole JPEG frame (damaged, or interlaced fields)
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            cv2.split(image, [out[row, 2], out[row, 1], out[row, 0]])  # BGR into RGB planes
            done[id(packet)] = row
        return torch.from_numpy(out)

    def _decode_gpu(self, packets: list[Any], height: int, width: int) -> torch.Tensor:
        unique: dict[int, int] = {}
        data = []
        for packet in packets:
            if id(packet) not in unique:
                unique[id(packet)] = len(data)
                data.append(torch.frombuffer(bytearray(packet), dtype=torch.uint8))
        try:
            images = _gpu_decode_jpeg()(data, mode="RGB", device=self.device)
        except RuntimeError:
            raise _Fallback from None
        if any(tuple(im.shape) != (3, self.height, self.width) for im in images):
            raise _Fallback
        frames = torch.stack(images)
        if (height, width) != (self.height, self.width):
            from torchvision.transforms.v2.functional import resize

            frames = resize(frames, [height, width], antialias=True)
        rows = torch.tensor([unique[id(p)] for p in packets], device=frames.device)
        return frames.index_select(0, rows)
