"""Tiny backbones for CPU tests, the quick start and debugging: seconds per epoch, not accuracy."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register


def _check_width(width: int) -> None:
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")


def _conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int],
) -> list[nn.Module]:
    padding = tuple(k // 2 for k in kernel)
    return [
        nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    ]


@register(
    "tiny3d",
    input_size=(8, 64),
    source="vssl",
    description="three 3x3x3 conv+BN+ReLU layers (16-32-64 channels), about 71k parameters",
)
def tiny3d(width: int = 16) -> Backbone:
    """Build a 3-layer 3D CNN with ``width``, 2x and 4x channels (out_dim ``4 * width``).

    Strides (1,2,2), 2, 2: the map is T/4 x H/8 x W/8.
    """
    _check_width(width)
    layers = [
        *_conv_bn_relu(3, width, (3, 3, 3), (1, 2, 2)),
        *_conv_bn_relu(width, 2 * width, (3, 3, 3), (2, 2, 2)),
        *_conv_bn_relu(2 * width, 4 * width, (3, 3, 3), (2, 2, 2)),
    ]
    return Backbone(nn.Sequential(*layers), out_dim=4 * width)


@register(
    "tiny_r2plus1d",
    input_size=(8, 64),
    source="torchvision+vssl",
    description="a (2+1)D stem and two residual R(2+1)D blocks (16-32-64 channels), "
    "about 0.18M parameters",
)
def tiny_r2plus1d(width: int = 16) -> Backbone:
    """Build a miniature R(2+1)D from torchvision's blocks (out_dim ``4 * width``).

    A factorised 1x3x3 + 3x1x1 stem, then two torchvision ``BasicBlock``s with ``Conv2Plus1D``
    convolutions, each doubling the channels and halving T, H and W: the map is T/4 x H/8 x W/8.
    """
    _check_width(width)
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D

    def block(in_channels: int, out_channels: int) -> nn.Module:
        downsample = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm3d(out_channels),
        )
        return BasicBlock(in_channels, out_channels, Conv2Plus1D, stride=2, downsample=downsample)

    stem = nn.Sequential(
        *_conv_bn_relu(3, width, (1, 3, 3), (1, 2, 2)),
        *_conv_bn_relu(width, width, (3, 1, 1), (1, 1, 1)),
    )
    trunk = nn.Sequential(
        OrderedDict(stem=stem, layer1=block(width, 2 * width), layer2=block(2 * width, 4 * width))
    )
    return Backbone(trunk, out_dim=4 * width)
