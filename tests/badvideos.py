"""A corpus of damaged and unusual video files, written by the tests themselves with PyAV.

Real datasets (Kinetics above all) hold empty files, files that are not videos, truncated
downloads, audio-only files, odd codecs and sizes. :func:`make_corpus` writes one small file
of each kind and says, for each, what the video index must make of it: left out with a reason
(``error`` is a substring of the reason), or usable (``frames`` is the frame count it must
report, ``None`` where only "at least one" can be promised).
"""

from __future__ import annotations

import fractions
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from vssl.data.encode import write_video


@dataclass(frozen=True)
class Expect:
    """What the index must report for one corpus file."""

    error: str | None = None
    frames: int | None = None
    size: tuple[int, int] | None = None  # (H, W) the index must report

    @property
    def usable(self) -> bool:
        """Whether the index must keep the file."""
        return self.error is None


def moving_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames of a bright square moving over noise (something to encode)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(60, 120, size=(num_frames, height, width, 3), dtype=np.uint8)
    side = max(2, min(height, width) // 4)
    for t in range(num_frames):
        top, left = (t * 3) % max(1, height - side), (t * 2) % max(1, width - side)
        frames[t, top : top + side, left : left + side] = 230
    return frames


def _write_audio_only(path: Path) -> None:
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = (np.sin(np.arange(16000) / 5.0) * 0.3).astype(np.float32)[None]
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1] - frame_size, frame_size):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + frame_size]),
                format="fltp",
                layout="mono",
            )
            frame.sample_rate = 16000
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_vfr(path: Path, num_frames: int = 12) -> None:
    """Frames at irregular times (timestamps set by hand, 1/1000 s time base): gaps of 40 and
    80 ms, so some frame indices at the stream's average rate show no new frame."""
    images = moving_frames(num_frames, 32, 32, seed=3)
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        stream.options = {"crf": "18", "preset": "veryfast", "bf": "0"}
        pts = 0
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = pts
            frame.time_base = fractions.Fraction(1, 1000)
            pts += 40 if i % 3 else 80
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_faststart(path: Path, num_frames: int) -> None:
    """An H.264 mp4 with its index (moov) before the data, so a cut file still opens."""
    images = moving_frames(num_frames, 32, 32, seed=4)
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.gop_size = 4
        stream.options = {"crf": "18", "preset": "veryfast"}
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def stated_frames(path: Path) -> int:
    """The frame count the container states for its video stream (0 when it states none)."""
    with av.open(str(path)) as container:
        return int(container.streams.video[0].frames)


def make_corpus(folder: str | Path, large: tuple[int, int] = (2160, 4096)) -> dict[str, Expect]:
    """Write the corpus into ``folder``; returns ``file name -> Expect``.

    Not written here (they depend on when they happen): a file that disappears after the index
    was built, and a permission-denied file (:func:`make_unreadable`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Expect] = {}

    (folder / "zero_bytes.mp4").write_bytes(b"")
    out["zero_bytes.mp4"] = Expect(error="empty file")

    (folder / "text.mp4").write_text("this is not a video\n" * 50)
    out["text.mp4"] = Expect(error="FFmpeg cannot read it")

    truncated = write_video(folder / "truncated.mp4", moving_frames(32, 32, 32), gop=4)
    _cut(truncated, 0.5)  # the moov atom sits at the end of a plain PyAV mp4: it is gone
    out["truncated.mp4"] = Expect(error="FFmpeg cannot read it")

    _write_audio_only(folder / "audio_only.mp4")
    out["audio_only.mp4"] = Expect(error="no video stream")

    write_video(folder / "one_frame.mp4", moving_frames(1, 32, 32))
    out["one_frame.mp4"] = Expect(frames=1, size=(32, 32))

    write_video(folder / "short.mp4", moving_frames(3, 32, 32))
    out["short.mp4"] = Expect(frames=3, size=(32, 32))

    write_video(folder / "gray.mp4", moving_frames(8, 32, 32), pix_fmt="gray")
    out["gray.mp4"] = Expect(frames=8, size=(32, 32))

    write_video(folder / "odd_97x61.mp4", moving_frames(8, 61, 97))  # odd: MPEG-4 Part 2
    out["odd_97x61.mp4"] = Expect(frames=8, size=(61, 97))

    write_video(folder / "yuv422p.mp4", moving_frames(8, 32, 32), pix_fmt="yuv422p")
    out["yuv422p.mp4"] = Expect(frames=8, size=(32, 32))

    write_video(folder / "yuv420p10le.mp4", moving_frames(8, 32, 32), pix_fmt="yuv420p10le")
    out["yuv420p10le.mp4"] = Expect(frames=8, size=(32, 32))

    _write_vfr(folder / "vfr.mkv")
    out["vfr.mkv"] = Expect(frames=None, size=(32, 32))

    _write_faststart(folder / "wrong_count.mp4", 32)
    _cut(folder / "wrong_count.mp4", 0.6)  # the container still states 32 frames
    out["wrong_count.mp4"] = Expect(frames=None, size=(32, 32))

    height, width = large
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = np.zeros((3, height, width, 3), dtype=np.uint8)
        big[:, : height // 2] = 200
        big[1, :, : width // 2] = 90
    write_video(folder / "large.mp4", big, crf=40)
    out["large.mp4"] = Expect(frames=3, size=(height, width))
    return out


def make_unreadable(path: Path) -> Path:
    """Write a good video at ``path`` and take every permission away from it."""
    write_video(path, moving_frames(8, 32, 32))
    os.chmod(path, 0)
    return path
