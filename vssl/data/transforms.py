"""Temporally consistent augmentation: one set of random parameters per clip, every frame alike.

Two halves, following the data flow of vssl:

- In the DataLoader workers, on uint8 clips ``(T, C, H, W)``: geometric transforms that change
  the size (random resized crop, flip, resize, centre crop). These are torchvision v2 transforms
  with their parameters drawn once per call and so once per clip; `ClipTransform` runs the
  common ones on the plain tensor with torchvision's draws and values, and the rest on a
  `tv_tensors.Video`.
- On the accelerator, after the batch is transferred (`BatchAugment`): photometric transforms
  that vectorise over a batch (colour jitter, grayscale, blur, solarisation) with per-sample
  parameters, then conversion to float, normalisation and the model's ``(B, C, T, H, W)`` layout.
  The default formulas are torchvision's, so the result equals torchvision's per-sample
  functional ops with the same parameters (the tests check this). Options select the variants
  of the papers' official code (`CONTRAST_MEANS`, `SATURATION_MODES`, `BLUR_PADDINGS`,
  ``grayscale_first``), each checked in the tests against a direct computation of the official
  formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import cv2
import torch
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

CONTRAST_MEANS = ("frame", "clip", "channel")
"""The grey level contrast blends toward: each frame's grey mean (torchvision per frame, the
default), one grey mean per clip (RSPNet's official code), or each channel's mean over the whole
clip (CVRL's official code, ``tf.image.adjust_contrast`` on the frames as one image)."""

SATURATION_MODES = ("blend", "hsv")
"""Saturation by blending with the grey image (torchvision, the default) or by scaling S in HSV
and clipping it to [0, 1] (CVRL's official code, ``tf.image.adjust_saturation``)."""

BLUR_PADDINGS = ("reflect", "zeros")
"""Gaussian blur border: reflected (torchvision, the default) or zeros (CVRL's official code,
``depthwise_conv2d`` with ``padding='SAME'``)."""


def train_clip_transform(
    size: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> v2.Transform:
    """Random resized crop to ``size`` x ``size`` and a random horizontal flip, per clip."""
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def eval_clip_transform(size: int) -> v2.Transform:
    """Resize the short side to ``size`` and take the centre ``size`` x ``size`` crop."""
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def _make_params(transform: v2.Transform, clip: Tensor) -> dict[str, Any]:
    """The transform's own random parameters for ``clip`` (``make_params`` from torchvision 0.21,
    ``_get_params`` before)."""
    make = getattr(transform, "make_params", None) or transform._get_params
    return make([clip])


def _bilinear_antialiased(transform: v2.Resize | v2.RandomResizedCrop) -> bool:
    mode = transform.interpolation
    return transform.antialias is True and mode in (InterpolationMode.BILINEAR, "bilinear")


def _channels_last(frames: Tensor) -> Tensor:
    """Planar uint8 frames ``(N, C, H, W)`` as a channels-last tensor of the same values: one
    ``cv2.merge`` per frame (vectorised), several times faster than torch's strided copy of a
    uint8 tensor with 3 channels."""
    n, c, h, w = frames.shape
    out = torch.empty((n, h, w, c), dtype=frames.dtype)
    # cv2.merge walks planes with gaps between their rows (a crop) row by row, far slower than
    # a copy of the crop's rows followed by a merge of whole planes
    src, dst = frames.contiguous().numpy(), out.numpy()
    for i in range(n):
        cv2.merge(list(src[i]), dst=dst[i])
    return out.permute(0, 3, 1, 2)


def _contiguous(frames: Tensor) -> Tensor:
    """uint8 frames ``(N, C, H, W)`` as a contiguous tensor; from channels-last frames one
    ``cv2.split`` per frame (faster than torch's strided copy, as in `_channels_last`)."""
    if frames.is_contiguous():
        return frames
    pixels = frames.permute(0, 2, 3, 1)
    if not pixels.is_contiguous():
        return frames.contiguous()
    out = torch.empty(frames.shape, dtype=frames.dtype)
    src, dst = pixels.numpy(), out.numpy()
    for i in range(frames.shape[0]):
        cv2.split(src[i], list(dst[i]))
    return out


def _unchanged_by_resize(h: int, w: int, size: Sequence[int] | None, max_size: int | None) -> bool:
    """Whether torchvision's resize to ``size`` surely returns ``(h, w)`` frames unchanged."""
    if size is None:
        return False
    if len(size) == 2:
        return (h, w) == (size[0], size[1])
    return min(h, w) == size[0] and max_size is None


def resize_clip(
    clip: Tensor, size: int | Sequence[int] | None, max_size: int | None = None
) -> Tensor:
    """torchvision's ``v2.functional.resize(clip, size, max_size=..., antialias=True)``
    (bilinear): the same values and memory format, faster on planar uint8 frames.

    PyTorch's uint8 antialiased resize works on interleaved (channels-last) pixels and gives the
    same values whatever the memory format of its input (the tests compare both), but planar
    frames it converts to interleaved pixels and back with slow strided copies; here those
    conversions are `cv2.merge` / `cv2.split`. Channels-last frames (the MJPEG reader's), other
    dtypes and devices go to torchvision as they are.
    """
    planar = (
        clip.dtype == torch.uint8
        and clip.device.type == "cpu"
        and clip.ndim >= 3
        and clip.shape[-3] > 1
        and clip.numel() > 0
        and clip.stride(-3) != 1
        and clip.stride(-1) == 1
    )
    if not planar:
        return F.resize(clip, size, max_size=max_size, antialias=True)
    c, h, w = clip.shape[-3:]
    if isinstance(size, int):
        size = [size]
    if _unchanged_by_resize(h, w, size, max_size):
        return clip
    frames = _channels_last(clip.reshape(-1, c, h, w))
    out = F.resize(frames, size, max_size=max_size, antialias=True)
    if out.shape[-2:] == (h, w):
        return clip  # torchvision returns its input unchanged
    return _contiguous(out).reshape(*clip.shape[:-2], *out.shape[-2:])


def _random_crop(transform: v2.RandomCrop, clip: Tensor) -> Tensor:
    crop_h, crop_w = int(transform.size[0]), int(transform.size[1])
    h, w = clip.shape[-2:]
    if h < crop_h or w < crop_w:  # torchvision's own error
        return transform(tv_tensors.Video(clip)).as_subclass(Tensor)
    # torchvision's RandomCrop.make_params: top, then left, each drawn only when the frame is
    # larger than the crop along that axis
    top = int(torch.randint(0, h - crop_h + 1, size=())) if h > crop_h else 0
    left = int(torch.randint(0, w - crop_w + 1, size=())) if w > crop_w else 0
    return clip[..., top : top + crop_h, left : left + crop_w]


def _random_resized_crop(transform: v2.RandomResizedCrop, clip: Tensor) -> Tensor:
    box = _make_params(transform, clip)
    top, left = box["top"], box["left"]
    crop = clip[..., top : top + box["height"], left : left + box["width"]]
    return resize_clip(crop, list(transform.size))


def _horizontal_flip(transform: v2.RandomHorizontalFlip, clip: Tensor) -> Tensor:
    if torch.rand(1) >= transform.p:  # the draw of v2's _RandomApplyTransform.forward
        return clip
    return clip.flip(-1)


def _resize(transform: v2.Resize, clip: Tensor) -> Tensor:
    return resize_clip(clip, transform.size, transform.max_size)


def _center_crop(transform: v2.CenterCrop, clip: Tensor) -> Tensor:
    return F.center_crop(clip, list(transform.size))


def _fast_steps(transform: Callable[[Tensor], Tensor]) -> list[Callable[[Tensor], Tensor]] | None:
    """The steps of ``transform`` as functions of a plain tensor, or None where one is not known."""
    kind = type(transform)
    if kind is v2.Compose:
        steps: list[Callable[[Tensor], Tensor]] = []
        for part in transform.transforms:
            sub = _fast_steps(part)
            if sub is None:
                return None
            steps += sub
        return steps
    if kind is v2.RandomCrop:
        plain = transform.padding is None and not transform.pad_if_needed
        return [partial(_random_crop, transform)] if plain else None
    if kind is v2.RandomResizedCrop and _bilinear_antialiased(transform):
        return [partial(_random_resized_crop, transform)]
    if kind is v2.Resize and _bilinear_antialiased(transform):
        return [partial(_resize, transform)]
    if kind is v2.CenterCrop:
        return [partial(_center_crop, transform)]
    if kind is v2.RandomHorizontalFlip:
        return [partial(_horizontal_flip, transform)]
    return None


class ClipTransform:
    """A torchvision v2 clip transform applied to one plain tensor ``(..., C, H, W)`` (the
    frames of one clip, or of several clips that share their random parameters).

    Where ``transform`` is built only of `v2.Compose`, `v2.RandomResizedCrop` and `v2.Resize`
    (bilinear, antialiased), `v2.CenterCrop`, `v2.RandomHorizontalFlip` and `v2.RandomCrop`
    without padding (``fast`` is True), each step runs on the plain tensor: the same random
    draws in the same order as torchvision's and the same values, without the `tv_tensors`
    round trip, crops by slicing and resizes with `resize_clip`. Any other transform runs
    through torchvision on a `tv_tensors.Video`. The output is a plain tensor.
    """

    def __init__(self, transform: Callable[[Tensor], Tensor]):
        self.transform = transform
        self._steps = _fast_steps(transform)

    @property
    def fast(self) -> bool:
        """Whether the transform runs on the plain tensor (see the class)."""
        return self._steps is not None

    def __call__(self, clip: Tensor) -> Tensor:
        clip = clip.as_subclass(Tensor)
        if self._steps is None:
            return self.transform(tv_tensors.Video(clip)).as_subclass(Tensor)
        for step in self._steps:
            clip = step(clip)
        return clip


class ViewTransform:
    """Applies a clip transform to every view of a sample, with fresh random parameters per clip.

    A view is a uint8 tensor ``(T, C, H, W)`` or a stack of clips ``(N, T, C, H, W)``; each
    clip of a stack gets its own parameters. Keys not in ``views`` (labels, indices) pass through.
    The transform runs as a `ClipTransform`: the training and evaluation transforms of vssl
    (`train_clip_transform`, `eval_clip_transform`, a plain ``v2.RandomCrop``) on the plain
    tensor, with torchvision's random draws and result.
    """

    def __init__(self, transform: Callable[[Tensor], Tensor], views: Sequence[str] = ("video",)):
        self.transform = transform
        self.views = tuple(views)
        self.clip_transform = ClipTransform(transform)

    def __call__(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(sample)
        for name in self.views:
            clips = sample[name]
            if clips.ndim == 5:
                out[name] = torch.stack([self.clip_transform(c) for c in clips])
            else:
                out[name] = self.clip_transform(clips)
        return out


@dataclass
class AugmentParams:
    """Per-sample parameters of `BatchAugment`, one row per clip (tensors of shape ``(B,)``)."""

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor  # (B, 4): a permutation of the four jitter operations per clip
    jitter: Tensor  # bool: whether colour jitter applies
    grayscale: Tensor  # bool
    blur_sigma: Tensor  # 0 where no blur applies
    solarize: Tensor  # bool


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=-3)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(-3)


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    return (a * ratio + b * (1.0 - ratio)).clamp_(0.0, 1.0)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, _ = x.unbind(dim=-3)
    minc, maxc = torch.aminmax(x, dim=-3)
    eqc = maxc == minc
    rng = maxc - minc
    ones = torch.ones_like(maxc)
    s = rng / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, rng).unsqueeze(-3)
    rc, gc, bc = ((maxc.unsqueeze(-3) - x) / divisor).unbind(dim=-3)
    max_is_r = maxc == r
    max_is_g = (maxc == g) & ~max_is_r
    max_is_b = ~max_is_r & ~max_is_g
    h = (bc - gc) * max_is_r + (2.0 + rc - bc) * max_is_g + (4.0 + gc - rc) * max_is_b
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(dim=-3)
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64).remainder(6)
    p = ((1.0 - s) * v).clamp(0.0, 1.0)
    q = ((1.0 - s * f) * v).clamp(0.0, 1.0)
    t = ((1.0 - s + s * f) * v).clamp(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = torch.tensor(
        [[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=x.device
    )
    return vpqt.gather(-3, select[:, i].movedim(0, -3))


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int, padding: str = "reflect") -> Tensor:
    """Blur each clip of ``x`` ``(B, T, C, H, W)`` with its own sigma (torchvision's kernel,
    the same as CVRL's ``exp(-k^2 / (2 sigma^2))`` at integer offsets ``k``, normalised)."""
    b, t, c, h, w = x.shape
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    grid = torch.linspace(-lim, lim, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.softmax(-(grid[None] / sigma[:, None].to(x.dtype)).pow(2), dim=1)  # (B, K)
    kernel = kernel.repeat_interleave(t * c, dim=0)  # one kernel per (clip, frame, channel) plane
    pad = kernel_size // 2
    planes = x.reshape(1, b * t * c, h, w)
    mode = "constant" if padding == "zeros" else "reflect"
    planes = nn.functional.pad(planes, (pad, pad, pad, pad), mode=mode)
    planes = nn.functional.conv2d(planes, kernel[:, None, None, :], groups=b * t * c)
    planes = nn.functional.conv2d(planes, kernel[:, None, :, None], groups=b * t * c)
    return planes.reshape(b, t, c, h, w)


class BatchAugment(nn.Module):
    """Per-clip photometric augmentation and normalisation of whole uint8 batches on the device.

    Input: uint8 ``(B, T, C, H, W)`` (or ``(B, N, T, C, H, W)`` for stacks of clips).
    Output: float ``(B, C, T, H, W)`` (or ``(B, N, C, T, H, W)``), normalised by ``mean``/``std``.
    Colour jitter samples brightness, contrast, saturation in ``[max(0, 1 - s), 1 + s]`` and hue
    in ``[-h, h]`` (torchvision's ColorJitter), applies with probability ``jitter_p``, in a
    random order per clip when ``random_order``. Grayscale, Gaussian blur (sigma uniform in
    ``blur_sigma``, kernel ``blur_kernel`` or about 10% of the frame size) and solarisation
    (threshold 0.5) apply with their own probabilities. In ``eval()`` mode only normalisation runs.

    Variants (the defaults are torchvision's): ``contrast_mean`` (`CONTRAST_MEANS`),
    ``saturation_mode`` (`SATURATION_MODES`), ``blur_padding`` (`BLUR_PADDINGS`), and
    ``grayscale_first``, random grayscale before colour jitter instead of after it (RSPNet's
    official code).
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        jitter_p: float = 0.0,
        random_order: bool = True,
        grayscale_p: float = 0.0,
        blur_p: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int | None = None,
        solarize_p: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        contrast_mean: str = "frame",
        saturation_mode: str = "blend",
        blur_padding: str = "reflect",
        grayscale_first: bool = False,
    ):
        super().__init__()
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        for name, value, choices in (
            ("contrast_mean", contrast_mean, CONTRAST_MEANS),
            ("saturation_mode", saturation_mode, SATURATION_MODES),
            ("blur_padding", blur_padding, BLUR_PADDINGS),
        ):
            if value not in choices:
                raise ValueError(f"augment {name} must be one of {choices}, got {value!r}")
        self.contrast_mean, self.saturation_mode = contrast_mean, saturation_mode
        self.blur_padding, self.grayscale_first = blur_padding, bool(grayscale_first)
        self.brightness, self.contrast, self.saturation, self.hue = (
            brightness,
            contrast,
            saturation,
            hue,
        )
        self.jitter_p, self.random_order = jitter_p, random_order
        self.grayscale_p, self.blur_p, self.blur_sigma = grayscale_p, blur_p, tuple(blur_sigma)
        self.blur_kernel, self.solarize_p = blur_kernel, solarize_p
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1), False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1), False)

    @property
    def photometric(self) -> bool:
        """Whether any random photometric operation is switched on."""
        return max(self.jitter_p, self.grayscale_p, self.blur_p, self.solarize_p) > 0

    def sample_params(
        self,
        batch: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        """Draws the random parameters of ``batch`` clips."""

        def uniform(lo: float, hi: float) -> Tensor:
            return torch.rand(batch, generator=generator, device=device) * (hi - lo) + lo

        def coin(p: float) -> Tensor:
            return torch.rand(batch, generator=generator, device=device) < p

        def factor(s: float) -> Tensor:
            return uniform(max(0.0, 1.0 - s), 1.0 + s)

        if self.random_order:
            order = torch.rand(batch, 4, generator=generator, device=device).argsort(dim=1)
        else:
            order = torch.arange(4, device=device).expand(batch, 4)
        blur = coin(self.blur_p)
        return AugmentParams(
            brightness=factor(self.brightness),
            contrast=factor(self.contrast),
            saturation=factor(self.saturation),
            hue=uniform(-self.hue, self.hue),
            order=order,
            jitter=coin(self.jitter_p),
            grayscale=coin(self.grayscale_p),
            blur_sigma=torch.where(
                blur, uniform(*self.blur_sigma), torch.zeros_like(blur, dtype=torch.float32)
            ),
            solarize=coin(self.solarize_p),
        )

    def _jitter_op(self, op: int, x: Tensor, p: AugmentParams, rows: Tensor) -> Tensor:
        shape = (-1, 1, 1, 1, 1)
        if op == 0:
            return (x * p.brightness[rows].view(shape)).clamp_(0.0, 1.0)
        if op == 1:
            if self.contrast_mean == "frame":
                mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
            elif self.contrast_mean == "clip":
                mean = _gray(x).mean(dim=(-4, -3, -2, -1), keepdim=True)
            else:
                mean = x.mean(dim=(-4, -2, -1), keepdim=True)
            return _blend(x, mean, p.contrast[rows].view(shape))
        if op == 2:
            if self.saturation_mode == "blend":
                return _blend(x, _gray(x), p.saturation[rows].view(shape))
            hsv = _rgb_to_hsv(x)
            sat = (hsv[:, :, 1] * p.saturation[rows].view(-1, 1, 1, 1)).clamp(0.0, 1.0)
            return _hsv_to_rgb(torch.stack((hsv[:, :, 0], sat, hsv[:, :, 2]), dim=2))
        hsv = _rgb_to_hsv(x)
        h = (hsv[:, :, 0] + p.hue[rows].view(-1, 1, 1, 1)).remainder(1.0)
        return _hsv_to_rgb(torch.stack((h, hsv[:, :, 1], hsv[:, :, 2]), dim=2))

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Applies ``params`` to float clips ``(B, T, C, H, W)`` in [0, 1]; returns the same layout."""
        x = x.clone()
        gray = params.grayscale.nonzero().flatten()
        if self.grayscale_first and gray.numel():
            x[gray] = _gray(x[gray]).expand(-1, -1, 3, -1, -1)
        for step in range(4):
            for op in range(4):
                rows = (params.jitter & (params.order[:, step] == op)).nonzero().flatten()
                if rows.numel():
                    x[rows] = self._jitter_op(op, x[rows], params, rows)
        if not self.grayscale_first and gray.numel():
            x[gray] = _gray(x[gray]).expand(-1, -1, 3, -1, -1)
        blur = (params.blur_sigma > 0).nonzero().flatten()
        if blur.numel():
            k = self.blur_kernel or max(3, int(0.1 * min(x.shape[-2:])) // 2 * 2 + 1)
            x[blur] = _gaussian_blur(x[blur], params.blur_sigma[blur], k, self.blur_padding)
        sol = params.solarize.nonzero().flatten()
        if sol.numel():
            x[sol] = torch.where(x[sol] >= 0.5, 1.0 - x[sol], x[sol])
        return x

    def forward(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 ``(B, [N,] T, C, H, W)`` -> normalised float ``(B, [N,] C, T, H, W)``."""
        if video.ndim not in (5, 6):
            raise ValueError(
                f"expected a uint8 batch (B, [N,] T, C, H, W), got shape {tuple(video.shape)}"
            )
        lead = video.shape[:-4]
        x = video.reshape(-1, *video.shape[-4:]).float().div_(255.0)
        if self.training and self.photometric:
            x = self.apply(x, self.sample_params(x.shape[0], x.device, generator))
        x = x.transpose(1, 2)  # (B, C, T, H, W)
        x = (x - self.mean) / self.std
        return x.reshape(*lead, *x.shape[1:])
