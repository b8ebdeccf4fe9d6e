"""Writing videos with PyAV: used by the synthetic dataset, the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 25,
    codec: str = "libx264",
    crf: int = 18,
    gop: int | None = None,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Encode uint8 RGB ``frames`` of shape ``(T, H, W, 3)`` into ``path``.

    ``gop`` sets the keyframe interval (None: the codec's default), which the tests use to
    exercise seeking. H.264 needs even sizes, so odd sizes fall back to MPEG-4 Part 2.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    t, h, w, _ = frames.shape
    if codec == "libx264" and (h % 2 or w % 2):
        codec = "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        # One encoder thread and no macroblock-tree rate control: threaded x264 differs from run
        # to run on small clips, and so does single-threaded x264 with mbtree (32x32 clips written
        # repeatedly in one process came out different, with different decoded pixels).
        stream.codec_context.thread_count = 1
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
        elif codec == "mpeg4":
            stream.codec_context.bit_rate = max(200_000, h * w * fps * 2)
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
