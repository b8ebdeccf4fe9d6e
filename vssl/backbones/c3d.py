"""C3D (Tran et al., ICCV 2015) as the self-supervised video papers use it."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register

# (name, output channels, pool after it: None or (kernel = stride)); the 8 conv layers of C3D.
_LAYERS: tuple[tuple[str, int, tuple[int, int, int] | None], ...] = (
    ("1", 64, (1, 2, 2)),
    ("2", 128, (2, 2, 2)),
    ("3a", 256, None),
    ("3b", 256, (2, 2, 2)),
    ("4a", 512, None),
    ("4b", 512, (2, 2, 2)),
    ("5a", 512, None),
    ("5b", 512, (2, 2, 2)),
)


@register(
    "c3d",
    input_size=(16, 112),
    source="vssl",
    description="C3D: 8 3x3x3 conv layers with BatchNorm, fc6/fc7 removed (Tran et al. 2015); "
    "pool5=False: no pool5, as VCOP, PRP, STS and RSPNet",
)
def c3d(pool5: bool = True) -> Backbone:
    """Build C3D's convolutional trunk with BatchNorm after every conv (out_dim 512).

    ``pool5=True`` ends with C3D's 2x2x2 max-pool5 (the map is T/16 x H/32 x W/32), as the
    original network before fc6. ``pool5=False`` ends at conv5b (T/8 x H/16 x W/16), which the
    features then average directly: the C3D of VCOP, PRP, STS and RSPNet, whose code replaces
    pool5 by a global average pool; their features are only reproduced without pool5.

    Pools use ceil mode, which is Caffe's pooling rule in the original C3D (pool5 maps 7x7 to
    4x4 at 112 px, as the PyTorch ports get with padding) and keeps T=8 clips from collapsing
    to zero frames; on even sizes (every pool before pool5 at 16 x 112, 8 or 32 frames and 160
    or 224 px) it is the floor mode of VCOP's port. Layer names (conv1, bn1, ..., conv5b, bn5b)
    follow the ports used by VCOP, STS and RSPNet, so their checkpoints map onto ``trunk``
    directly (PRP's port names conv3_1 ... conv5_2 and nests each conv with its BatchNorm).
    """
    if not isinstance(pool5, bool):
        raise TypeError(f"c3d: pool5 must be true or false, got {pool5!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for layer, channels, pool in _LAYERS:
        layers[f"conv{layer}"] = nn.Conv3d(in_channels, channels, kernel_size=3, padding=1)
        layers[f"bn{layer}"] = nn.BatchNorm3d(channels)
        layers[f"relu{layer}"] = nn.ReLU(inplace=True)
        if pool is not None and (pool5 or layer != "5b"):
            layers[f"pool{layer[0]}"] = nn.MaxPool3d(pool, stride=pool, ceil_mode=True)
        in_channels = channels
    return Backbone(nn.Sequential(layers), out_dim=in_channels)
