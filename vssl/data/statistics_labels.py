"""The labels of the spatio-temporal statistics task, and the worker transform that computes them.

A clip's labels say where its largest motion is and in which direction it goes, where its
colours change most and least over time, and which colours dominate, over three spatial
partitions of the frame (`region_masks`): 14 motion labels from the optical flow
(`motion_statistics`) and 13 appearance labels from the RGB frames (`appearance_statistics`),
as defined by the two papers:

- Wang et al., "Self-supervised Spatio-temporal Representation Learning for Videos by Predicting
  Motion and Appearance Statistics" (MAS), CVPR 2019, https://arxiv.org/abs/1904.03597
- Wang et al., "Self-Supervised Video Representation Learning by Uncovering Spatio-Temporal
  Statistics" (STS), TPAMI 2021, https://arxiv.org/abs/2008.13426

with the official code's orientation bins (bin k centred at ``45 (k - 1)`` degrees) and region
numbering. Differences from the official code, on purpose:

- Flow is computed on the fly (`vssl.data.flow.compute_flow`, OpenCV DIS by default) on the
  frames *after* they were cropped and flipped (`StatisticsTransform`), so the labels describe
  what the network sees. The official code flips RGB and u-flow without negating u, so its
  u-orientation labels are wrong for flipped clips.
- Prewitt derivatives are correlations (positive x to the right, positive y downwards). The
  official code uses ``scipy.ndimage.convolve``, which flips the kernel, so each of its
  orientation labels is this module's rotated by 180 degrees (label + 4 mod 8). Borders
  replicate the edge pixel, which for 3x3 kernels is what the official ``mode='reflect'`` does.
- Dominant colour is the octant holding the most pixels (the papers' definition), not the octant
  of the single most frequent exact RGB value (the official fast version).

Defined outputs for degenerate clips (labels are 1-based; 0 means "undefined" and is ignored by
the losses): when the motion-boundary magnitude of u (or v) is zero everywhere (e.g. a still
clip, or a uniform translation), that component's location and orientation labels are 0 for
every pattern; when every flow field's boundary magnitude is zero, the global label is 0. Ties
between regions, bins or frames go to the lowest index (so a clip whose colours never change
gets diversity and stability locations 1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2

from vssl.data.flow import FLOW_METHODS, compute_flow_into, limit_threads, scratch

PATTERNS: dict[str, int] = {"p1": 16, "p2": 4, "p3": 8}
"""The three spatial partitions and their numbers of regions."""

NUM_BINS = 8
"""Orientation bins (centred every 45 degrees, bin 1 at 0 degrees) and colour octants."""

MOTION_LABELS: tuple[str, ...] = tuple(
    f"{p}_{c}_{k}" for p in PATTERNS for c in ("u", "v") for k in ("loc", "ori")
) + ("u_global", "v_global")
"""Names of the 14 motion labels, in the order of `motion_statistics`."""

APPEARANCE_LABELS: tuple[str, ...] = tuple(
    f"{p}_{k}" for p in PATTERNS for k in ("div_loc", "div_col", "stable_loc", "stable_col")
) + ("global_col",)
"""Names of the 13 appearance labels, in the order of `appearance_statistics`."""

LABEL_GROUPS = ("p1", "p2", "p3", "global")
"""Groups of labels that can be switched off; every label belongs to exactly one."""

OCTANT_COLOURS = np.array(
    [
        [64, 64, 192],
        [64, 192, 192],
        [192, 64, 192],
        [192, 192, 192],
        [64, 64, 64],
        [64, 192, 64],
        [192, 64, 64],
        [192, 192, 64],
    ],
    dtype=np.uint8,
)
"""A representative RGB colour of each octant 1..8 (the centre of its cube), for display."""


# ------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Geometry:
    """Everything about the partitions of an S x S frame that labels need, computed once.

    Atoms are the intersections of one region of each pattern (pixels on a p3 diagonal form
    atoms of their own, as they belong to two triangles); every region is a union of atoms,
    so per-atom histograms summed by ``atom_members`` give the histogram of every region.
    """

    size: int
    masks: dict[str, np.ndarray]  # pattern -> bool (R, S, S)
    region_sizes: np.ndarray  # float64 (28,): pixels per region, p1, p2, p3 in order
    region_pixels: dict[str, tuple[np.ndarray, ...]]  # pattern -> flat pixel indices per region
    atom_map: np.ndarray  # intp (S, S): the atom of each pixel
    atom_members: np.ndarray  # float32 (28, A): which atoms make up each region
    channel_atoms: np.ndarray  # uint8 (S, 3 S): 3 * atom + channel of each value of an HWC frame


def _check_size(size: int, what: str) -> None:
    if size < 8 or size % 8:
        raise ValueError(f"{what}: frames must be square with a side divisible by 8, got {size}")


@functools.lru_cache(maxsize=16)
def _geometry(size: int) -> _Geometry:
    _check_size(size, "region masks")
    s = size
    i, j = np.mgrid[0:s, 0:s]
    p1 = (i // (s // 4)) * 4 + j // (s // 4)
    # Chebyshev distance from the centre in half pixels, in steps of S/8 pixels.
    p2 = np.minimum(np.maximum(abs(2 * i - (s - 1)), abs(2 * j - (s - 1))) // (s // 4), 3)
    top, left = i < s // 2, j < s // 2
    anti = i + j - (s - 1)
    # The triangle (0-based) of each pixel; a pixel on a diagonal is also in the next one.
    p3 = np.select(
        [top & left, top & ~left, ~top & left],
        [np.where(i >= j, 0, 1), np.where(anti <= 0, 2, 3), np.where(anti <= 0, 4, 5)],
        np.where(i >= j, 6, 7),
    )
    on_diagonal = np.where(top == left, i == j, anti == 0)
    regions = [np.arange(n)[:, None, None] for n in PATTERNS.values()]
    masks = {
        "p1": p1[None] == regions[0],
        "p2": p2[None] == regions[1],
        "p3": (p3[None] == regions[2]) | (on_diagonal[None] & (p3[None] + 1 == regions[2])),
    }
    for m in masks.values():
        m.setflags(write=False)
    flat = {name: m.reshape(len(m), -1) for name, m in masks.items()}
    _, atom_map = np.unique(((p1 * 4 + p2) * 8 + p3) * 2 + on_diagonal, return_inverse=True)
    atom_map = atom_map.reshape(s, s).astype(np.intp)
    first_pixel = np.unique(atom_map.ravel(), return_index=True)[1]
    members = np.concatenate([flat[name][:, first_pixel] for name in PATTERNS]).astype(np.float32)
    n_atoms = members.shape[1]
    if 3 * n_atoms > 256:
        raise ValueError(f"{s}x{s} frames have {n_atoms} atoms, more than one byte can index")
    channel_atoms = (3 * atom_map[:, :, None] + np.arange(3)).reshape(s, 3 * s)
    channel_atoms = channel_atoms.astype(np.uint8)
    channel_atoms.setflags(write=False)
    return _Geometry(
        size=s,
        masks=masks,
        region_sizes=np.concatenate([m.sum(axis=1) for m in flat.values()]).astype(np.float64),
        region_pixels={name: tuple(np.flatnonzero(r) for r in m) for name, m in flat.items()},
        atom_map=atom_map,
        atom_members=members,
        channel_atoms=channel_atoms,
    )


def region_masks(size: int) -> dict[str, np.ndarray]:
    """The regions of the patterns on a ``size`` x ``size`` frame: pattern -> bool ``(R, S, S)``.

    ``p1``: 4x4 blocks, row by row. ``p2``: the centre square of side S/4, then rings of width
    S/8, from the centre out. ``p3``: 8 triangles cut by the midlines and diagonals, numbered as
    the official code: 1, 2 the top-left quadrant below and above its main diagonal; 3, 4 the
    top-right quadrant above-left and below-right of its anti-diagonal; 5, 6 the bottom-left
    quadrant likewise; 7, 8 the bottom-right quadrant below and above its main diagonal
    (diagonal pixels are in both triangles). Region ``r`` is label ``r + 1``. Arrays are cached
    and read-only.
    """
    return _geometry(size).masks


# ------------------------------------------------------------------------------- inputs
def _as_numpy(x: np.ndarray | Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _square_side(h: int, w: int, what: str) -> int:
    if h != w:
        raise ValueError(f"{what}: frames must be square (H == W), got {h}x{w}")
    _check_size(h, what)
    return h


# ------------------------------------------------------------------------------- motion
_DIFF = np.array([-1, 0, 1], dtype=np.float32)
_BOX = np.ones(3, dtype=np.float32)


def _pad_rows(planes: np.ndarray, name: str) -> np.ndarray:
    """float planes ``(N, H, W)`` -> ``(N, H + 2, W)`` float32 with the edge rows repeated (a
    scratch array: see `vssl.data.flow.scratch`)."""
    n, h, w = planes.shape
    padded = scratch(name, (n, h + 2, w))
    padded[:, 1:-1] = planes
    padded[:, 0], padded[:, -1] = planes[:, 0], planes[:, -1]
    return padded


def _prewitt_padded(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prewitt ``(d/dx, d/dy)`` of planes ``(N, H + 2, W)`` whose first and last rows repeat
    their neighbours, as scratch arrays of the same shape (rows 1..H hold the result).

    The planes stacked are one tall image: a 3x3 filter of row ``r`` of a plane reads only rows
    ``r - 1 .. r + 1`` of the same padded plane, so one OpenCV call per derivative gives every
    plane exactly its own replicated-border filter.
    """
    tall = padded.reshape(-1, padded.shape[-1])
    dx, dy = scratch("prewitt_dx", padded.shape), scratch("prewitt_dy", padded.shape)
    replicate = cv2.BORDER_REPLICATE
    cv2.sepFilter2D(tall, cv2.CV_32F, _DIFF, _BOX, dst=dx.reshape(tall.shape), borderType=replicate)
    cv2.sepFilter2D(tall, cv2.CV_32F, _BOX, _DIFF, dst=dy.reshape(tall.shape), borderType=replicate)
    return dx, dy


def prewitt(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prewitt derivatives ``(d/dx, d/dy)`` of float planes ``(..., H, W)`` (float32 copies).

    Correlation with ``[[-1, 0, 1]] * 3`` (x to the right) and its transpose (y downwards),
    borders replicated. A linear ramp ``a * x + b * y`` gives ``(6a, 6b)`` inside the frame.
    """
    planes = np.asarray(planes, dtype=np.float32)
    if planes.ndim < 2:
        raise ValueError(f"prewitt needs planes of shape (..., H, W), got {planes.shape}")
    with limit_threads(1):
        dx, dy = _prewitt_padded(_pad_rows(planes.reshape(-1, *planes.shape[-2:]), "prewitt"))
    return dx[:, 1:-1].reshape(planes.shape).copy(), dy[:, 1:-1].reshape(planes.shape).copy()


def orientation_histogram(
    angle: np.ndarray,
    magnitude: np.ndarray,
    groups: np.ndarray | None = None,
    num_groups: int = 1,
) -> np.ndarray:
    """The 8-bin histogram of ``angle`` (degrees), each value voting with its ``magnitude``.

    Bin k (0-based) is centred at ``45 k`` degrees, as in the official code: an angle ``a``
    votes ``1 - r`` into bin ``floor(a / 45)`` and ``r`` into the next one (bin 7 wraps to 0),
    ``r = (a mod 45) / 45``, a linear split between the two nearest bin centres. With ``groups``
    (an int per value, < ``num_groups``), one histogram per group. Returns float64 ``(8,)``, or
    ``(num_groups, 8)`` with ``groups``.
    """
    angle = np.asarray(angle, dtype=np.float64).ravel()
    magnitude = np.asarray(magnitude, dtype=np.float64).ravel()
    position = angle / 45.0
    below = np.floor(position)
    upper = position - below
    lo = below.astype(np.int64) % NUM_BINS
    hi = (lo + 1) % NUM_BINS
    if groups is not None:
        base = np.asarray(groups, dtype=np.int64).ravel() * NUM_BINS
        lo, hi = lo + base, hi + base
    size = NUM_BINS * num_groups
    hist = np.bincount(lo, magnitude * (1 - upper), minlength=size)
    hist += np.bincount(hi, magnitude * upper, minlength=size)
    return hist if groups is None else hist.reshape(num_groups, NUM_BINS)


@dataclass
class MotionBoundaries:
    """The motion boundaries of a clip's flow, summed over time, for u and v.

    ``dx``/``dy``: float32 ``(2, S, S)``, the summed Prewitt derivatives of u (row 0) and v
    (row 1); ``magnitude``: ``(2, S, S)``; ``per_field``: ``(T, 2)``, each field's boundary
    magnitude summed over its pixels (the global labels).
    """

    dx: np.ndarray
    dy: np.ndarray
    magnitude: np.ndarray
    per_field: np.ndarray

    @property
    def angle(self) -> np.ndarray:
        """Direction of the summed gradient, degrees in [0, 360), x right and y down."""
        return np.degrees(np.arctan2(self.dy.astype(np.float64), self.dx)) % 360.0


def _magnitude_into(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``sqrt(x * x + y * y)`` of float32 arrays into ``out``, each operation rounded on its own.

    Not ``cv2.magnitude``: its IPP code is off by up to two units in the last place, in a way
    that no other implementation reproduces, and the labels on the device
    (`vssl.data.statistics_labels_torch`) must be bit for bit these.
    """
    yy = scratch("magnitude_yy", x.shape)
    np.multiply(x, x, out=out)
    np.multiply(y, y, out=yy)
    np.add(out, yy, out=out)
    return np.sqrt(out, out=out)


def _sum_over_time(planes: np.ndarray) -> np.ndarray:
    """float32 planes ``(T, ...)`` -> their sum ``(...)``, added in time order in float32:
    ``((p0 + p1) + p2) + ...``, the order that `vssl.data.statistics_labels_torch` follows."""
    total = np.empty(planes.shape[1:], np.float32)
    if len(planes) == 1:
        np.copyto(total, planes[0])
        return total
    np.add(planes[0], planes[1], out=total)
    for plane in planes[2:]:
        np.add(total, plane, out=total)
    return total


def _boundaries_padded(padded: np.ndarray) -> MotionBoundaries:
    """`MotionBoundaries` of flow laid out as `vssl.data.flow.compute_flow_into` writes it with
    ``pad=1``: float32 ``(T, 2, S + 2, S)``, edge rows repeated.

    Sums over time are float32 additions in time order; a field's pixels are summed in float64
    (whatever their order, within a few float64 roundings of the exact sum).
    """
    t, _, hp, w = padded.shape
    dx, dy = _prewitt_padded(padded.reshape(2 * t, hp, w))
    field_magnitude = _magnitude_into(dx, dy, scratch("boundary_magnitude", dx.shape))
    per_field = field_magnitude[:, 1:-1].sum(axis=(1, 2), dtype=np.float64).reshape(t, 2)
    sx = _sum_over_time(dx.reshape(t, 2, hp, w)[:, :, 1:-1])
    sy = _sum_over_time(dy.reshape(t, 2, hp, w)[:, :, 1:-1])
    magnitude = _magnitude_into(sx, sy, np.empty_like(sx))
    return MotionBoundaries(sx, sy, magnitude, per_field)


def _check_flow(flow: np.ndarray) -> None:
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must have shape (T, 2, H, W), got {tuple(flow.shape)}")
    if flow.shape[0] < 1:
        raise ValueError("flow must hold at least one field")
    _square_side(flow.shape[2], flow.shape[3], "motion statistics")


def motion_boundaries(flow: np.ndarray | Tensor) -> MotionBoundaries:
    """Prewitt motion boundaries of float ``(T, 2, S, S)`` flow (see `MotionBoundaries`)."""
    flow = _as_numpy(flow)
    _check_flow(flow)
    t, _, h, w = flow.shape
    with limit_threads(1):
        padded = _pad_rows(flow.reshape(2 * t, h, w), "flow")
        return _boundaries_padded(padded.reshape(t, 2, h + 2, w))


def region_scores(magnitude: np.ndarray) -> dict[str, np.ndarray]:
    """Location scores of the regions of each pattern for maps ``(..., S, S)``.

    The sum of the map over each p1 block and p3 triangle, its mean over each p2 region.
    Returns pattern -> ``(..., R)``.
    """
    magnitude = np.asarray(magnitude, dtype=np.float32)
    lead, (h, w) = magnitude.shape[:-2], magnitude.shape[-2:]
    geo = _geometry(_square_side(h, w, "region scores"))
    flat = magnitude.reshape(-1, h * w)
    n_atoms = geo.atom_members.shape[1]
    atoms = np.stack([np.bincount(geo.atom_map.ravel(), m, minlength=n_atoms) for m in flat])
    sums = atoms @ geo.atom_members.T.astype(np.float64)  # (N, 28)
    out = {"p1": sums[:, :16], "p2": sums[:, 16:20] / geo.region_sizes[16:20], "p3": sums[:, 20:]}
    return {name: v.reshape(*lead, -1) for name, v in out.items()}


def motion_statistics(flow: np.ndarray | Tensor) -> np.ndarray:
    """The 14 motion labels of a clip from its flow ``(T, 2, S, S)`` (numpy or torch; pixels).

    Order: ``[p1 u_loc, p1 u_ori, p1 v_loc, p1 v_ori, p2 (same four), p3 (same four), u_global,
    v_global]`` (`MOTION_LABELS`), 1-based, int64; 0 where undefined (no motion boundary at all
    in that component). S must be divisible by 8.
    """
    with limit_threads(1):
        return _motion_labels(motion_boundaries(flow))


def _motion_labels(mb: MotionBoundaries) -> np.ndarray:
    """The 14 motion labels (`motion_statistics`) from a clip's motion boundaries."""
    geo = _geometry(mb.magnitude.shape[-1])
    scores = region_scores(mb.magnitude)
    labels = np.zeros(14, dtype=np.int64)
    # The pixels of the six chosen regions (pattern x component), voted in one pass.
    chosen, groups, slots = [], [], []
    for k, name in enumerate(PATTERNS):
        for c in range(2):
            region = int(np.argmax(scores[name][c]))
            if scores[name][c, region] <= 0:
                continue
            labels[4 * k + 2 * c] = region + 1
            pixels = geo.region_pixels[name][region]
            chosen.append(pixels + c * mb.magnitude[0].size)
            groups.append(np.full(len(pixels), len(slots)))
            slots.append(4 * k + 2 * c + 1)
    if slots:
        pixels = np.concatenate(chosen)
        hist = orientation_histogram(
            np.degrees(np.arctan2(mb.dy.ravel()[pixels].astype(np.float64), mb.dx.ravel()[pixels])),
            mb.magnitude.ravel()[pixels],
            np.concatenate(groups),
            len(slots),
        )
        labels[slots] = hist.argmax(axis=1) + 1
    best = mb.per_field.argmax(axis=0)
    top = mb.per_field[best, [0, 1]]
    labels[12:] = np.where(top > 0, best + 1, 0)
    return labels


# ------------------------------------------------------------------------------- appearance
def _octant_gray(image: np.ndarray, work: bool = False) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> uint8 ``(H, W)``: each pixel's octant corner as a gray value.

    Thresholding sends every pixel to a corner of the RGB cube (each channel 0 or 255); the gray
    values of the 8 corners are distinct (`_OCTANT_GRAY`), so the gray image names the octant
    with one byte per pixel, in two of OpenCV's fastest passes. ``work``: into scratch arrays
    (`vssl.data.flow.scratch`) rather than new ones.
    """
    if not work:
        corner = cv2.threshold(image, 127, 255, cv2.THRESH_BINARY)[1]
        return cv2.cvtColor(corner, cv2.COLOR_RGB2GRAY)
    corner = scratch("octant_corner", image.shape, np.uint8)
    cv2.threshold(image, 127, 255, cv2.THRESH_BINARY, dst=corner)
    gray = scratch("octant_gray", image.shape[:2], np.uint8)
    return cv2.cvtColor(corner, cv2.COLOR_RGB2GRAY, dst=gray)


_OCTANT_GRAY = _octant_gray(255 * (OCTANT_COLOURS[None] >= 128).astype(np.uint8))[0]
"""The `_octant_gray` value of the octants 1..8 (in that order)."""
if len(set(_OCTANT_GRAY.tolist())) != NUM_BINS:
    raise RuntimeError(f"OpenCV's RGB2GRAY maps two colour octants alike: {_OCTANT_GRAY}")
_GRAY_TO_OCTANT = np.zeros((1, 256), dtype=np.uint8)
_GRAY_TO_OCTANT[0, _OCTANT_GRAY] = np.arange(1, NUM_BINS + 1)


def colour_octants(clip: np.ndarray) -> np.ndarray:
    """Octant label 1..8 of every pixel of uint8 RGB ``(..., 3)``:
    ``1 + 2 [R >= 128] + [G >= 128] + 4 [B < 128]``. Returns uint8 of shape ``clip.shape[:-1]``."""
    clip = np.ascontiguousarray(clip, dtype=np.uint8)
    if clip.ndim < 2 or clip.shape[-1] != 3:
        raise ValueError(f"colour_octants needs uint8 RGB (..., 3), got shape {clip.shape}")
    gray = _octant_gray(clip.reshape(-1, 1, 3))
    return cv2.LUT(gray, _GRAY_TO_OCTANT).reshape(clip.shape[:-1])


@functools.lru_cache(maxsize=16)
def _sparse_members(size: int) -> Tensor:
    """`_Geometry.atom_members` as a sparse (COO) torch matrix: a region is the sum of a few
    atoms, so the sparse product adds only those rows instead of multiplying by every atom."""
    return torch.from_numpy(_geometry(size).atom_members).to_sparse()


@functools.lru_cache(maxsize=16)
def _atom_image(size: int, frames: int) -> np.ndarray:
    """The atom of every pixel of ``frames`` stacked frames: read-only uint8 ``(frames * S, S)``."""
    atom_map = _geometry(size).atom_map
    if atom_map.max() > 255:
        raise ValueError(f"{size}x{size} frames have more than 256 atoms")
    image = np.broadcast_to(atom_map.astype(np.uint8), (frames, size, size))
    image = np.ascontiguousarray(image).reshape(frames * size, size)
    image.setflags(write=False)
    return image


def _atom_octant_counts(clip: np.ndarray, n_atoms: int, max_pixels: int = 1 << 24) -> np.ndarray:
    """Pixels of each colour octant in each atom over all frames of ``(T, S, S, 3)``: ``(A, 8)``.

    One 2-D histogram (atom x `_octant_gray` value) per run of frames. calcHist counts in
    float32, exact below 2**24, so runs hold fewer than ``max_pixels`` pixels.
    """
    t, s = clip.shape[:2]
    step = max(1, (max_pixels - 1) // (s * s))
    atoms = _atom_image(s, min(t, step))
    counts = np.zeros((n_atoms, NUM_BINS), dtype=np.int64)
    for start in range(0, t, step):
        part = clip[start : start + step]
        n = len(part)
        gray = _octant_gray(part.reshape(n * s, s, 3), work=True)
        hist = cv2.calcHist(
            [atoms[: n * s], gray], [0, 1], None, [n_atoms, 256], [0, n_atoms, 0, 256]
        )
        counts += hist[:, _OCTANT_GRAY].astype(np.int64)
    return counts


def _clip_hwc(clip: np.ndarray | Tensor) -> np.ndarray:
    array = _as_numpy(clip)
    if array.ndim != 4 or array.dtype != np.uint8 or 3 not in (array.shape[1], array.shape[3]):
        raise ValueError(
            "appearance statistics need a uint8 RGB clip (T, H, W, 3) or (T, 3, H, W), got "
            f"{array.dtype} of shape {tuple(array.shape)}"
        )
    if array.shape[3] != 3:
        array = array.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(array)


@dataclass
class AppearanceRegions:
    """Per-region appearance of a clip: ``iou`` (colour stability over time, 1 = unchanged) and
    ``octant_counts`` (pixels of each colour octant over all frames), per pattern, plus the
    ``global_counts`` of the whole clip."""

    iou: dict[str, np.ndarray]
    octant_counts: dict[str, np.ndarray]
    global_counts: np.ndarray


def _region_sums(geo: _Geometry, atom_values: np.ndarray) -> np.ndarray:
    """Sums of per-atom rows over the atoms of each region: float32 ``(28, K)``.

    A torch matmul under `limit_threads`: numpy's would go through a BLAS with its own
    threads, whose idle spinning slows the surrounding code many times over on a busy machine.
    """
    values = torch.from_numpy(atom_values.astype(np.float32))
    return (torch.from_numpy(geo.atom_members) @ values).numpy()


def appearance_regions(clip: np.ndarray | Tensor) -> AppearanceRegions:
    """Colour-histogram IoU over time and colour-octant counts of every region of a clip."""
    clip = _clip_hwc(clip)
    if clip.shape[0] < 1:
        raise ValueError("appearance statistics need at least one frame")
    _square_side(clip.shape[1], clip.shape[2], "appearance statistics")
    with limit_threads(1):
        return _appearance_regions(clip)


def _appearance_regions(clip: np.ndarray) -> AppearanceRegions:
    """`appearance_regions` of a checked, C-contiguous uint8 clip ``(T, S, S, 3)``."""
    s = clip.shape[1]
    geo = _geometry(s)
    n_atoms = geo.atom_members.shape[1]
    members = _sparse_members(s)
    # Per frame, one 2-D histogram (atom and channel, value) of the frame's bytes, then the
    # histograms of the 28 regions as sums of atoms: (28, 3 * 256) exact float32 counts.
    atom_hist = scratch("atom_hist", (3 * n_atoms, 256))
    atom_view = torch.from_numpy(atom_hist).view(n_atoms, 3 * 256)
    images, sizes, ranges = [geo.channel_atoms, None], [3 * n_atoms, 256], [0, 3 * n_atoms, 0, 256]
    lowest = highest = None
    for frame in clip:  # one frame at a time keeps the histograms in cache
        images[1] = frame.reshape(s, 3 * s)
        cv2.calcHist(images, [0, 1], None, sizes, ranges, hist=atom_hist)
        hist = torch.sparse.mm(members, atom_view)
        if lowest is None:
            lowest, highest = hist, hist.clone()
        else:
            torch.minimum(lowest, hist, out=lowest)
            torch.maximum(highest, hist, out=highest)
    inter = lowest.numpy().reshape(-1, 3, 256).sum(axis=-1, dtype=np.float64)  # (28, 3)
    union = highest.numpy().reshape(-1, 3, 256).sum(axis=-1, dtype=np.float64)
    iou = (inter / union).mean(axis=-1)
    atom_octants = _atom_octant_counts(clip, n_atoms)
    counts = _region_sums(geo, atom_octants)  # (28, 8)
    bounds = {"p1": slice(0, 16), "p2": slice(16, 20), "p3": slice(20, 28)}
    return AppearanceRegions(
        iou={p: iou[b] for p, b in bounds.items()},
        octant_counts={p: counts[b] for p, b in bounds.items()},
        global_counts=atom_octants.sum(axis=0),
    )


def appearance_statistics(clip: np.ndarray | Tensor) -> np.ndarray:
    """The 13 appearance labels of a uint8 RGB clip ``(T, S, S, 3)`` (or ``(T, 3, S, S)``).

    Order: ``[p1 div_loc, p1 div_col, p1 stable_loc, p1 stable_col, p2 (same four), p3 (same
    four), global_col]`` (`APPEARANCE_LABELS`), 1-based, int64. The most diverse region has the
    lowest colour-histogram IoU over time, the most stable the highest; a colour is the octant
    (`colour_octants`) holding most of the region's pixels over all frames.
    """
    return _appearance_labels(appearance_regions(clip))


def _appearance_labels(stats: AppearanceRegions) -> np.ndarray:
    """The 13 appearance labels (`appearance_statistics`) from a clip's region statistics."""
    labels = []
    for name in PATTERNS:
        iou, counts = stats.iou[name], stats.octant_counts[name]
        for region in (int(np.argmin(iou)), int(np.argmax(iou))):
            labels += [region + 1, int(np.argmax(counts[region])) + 1]
    labels.append(int(np.argmax(stats.global_counts)) + 1)
    return np.array(labels, dtype=np.int64)


# ------------------------------------------------------------------------------- label sets
def label_group(name: str) -> str:
    """The switchable group (`LABEL_GROUPS`) of a motion or appearance label name."""
    prefix = name.split("_", 1)[0]
    return prefix if prefix in PATTERNS else "global"


def label_classes(name: str, num_fields: int) -> int:
    """How many values a label takes (its labels are 1..that): region counts for locations,
    8 for orientations and colours, ``num_fields`` (flow fields per clip) for global motion."""
    if name in ("u_global", "v_global"):
        return num_fields
    if name.endswith("_loc"):
        return PATTERNS[label_group(name)]
    return NUM_BINS


LABEL_PLACES = ("worker", "device")
"""Where the statistics task's labels are computed: in the DataLoader workers, per clip, by this
module, or per batch on the model's device (`vssl.data.statistics_labels_torch`)."""


class StatisticsTransform:
    """Worker-side transform of the statistics task: one sample's T + 1 frames -> T frames + labels.

    Crops (random for training, central otherwise) and flips (training only, with probability
    ``flip_p`` when ``flip``) all T + 1 frames alike, then computes optical flow on the cropped,
    flipped frames, the motion labels from the flow and the appearance labels from the first T
    frames, and drops the last frame. Frames whose short side is below ``crop_size`` are
    resized up first.
    The sample's ``video`` becomes uint8 ``(T, 3, S, S)``; ``motion`` (14) and ``appearance``
    (13) int64 label tensors are added. With ``labels="device"`` the labels are left to the
    task, which computes them per batch on its device (`vssl.data.statistics_labels_torch`,
    the same values): the sample gets the cropped, flipped ``flow``, float32 ``(T, 2, S, S)``,
    instead.

    Precomputed flow: when the sample holds ``flow``, float32 ``(T, 2, H, W)`` in pixels at the
    frames' size (field t from frame t to t + 1, u to the right, v downwards), it is cropped
    with the frames' box, flipped with them (u negated, unlike the official code) and used
    instead of computing flow.
    """

    def __init__(
        self,
        crop_size: int,
        train: bool,
        flip: bool = True,
        flow_method: str = "dis",
        flip_p: float = 0.5,
        labels: str = "worker",
    ):
        _check_size(crop_size, "statistics task crop_size")
        if flow_method not in FLOW_METHODS:
            raise ValueError(f"unknown flow_method {flow_method!r}; choose one of {FLOW_METHODS}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if labels not in LABEL_PLACES:
            raise ValueError(f"labels must be one of {LABEL_PLACES}, got {labels!r}")
        self.crop_size, self.train, self.flow_method = crop_size, train, flow_method
        self.flip_p = flip_p if flip else 0.0
        self.labels = labels

    def _checked(self, clip: Tensor) -> Tensor:
        """The clip validated and, when its short side is below the crop, resized up."""
        if clip.ndim != 4 or clip.shape[1] != 3 or clip.dtype != torch.uint8:
            raise ValueError(
                f"the statistics task needs uint8 clips (T+1, 3, H, W), got {clip.dtype} of "
                f"shape {tuple(clip.shape)}"
            )
        if min(clip.shape[-2:]) < self.crop_size:
            clip = v2.functional.resize(clip, self.crop_size, antialias=True)
        return clip

    def _crop_box(self, h: int, w: int) -> tuple[int, int, bool]:
        """The crop's top and left corner and whether to flip, drawn from torch's generator in
        one fixed order (top, left, flip) whichever way the frames are then copied."""
        size = self.crop_size
        if self.train:
            top = int(torch.randint(0, h - size + 1, ()))
            left = int(torch.randint(0, w - size + 1, ()))
        else:
            top, left = (h - size) // 2, (w - size) // 2
        flip = self.train and self.flip_p > 0 and bool(torch.rand(()) < self.flip_p)
        return top, left, flip

    def crop_and_flip(self, clip: Tensor) -> Tensor:
        """The cropped (and for training possibly flipped) clip, uint8 ``(N, 3, S, S)``."""
        clip = self._checked(clip)
        size = self.crop_size
        top, left, flip = self._crop_box(*clip.shape[-2:])
        clip = clip[:, :, top : top + size, left : left + size]
        return clip.flip(-1) if flip else clip

    def _frames(self, clip: Tensor) -> tuple[np.ndarray, Tensor, tuple[int, int, bool]]:
        """`crop_and_flip` as two copies: the frames channels-last ``(N, S, S, 3)`` (a scratch
        array, for flow and labels) and the first N - 1 planar ``(N - 1, 3, S, S)`` (a new
        tensor, the sample's video); and the crop box ``(top, left, flip)``.

        OpenCV flips, splits and merges the frames: torch's strided permutes and flips of uint8
        clips cost several times as much. Frames that are channels-last in memory (the MJPEG
        reader's) are copied (or flipped) row by row; planar frames come from one planar copy.
        """
        size = self.crop_size
        top, left, flip = self._crop_box(*clip.shape[-2:])
        view = clip[:, :, top : top + size, left : left + size]
        n, s = view.shape[0], size
        if n < 2:
            raise ValueError(f"the statistics task needs at least 2 frames, got {n}")
        frames = scratch("transform_frames", (n, s, s, 3), np.uint8)
        planes = scratch("transform_planes", (3, n, s, s), np.uint8)
        tall_planes = [p.reshape(n * s, s) for p in planes]
        pixels = view.permute(0, 2, 3, 1)
        if pixels.stride(-1) == 1 and pixels.stride(-2) == 3:
            source = pixels.numpy()
            if flip:
                for t in range(n):
                    cv2.flip(source[t], 1, dst=frames[t])
            else:
                np.copyto(frames, source)
            cv2.split(frames.reshape(n * s, s, 3), tall_planes)
        else:
            if flip:
                unflipped = scratch("transform_unflipped", (3, n, s, s), np.uint8)
                np.copyto(unflipped, view.numpy().transpose(1, 0, 2, 3))
                cv2.flip(unflipped.reshape(3 * n * s, s), 1, dst=planes.reshape(3 * n * s, s))
            else:
                np.copyto(planes, view.numpy().transpose(1, 0, 2, 3))
            cv2.merge(tall_planes, dst=frames.reshape(n * s, s, 3))
        video = torch.from_numpy(planes[:, :-1].transpose(1, 0, 2, 3).copy())  # not scratch
        return frames, video, (top, left, flip)

    def _given_flow(self, flow: object, decoded: Tensor, clip: Tensor) -> Tensor:
        """A sample's precomputed flow checked against its ``decoded`` frames, and resized (and
        rescaled, in pixels) as they were to ``clip``: float32 ``(T, 2, H, W)``."""
        n, _, h, w = decoded.shape
        if not isinstance(flow, Tensor | np.ndarray):
            raise ValueError(f"the sample's flow must be a tensor, got {type(flow).__name__}")
        flow = torch.as_tensor(flow)
        if flow.dtype != torch.float32 or tuple(flow.shape) != (n - 1, 2, h, w):
            raise ValueError(
                f"the sample's precomputed flow must be float32 ({n - 1}, 2, {h}, {w}) (one field "
                f"per pair of its {n} frames of {h}x{w}), got {flow.dtype} of shape "
                f"{tuple(flow.shape)}"
            )
        nh, nw = clip.shape[-2:]
        if (nh, nw) != (h, w):
            flow = torch.nn.functional.interpolate(
                flow, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
            )
            flow *= torch.tensor([nw / w, nh / h]).view(1, 2, 1, 1)
        return flow

    def _cropped_flow(self, flow: Tensor, box: tuple[int, int, bool], new: bool) -> np.ndarray:
        """Precomputed flow cut to the crop box and flipped with the frames: u negated, since
        a motion to the right is one to the left in the mirrored clip. float32 ``(T, 2, S, S)``:
        a new array if ``new``, else a scratch array."""
        top, left, flip = box
        size = self.crop_size
        view = flow[:, :, top : top + size, left : left + size].numpy()
        out = np.empty(view.shape, np.float32) if new else scratch("given_flow", view.shape)
        if flip:
            np.copyto(out, view[..., ::-1])
            np.negative(out[:, 0], out=out[:, 0])
        else:
            np.copyto(out, view)
        return out

    def __call__(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        # Work arrays are reused from clip to clip (`vssl.data.flow.scratch`).
        with limit_threads(1):
            clip = self._checked(sample["video"])
            given = None
            if "flow" in sample:
                given = self._given_flow(sample["flow"], sample["video"], clip)
            frames, video, box = self._frames(clip)
            n, s = frames.shape[:2]
            out = dict(sample)
            out.pop("flow", None)
            out["video"] = video
            device = self.labels == "device"
            if given is None:
                gray = scratch("transform_gray", (n, s, s), np.uint8)
                cv2.cvtColor(
                    frames.reshape(n * s, s, 3), cv2.COLOR_RGB2GRAY, gray.reshape(n * s, s)
                )
                if device:  # the sample's own array, without the rows that the filters use
                    flow = np.empty((n - 1, 2, s, s), np.float32)
                    compute_flow_into(gray, flow, method=self.flow_method)
                    out["flow"] = torch.from_numpy(flow)
                    return out
                padded = scratch("transform_flow", (n - 1, 2, s + 2, s))
                compute_flow_into(gray, padded, method=self.flow_method, pad=1)
            else:
                cropped = self._cropped_flow(given, box, new=device)
                if device:
                    out["flow"] = torch.from_numpy(cropped)
                    return out
                padded = _pad_rows(cropped.reshape(2 * (n - 1), s, s), "transform_flow")
                padded = padded.reshape(n - 1, 2, s + 2, s)
            motion = _motion_labels(_boundaries_padded(padded))
            appearance = _appearance_labels(_appearance_regions(frames[:-1]))
        out["motion"] = torch.from_numpy(motion)
        out["appearance"] = torch.from_numpy(appearance)
        return out
