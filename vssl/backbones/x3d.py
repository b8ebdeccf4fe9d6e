"""X3D-XS/S/M/L (Feichtenhofer, CVPR 2020), built by pytorchvideo."""

from __future__ import annotations

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register

_DESCRIPTION = (
    "X3D-{}: pytorchvideo create_x3d up to conv5 (432 channels), head removed; "
    "XS/S/M share the network and differ only in the input they were designed for"
)


def _x3d(clip_length: int, crop_size: int, depth_factor: float) -> Backbone:
    from vssl.backbones._pytorchvideo import x3d_trunk

    trunk, out_dim = x3d_trunk(
        clip_length=clip_length, crop_size=crop_size, depth_factor=depth_factor
    )
    return Backbone(trunk, out_dim=out_dim)


@register(
    "x3d_xs", input_size=(4, 160), source="pytorchvideo", description=_DESCRIPTION.format("XS")
)
def x3d_xs() -> Backbone:
    """Build X3D-XS (out_dim 432); no temporal stride, so any clip length works."""
    return _x3d(4, 160, 2.2)


@register(
    "x3d_s", input_size=(13, 160), source="pytorchvideo", description=_DESCRIPTION.format("S")
)
def x3d_s() -> Backbone:
    """Build X3D-S (out_dim 432)."""
    return _x3d(13, 160, 2.2)


@register(
    "x3d_m", input_size=(16, 224), source="pytorchvideo", description=_DESCRIPTION.format("M")
)
def x3d_m() -> Backbone:
    """Build X3D-M (out_dim 432)."""
    return _x3d(16, 224, 2.2)


@register(
    "x3d_l",
    input_size=(16, 312),
    source="pytorchvideo",
    description="X3D-L: deeper X3D (depth factor 5.0), pytorchvideo create_x3d up to conv5",
)
def x3d_l() -> Backbone:
    """Build X3D-L (out_dim 432)."""
    return _x3d(16, 312, 5.0)
