"""3D ResNet-50s built by pytorchvideo: Slow-R50 (SlowFast's Slow pathway) and CVRL's R3D-50."""

from __future__ import annotations

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register

# Temporal kernel of conv_a (the first 1x1 of each bottleneck) in res2..res5: temporal
# convolution only in the deep stages, as in SlowFast's Slow pathway and CVRL.
_CONV_A_KERNELS = ((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1))


def _resnet50(stem_temporal_kernel: int, width: int) -> Backbone:
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer multiplier, got {width!r}")
    from vssl.backbones._pytorchvideo import resnet_trunk

    trunk, out_dim = resnet_trunk(
        depth=50,
        stem_kernel=(stem_temporal_kernel, 7, 7),
        conv_a_kernels=_CONV_A_KERNELS,
        stem_width=64 * width,
    )
    return Backbone(trunk, out_dim=out_dim)


@register(
    "slow_r50",
    input_size=(8, 224),
    source="pytorchvideo",
    description="Slow-R50: 3D ResNet-50, stem 1x7x7, temporal kernel 3 in res4/res5 only",
)
def slow_r50(width: int = 1) -> Backbone:
    """Build Slow-R50 (out_dim 2048 x width); ``width`` multiplies every channel count."""
    return _resnet50(stem_temporal_kernel=1, width=width)


@register(
    "r3d_50",
    input_size=(16, 224),
    source="pytorchvideo",
    description="CVRL's 3D ResNet-50: stem 5x7x7, temporal kernel 1 in res2/res3, 3 in res4/res5",
)
def r3d_50(width: int = 1) -> Backbone:
    """Build CVRL's R3D-50 (out_dim 2048 x width); CVRL also reports width 2 and 3."""
    return _resnet50(stem_temporal_kernel=5, width=width)
