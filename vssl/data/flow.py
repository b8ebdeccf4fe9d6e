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

Precomputed flow, read by the data pipeline when a datamodule is given ``flow`` (see
`flow_source`), comes in two forms:

- Flow image folders (for users who have TV-L1 flow on disk), the common JPEG layout of the
  two-stream and MAS/STS code: ``u/`` and ``v/`` folders holding one 8-bit grayscale image per
  field, sorted by name, where ``0..255`` maps linearly to ``-bound..bound`` pixels (``bound`` =
  20 by default, `decode_flow`). `FlowFolders` finds a video's folders in the two-stream layout
  ``ROOT/u/<video>/`` + ``ROOT/v/<video>/`` or the per-video layout ``ROOT/<video>/{u,v}/``,
  where ``<video>`` is the first that exists of: the video's path below the dataset root
  without its extension, its folder's name and its stem (``ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01``
  for UCF101's class folders), and its bare stem (``v_ApplyEyeMakeup_g01_c01``, as the official
  ``tvl1_flow`` folders hold it).
- Flow files (`FLOW_SUFFIX`, ``<video>.flow`` beside a prepared video), which ``vssl prepare
  --flow`` writes (`write_flow_file`, `FlowFile`): every field's u plane stacked above its v
  plane as one grayscale JPEG, quantised to ``+-PREPARED_BOUND`` px, with an offset table, so
  that a clip's fields are one read and one libjpeg-turbo decode each.

Either way the labels of the statistics task change: flow of the whole frame cropped is not
flow computed on the crop (the borders differ), and quantisation and JPEG move the argmaxes the
labels are; README's "Precomputed optical flow" has the measured agreement.

Stored flow of another size than the decoded frames is resized to them with u scaled by the
width ratio and v by the height ratio (`resize_flow`; the official STS code resizes flow images
without scaling the values).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
import torch

from vssl.errors import MissingInputError

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
"""Flow image folders' value range in pixels (the two-stream layout's +-20 px)."""
FLOW_SUFFIX = ".flow"
"""Ending added to a video's name for its flow file (``x.mp4.flow``)."""
PREPARED_BOUND = 10.0
"""Value range (+- pixels) of the flow files ``vssl prepare --flow`` writes: steps of 0.078 px.
Chosen by ``benchmarks/flow_format.py`` (README, "Precomputed optical flow"): half the
two-stream layout's range kept more of the motion labels of the unquantised flow than +-20 px,
and clips far less motion than +-5 px on frames of short side 128."""
PREPARED_QUALITY = 95
"""JPEG quality of the flow files ``vssl prepare --flow`` writes (see `PREPARED_BOUND`)."""

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
    return _paired_images(folder / "u", folder / "v", str(folder))


def read_flow_folder(
    folder: str | Path,
    indices: Sequence[int] | np.ndarray | None = None,
    bound: float = DEFAULT_BOUND,
) -> np.ndarray:
    """Precomputed flow of one video from ``folder/u`` and ``folder/v`` -> float32 ``(T, 2, H, W)``.

    ``indices`` picks fields by position in the sorted file lists (all fields when None).
    """
    u_files, v_files = flow_image_files(folder)
    return _read_images(u_files, v_files, indices, bound, folder)


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


_FLOW_MAGIC = b"VSSLFLW1"
_FLOW_FIELDS = 8  # int64 header fields after the magic
_CODECS = {"jpeg": 0, "png": 1}


def _lut(bound: float) -> np.ndarray:
    """float32 value in pixels of each byte ``0..255`` (`decode_flow`'s mapping)."""
    return decode_flow(np.arange(256, dtype=np.uint8), bound)


class FlowFileWriter:
    """Writes a flow file (`write_flow_file`) of ``fields`` fields of ``height`` x ``width``
    field by field (`add`), so that a long video's flow never has to be in memory at once;
    `close` checks that every field came and makes the file complete (fsynced)."""

    def __init__(
        self,
        path: str | Path,
        fields: int,
        height: int,
        width: int,
        bound: float = PREPARED_BOUND,
        quality: int = PREPARED_QUALITY,
        codec: str = "jpeg",
    ) -> None:
        self.path = str(path)
        if codec not in _CODECS:
            raise ValueError(
                f"{path}: unknown flow file codec {codec!r}; choose one of {tuple(_CODECS)}"
            )
        if not 1 <= quality <= 100:
            raise ValueError(f"{path}: JPEG quality must be 1..100, got {quality}")
        if bound <= 0:
            raise ValueError(f"{path}: bound must be positive, got {bound}")
        if fields < 1 or height < 1 or width < 1:
            raise ValueError(f"{path}: a flow file needs >= 1 field of >= 1x1 pixels")
        self.fields, self.height, self.width = fields, height, width
        self.bound, self.quality, self.codec = bound, quality, codec
        self._rows = -(-height // 8) * 8
        self._tall = np.empty((2, self._rows, width), dtype=np.uint8)
        self._sizes: list[int] = []
        header = np.array(
            [
                fields,
                height,
                width,
                self._rows,
                _CODECS[codec],
                quality,
                np.float64(bound).view(np.int64),
                0,
            ],
            dtype="<i8",
        )
        self._handle = open(self.path, "wb")
        self._handle.write(_FLOW_MAGIC + header.tobytes() + bytes(8 * (fields + 1)))
        self.size = len(_FLOW_MAGIC) + header.nbytes + 8 * (fields + 1)

    def add(self, flow: np.ndarray) -> None:
        """Appends float ``(N, 2, height, width)`` flow fields (pixels)."""
        flow = np.asarray(flow)
        if flow.ndim != 4 or flow.shape[1:] != (2, self.height, self.width):
            raise ValueError(
                f"{self.path}: flow fields must have shape (N, 2, {self.height}, {self.width}), "
                f"got {flow.shape}"
            )
        if len(self._sizes) + len(flow) > self.fields:
            raise ValueError(f"{self.path}: more than the {self.fields} fields announced")
        h, rows, tall = self.height, self._rows, self._tall
        for field in encode_flow(flow, self.bound):
            tall[:, :h] = field
            tall[:, h:] = field[:, h - 1 : h]
            if self.codec == "jpeg":
                data = simplejpeg.encode_jpeg(
                    tall.reshape(2 * rows, self.width, 1), quality=self.quality, colorspace="GRAY"
                )
            else:
                ok, encoded = cv2.imencode(".png", tall.reshape(2 * rows, self.width))
                if not ok:
                    raise OSError(f"{self.path}: could not encode a flow field as PNG")
                data = encoded.tobytes()
            self._handle.write(data)
            self._sizes.append(len(data))
            self.size += len(data)

    def close(self) -> int:
        """Writes the offsets and syncs the file; returns its size in bytes."""
        handle = self._handle
        if handle.closed:
            return self.size
        try:
            if len(self._sizes) != self.fields:
                raise ValueError(
                    f"{self.path}: {len(self._sizes)} of the {self.fields} fields were written"
                )
            offsets = np.cumsum([0, *self._sizes], dtype=np.int64).astype("<i8")
            handle.seek(len(_FLOW_MAGIC) + 8 * _FLOW_FIELDS)
            handle.write(offsets.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            handle.close()
        return self.size

    def __enter__(self) -> FlowFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._handle.close()


def write_flow_file(
    path: str | Path,
    flow: np.ndarray,
    bound: float = PREPARED_BOUND,
    quality: int = PREPARED_QUALITY,
    codec: str = "jpeg",
) -> int:
    """Writes float ``(T, 2, H, W)`` flow to the flow file ``path``; returns the bytes written.

    Each field is quantised to bytes over ``-bound..bound`` (`encode_flow`) and stored as one
    grayscale image of its u plane above its v plane, each plane padded to a multiple of 8
    rows by repeating its last row, so that no JPEG block mixes u and v: ``codec`` ``jpeg``
    (libjpeg-turbo at ``quality``) or ``png`` (lossless after quantisation). The file is the
    magic, a header, the images' offsets, then the images: `FlowFile` reads it.
    """
    flow = np.asarray(flow)
    if flow.ndim != 4 or flow.shape[1] != 2 or not flow.shape[0] or 0 in flow.shape[2:]:
        raise ValueError(f"{path}: flow must have shape (T, 2, H, W), T >= 1, got {flow.shape}")
    with FlowFileWriter(path, flow.shape[0], *flow.shape[2:], bound, quality, codec) as writer:
        writer.add(flow)
    return writer.size


class FlowFile:
    """One flow file (`write_flow_file`): ``fields`` fields of ``height`` x ``width``, read by
    field index with `read`. Raises ValueError naming the file when it is not a whole one."""

    fast_decode: bool = False
    """Decode JPEG fields with libjpeg-turbo's fast integer IDCT instead of the accurate one:
    off, as its errors change many more motion labels than the time it saves is worth
    (benchmarks/flow_format.py)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        with open(self.path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = len(_FLOW_MAGIC) + 8 * _FLOW_FIELDS
            head = handle.read(start)
            if len(head) != start or not head.startswith(_FLOW_MAGIC):
                raise ValueError(f"{self.path}: not a vssl flow file")
            fields, h, w, rows, codec, quality, bound, _ = np.frombuffer(
                head, "<i8", _FLOW_FIELDS, len(_FLOW_MAGIC)
            ).tolist()
            if fields < 1 or min(h, w) < 1 or rows < h or codec not in _CODECS.values():
                raise ValueError(f"{self.path}: damaged flow file header")
            table = handle.read(8 * (fields + 1))
        offsets = np.frombuffer(table, "<i8").astype(np.int64)
        self.data_start = start + 8 * (fields + 1)
        if (
            len(offsets) != fields + 1
            or offsets[0] != 0
            or np.any(np.diff(offsets) <= 0)
            or self.data_start + int(offsets[-1]) != size
        ):
            raise ValueError(f"{self.path}: damaged or cut short (its offsets do not fit its size)")
        self.fields, self.height, self.width, self._rows = fields, h, w, rows
        self.codec = {v: k for k, v in _CODECS.items()}[codec]
        self.quality = quality
        self.bound = float(np.int64(bound).view(np.float64))
        self.offsets = offsets

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Fields ``indices`` (any order, repeats allowed) as float32 ``(N, 2, H, W)`` pixels."""
        idx = np.asarray(indices, dtype=np.int64).ravel()
        bad = idx[(idx < 0) | (idx >= self.fields)]
        if bad.size:
            raise IndexError(
                f"{self.path}: flow fields {sorted(set(bad.tolist()))[:10]} out of range for "
                f"{self.fields} fields"
            )
        out = np.empty((len(idx), 2, self.height, self.width), dtype=np.float32)
        if not len(idx):
            return out
        lut = _lut(self.bound)
        lo, hi = int(self.offsets[idx.min()]), int(self.offsets[idx.max() + 1])
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, hi - lo, self.data_start + lo)
        finally:
            os.close(fd)
        if len(data) != hi - lo:
            raise ValueError(f"{self.path}: cut short")
        rows, h = self._rows, self.height
        tall = scratch("flow_file_tall", (2 * rows, self.width, 1), np.uint8)
        for n, i in enumerate(idx.tolist()):
            a, b = int(self.offsets[i]) - lo, int(self.offsets[i + 1]) - lo
            image = np.frombuffer(data, np.uint8, b - a, a)
            try:
                if self.codec == "jpeg":
                    decoded = simplejpeg.decode_jpeg(
                        image, "GRAY", fastdct=self.fast_decode, buffer=tall
                    )
                else:
                    decoded = cv2.imdecode(image, cv2.IMREAD_GRAYSCALE)
            except ValueError as err:
                raise ValueError(f"{self.path}: flow field {i} does not decode ({err})") from None
            if decoded is None or decoded.shape[:2] != (2 * rows, self.width):
                raise ValueError(f"{self.path}: flow field {i} does not decode to its size")
            planes = decoded.reshape(2, rows, self.width)
            cv2.LUT(planes[0, :h], lut, dst=out[n, 0])
            cv2.LUT(planes[1, :h], lut, dst=out[n, 1])
        return out


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 flow ``(T, 2, h, w)`` resized to ``(T, 2, height, width)``, u scaled by
    ``width / w`` and v by ``height / h`` (a flow of one pixel is ``width / w`` pixels in the
    larger frames). The flow itself when the size is already right."""
    t, _, h, w = flow.shape
    if (h, w) == (height, width):
        return flow
    shrink = height < h and width < w
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = np.empty((t, 2, height, width), dtype=np.float32)
    for n in range(t):
        for c, ratio in ((0, width / w), (1, height / h)):
            cv2.resize(flow[n, c], (width, height), dst=out[n, c], interpolation=interpolation)
            out[n, c] *= np.float32(ratio)
    return out


def flow_fields(frames: np.ndarray) -> np.ndarray:
    """The stored field of each pair of consecutive ``frames`` (frame indices, ``(T + 1,)``):
    field ``frames[t]`` when ``frames[t + 1] == frames[t] + 1``, -1 (zero flow) when the clip
    repeats a frame or wraps around to the start (a clip longer than its video). Raises
    ValueError for a pair more than one frame apart: stored fields join consecutive frames."""
    frames = np.asarray(frames, dtype=np.int64).ravel()
    if len(frames) < 2:
        raise ValueError(f"flow needs at least 2 frames, got {len(frames)}")
    step = np.diff(frames)
    if np.any(step > 1):
        t = int(np.flatnonzero(step > 1)[0])
        raise ValueError(
            f"precomputed flow joins consecutive frames, but the clip goes from frame "
            f"{frames[t]} to {frames[t + 1]}; sample clips at stride 1, or compute flow on the fly"
        )
    return np.where(step == 1, frames[:-1], -1)


class FlowSource:
    """Where the precomputed flow of each video is: `fields` counts a video's stored fields
    (raising FileNotFoundError or ValueError naming the file when there is no usable flow),
    `read` returns fields by index as float32 ``(N, 2, H, W)`` pixels at the stored size."""

    def fields(self, video: str) -> int:
        raise NotImplementedError

    def read(self, video: str, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def clip(self, video: str, frames: np.ndarray, height: int, width: int) -> np.ndarray:
        """The flow of a clip's ``frames`` (`flow_fields`) at ``height`` x ``width``
        (`resize_flow`): float32 ``(T, 2, height, width)``, field t from frame t to t + 1."""
        fields = flow_fields(frames)
        valid = fields >= 0
        if valid.all():
            flow = self.read(video, fields)
        else:
            stored = self.read(video, fields[valid]) if valid.any() else None
            shape = stored.shape[2:] if stored is not None else (height, width)
            flow = np.zeros((len(fields), 2, *shape), dtype=np.float32)
            if stored is not None:
                flow[valid] = stored
        return resize_flow(flow, height, width)


class PreparedFlow(FlowSource):
    """The flow files that ``vssl prepare --flow`` wrote beside each video (``<video>.flow``)."""

    def fields(self, video: str) -> int:
        path = video + FLOW_SUFFIX
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path}: no flow file (run 'vssl prepare --flow' over the dataset)"
            )
        return FlowFile(path).fields

    def read(self, video: str, indices: np.ndarray) -> np.ndarray:
        return FlowFile(video + FLOW_SUFFIX).read(indices)

    def __repr__(self) -> str:
        return "PreparedFlow()"


class FlowFolders(FlowSource):
    """Flow image folders under ``root`` (see the module docstring for the two layouts and how
    a video finds its folder) for the videos below ``data_root``, images over ``+-bound`` px."""

    def __init__(self, root: str | Path, data_root: str | Path, bound: float = DEFAULT_BOUND):
        self.root, self.data_root = Path(root), Path(data_root)
        if not self.root.is_dir():
            raise MissingInputError(f"{self.root}: flow folder not found (no such directory)")
        if bound <= 0:
            raise ValueError(f"{self.root}: flow bound must be positive, got {bound}")
        self.bound = bound
        self.two_stream = (self.root / "u").is_dir() and (self.root / "v").is_dir()

    def folders(self, video: str) -> tuple[Path, Path]:
        """The ``u`` and ``v`` folders of ``video``; FileNotFoundError naming where it looked."""
        path = Path(video)
        keys = []
        for base, full in (
            (Path(os.path.abspath(self.data_root)), Path(os.path.abspath(path))),
            (self.data_root.resolve(), path.resolve()),
        ):
            if full.is_relative_to(base):
                keys.append(full.relative_to(base).with_suffix("").as_posix())
                break
        for key in (f"{path.parent.name}/{path.stem}", path.stem):
            if key not in keys:
                keys.append(key)
        tried = []
        for key in keys:
            if self.two_stream:
                u, v = self.root / "u" / key, self.root / "v" / key
            else:
                u, v = self.root / key / "u", self.root / key / "v"
            if u.is_dir() or v.is_dir():
                return u, v
            tried.append(str(u))
        raise FileNotFoundError(f"{video}: no flow folder (looked for {' and '.join(tried)})")

    def files(self, video: str) -> tuple[list[Path], list[Path]]:
        """The sorted u and v images of ``video``; raises when they do not pair up."""
        u_dir, v_dir = self.folders(video)
        return _paired_images(u_dir, v_dir, f"{video}: flow folders {u_dir} and {v_dir}")

    def fields(self, video: str) -> int:
        return len(self.files(video)[0])

    def read(self, video: str, indices: np.ndarray) -> np.ndarray:
        u_files, v_files = self.files(video)
        return _read_images(u_files, v_files, indices, self.bound, video)

    def __repr__(self) -> str:
        return f"FlowFolders({str(self.root)!r}, bound={self.bound:g})"


def flow_source(
    flow: str | Path | FlowSource | None, data_root: str | Path, bound: float = DEFAULT_BOUND
) -> FlowSource | None:
    """The `FlowSource` a datamodule's ``flow`` setting names: None (flow computed on the fly),
    ``"prepared"`` (`PreparedFlow`), or a folder of flow images (`FlowFolders`)."""
    if flow is None or isinstance(flow, FlowSource):
        return flow
    if str(flow) == "prepared":
        return PreparedFlow()
    return FlowFolders(flow, data_root, bound)


def _paired_images(u_dir: Path, v_dir: Path, what: str) -> tuple[list[Path], list[Path]]:
    """The sorted flow images of ``u_dir`` and ``v_dir`` (``what`` names the video in errors);
    raises if a folder is missing or empty, or if they do not pair up."""
    files = []
    for name, sub in (("u", u_dir), ("v", v_dir)):
        if not sub.is_dir():
            raise FileNotFoundError(f"{what}: no '{name}' folder of flow images (expected {sub})")
        found = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(
                f"{what}: no flow images in {sub} ({', '.join(IMAGE_SUFFIXES)})"
            )
        files.append(found)
    u, v = files
    if len(u) != len(v):
        raise ValueError(f"{what}: {len(u)} images in u/ but {len(v)} in v/ ({u_dir}, {v_dir})")
    return u, v


def _read_image(path: Path) -> np.ndarray | None:
    """One 8-bit flow image, grayscale: JPEGs by libjpeg-turbo, other formats by OpenCV."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            return simplejpeg.decode_jpeg(path.read_bytes(), "GRAY")[..., 0]
        except ValueError:
            return None
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def _read_images(
    u_files: list[Path],
    v_files: list[Path],
    indices: Sequence[int] | np.ndarray | None,
    bound: float,
    what: str | Path,
) -> np.ndarray:
    count = len(u_files)
    idx = np.arange(count) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    bad = idx[(idx < 0) | (idx >= count)]
    if bad.size:
        raise IndexError(
            f"{what}: flow field indices {sorted(set(bad.tolist()))[:10]} out of range for "
            f"{count} fields"
        )
    out: np.ndarray | None = None
    for row, i in enumerate(idx):
        for channel, path in enumerate((u_files[i], v_files[i])):
            image = _read_image(path)
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
    "FLOW_SUFFIX",
    "PREPARED_BOUND",
    "PREPARED_QUALITY",
    "FlowFile",
    "FlowFileWriter",
    "FlowFolders",
    "FlowSource",
    "PreparedFlow",
    "compute_flow",
    "compute_flow_into",
    "decode_flow",
    "encode_flow",
    "flow_fields",
    "flow_image_files",
    "flow_source",
    "flow_to_rgb",
    "limit_threads",
    "read_flow_folder",
    "resize_flow",
    "scratch",
    "to_gray_frames",
    "write_flow_file",
    "write_flow_folder",
]
