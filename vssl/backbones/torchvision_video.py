"""torchvision's 18-layer video ResNets: R3D, MC3 and R(2+1)D (Tran et al., CVPR 2018)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register

_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def _trunk(model: nn.Module) -> Backbone:
    """Keep stem and layer1-4 under their torchvision names; drop avgpool and fc."""
    modules = OrderedDict((name, getattr(model, name)) for name in _STAGES)
    return Backbone(nn.Sequential(modules), out_dim=model.fc.in_features)


@register(
    "r3d_18",
    input_size=(16, 112),
    source="torchvision",
    description="3D ResNet-18, torchvision.models.video.r3d_18 without fc",
)
def r3d_18() -> Backbone:
    """Build torchvision's R3D-18 trunk (out_dim 512)."""
    from torchvision.models import video

    return _trunk(video.r3d_18(weights=None))


@register(
    "mc3_18",
    input_size=(16, 112),
    source="torchvision",
    description="mixed 3D/2D ResNet-18 (3D convs in stem and layer1 only), torchvision mc3_18",
)
def mc3_18() -> Backbone:
    """Build torchvision's MC3-18 trunk (out_dim 512); it never downsamples time after the stem."""
    from torchvision.models import video

    return _trunk(video.mc3_18(weights=None))


@register(
    "r2plus1d_18",
    input_size=(16, 112),
    source="torchvision",
    description="R(2+1)D-18: 3D convs factorised into 2D spatial + 1D temporal, torchvision",
)
def r2plus1d_18() -> Backbone:
    """Build torchvision's R(2+1)D-18 trunk (out_dim 512)."""
    from torchvision.models import video

    return _trunk(video.r2plus1d_18(weights=None))
