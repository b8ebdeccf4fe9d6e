"""Noise corruptions of test clips, for robustness evaluation.

The four noise corruptions of ImageNet-C ("Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", Hendrycks & Dietterich, ICLR 2019; formulas and severities as in
https://github.com/hendrycks/robustness `imagenet_c/corruptions.py`), which the Large-Scale
Analysis of contextual video SSL (Kumar et al., 2025) adds to test videos: on pixel values ``x``
in [0, 1],

- ``gaussian``: ``x + N(0, c)``, c = 0.08, 0.12, 0.18, 0.26, 0.38;
- ``shot``: ``Poisson(x c) / c``, c = 60, 25, 12, 5, 3;
- ``impulse``: salt and pepper, a fraction c of the values set to 0 or 1 (half each),
  c = 0.03, 0.06, 0.09, 0.17, 0.27;
- ``speckle``: ``x + x N(0, c)``, c = 0.15, 0.2, 0.35, 0.45, 0.6;

for severities 1 to 5, clipped to [0, 1] and rounded back to uint8. Every frame of a clip gets
the same corruption at the same severity and its own noise draw (sensor noise changes from frame
to frame). The draw is seeded by ``seed`` and the clip's own bytes, so a clip is corrupted alike
in every run, whatever the order in which DataLoader workers reach it.
"""

from __future__ import annotations

import zlib

import torch

from vssl.errors import InvalidInputError

SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot": (60, 25, 12, 5, 3),
    "impulse": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle": (0.15, 0.2, 0.35, 0.45, 0.6),
}
"""The ImageNet-C parameter ``c`` of each noise corruption at severities 1-5."""


def corruption_names() -> list[str]:
    """The corruptions by name (``gaussian`` etc.; ``gaussian_noise`` is accepted too)."""
    return sorted(SEVERITIES)


def _check(kind: str, severity: int) -> str:
    name = kind.removesuffix("_noise")
    if name not in SEVERITIES:
        raise InvalidInputError(
            f"unknown corruption {kind!r}; available: {', '.join(corruption_names())}"
        )
    if isinstance(severity, bool) or severity not in range(1, 6):
        raise InvalidInputError(f"corruption severity must be 1, 2, 3, 4 or 5, got {severity!r}")
    return name


def corrupt(
    video: torch.Tensor, kind: str, severity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``video`` (uint8, any shape; values 0-255) with the noise ``kind`` at ``severity``."""
    name = _check(kind, severity)
    if video.dtype != torch.uint8:
        raise InvalidInputError(f"corrupt expects uint8 frames, got {video.dtype}")
    c = SEVERITIES[name][severity - 1]
    x = video.to(torch.float32) / 255
    if name == "gaussian":
        x = x + c * torch.randn(x.shape, generator=generator)
    elif name == "shot":
        x = torch.poisson(x * c, generator=generator) / c
    elif name == "impulse":
        flipped = torch.rand(x.shape, generator=generator) < c
        salt = torch.rand(x.shape, generator=generator) < 0.5
        x = torch.where(flipped, salt.to(x.dtype), x)
    else:
        x = x + x * c * torch.randn(x.shape, generator=generator)
    return (x.clamp_(0, 1) * 255).round_().to(torch.uint8)


class Corruption:
    """A clip transform adding ``kind`` noise at ``severity`` to a uint8 clip, seeded by
    ``seed`` and the clip's bytes (see the module notes)."""

    def __init__(self, kind: str, severity: int, seed: int = 0) -> None:
        self.kind, self.severity, self.seed = _check(kind, severity), severity, seed

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        crc = zlib.crc32(video.contiguous().numpy().tobytes())
        generator = torch.Generator().manual_seed(self.seed * 0x1_0000_0001 + crc)
        return corrupt(video, self.kind, self.severity, generator)

    def __repr__(self) -> str:
        return f"Corruption({self.kind!r}, severity={self.severity}, seed={self.seed})"


__all__ = ["SEVERITIES", "Corruption", "corrupt", "corruption_names"]
