"""Audio backbones: 2D CNNs on log spectrograms ``(B, C, F, T)``, as AVID and XDC use.

- ``audio_resnet18``: torchvision's ResNet-18 (He et al., "Deep Residual Learning for Image
  Recognition", CVPR 2016) with a stem for ``in_channels`` spectrogram channels and no
  classifier, the 2D ResNet-18 audio network of XDC (Alwassel et al., "Self-Supervised Learning
  by Cross-Modal Audio-Video Clustering", NeurIPS 2020) and the family of AVID's ``Conv2D``
  (Morgado et al., "Audio-Visual Instance Discrimination with Cross-Modal Agreement", CVPR
  2021: a 7x7 stride-2 stem and four stages of basic blocks, 64 to 512 channels, global max
  pooling).
- ``avid_conv2d_10``: AVID's official audio network (``models/audio.py`` ``Conv2D``, depth 10,
  facebookresearch/AVID-CMA): a 7x7 stride-2 conv, then four blocks of two 3x3 conv + BN + ReLU
  (no shortcut), 64, 128, 256 and 512 channels, the first three of stride 2; module names as
  the official ones (``conv1.0``, ``block1.conv1``, ...) under ``trunk.``.
- ``audio_tiny``: three conv + BN + ReLU layers, for CPU tests and the synthetic runs.

Features are pooled by the maximum over frequency and time (AVID's ``AdaptiveMaxPool2d``):
a sound event anywhere in the window counts.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from vssl.backbones.registry import register_audio


class AudioBackbone(nn.Module):
    """A spectrogram trunk: ``(B, in_channels, F, T)`` in, ``(B, out_dim)`` features out.

    ``forward_features`` gives the unpooled ``(B, out_dim, F', T')`` map; ``forward`` takes its
    maximum over frequency and time.
    """

    def __init__(self, trunk: nn.Module, out_dim: int, in_channels: int) -> None:
        super().__init__()
        if out_dim <= 0 or in_channels <= 0:
            raise ValueError(
                f"out_dim and in_channels must be positive, got {out_dim} and {in_channels}"
            )
        self.trunk = trunk
        self.out_dim = out_dim
        self.in_channels = in_channels

    def forward_features(self, x: Tensor) -> Tensor:
        """The unpooled map ``(B, out_dim, F', T')`` of spectrograms ``(B, C, F, T)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects spectrograms shaped (B, {self.in_channels}, F, T),"
                f" got {tuple(x.shape)}"
            )
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, out_dim)``: the maximum of the map over frequency and time."""
        return torch.amax(self.forward_features(x), dim=(2, 3))


def _check_channels(in_channels: int) -> None:
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")


@register_audio(
    "audio_resnet18",
    input_size=(257, 200),
    source="torchvision",
    description="2D ResNet-18 on log spectrograms (torchvision resnet18, no fc), 11.2M params",
)
def audio_resnet18(in_channels: int = 1) -> AudioBackbone:
    """torchvision's ResNet-18 trunk with an ``in_channels`` stem (out_dim 512); the map is
    ``F / 32 x T / 32`` (rounded up)."""
    from torchvision.models import resnet18

    _check_channels(in_channels)
    net = resnet18()
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return AudioBackbone(trunk, out_dim=512, in_channels=in_channels)


class _Block2D(nn.Module):
    """AVID's ``Basic2DBlock``: two 3x3 conv + BN + ReLU, the first with ``stride``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


@register_audio(
    "avid_conv2d_10",
    input_size=(257, 200),
    source="facebookresearch/AVID-CMA",
    description="AVID's Conv2D-10: 7x7/2 stem, four plain blocks of two 3x3 convs, 64-512 ch",
)
def avid_conv2d_10(in_channels: int = 1) -> AudioBackbone:
    """AVID's audio network (out_dim 512); the map is ``F / 16 x T / 16`` (rounded up)."""
    _check_channels(in_channels)
    stem = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, padding=3, stride=2, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
    )
    trunk = nn.Sequential(
        OrderedDict(
            conv1=stem,
            block1=_Block2D(64, 64, 2),
            block2=_Block2D(64, 128, 2),
            block3=_Block2D(128, 256, 2),
            block4=_Block2D(256, 512),
        )
    )
    return AudioBackbone(trunk, out_dim=512, in_channels=in_channels)


@register_audio(
    "audio_tiny",
    input_size=(64, 64),
    source="vssl",
    description="three 3x3 conv+BN+ReLU layers (16-32-64 channels), for CPU runs and tests",
)
def audio_tiny(in_channels: int = 1, width: int = 16) -> AudioBackbone:
    """Three stride-2 3x3 conv + BN + ReLU layers of ``width``, 2x and 4x channels (out_dim
    ``4 * width``); the map is ``F / 8 x T / 8`` (rounded up)."""
    _check_channels(in_channels)
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    layers: list[nn.Module] = []
    channels = in_channels
    for out in (width, 2 * width, 4 * width):
        layers += [
            nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    return AudioBackbone(nn.Sequential(*layers), out_dim=4 * width, in_channels=in_channels)
