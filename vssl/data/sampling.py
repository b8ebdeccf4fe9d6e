"""Clip samplers: which frames of a video each view of a training sample is made of.

A pretext task declares the views it needs from one video by handing the data pipeline a
`ClipSampler`; the sampler runs in the DataLoader workers and returns frame indices only, so
that one decode pass serves every view. Indices are positions in the decodable frame sequence
that the video index counted (never the container's own frame count).

Short videos: when a clip spans more frames than the video has, the indices wrap around
(the clip loops), so every video yields a clip of the requested length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClipSpec:
    """The clip geometry a datamodule serves; tasks build their samplers and transforms from it.

    ``flip`` is a property of the data: datasets whose labels depend on left/right direction
    (the synthetic motion classes, "pushing left to right" in SSv2) must not be flipped.
    ``scale`` is the area range of the random resized crop.
    """

    clip_len: int = 16
    stride: int = 1
    crop_size: int = 112
    flip: bool = True
    scale: tuple[float, float] = (0.2, 1.0)


def clip_span(clip_len: int, stride: int) -> int:
    """Number of source frames covered by a clip of ``clip_len`` frames taken every ``stride``."""
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len and stride must be >= 1, got {clip_len} and {stride}")
    return (clip_len - 1) * stride + 1


def clip_indices(start: int, clip_len: int, stride: int, num_frames: int) -> np.ndarray:
    """Frame indices of a clip starting at ``start``, wrapped modulo ``num_frames``."""
    if num_frames < 1:
        raise ValueError("a video must have at least one frame")
    return (start + stride * np.arange(clip_len)) % num_frames


@dataclass(frozen=True)
class AudioSpan:
    """An audio view: ``seconds`` of sound about the frames ``start .. stop - 1`` (the time from
    frame ``start`` to frame ``stop``), at ``sample_rate``, mono or stereo.

    A sampler returns one under a view name; the dataset puts the waveform there, float32
    ``(C, round(seconds * sample_rate))`` (`vssl.data.audio.read_audio`) from `start_time`.
    With ``offsync`` None the window is centred on the frames: with ``seconds`` equal to
    ``(stop - start) / fps`` it is the clip's own sound, sample for sample.

    ``offsync`` (seconds, >= 0) places the window as AVID's official training loader does
    (facebookresearch/AVID-CMA ``sample_snippet`` with ``max_offsync_augm``): the clip lies
    anywhere from ``offsync`` before the window's start to ``offsync`` after its end, so the
    window starts uniformly in ``[s + V - seconds - offsync, s + offsync]`` for a clip from
    ``s`` lasting ``V`` seconds, at ``draw`` (in [0, 1]) of the way along; the range is cut to
    keep the window inside the video's ``video_frames`` frames when the video is at least
    ``seconds`` long (the official window lies inside the streams).
    """

    start: int
    stop: int
    seconds: float
    sample_rate: int = 16000
    mono: bool = True
    offsync: float | None = None
    draw: float = 0.5
    video_frames: int | None = None

    def __post_init__(self) -> None:
        if self.offsync is not None and not self.offsync >= 0:
            raise ValueError(f"AudioSpan: offsync must be >= 0 seconds, got {self.offsync}")
        if not 0.0 <= self.draw <= 1.0:
            raise ValueError(f"AudioSpan: draw must be in [0, 1], got {self.draw}")

    @property
    def num_samples(self) -> int:
        """Samples of the waveform."""
        return round(self.seconds * self.sample_rate)

    def start_time(self, fps: float) -> float:
        """Seconds from frame 0 to the window's first sample, for a video at ``fps``."""
        if self.offsync is None:
            return (self.start + self.stop) / (2 * fps) - self.seconds / 2
        clip_start, clip_stop = self.start / fps, self.stop / fps
        low = clip_stop - self.seconds - self.offsync
        high = clip_start + self.offsync
        if self.video_frames is not None and self.video_frames / fps >= self.seconds:
            low, high = max(low, 0.0), min(high, self.video_frames / fps - self.seconds)
        return low + self.draw * (high - low)


@dataclass(frozen=True)
class FlowOf:
    """A flow view: the precomputed optical flow of the frames of view ``view`` (a ``(T + 1,)``
    clip), float32 ``(T, 2, H, W)`` pixels at the decoded frames' size, field ``t`` from frame
    ``t`` to ``t + 1``, channel 0 = u (to the right), 1 = v (downwards).

    A sampler returns one under the name the flow should have in the sample (``"flow"``); the
    dataset reads it when the datamodule has precomputed flow (``VideoDataModule(flow=...)``)
    and drops the request otherwise (the task's transform then computes flow on the fly).
    Stored fields join consecutive frames, so the clip must be at stride 1; a clip that repeats
    a frame or wraps around to the video's start gets zero flow for that pair
    (`vssl.data.flow.flow_fields`).
    """

    view: str = "video"


class ClipSampler:
    """Base class: maps a video's frame count to the frame indices of each view.

    ``__call__`` returns ``{view_name: indices}``, where ``indices`` has shape ``(T,)`` for one
    clip or ``(N, T)`` for a stack of N clips. The dataset decodes the union of all indices once.
    A 0-d integer array is not a view but a target the sampler chose (a playback rate, say): the
    dataset puts it in the sample as a scalar tensor under its name, untouched by transforms.
    An `AudioSpan` is an audio view; a sampler that returns them sets ``needs_audio``, and the
    dataset then leaves out the videos without an audio stream. A `FlowOf` is a flow view; a
    sampler that returns them sets ``needs_flow``, and with precomputed flow the dataset then
    leaves out the videos whose flow is missing or has the wrong number of fields.
    """

    needs_audio: bool = False
    needs_flow: bool = False

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError


@dataclass
class RandomClip(ClipSampler):
    """One clip of ``clip_len`` frames every ``stride`` frames at a uniformly random start.

    ``extra_frames`` appends that many frames after the clip at the same stride (the statistics
    task needs one more frame than it shows, for optical flow).
    """

    clip_len: int = 16
    stride: int = 1
    extra_frames: int = 0
    view: str = "video"

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        length = self.clip_len + self.extra_frames
        span = clip_span(length, self.stride)
        start = int(rng.integers(0, num_frames - span + 1)) if num_frames >= span else 0
        return {self.view: clip_indices(start, length, self.stride, num_frames)}


@dataclass
class UniformClips(ClipSampler):
    """``num_clips`` clips with evenly spaced starts, for testing and feature extraction.

    With one clip, the clip is centred in the video. Returns indices of shape ``(N, T)``, or
    ``(T,)`` when ``stack`` is false and ``num_clips`` is 1.
    """

    clip_len: int = 16
    stride: int = 1
    num_clips: int = 10
    view: str = "video"
    stack: bool = True

    def starts(self, num_frames: int) -> np.ndarray:
        """Start frames of the clips: evenly spaced over the valid range, centred for one clip."""
        last = max(num_frames - clip_span(self.clip_len, self.stride), 0)
        if self.num_clips == 1:
            return np.array([last // 2])
        return np.round(np.linspace(0, last, self.num_clips)).astype(np.int64)

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        clips = np.stack(
            [
                clip_indices(s, self.clip_len, self.stride, num_frames)
                for s in self.starts(num_frames)
            ]
        )
        if not self.stack and self.num_clips == 1:
            clips = clips[0]
        return {self.view: clips}


def sample_cvrl_starts(
    num_frames: int, clip_len: int, stride: int, generator: np.random.Generator
) -> tuple[int, int]:
    """Start frames of CVRL's two clips from one video (Qian et al., CVPR 2021).

    Nearby clips are more alike than distant ones, so CVRL draws the gap between the two
    starts from a linearly decreasing density. With ``M = num_frames - (clip_len - 1) * stride``
    valid starts, the gap D has density ``f(D) = (2/M)(1 - D/M)`` on ``[0, M)`` and is drawn by
    inverting the CDF ``F(D) = 2D/M - D^2/M^2``: ``D = M (1 - sqrt(1 - u))`` for ``u ~ U[0, 1)``.
    Then ``start1 ~ U{0, ..., M - D - 1}``, ``start2 = start1 + D``, and the two are swapped with
    probability 1/2, so either clip may come first in time.

    Integer rounding: the gap is the continuous D rounded down, so ``P(gap = d) = F(d + 1) -
    F(d)`` for ``d = 0..M-1`` (the official code's bisection on F also returns the floor). Both
    clips then lie inside the video. A video with exactly one valid start (M = 1) gives two clips
    of the same frames, as in the official code.

    Short videos (M < 1, the clip spans more frames than the video has): both starts are drawn
    independently and uniformly from ``[0, num_frames)`` and the clips wrap around
    (`clip_indices`).
    """
    clip_span(clip_len, stride)
    if num_frames < 1:
        raise ValueError(f"a video must have at least one frame, got num_frames={num_frames}")
    valid = num_frames - (clip_len - 1) * stride
    if valid < 1:
        return int(generator.integers(0, num_frames)), int(generator.integers(0, num_frames))
    u = float(generator.random())
    gap = min(int(valid * (1.0 - math.sqrt(1.0 - u))), valid - 1)
    first = int(generator.integers(0, valid - gap))
    second = first + gap
    if generator.random() < 0.5:
        first, second = second, first
    return first, second


@dataclass
class CVRLClips(ClipSampler):
    """Two clips of one video with CVRL's gap distribution (`sample_cvrl_starts`).

    Returns ``{views[0]: (T,), views[1]: (T,)}`` frame indices; short videos wrap around.
    """

    clip_len: int = 16
    stride: int = 2
    views: tuple[str, str] = ("video", "video2")

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        first, second = sample_cvrl_starts(num_frames, self.clip_len, self.stride, rng)
        return {
            self.views[0]: clip_indices(first, self.clip_len, self.stride, num_frames),
            self.views[1]: clip_indices(second, self.clip_len, self.stride, num_frames),
        }


@dataclass
class RhoClips(ClipSampler):
    """``rho`` clips of one video, their start times drawn independently and uniformly over the
    whole video, returned in time order (Feichtenhofer et al., "A Large-Scale Study on
    Unsupervised Spatiotemporal Representation Learning", CVPR 2021).

    Positives of rho-BYOL and rho-MoCo are clips of one video up to its whole length apart, so
    no gap is preferred: each start is uniform on the ``num_frames - (clip_len - 1) * stride``
    valid starts, and the starts are sorted, as the official decoder sorts its clips. Returns
    ``{view: (rho, clip_len)}`` frame indices, one stack that the dataset decodes in one pass.
    Short videos (a clip spans more frames than the video has) draw each start uniformly from
    ``[0, num_frames)`` and the clips wrap around (`clip_indices`).
    """

    clip_len: int = 8
    stride: int = 8
    rho: int = 2
    view: str = "clips"

    def __post_init__(self) -> None:
        clip_span(self.clip_len, self.stride)
        if int(self.rho) != self.rho or self.rho < 2:
            raise ValueError(f"rho (clips per video) must be an integer >= 2, got {self.rho}")
        self.rho = int(self.rho)

    def starts(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """The ``rho`` start frames, sorted."""
        if num_frames < 1:
            raise ValueError(f"a video must have at least one frame, got num_frames={num_frames}")
        valid = num_frames - (self.clip_len - 1) * self.stride
        high = valid if valid >= 1 else num_frames
        return np.sort(rng.integers(0, high, size=self.rho))

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        clips = [
            clip_indices(int(s), self.clip_len, self.stride, num_frames)
            for s in self.starts(num_frames, rng)
        ]
        return {self.view: np.stack(clips)}


@dataclass
class WithFlow(ClipSampler):
    """``sampler``'s views plus the precomputed flow of its view ``view`` under ``name``
    (`FlowOf`): how a task asks for flow, e.g. ``WithFlow(RandomClip(16, extra_frames=1))``."""

    sampler: ClipSampler
    view: str = "video"
    name: str = "flow"

    needs_flow = True

    @property
    def needs_audio(self) -> bool:  # type: ignore[override]
        """Whether the wrapped sampler needs audio."""
        return bool(getattr(self.sampler, "needs_audio", False))

    @property
    def stride(self) -> int:
        """The wrapped sampler's stride (1 when it has none)."""
        return int(getattr(self.sampler, "stride", 1))

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        views = dict(self.sampler(num_frames, rng))
        if self.view not in views:
            raise ValueError(
                f"WithFlow: the sampler has no view {self.view!r} to take flow of "
                f"(views: {sorted(views)})"
            )
        views[self.name] = FlowOf(self.view)
        return views
