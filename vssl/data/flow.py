"""Optical flow for the pretext tasks: computed on the fly with OpenCV, or read from disk.

`compute_flow` runs in DataLoader workers on the frames a task has already cropped and flipped,
so that flow-derived targets always describe exactly what the network sees. It uses one OpenCV
thread per call: the workers are the parallelism, and OpenCV's own thread pool would only
oversubscribe the cores.

The default DIS setting, ``fast_vr3``, is OpenCV's "fast" preset with 3 variational refinement
iterations instead of 5: 17% less time per clip (2.35 against 2.81 ms for the 16 fields of a
112x112 clip) with labels as close to a high-quality flow as the "fast" preset's. Measured on
120 clips of the four videos of ../shared/videos and 60 synthetic clips (16 + 1 frames, 112x112),
the 14 motion labels of `vssl.data.statistics_labels` from each setting's flow against those from
DIS "medium" flow: mean agreement over the labels 0.516 (fast_vr3) against 0.507 (fast) on the
videos, 0.400 against 0.406 on the synthetic clips; the paired per-clip difference, fast_vr3
minus fast, was +0.009 +- 0.006 and -0.006 +- 0.011 (standard errors), i.e. within noise, and
against Farneback flow 0.323 against 0.312 and 0.161 against 0.170. Cheaper settings agreed
less: 2 refinement iterations -0.007 +- 0.008 / -0.017 +- 0.013 (lower on both sources, so not
taken), 1 iteration -0.024 / -0.055, none ("ultrafast") -0.090 / -0.070, a patch stride of 6
-0.049 / -0.055. (The labels are argmaxes of noisy statistics: even "medium" and Farneback
flow agree on only 40% of the labels of the videos and 24% of the synthetic ones.)
``python benchmarks/statistics_labels.py --agreement --clips 40`` repeats the comparison for
the named settings on the benchmark's clips.

Units and layout everywhere: float32 ``(T, 2, H, W)`` in pixels, channel 0 = u (along x, to the
right), channel 1 = v (along y, downwards); field ``t`` is the flow from frame ``t`` to ``t + 1``.

Precomputed flow (for users who have TV-L1 flow on disk) follows the common JPEG layout of the
two-stream and MAS/STS code: a folder with ``u/`` and ``v/`` subfolders holding one 8-bit
grayscale image per field, sorted by name, where ``0..255`` maps linearly to ``-bound..bound``
pixels (``bound`` = 20 by default).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

FLOW_METHODS = ("dis", "farneback")
DIS_PRESETS: dict[str, tuple[int, int | None]] = {
    "ultrafast": (cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, None),
    "fast": (cv2.DISOPTICAL_FLOW_PRESET_FAST, None),
    "fast_vr3": (cv2.DISOPTICAL_FLOW_PRESET_FAST, 3),
    "medium": (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, None),
}
"""DIS settings by name: an OpenCV preset and its variational refinement iterations (None: the
preset's own)."""
DEFAULT_DIS_PRESET = "fast_vr3"
"""The default DIS setting (see the module docstring for the measurement behind it)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_BOUND = 20.0

_local = threading.local()


@contextlib.contextmanager
def limit_threads(n: int = 1) -> Iterator[None]:
    """Runs the block with OpenCV and torch limited to ``n`` threads, then restores both.

    Per-clip work on small arrays gains nothing from threads, and the idle spinning of
    OpenCV's and torch's thread pools slows it several times over on a busy machine (DataLoader
    workers already use all cores).
    """
    cv_before, torch_before = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(n)
    if torch_before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(cv_before)
        if torch_before != n:
            torch.set_num_threads(torch_before)


def _dis(preset: str) -> cv2.DISOpticalFlow:
    """One DIS object per thread and preset (creating one costs more than a small flow field)."""
    cache = getattr(_local, "dis", None)
    if cache is None:
        cache = _local.dis = {}
    if preset not in cache:
        opencv_preset, refinement = DIS_PRESETS[preset]
        dis = cv2.DISOpticalFlow_create(opencv_preset)
        if refinement is not None:
            dis.setVariationalRefinementIterations(refinement)
        cache[preset] = dis
    return cache[preset]


def to_gray_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 RGB frames ``(N, H, W, 3)`` or ``(N, 3, H, W)`` -> uint8 gray ``(N, H, W)``.

    A numpy array may also be channels-first and a tensor channels-last: the layout is taken
    from where the axis of size 3 is (channels-last wins when both are 3).
    """
    array = (
        frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    )
    if array.ndim != 4 or array.dtype != np.uint8 or 3 not in (array.shape[1], array.shape[3]):
        raise ValueError(
            "frames must be uint8 RGB of shape (N, H, W, 3) or (N, 3, H, W), got "
            f"{array.dtype} of shape {tuple(array.shape)}"
        )
    if array.shape[3] != 3:
        array = array.transpose(0, 2, 3, 1)
    n, h, w, _ = array.shape
    stacked = np.ascontiguousarray(array).reshape(n * h, w, 3)
    return cv2.cvtColor(stacked, cv2.COLOR_RGB2GRAY).reshape(n, h, w)


def scratch(name: str, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """A reusable per-thread work array: the same memory on every call with the same arguments.

    A worker's per-clip temporaries (flow fields, their derivatives, histograms) are large
    enough that glibc serves each fresh allocation from newly mapped pages, and faulting those
    pages in costs about as much as the arithmetic done on them. Reusing one array per name and
    shape avoids that. The contents are undefined on return, and a caller must be done with the
    array before the next call with the same name.
    """
    cache = getattr(_local, "scratch", None)
    if cache is None:
        cache = _local.scratch = {}
    key = (name, tuple(shape), np.dtype(dtype))
    array = cache.get(key)
    if array is None:
        if len(cache) >= 64:  # many clip sizes: start again rather than grow without bound
            cache.clear()
        array = cache[key] = np.empty(shape, dtype)
    return array


def _check_method(method: str, preset: str) -> None:
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown optical flow method {method!r}; choose one of {FLOW_METHODS}")
    if method == "dis" and preset not in DIS_PRESETS:
        raise ValueError(f"unknown DIS preset {preset!r}; choose one of {tuple(DIS_PRESETS)}")


def compute_flow_into(
    gray: np.ndarray,
    out: np.ndarray,
    method: str = "dis",
    preset: str = DEFAULT_DIS_PRESET,
    pad: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Optical flow of uint8 gray frames ``(T+1, H, W)`` written into ``out``; returns ``out``.

    ``out`` is float32 ``(T, 2, H + 2 pad, W)``, C-contiguous: field ``t`` goes to rows
    ``pad .. pad + H`` of ``out[t]``, and the ``pad`` rows above and below repeat the field's
    first and last rows. With ``pad=1`` the planes of ``out`` stacked into one tall image can be
    filtered by one 3x3 OpenCV call that gives each plane exactly its own replicated-border
    result (`vssl.data.statistics_labels.motion_boundaries`). Same flow as `compute_flow`.
    """
    _check_method(method, preset)
    gray = np.asarray(gray)
    if gray.ndim != 3 or gray.dtype != np.uint8:
        raise ValueError(f"gray frames must be uint8 (N, H, W), got {gray.dtype} {gray.shape}")
    n, h, w = gray.shape
    if n < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {n}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    shape = (n - 1, 2, h + 2 * pad, w)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be C-contiguous float32 of shape {shape}, got {out.dtype} {out.shape}"
        )
    with limit_threads(threads):
        dis = _dis(preset) if method == "dis" else None
        for t in range(n - 1):
            if dis is not None:
                field = dis.calc(gray[t], gray[t + 1], None)
            else:
                field = cv2.calcOpticalFlowFarneback(
                    gray[t], gray[t + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0
                )
            # into place (each plane's rows are contiguous in out): no transposed copy
            cv2.split(field, [out[t, 0, pad : pad + h], out[t, 1, pad : pad + h]])
    if pad:
        out[:, :, :pad] = out[:, :, pad : pad + 1]
        out[:, :, pad + h :] = out[:, :, pad + h - 1 : pad + h]
    return out


def compute_flow(
    frames: np.ndarray | torch.Tensor,
    method: str = "dis",
    preset: str = DEFAULT_DIS_PRESET,
    threads: int = 1,
) -> np.ndarray:
    """Optical flow between consecutive frames: T + 1 uint8 RGB frames -> float32 ``(T, 2, H, W)``.

    ``frames`` is ``(T+1, H, W, 3)`` numpy or ``(T+1, 3, H, W)`` torch (see `to_gray_frames`).
    ``method`` is ``dis`` (OpenCV's Dense Inverse Search, ``preset`` one of `DIS_PRESETS`,
    `DEFAULT_DIS_PRESET` by default) or ``farneback`` (OpenCV's Farneback with the parameters
    of its documentation example). OpenCV runs with ``threads`` threads during the call (1 suits
    DataLoader workers).
    """
    _check_method(method, preset)
    gray = to_gray_frames(frames)
    n, h, w = gray.shape
    if n < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {n}")
    out = np.empty((n - 1, 2, h, w), dtype=np.float32)
    return compute_flow_into(gray, out, method, preset, threads=threads)


def encode_flow(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Flow in pixels -> uint8 images of the same shape, ``-bound..bound`` mapped to ``0..255``.

    The quantisation of the TV-L1 JPEG layout: values beyond ``bound`` are clipped.
    """
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    scaled = (np.asarray(flow, dtype=np.float32) + bound) * (255.0 / (2 * bound))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def decode_flow(images: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """uint8 flow images -> float32 flow in pixels: ``0..255`` mapped back to ``-bound..bound``."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"flow images must be uint8, got {images.dtype}")
    return images.astype(np.float32) * np.float32(2 * bound / 255.0) - np.float32(bound)


def flow_image_files(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """The sorted image files of ``folder/u`` and ``folder/v``; raises if they do not pair up."""
    folder = Path(folder)
    files = []
    for name in ("u", "v"):
        sub = folder / name
        if not sub.is_dir():
            raise FileNotFoundError(f"{folder}: no '{name}' folder of flow images (expected {sub})")
        found = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"{sub}: no flow images ({', '.join(IMAGE_SUFFIXES)})")
        files.append(found)
    u, v = files
    if len(u) != len(v):
        raise ValueError(f"{folder}: {len(u)} images in u/ but {len(v)} in v/")
    return u, v


def read_flow_folder(
    folder: str | Path,
    indices: Sequence[int] | np.ndarray | None = None,
    bound: float = DEFAULT_BOUND,
) -> np.ndarray:
    """Precomputed flow of one video from ``folder/u`` and ``folder/v`` -> float32 ``(T, 2, H, W)``.

    ``indices`` picks fields by position in the sorted file lists (all fields when None).
    """
    u_files, v_files = flow_image_files(folder)
    count = len(u_files)
    idx = np.arange(count) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    bad = idx[(idx < 0) | (idx >= count)]
    if bad.size:
        raise IndexError(
            f"{folder}: flow field indices {sorted(set(bad.tolist()))[:10]} out of range for "
            f"{count} fields"
        )
    out: np.ndarray | None = None
    for row, i in enumerate(idx):
        for channel, path in enumerate((u_files[i], v_files[i])):
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise ValueError(f"{path}: not a readable image")
            if out is None:
                out = np.empty((len(idx), 2, *image.shape), dtype=np.uint8)
            elif image.shape != out.shape[2:]:
                raise ValueError(
                    f"{path}: size {image.shape[1]}x{image.shape[0]} differs from the first flow "
                    f"image's {out.shape[3]}x{out.shape[2]}"
                )
            out[row, channel] = image
    if out is None:
        return np.zeros((0, 2, 0, 0), dtype=np.float32)
    return decode_flow(out, bound)


def write_flow_folder(
    folder: str | Path, flow: np.ndarray, bound: float = DEFAULT_BOUND, ext: str = ".jpg"
) -> Path:
    """Writes ``(T, 2, H, W)`` flow as ``folder/{u,v}/frame_%06d<ext>`` images; returns ``folder``.

    The inverse of `read_flow_folder` up to quantisation (and JPEG loss for ``.jpg``).
    """
    flow = np.asarray(flow)
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"{folder}: flow must have shape (T, 2, H, W), got {flow.shape}")
    folder = Path(folder)
    images = encode_flow(flow, bound)
    for channel, name in enumerate(("u", "v")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for t in range(images.shape[0]):
            path = folder / name / f"frame_{t + 1:06d}{ext}"
            if not cv2.imwrite(str(path), images[t, channel]):
                raise OSError(f"{path}: could not write the flow image")
    return folder


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """One flow field ``(2, H, W)`` -> uint8 RGB ``(H, W, 3)``: hue = direction, value = speed.

    The usual colour-wheel picture (red to the right, in image coordinates); magnitudes are
    scaled by ``max_magnitude`` (the field's largest when None).
    """
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow_to_rgb needs one field of shape (2, H, W), got {flow.shape}")
    magnitude, angle = cv2.cartToPolar(flow[0], flow[1], angleInDegrees=True)
    top = float(magnitude.max()) if max_magnitude is None else float(max_magnitude)
    hsv = np.empty((*flow.shape[1:], 3), dtype=np.uint8)
    hsv[..., 0] = (angle / 2).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(magnitude / top * 255, 0, 255).astype(np.uint8) if top > 0 else 0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


__all__ = [
    "DEFAULT_BOUND",
    "DEFAULT_DIS_PRESET",
    "DIS_PRESETS",
    "FLOW_METHODS",
    "compute_flow",
    "compute_flow_into",
    "decode_flow",
    "encode_flow",
    "flow_image_files",
    "flow_to_rgb",
    "limit_threads",
    "read_flow_folder",
    "scratch",
    "to_gray_frames",
    "write_flow_folder",
]
