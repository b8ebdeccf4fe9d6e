"""The statistics task's labels for a whole batch, in torch, on the device the batch is on.

The same 14 motion and 13 appearance labels as `vssl.data.statistics_labels` (the per-clip
numpy/OpenCV code of the worker transform), with its tie rules (lowest index) and its defined
outputs for degenerate clips (0 = undefined), computed for ``(B, ...)`` batches at once, so that
on a GPU the labels cost the DataLoader workers nothing (`SpatioTemporalStatistics` with
``labels="device"``). Papers: Wang et al., "Self-supervised Spatio-temporal Representation
Learning for Videos by Predicting Motion and Appearance Statistics" (MAS, CVPR 2019) and
"Self-Supervised Video Representation Learning by Uncovering Spatio-Temporal Statistics" (STS,
TPAMI 2021).

Labels are argmaxes, so a last-bit difference in a score could move one. Both implementations
therefore compute every float the same way:

- Prewitt derivatives in float32, as OpenCV's separable filter adds them: the difference of the
  outer taps, and the outer taps' sum plus the centre tap (``(a + c) + b``). Written as slices
  and single adds rather than ``conv2d``, whose summation order (and on a GPU, TF32) is the
  library's choice.
- Magnitudes ``sqrt(x * x + y * y)`` in float32, one correctly rounded operation per tensor op
  (no fused multiply-add, no approximate hypot or square root).
- Sums over time in float32, added in time order (``((p0 + p1) + p2) + ...``): the same
  roundings on every device.
- Sums over a field's pixels and over regions in float64 of float32 values: whatever their
  order, within a few float64 roundings (about 1e-16 of the sum) of the exact sum, and equal to
  it when the summands span fewer than about 16 binades.
- Angles in float64.
- Histograms and colour counts in integers (exact), combined into regions with float64
  products of 0/1 matrices (exact; TF32 never applies to float64).

What is left to rounding: the order of the float64 additions of the per-field, region and
orientation sums (on a GPU, the orientation histograms' atomics add in any order, unless
``torch.use_deterministic_algorithms`` is on) and the float64 ``atan2`` of different math
libraries: both move a score by about 1e-16 of its size, which flips a label only at a tie
that close.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from vssl.data.statistics_labels import (
    NUM_BINS,
    PATTERNS,
    _check_size,
    _geometry,
    appearance_statistics,
    motion_statistics,
)

_BOUNDS = {"p1": (0, 16), "p2": (16, 20), "p3": (20, 28)}
"""Where each pattern's regions lie among the 28."""


@functools.lru_cache(maxsize=16)
def _device_geometry(size: int, device: torch.device) -> dict[str, Tensor]:
    """The partitions of `vssl.data.statistics_labels` as tensors on ``device``, cached."""
    geo = _geometry(size)
    masks = torch.from_numpy(np.concatenate([geo.masks[p] for p in PATTERNS]).reshape(28, -1))
    return {
        "regions": masks.to(device=device, dtype=torch.float64).T.contiguous(),  # (S*S, 28)
        "masks": masks.to(device),  # bool (28, S*S)
        "sizes": torch.from_numpy(geo.region_sizes).to(device),  # float64 (28,)
        "atom_map": torch.from_numpy(geo.atom_map).to(device=device, dtype=torch.int64),
        "members": torch.from_numpy(geo.atom_members).to(device=device, dtype=torch.float64),
    }


def _square(shape: tuple[int, ...], what: str) -> int:
    h, w = shape[-2:]
    if h != w:
        raise ValueError(f"{what}: frames must be square (H == W), got {h}x{w}")
    _check_size(h, what)
    return h


def prewitt_batch(planes: Tensor) -> tuple[Tensor, Tensor]:
    """Prewitt ``(d/dx, d/dy)`` of float planes ``(..., H, W)``, float32, borders replicated.

    Bit for bit `vssl.data.statistics_labels.prewitt` (OpenCV's order of additions).
    """
    lead, (h, w) = planes.shape[:-2], planes.shape[-2:]
    p = F.pad(planes.reshape(-1, 1, h, w).float(), (1, 1, 1, 1), mode="replicate")
    diff_x = p[..., 2:] - p[..., :-2]  # (N, 1, H + 2, W)
    dx = (diff_x[..., :-2, :] + diff_x[..., 2:, :]) + diff_x[..., 1:-1, :]
    box_x = (p[..., :-2] + p[..., 2:]) + p[..., 1:-1]
    dy = box_x[..., 2:, :] - box_x[..., :-2, :]
    return dx.reshape(*lead, h, w), dy.reshape(*lead, h, w)


def magnitude(x: Tensor, y: Tensor) -> Tensor:
    """``sqrt(x * x + y * y)`` of float32 tensors, each operation correctly rounded on its own.

    The square root is taken in float64 and rounded to float32, which is the correctly rounded
    float32 root (float64 has more than twice float32's precision, so the double rounding is
    harmless): torch's float32 ``sqrt`` on a CPU is not always correctly rounded.
    """
    xx = x * x
    yy = y * y
    return torch.sqrt((xx + yy).double()).float()


def sum_over_time(planes: Tensor) -> Tensor:
    """``(B, T, ...)`` -> the sum over T, added in time order in float32 (``((p0 + p1) + p2)
    + ...``), as `vssl.data.statistics_labels` adds them."""
    total = planes[:, 0].clone()
    for t in range(1, planes.shape[1]):
        total = total + planes[:, t]
    return total


def _histogram(bins: Tensor, votes: Tensor) -> Tensor:
    """Votes ``(B, 2, P)`` float64 summed per bin ``(B, 2, P)`` (< 8): ``(B, 2, 8)``.

    One 1-D ``scatter_add_``: on a CPU it adds each group's votes in pixel order (numpy's
    order), and on CUDA it has a deterministic version for ``use_deterministic_algorithms``.
    """
    groups = torch.arange(bins.shape[0] * 2, device=bins.device).view(-1, 2, 1) * NUM_BINS
    out = torch.zeros(bins.shape[0] * 2 * NUM_BINS, dtype=votes.dtype, device=votes.device)
    out.scatter_add_(0, (groups + bins).reshape(-1), votes.reshape(-1))
    return out.view(-1, 2, NUM_BINS)


def _count(index: Tensor, size: int) -> Tensor:
    """How often each value ``< size`` occurs in ``index``: int64 ``(size,)``.

    ``index_add_`` rather than ``bincount``, which refuses CUDA tensors under
    ``use_deterministic_algorithms`` in some torch versions (integer counts are exact in any
    order).
    """
    ones = torch.ones((), dtype=torch.int64, device=index.device).expand(index.numel())
    return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(0, index, ones)


def motion_labels(flow: Tensor) -> Tensor:
    """The 14 motion labels of each clip of float flow ``(B, T, 2, S, S)`` (pixels): ``(B, 14)``.

    Same order, 1-based values and zeros (undefined) as
    `vssl.data.statistics_labels.motion_statistics`, on the flow's device.
    """
    if flow.ndim != 5 or flow.shape[2] != 2 or flow.shape[1] < 1:
        raise ValueError(f"flow must have shape (B, T, 2, S, S), got {tuple(flow.shape)}")
    if not flow.is_floating_point():
        raise ValueError(f"flow must be a float tensor, got {flow.dtype}")
    b, t, _, s, _ = flow.shape
    s = _square(flow.shape, "motion statistics")
    geo = _device_geometry(s, flow.device)
    dx, dy = prewitt_batch(flow)  # (B, T, 2, S, S)
    per_field = magnitude(dx, dy).sum((-2, -1), dtype=torch.float64)  # (B, T, 2)
    sx, sy = sum_over_time(dx), sum_over_time(dy)  # (B, 2, S, S)
    mag = magnitude(sx, sy).reshape(b, 2, s * s).double()
    scores = mag @ geo["regions"]  # (B, 2, 28)
    scores[..., 16:20] /= geo["sizes"][16:20]

    angle = torch.rad2deg(torch.atan2(sy.double(), sx.double())).reshape(b, 2, s * s)
    position = angle / 45.0
    below = torch.floor(position)
    upper = position - below
    lo = below.long().remainder(NUM_BINS)
    hi = (lo + 1).remainder(NUM_BINS)
    vote_lo, vote_hi = mag * (1 - upper), mag * upper

    labels = torch.zeros(b, 14, dtype=torch.int64, device=flow.device)
    for k, (start, stop) in enumerate(_BOUNDS.values()):
        best, region = scores[..., start:stop].max(-1)  # (B, 2): first maximum
        defined = best > 0
        inside = geo["masks"][start + region]  # (B, 2, S*S)
        hist = _histogram(lo, vote_lo * inside) + _histogram(hi, vote_hi * inside)
        orientation = hist.argmax(-1)
        for c in range(2):
            labels[:, 4 * k + 2 * c] = torch.where(defined[:, c], region[:, c] + 1, 0)
            labels[:, 4 * k + 2 * c + 1] = torch.where(defined[:, c], orientation[:, c] + 1, 0)
    top, field = per_field.max(1)  # (B, 2)
    labels[:, 12:] = torch.where(top > 0, field + 1, 0)
    return labels


def _atom_index(video: Tensor, atom_map: Tensor, n_atoms: int) -> Tensor:
    """``(B, T, 3, S, S)`` uint8 -> the index of ``(clip, channel, atom)`` of every value."""
    b = video.shape[0]
    slot = torch.arange(b * 3, device=video.device).reshape(b, 1, 3, 1, 1)
    return slot * n_atoms + atom_map


def appearance_labels(video: Tensor) -> Tensor:
    """The 13 appearance labels of each uint8 RGB clip ``(B, T, 3, S, S)``: int64 ``(B, 13)``.

    Same order and values as `vssl.data.statistics_labels.appearance_statistics`, on the clips'
    device: per frame, integer 256-bin histograms per atom and channel, summed into regions
    (exact), their minimum and maximum over time, the IoU as ``inter / union`` per channel
    averaged as ``((r + g) + b) / 3``, and the pixels of each colour octant per region.
    """
    if video.ndim != 5 or video.shape[2] != 3 or video.dtype != torch.uint8 or video.shape[1] < 1:
        raise ValueError(
            "appearance statistics need uint8 RGB clips (B, T, 3, S, S), got "
            f"{video.dtype} of shape {tuple(video.shape)}"
        )
    b, t, _, s, _ = video.shape
    s = _square(video.shape, "appearance statistics")
    geo = _device_geometry(s, video.device)
    members = geo["members"]  # (28, A)
    n_atoms = members.shape[1]
    slots = b * 3 * n_atoms
    base = _atom_index(video, geo["atom_map"], n_atoms)[:, 0] * 256  # (B, 3, S, S)
    lowest = highest = None
    for frame in video.unbind(1):  # (B, 3, S, S): one frame's histograms at a time
        index = (base + frame.long()).reshape(-1)
        atom_hist = _count(index, slots * 256).reshape(b * 3, n_atoms, 256)
        hist = members @ atom_hist.double()  # (B * 3, 28, 256)
        if lowest is None:
            lowest, highest = hist, hist.clone()
        else:
            torch.minimum(lowest, hist, out=lowest)
            torch.maximum(highest, hist, out=highest)
    inter = lowest.sum(-1).reshape(b, 3, 28)
    union = highest.sum(-1).reshape(b, 3, 28)
    ratio = inter / union
    iou = ((ratio[:, 0] + ratio[:, 1]) + ratio[:, 2]) / 3  # (B, 28)

    # octant 0..7 of every pixel: 2 [R >= 128] + [G >= 128] + 4 [B < 128]
    high = video >= 128
    octant = 2 * high[:, :, 0].long() + high[:, :, 1].long() + 4 * (~high[:, :, 2]).long()
    clip_slot = torch.arange(b, device=video.device).reshape(b, 1, 1, 1)
    index = ((clip_slot * n_atoms + geo["atom_map"]) * NUM_BINS + octant).reshape(-1)
    atom_counts = _count(index, b * n_atoms * NUM_BINS)
    atom_counts = atom_counts.reshape(b, n_atoms, NUM_BINS).double()
    counts = members @ atom_counts  # (B, 28, 8)
    global_counts = atom_counts.sum(1)  # (B, 8)

    labels = []
    rows = torch.arange(b, device=video.device)
    for start, stop in _BOUNDS.values():
        part_iou, part_counts = iou[:, start:stop], counts[:, start:stop]
        for region in (part_iou.argmin(-1), part_iou.argmax(-1)):
            labels += [region + 1, part_counts[rows, region].argmax(-1) + 1]
    labels.append(global_counts.argmax(-1) + 1)
    return torch.stack(labels, dim=1)


def batch_labels(video: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """``(motion (B, 14), appearance (B, 13))`` of a batch: uint8 clips ``(B, T or T + 1, 3, S,
    S)`` (appearance uses the first T frames) and their float flow ``(B, T, 2, S, S)``.

    On a CUDA device, `motion_labels` and `appearance_labels`. Elsewhere clip by clip on the
    CPU with the worker's numpy/OpenCV code (`motion_statistics`, `appearance_statistics`), the
    labels returned on the batch's device: the same labels (the tests compare both), several
    times faster on a CPU than torch's scatter-based histograms, and also right on devices
    without float64 (MPS).
    """
    if flow.ndim != 5 or video.ndim != 5:
        raise ValueError(
            f"need clips (B, T, 3, S, S) and flow (B, T, 2, S, S), got {tuple(video.shape)} and "
            f"{tuple(flow.shape)}"
        )
    t = flow.shape[1]
    if video.shape[0] != flow.shape[0] or video.shape[1] not in (t, t + 1):
        raise ValueError(
            f"clips {tuple(video.shape)} do not go with flow {tuple(flow.shape)}: need the same "
            "batch size and T or T + 1 frames for T fields"
        )
    video = video[:, :t]
    if flow.device.type == "cuda":
        return motion_labels(flow), appearance_labels(video)
    if video.dtype != torch.uint8:
        raise ValueError(f"appearance statistics need uint8 clips, got {video.dtype}")
    motion = [torch.from_numpy(motion_statistics(f)) for f in flow.float().cpu()]
    appearance = [torch.from_numpy(appearance_statistics(c)) for c in video.cpu()]
    return torch.stack(motion).to(flow.device), torch.stack(appearance).to(flow.device)
