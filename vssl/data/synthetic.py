"""A synthetic video dataset whose classes are defined by motion alone.

It is the quick start's default data, the data of the tests and CPU benchmarks, and the benchmark
on which a pretext task has to beat random initialisation under a linear probe. A class is a kind
of motion (translation in one of 8 directions, rotation or zoom of the whole scene, oscillation,
slow or fast translation); everything a single frame shows (background texture, objects, their
shapes, colours, sizes, positions, a small random camera pan) is drawn from the same distribution
for every class.

How single frames are kept uninformative: the scene is a periodic plane (objects wrap around
with period ``size``), so objects never enter or leave the view and every frame shows the same
kind of picture whatever the motion. Each clip's appearance and motion are drawn from one random
stream in the same order for every class, and every motion is the identity at the reference frame
``frames // 2``: with the same random stream, that frame is identical for all classes. Most
classes come in time-reversed pairs (right/left, cw/ccw, in/out) with the same per-frame
distribution; the most a frame far from the reference can hint at is the zoom family (the
periodic scene seen smaller or larger), never the class.

Learnability, measured with a 4-layer 3D CNN trained from scratch on 16 frames at 32 px (2
shared CPU threads, first 8 classes, chance 12.5%): with 150 videos per class it reaches about
72% test accuracy in about 3 minutes, with the default 18 training videos per class about 45%
in 3 to 5 minutes (it overfits); the same network on single frames stays at 13-14%. Background
colours stay near mid-grey because a per-clip colour offset that varies a lot from clip to clip
drowns the motion signal in the first layer of a small network trained from scratch (it learned
nothing in that setting).

Sound (``audio=True``): an AAC track whose content follows the motion of the clip
(`clip_sound`). Four voices of different textures sound together: a harmonic tone, a tremolo
tone, a train of short pips and a narrow noise band. The pitch of each follows one coordinate of
the motion frame by frame (`motion_coordinates`): the tone the horizontal travel of the objects,
the tremolo tone their vertical travel, the pips the rotation, the noise band the zoom, so a
class is which voice glides and whether up or down, at a rate set by the clip's speed; the other
voices hold their pitch. Every voice's base pitch, loudness, timbre and a slow vibrato are drawn
per video (`sound_rng`), so no pitch, loudness or texture tells the class: under a linear probe
a random audio network separates the classes little better than chance, and a network has to
learn which voice moves with the picture to do better. A click sounds at each reversal of an
oscillation (a bounce), at the time of the frame where it turns. Without ``audio`` the files
are silent and exactly as before.

Units: rates are per frame, so speeds do not depend on the clip length. Distances are fractions
of ``size``, so the data looks the same at every resolution. Coordinates are in pixels, x to the
right and y downwards; pixel ``i`` covers ``[i, i + 1)`` and the centre of the frame is
``size / 2``. The rates are tuned for clips of 16 to 48 frames: zoom is exponential in time,
so much longer clips zoom far in or out at their ends.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from rich.progress import track

from vssl.data.encode import write_video
from vssl.errors import DatasetFolderError

SYNTHETIC_VERSION = 1
"""Bump whenever rendering changes, so that a folder made by another version is not reused."""

MotionKind = Literal["translate", "rotate", "zoom", "oscillate"]


@dataclass(frozen=True)
class MotionClass:
    """One class of the synthetic dataset: a named motion.

    ``kind`` says what moves: ``translate`` and ``oscillate`` move the objects over a background
    that only follows the camera pan; ``rotate`` and ``zoom`` move the whole scene about the
    centre of the frame. ``angle`` (degrees, anticlockwise on screen, 0 = to the right) is the
    direction of a translation or the axis of an oscillation. ``sign`` is +1 for clockwise
    rotation (as seen on screen) and for zooming in, -1 for the opposite. ``rate`` is the range
    the per-video rate is drawn from: size fraction per frame (translate), degrees per frame
    (rotate), log scale per frame (zoom), amplitude as a size fraction (oscillate).
    """

    name: str
    kind: MotionKind
    rate: tuple[float, float]
    angle: float = 0.0
    sign: int = 1


_NORMAL = (0.025, 0.035)
_SLOW = (0.008, 0.012)
_FAST = (0.05, 0.065)

SYNTHETIC_CLASSES: tuple[MotionClass, ...] = (
    MotionClass("right", "translate", _NORMAL, angle=0.0),
    MotionClass("left", "translate", _NORMAL, angle=180.0),
    MotionClass("down", "translate", _NORMAL, angle=270.0),
    MotionClass("up", "translate", _NORMAL, angle=90.0),
    MotionClass("rotate_cw", "rotate", (5.0, 7.0), sign=1),
    MotionClass("rotate_ccw", "rotate", (5.0, 7.0), sign=-1),
    MotionClass("zoom_in", "zoom", (0.03, 0.045), sign=1),
    MotionClass("zoom_out", "zoom", (0.03, 0.045), sign=-1),
    MotionClass("down_right", "translate", _NORMAL, angle=315.0),
    MotionClass("up_left", "translate", _NORMAL, angle=135.0),
    MotionClass("down_left", "translate", _NORMAL, angle=225.0),
    MotionClass("up_right", "translate", _NORMAL, angle=45.0),
    MotionClass("oscillate_horizontal", "oscillate", (0.06, 0.1), angle=0.0),
    MotionClass("oscillate_vertical", "oscillate", (0.06, 0.1), angle=90.0),
    MotionClass("right_slow", "translate", _SLOW, angle=0.0),
    MotionClass("right_fast", "translate", _FAST, angle=0.0),
)
"""The classes in order; ``make_synthetic(classes=K)`` uses the first K. Translation speeds
come in three disjoint bands (slow, normal, fast), so ``right``, ``right_slow`` and ``right_fast``
differ by speed only."""

MAX_PAN = 0.004
"""Largest camera pan, as a size fraction per frame: under a fifth of the slowest normal
translation (half of the slowest slow one), so that the object's motion relative to the
background defines the class."""

SOUND_RATE = 16000
"""Sample rate of the synthetic sound track (Hz)."""

OSCILLATION_PERIOD = (6.0, 10.0)
"""Range of the oscillation period in frames: short enough that an 8-frame clip sees a reversal,
so oscillation is not mistaken for translation."""


@dataclass
class SyntheticClip:
    """A rendered clip and the ground truth of its motion (for tests and visual checks).

    ``frames``: uint8 ``(T, S, S, 3)``. ``object_alpha``: float32 ``(T, S, S)``, the coverage of
    the object layer. ``centres``: ``(N, T, 2)`` screen positions (x, y) of the N objects, not
    wrapped. ``pan``: ``(T, 2)`` camera pan in pixels; ``rotation`` (radians, clockwise on
    screen) and ``scale``: ``(T,)`` camera rotation and zoom about the frame centre.
    """

    frames: np.ndarray
    object_alpha: np.ndarray
    centres: np.ndarray
    pan: np.ndarray
    rotation: np.ndarray
    scale: np.ndarray


def get_motion(name: str) -> MotionClass:
    """The class called ``name`` in `SYNTHETIC_CLASSES`."""
    for motion in SYNTHETIC_CLASSES:
        if motion.name == name:
            return motion
    known = ", ".join(m.name for m in SYNTHETIC_CLASSES)
    raise KeyError(f"unknown synthetic class {name!r}; known: {known}")


def clip_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The random stream of video ``index`` of class ``class_name``.

    Seeded from the class name rather than its position, so that datasets with different numbers
    of classes hold the same videos for the classes they share.
    """
    return np.random.default_rng([seed, zlib.crc32(class_name.encode()), index])


def _colour_far_from(rng: np.random.Generator, others: list[np.ndarray]) -> np.ndarray:
    """A random colour at least 90 (RGB distance) from each of ``others``, or the best of 32."""
    best, best_dist = None, -1.0
    for _ in range(32):
        colour = rng.uniform(0, 255, 3)
        dist = min(float(np.linalg.norm(colour - o)) for o in others)
        if dist >= 90:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


def _background(
    rng: np.random.Generator, size: int
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draws a background: its kind (0 gradient, 1 stripes, 2 noise), two colours, waves.

    The base colour stays within 20 of mid-grey (see the module notes); the texture colour and
    the objects carry the colour variety.
    """
    kind = int(rng.integers(3))
    c1 = rng.uniform(108, 148, 3)
    c2 = np.clip(c1 + rng.normal(0, 30, 3), 0, 255)
    n_waves = 10
    angles = rng.uniform(0, 2 * np.pi, n_waves)
    wavelengths = size * np.exp(rng.uniform(np.log(0.06), np.log(0.25), n_waves))
    phases = rng.uniform(0, 2 * np.pi, n_waves)
    freq = 2 * np.pi / wavelengths
    waves = np.stack([freq * np.cos(angles), freq * np.sin(angles)], axis=1)
    gain = rng.uniform(0.6, 1.2)
    if kind == 0:
        waves = waves[:1] / freq[0] / size * gain
    elif kind == 1:
        waves = waves[:1]
        phases = phases[:1]
    return kind, c1, c2, waves, phases


def _render_background(
    bg: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    wx: np.ndarray,
    wy: np.ndarray,
    size: int,
) -> np.ndarray:
    """Evaluates the procedural background at world coordinates: float32 ``(T, S, S, 3)``."""
    kind, c1, c2, waves, phases = bg
    if kind == 0:
        kx, ky = float(waves[0, 0]), float(waves[0, 1])
        w = np.clip(0.5 + kx * (wx - size / 2) + ky * (wy - size / 2), 0, 1)
    elif kind == 1:
        kx, ky = float(waves[0, 0]), float(waves[0, 1])
        w = 0.5 + 0.5 * np.sin(kx * wx + ky * wy + float(phases[0]))
    else:
        total = np.zeros_like(wx)
        for (kx, ky), phase in zip(waves, phases, strict=True):
            total += np.cos(float(kx) * wx + float(ky) * wy + float(phase))
        w = 0.5 + 0.5 * np.tanh(total * (1.2 / math.sqrt(len(phases) / 2)))
    c1 = c1.astype(np.float32)
    return c1 + w[..., None] * (c2 - c1).astype(np.float32)


@dataclass
class _Object:
    shape: int
    radius: float
    position: np.ndarray
    orientation: float
    colour: np.ndarray
    stripe_colour: np.ndarray
    striped: bool
    stripe_period: float


def _objects(rng: np.random.Generator, size: int, c1: np.ndarray, c2: np.ndarray) -> list[_Object]:
    """Draws 1 to 3 objects: shape, size, position, orientation, colours, texture."""
    out = []
    for _ in range(int(rng.integers(1, 4))):
        shape = int(rng.integers(4))
        radius = size * float(np.exp(rng.uniform(np.log(0.1), np.log(0.2))))
        position = rng.uniform(0, size, 2)
        orientation = float(rng.uniform(0, 2 * np.pi))
        colour = _colour_far_from(rng, [c1, c2])
        stripe_colour = np.clip(colour + rng.normal(0, 70, 3), 0, 255)
        striped = bool(rng.random() < 0.5)
        period = float(rng.uniform(0.5, 0.9))
        out.append(
            _Object(shape, radius, position, orientation, colour, stripe_colour, striped, period)
        )
    return out


def _shape_alpha(
    shape: int, u: np.ndarray, v: np.ndarray, pixels_per_unit: np.ndarray
) -> np.ndarray:
    """Anti-aliased coverage of a unit shape at local coordinates ``(u, v)``.

    ``d <= 1`` inside; ``edge`` converts ``1 - d`` into units of the object radius, so that the
    soft edge is one screen pixel wide.
    """
    if shape == 0:
        d, edge = np.sqrt(u * u + v * v), 1.0
    elif shape == 1:
        d, edge = np.maximum(np.abs(u), np.abs(v)) / 0.8, 0.8
    elif shape == 2:
        inradius = 0.65
        d = np.maximum(np.maximum(-v, 0.866 * u + 0.5 * v), -0.866 * u + 0.5 * v) / inradius
        edge = inradius
    else:
        d, edge = np.abs(np.sqrt(u * u + v * v) - 0.7) / 0.3, 0.3
    return np.clip((1 - d) * (edge * pixels_per_unit) + 0.5, 0, 1)


def render_clip(
    motion: MotionClass | str, rng: np.random.Generator, frames: int = 32, size: int = 64
) -> SyntheticClip:
    """Renders one clip of class ``motion`` with a random appearance drawn from ``rng``.

    The random draws happen in the same order for every class, and every motion is the identity
    at frame ``frames // 2``, so the same ``rng`` state gives that frame identical for all classes.
    """
    if isinstance(motion, str):
        motion = get_motion(motion)
    if frames < 1 or size < 4:
        raise ValueError(f"render_clip needs frames >= 1 and size >= 4, got {frames} and {size}")
    s_f = float(size)
    bg = _background(rng, size)
    objects = _objects(rng, size, bg[1], bg[2])
    pan_angle = rng.uniform(0, 2 * np.pi)
    pan_speed = rng.uniform(0, MAX_PAN) * s_f
    rate = float(rng.uniform(*motion.rate))
    period = float(rng.uniform(*OSCILLATION_PERIOD))
    osc_sign = float(rng.choice([-1.0, 1.0]))

    k = np.arange(frames, dtype=np.float64) - frames // 2
    pan = pan_speed * k[:, None] * np.array([np.cos(pan_angle), np.sin(pan_angle)])
    rotation = np.zeros(frames)
    scale = np.ones(frames)
    direction = np.array([np.cos(np.radians(motion.angle)), -np.sin(np.radians(motion.angle))])
    world_shift = np.zeros((frames, 2))
    if motion.kind == "translate":
        world_shift = rate * s_f * k[:, None] * direction
    elif motion.kind == "oscillate":
        world_shift = osc_sign * rate * s_f * np.sin(2 * np.pi * k / period)[:, None] * direction
    elif motion.kind == "rotate":
        rotation = motion.sign * np.radians(rate) * k
    else:
        scale = np.exp(motion.sign * rate * k)

    centre = s_f / 2
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    cos_r = np.cos(rotation).astype(np.float32)[:, None, None]
    sin_r = np.sin(rotation).astype(np.float32)[:, None, None]
    inv_s = (1 / scale).astype(np.float32)[:, None, None]
    dxs = coords[None, None, :] - np.float32(centre) - pan[:, 0].astype(np.float32)[:, None, None]
    dys = coords[None, :, None] - np.float32(centre) - pan[:, 1].astype(np.float32)[:, None, None]
    wx = np.float32(centre) + (cos_r * dxs + sin_r * dys) * inv_s
    wy = np.float32(centre) + (cos_r * dys - sin_r * dxs) * inv_s

    image = _render_background(bg, wx, wy, size)
    uncovered = np.ones(wx.shape, np.float32)
    screen_scale = scale.astype(np.float32)[:, None, None]
    centres = []
    for obj in objects:
        world = obj.position + world_shift
        dx = wx - world[:, 0].astype(np.float32)[:, None, None]
        dy = wy - world[:, 1].astype(np.float32)[:, None, None]
        dx = (dx + np.float32(centre)) % np.float32(s_f) - np.float32(centre)
        dy = (dy + np.float32(centre)) % np.float32(s_f) - np.float32(centre)
        co, so = np.float32(np.cos(obj.orientation)), np.float32(np.sin(obj.orientation))
        u = (co * dx + so * dy) / np.float32(obj.radius)
        v = (co * dy - so * dx) / np.float32(obj.radius)
        alpha = _shape_alpha(obj.shape, u, v, np.float32(obj.radius) * screen_scale)
        colour = obj.colour.astype(np.float32)
        if obj.striped:
            w = 0.5 + 0.5 * np.sin(u * np.float32(2 * np.pi / obj.stripe_period))
            colour = colour + w[..., None] * (obj.stripe_colour - obj.colour).astype(np.float32)
        image += alpha[..., None] * (colour - image)
        uncovered *= 1 - alpha
        rel = world - centre
        rotated = np.stack(
            [
                np.cos(rotation) * rel[:, 0] - np.sin(rotation) * rel[:, 1],
                np.sin(rotation) * rel[:, 0] + np.cos(rotation) * rel[:, 1],
            ],
            axis=1,
        )
        centres.append(centre + scale[:, None] * rotated + pan)
    return SyntheticClip(
        frames=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        object_alpha=1 - uncovered,
        centres=np.stack(centres),
        pan=pan,
        rotation=rotation,
        scale=scale,
    )


SOUND_VERSION = 2
"""Bump whenever `clip_sound` changes; recorded in the settings of a dataset with sound, so that
a folder made with another sound is not reused (the silent datasets are not affected)."""

SOUND_GAINS = (6.0, 6.0, 1.8, 4.8)
"""Octaves of pitch per unit of each `motion_coordinates` column: per frame size of horizontal
and vertical travel, per radian of rotation, per unit of log zoom. A normal translation,
rotation or zoom glides by about 0.18 octaves per frame (4.5 octaves a second at 25 fps): steep
enough for a small network to learn; under the vibrato a random one sees little of it."""


def sound_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The random stream of the sound of video ``index`` of class ``class_name``: apart from
    `clip_rng`, so that the frames are the same with and without sound."""
    return np.random.default_rng([seed, zlib.crc32(class_name.encode()), index, 1])


def motion_coordinates(clip: SyntheticClip, motion: MotionClass) -> np.ndarray:
    """The motion of each frame relative to the reference frame ``T // 2``, ``(T, 4)``: the
    first object's travel relative to the camera pan, to the right and upwards, as fractions of
    the frame size (translation and oscillation, else 0); the camera's rotation, clockwise in
    radians; its log zoom."""
    frames = clip.frames.shape[0]
    out = np.zeros((frames, 4))
    if motion.kind in ("translate", "oscillate"):
        travel = (clip.centres[0] - clip.pan) / clip.frames.shape[1]
        travel = travel - travel[frames // 2]
        out[:, 0], out[:, 1] = travel[:, 0], -travel[:, 1]
    out[:, 2] = clip.rotation
    out[:, 3] = np.log(clip.scale)
    return out


def frame_speeds(clip: SyntheticClip, motion: MotionClass) -> np.ndarray:
    """How far the motion moves between frames ``t`` and ``t + 1``, ``(T - 1,)``, as a fraction
    of the frame size: the first object's travel relative to the camera pan (translation,
    oscillation), the travel of a point at the frame's edge (rotation: half the angle in
    radians; zoom: half the change of the log scale)."""
    if motion.kind == "rotate":
        return 0.5 * np.abs(np.diff(clip.rotation))
    if motion.kind == "zoom":
        return 0.5 * np.abs(np.diff(np.log(clip.scale)))
    size = clip.frames.shape[1]
    travel = np.diff(clip.centres[0] - clip.pan, axis=0)
    return np.linalg.norm(travel, axis=1) / size


def bounce_frames(clip: SyntheticClip, motion: MotionClass) -> np.ndarray:
    """Frames at which an oscillation turns back (its velocity along the axis changes sign)."""
    if motion.kind != "oscillate":
        return np.zeros(0, dtype=np.int64)
    axis = np.array([np.cos(np.radians(motion.angle)), -np.sin(np.radians(motion.angle))])
    velocity = np.diff(clip.centres[0] - clip.pan, axis=0) @ axis
    turns = np.nonzero(np.sign(velocity[1:]) * np.sign(velocity[:-1]) < 0)[0] + 1
    return turns.astype(np.int64)


def voice_pitches(
    clip: SyntheticClip,
    motion: MotionClass,
    fps: int,
    rng: np.random.Generator,
    sample_rate: int = SOUND_RATE,
) -> np.ndarray:
    """The pitch of the four voices of `clip_sound` at every sample, Hz ``(4, N)``: a base
    drawn log-uniformly from 200..1600 Hz, raised by `SOUND_GAINS` octaves per unit of the
    voice's `motion_coordinates` column (linearly interpolated between frames), plus a vibrato of
    2..5 Hz and 0.075..0.15 octaves; held within 40 Hz .. 0.45 x ``sample_rate``. Draws the
    first values of ``rng`` (`clip_sound` continues with the same stream)."""
    frames = clip.frames.shape[0]
    n = round(frames * sample_rate / fps)
    t = np.arange(n) / sample_rate
    coords = motion_coordinates(clip, motion)
    octaves = np.stack(
        [np.interp(t * fps, np.arange(frames), coords[:, j]) * g for j, g in enumerate(SOUND_GAINS)]
    )
    base = np.exp(rng.uniform(np.log(200.0), np.log(1600.0), 4))
    vib_rate, vib_phase = rng.uniform(2.0, 5.0, 4), rng.uniform(0, 2 * np.pi, 4)
    vib_depth = rng.uniform(0.075, 0.15, 4)
    octaves += vib_depth[:, None] * np.sin(2 * np.pi * vib_rate[:, None] * t + vib_phase[:, None])
    return np.clip(base[:, None] * 2.0**octaves, 40.0, 0.45 * sample_rate)


def clip_sound(
    clip: SyntheticClip,
    motion: MotionClass,
    fps: int,
    rng: np.random.Generator,
    sample_rate: int = SOUND_RATE,
) -> np.ndarray:
    """The sound of a clip, float32 ``(1, T * sample_rate / fps)``: four voices at the pitches
    of `voice_pitches`, each at a loudness drawn log-uniformly from 0.05..0.2,

    - a tone with its 2nd and 3rd harmonics at 0..0.6 of the fundamental,
    - a tone under a full tremolo of 12..20 Hz,
    - a train of 15 ms pips every 40..60 ms,
    - a noise band of 8 partials spread over +-1/6 octave,

    white noise of 0.001..0.01 (std), and a 10 ms decaying click of amplitude 0.6 starting at
    the time ``t / fps`` of every `bounce_frames` frame ``t``; clipped to [-1, 1]. ``rng``
    (`sound_rng`) draws every per-video setting."""
    frames = clip.frames.shape[0]
    n = round(frames * sample_rate / fps)
    t = np.arange(n) / sample_rate
    pitch = voice_pitches(clip, motion, fps, rng, sample_rate)
    phase = 2 * np.pi * np.cumsum(pitch, axis=1) / sample_rate
    loud = np.exp(rng.uniform(np.log(0.05), np.log(0.2), 4))
    harmonics = rng.uniform(0.0, 0.6, 2)
    tone = (
        np.sin(phase[0]) + harmonics[0] * np.sin(2 * phase[0]) + harmonics[1] * np.sin(3 * phase[0])
    )
    tremolo_rate, tremolo_phase = rng.uniform(12.0, 20.0), rng.uniform(0, 2 * np.pi)
    tremolo = np.sin(phase[1]) * (0.5 + 0.5 * np.sin(2 * np.pi * tremolo_rate * t + tremolo_phase))
    pip_period = rng.uniform(0.04, 0.06)
    pip_offset = rng.uniform(0, pip_period)
    pips = np.sin(phase[2]) * (((t + pip_offset) % pip_period) < 0.015)
    spread, partial_phase = 2.0 ** rng.uniform(-1 / 6, 1 / 6, 8), rng.uniform(0, 2 * np.pi, 8)
    band = sum(np.sin(phase[3] * s + p) for s, p in zip(spread, partial_phase, strict=True)) / 3
    sound = loud[0] * tone + loud[1] * tremolo + loud[2] * pips + loud[3] * band
    sound += rng.uniform(0.001, 0.01) * rng.standard_normal(n)
    length = round(0.01 * sample_rate)
    click = 0.6 * np.exp(-np.arange(length) / (length / 4))
    for f in bounce_frames(clip, motion):
        at = round(f * sample_rate / fps)
        part = click[: max(0, n - at)]
        sound[at : at + len(part)] += part
    return np.clip(sound, -1.0, 1.0).astype(np.float32)[None]


def _settings(
    motions: tuple[MotionClass, ...],
    videos_per_class: int,
    seed: int,
    frames: int,
    size: int,
    fps: int,
    test_fraction: float,
    audio: bool = False,
) -> dict:
    """What defines a synthetic dataset: equal settings mean equal files."""
    sound = (
        {"audio": {"codec": "aac", "sample_rate": SOUND_RATE, "sound": SOUND_VERSION}}
        if audio
        else {}
    )
    return {
        "classes": [m.name for m in motions],
        "videos_per_class": videos_per_class,
        "seed": seed,
        "frames": frames,
        "size": size,
        "fps": fps,
        "test_fraction": test_fraction,
        "codec": "libx264",
        "crf": 18,
        **sound,
    }


def split_sizes(videos_per_class: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) videos per class; the test split takes the last indices of each class."""
    n_test = int(videos_per_class * test_fraction + 0.5)
    return videos_per_class - n_test, n_test


def _expected_files(settings: dict) -> list[Path]:
    """Relative paths of every video of a dataset with ``settings``, in writing order."""
    n_train, n_test = split_sizes(settings["videos_per_class"], settings["test_fraction"])
    paths = []
    for name in settings["classes"]:
        for i in range(n_train + n_test):
            split = "train" if i < n_train else "test"
            paths.append(Path(split) / name / f"{name}_{i:04d}.mp4")
    return paths


def _check_args(
    root: Path,
    classes: int,
    videos_per_class: int,
    seed: int,
    frames: int,
    size: int,
    fps: int,
    test_fraction: float,
) -> None:
    """Raises a ValueError naming ``root`` for settings that cannot make a dataset."""
    problems = []
    if not 1 <= classes <= len(SYNTHETIC_CLASSES):
        problems.append(f"classes must be between 1 and {len(SYNTHETIC_CLASSES)}, got {classes}")
    if videos_per_class < 1:
        problems.append(f"videos_per_class must be >= 1, got {videos_per_class}")
    if seed < 0:
        problems.append(f"seed must be >= 0, got {seed}")
    if frames < 2:
        problems.append(f"frames must be >= 2, got {frames}")
    if size < 16 or size % 2:
        problems.append(f"size must be even (H.264) and >= 16, got {size}")
    if fps < 1:
        problems.append(f"fps must be >= 1, got {fps}")
    if not 0 <= test_fraction < 1:
        problems.append(f"test_fraction must be in [0, 1), got {test_fraction}")
    elif videos_per_class >= 1 and split_sizes(videos_per_class, test_fraction)[0] < 1:
        problems.append(
            f"test_fraction {test_fraction} leaves no training video of {videos_per_class}"
        )
    if problems:
        raise ValueError(f"cannot make a synthetic dataset in {root}: " + "; ".join(problems))


def check_dataset_folder(
    root: Path, settings: dict, *, kind: str, meta_name: str, version: int, expected: list[Path]
) -> bool:
    """True if ``root`` holds the generated dataset ``kind`` made with ``settings`` (its
    description ``meta_name`` records them and ``version``, and every ``expected`` file is
    there), False if ``root`` is absent or an empty folder.

    Raises DatasetFolderError (a FileExistsError) naming ``root`` when it holds anything else;
    nothing is touched. Shared by the generated datasets (synthetic motion, Moving MNIST).
    """
    if not root.exists():
        return False
    if not root.is_dir():
        raise DatasetFolderError(f"{root} exists and is not a folder; cannot make a dataset there")
    if not any(root.iterdir()):
        return False
    meta_path = root / meta_name
    if not meta_path.is_file():
        raise DatasetFolderError(
            f"{root} is not empty and holds no {kind} dataset (no {meta_name}); refusing "
            "to write into it. Give a new or empty folder."
        )
    try:
        meta = json.loads(meta_path.read_text())
        found, found_version = meta["settings"], meta["version"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetFolderError(
            f"{meta_path} is not a readable vssl {kind} dataset description ({err}); "
            f"{root} was left untouched"
        ) from err
    if found_version != version or found != settings:
        diffs = []
        if found_version != version:
            diffs.append(f"version {found_version} (this vssl writes {version})")
        diffs += [
            f"{key}={found.get(key)!r} (asked {value!r})"
            for key, value in settings.items()
            if isinstance(found, dict) and found.get(key) != value
        ]
        raise DatasetFolderError(
            f"{root} holds a {kind} dataset made with other settings: {', '.join(diffs)}. "
            "It was left untouched; use another folder, or delete this one to rebuild it."
        )
    missing = [p for p in expected if not (root / p).is_file()]
    if missing:
        raise DatasetFolderError(
            f"{root} holds an incomplete {kind} dataset: {root / missing[0]} and "
            f"{len(missing) - 1} more videos are missing. Delete the folder to rebuild it."
        )
    return True


def write_dataset_folder(
    root: Path, write: Callable[[Path], object], written_by_another: Callable[[], bool]
) -> None:
    """Writes a generated dataset into a hidden folder beside ``root`` and renames it to
    ``root`` (an absent or empty folder), so that an interrupted write never leaves a folder
    that looks complete. When another process finished the same dataset first
    (``written_by_another()``), its folder is kept and this one dropped. Shared by the
    generated datasets (synthetic motion, Moving MNIST)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        write(partial)
        try:
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            os.rename(partial, root)
        except OSError as err:
            if written_by_another():
                shutil.rmtree(partial)
                return
            raise DatasetFolderError(f"could not move the new dataset into {root}: {err}") from err
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _matches_existing(root: Path, settings: dict) -> bool:
    """True if ``root`` holds this very dataset, False if it is absent or an empty folder
    (see `check_dataset_folder`)."""
    return check_dataset_folder(
        root,
        settings,
        kind="synthetic",
        meta_name="synthetic.json",
        version=SYNTHETIC_VERSION,
        expected=_expected_files(settings),
    )


def _write_dataset(
    folder: Path, motions: tuple[MotionClass, ...], settings: dict, progress: bool
) -> dict[str, int]:
    """Renders and encodes every video of the dataset into ``folder``; returns split counts."""
    frames, size, seed = settings["frames"], settings["size"], settings["seed"]
    n_train, n_test = split_sizes(settings["videos_per_class"], settings["test_fraction"])
    jobs = [(m, i) for m in motions for i in range(n_train + n_test)]
    for motion, i in track(
        jobs, description=f"writing {folder.name}", disable=not progress, transient=True
    ):
        split = "train" if i < n_train else "test"
        clip = render_clip(motion, clip_rng(seed, motion.name, i), frames, size)
        path = folder / split / motion.name / f"{motion.name}_{i:04d}.mp4"
        if "audio" in settings:
            from vssl.data.audio import write_video_with_audio

            rate = settings["audio"]["sample_rate"]
            write_video_with_audio(
                path,
                clip.frames,
                clip_sound(clip, motion, settings["fps"], sound_rng(seed, motion.name, i), rate),
                fps=settings["fps"],
                sample_rate=rate,
                codec=settings["codec"],
                crf=settings["crf"],
                audio_codec=settings["audio"]["codec"],
            )
        else:
            write_video(
                path, clip.frames, fps=settings["fps"], codec=settings["codec"], crf=settings["crf"]
            )
    counts = {"train": n_train * len(motions), "test": n_test * len(motions)}
    (folder / "classes.txt").write_text("".join(f"{m.name}\n" for m in motions))
    meta = {
        "format": "vssl-synthetic",
        "version": SYNTHETIC_VERSION,
        "settings": settings,
        "counts": counts,
        "motions": {m.name: {"kind": m.kind, "angle": m.angle, "sign": m.sign} for m in motions},
    }
    (folder / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return counts


def make_synthetic(
    root: str | Path,
    classes: int = 8,
    videos_per_class: int = 24,
    seed: int = 0,
    frames: int = 32,
    size: int = 64,
    fps: int = 25,
    test_fraction: float = 0.25,
    progress: bool = False,
    audio: bool = False,
) -> Path:
    """Writes the synthetic dataset into ``root`` unless it is already there; returns ``root``.

    Layout: ``root/{train,test}/<class>/<class>_<i:04d>.mp4`` (H.264), ``root/classes.txt`` and
    ``root/synthetic.json``. The test split holds the last ``round(test_fraction * N)`` indices
    of each class (no ``test`` folder when that is 0). Safe to call again: the same settings
    return at once; a folder holding anything else raises FileExistsError and is never
    modified. Videos are written into a hidden sibling folder that is renamed at the end, so an
    interrupted run leaves no half dataset. ``audio`` adds the sound track of `clip_sound`
    (AAC, mono, `SOUND_RATE`); without it the files are silent.
    """
    root = Path(root).expanduser().resolve()
    _check_args(root, classes, videos_per_class, seed, frames, size, fps, test_fraction)
    motions = SYNTHETIC_CLASSES[:classes]
    settings = _settings(motions, videos_per_class, seed, frames, size, fps, test_fraction, audio)
    if _matches_existing(root, settings):
        return root
    write_dataset_folder(
        root,
        lambda folder: _write_dataset(folder, motions, settings, progress),
        lambda: _matches_existing(root, settings),
    )
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m vssl make-synthetic DIR ...``: writes the dataset and prints what it did."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="python -m vssl make-synthetic",
        description="Write the synthetic motion-classes video dataset (does nothing if DIR "
        "already holds it with the same settings).",
    )
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML file of these options"
    )
    parser.add_argument("root", metavar="DIR", help="folder to create")
    parser.add_argument("--classes", type=int, default=8, help="number of classes (1-16)")
    parser.add_argument("--videos-per-class", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=32, help="frames per video")
    parser.add_argument("--size", type=int, default=64, help="frame width and height (even)")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--audio", action="store_true", help="add a sound track that follows the motion (AAC)"
    )
    args = parser.parse_args(argv)
    existed = (Path(args.root) / "synthetic.json").is_file()
    start = time.perf_counter()
    try:
        root = make_synthetic(
            args.root,
            classes=args.classes,
            videos_per_class=args.videos_per_class,
            seed=args.seed,
            frames=args.frames,
            size=args.size,
            fps=args.fps,
            test_fraction=args.test_fraction,
            progress=not args.quiet,
            audio=args.audio,
        )
    except (ValueError, FileExistsError) as err:
        print(f"vssl make-synthetic: error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    counts = json.loads((root / "synthetic.json").read_text())["counts"]
    what = "already there, nothing written" if existed else f"written in {elapsed:.1f} s"
    print(
        f"{root}: {args.classes} classes, {counts['train']} train + {counts['test']} test videos "
        f"of {args.frames} frames at {args.size}x{args.size} ({what})"
    )
    return 0
