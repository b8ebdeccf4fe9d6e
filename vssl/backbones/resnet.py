"""3D ResNet-50s built by pytorchvideo: Slow-R50 (SlowFast's Slow pathway) and CVRL's R3D-50."""

from __future__ import annotations

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register

# Temporal kernel of conv_a (the first 1x1 of each bottleneck) in res2..res5: temporal
# convolution only in the deep stages, as in SlowFast's Slow pathway and CVRL.
_CONV_A_KERNELS = ((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1))


def _resnet50(stem_temporal_kernel: int, stem_temporal_stride: int, width: int) -> Backbone:
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer multiplier, got {width!r}")
    from vssl.backbones._pytorchvideo import resnet_trunk

    trunk, out_dim = resnet_trunk(
        depth=50,
        stem_kernel=(stem_temporal_kernel, 7, 7),
        stem_stride=(stem_temporal_stride, 2, 2),
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
    return _resnet50(stem_temporal_kernel=1, stem_temporal_stride=1, width=width)


@register(
    "r3d_50",
    input_size=(16, 224),
    source="pytorchvideo",
    description="CVRL's 3D ResNet-50: stem 5x7x7 with temporal stride 2, temporal kernel 1 in "
    "res2/res3, 3 in res4/res5",
)
def r3d_50(width: int = 1) -> Backbone:
    """Build CVRL's R3D-50 (out_dim 2048 x width); CVRL also reports width 2 and 3.

    As the official CVRL config (tensorflow/models ``official/projects/video_ssl``): stem conv
    5x7x7 with stride (2, 2, 2), stem max-pool 1x3x3 with stride (1, 2, 2), so a 16-frame clip
    leaves the stem with 8 time steps; bottlenecks with a (k, 1, 1) first conv, k = 1 in the
    3 + 4 blocks of res2/res3 and 3 in the 6 + 3 blocks of res4/res5, the spatial stride on the
    1x3x3 conv, projection shortcuts at each stage's first block, BatchNorm with PyTorch's
    defaults (the official Kinetics config's momentum 0.9 and epsilon 1e-5). One difference:
    TensorFlow's 'same' padding puts the odd unit of a strided conv's padding on the far side
    (2 before and 3 after for the 7x7 stem at 224 px), PyTorch pads both sides equally; the
    sampling grid shifts by a pixel, every shape and parameter stays the official network's.
    """
    return _resnet50(stem_temporal_kernel=5, stem_temporal_stride=2, width=width)
