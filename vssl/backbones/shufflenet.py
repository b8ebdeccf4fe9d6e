"""3D ShuffleNet V1 and V2 from "Resource Efficient 3D Convolutional Neural Networks" (Kopuklu
et al., 2019): the 2D ShuffleNets with every kernel made 3D, the small end of the Large-Scale
Analysis backbones.

Layer layout, widths and names follow the official code (okankop/Efficient-3DCNNs,
``models/shufflenet.py`` and ``models/shufflenetv2.py``); both networks keep PyTorch's default
initialisation, as the official code does. Both map a ``T x H x W`` clip to a
``T/16 x H/32 x W/32`` map (sizes rounded up): a 3x3x3 stem conv with stride (1, 2, 2), a
3x3x3 max-pool with stride 2, then three stages whose first block has stride 2.

Checkpoint keys: the official module names are kept (``conv1.0``, ``layer1.0.conv1``, ...;
V2's ``features.N.banch1`` / ``banch2`` with the official spelling), so an official checkpoint
(``checkpoint["state_dict"]``, saved from ``nn.DataParallel``) loads into ``trunk`` strictly
after removing the ``module.`` prefix and dropping the ``classifier.*`` keys (the Dropout +
Linear head, which the trunk does not have).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register

#: Official V1 stage widths (stem, layer1, layer2, layer3) per group count, before width_mult.
V1_WIDTHS: dict[int, tuple[int, int, int, int]] = {
    1: (24, 144, 288, 567),
    2: (24, 200, 400, 800),
    3: (24, 240, 480, 960),
    4: (24, 272, 544, 1088),
    8: (24, 384, 768, 1536),
}
#: The V1 width multipliers of the paper.
V1_WIDTH_MULTS = (0.5, 1.0, 1.5, 2.0)
#: Official V2 widths (stem, stage 1-3, conv_last) per width multiplier.
V2_WIDTHS: dict[float, tuple[int, int, int, int, int]] = {
    0.25: (24, 32, 64, 128, 1024),
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 224, 488, 976, 2048),
}
#: Blocks per stage in both versions.
STAGE_BLOCKS = (4, 8, 4)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: tuple) -> nn.Module:
    """The official ``conv_bn`` / ``conv_1x1x1_bn``: conv (no bias), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def _stem(width: int) -> OrderedDict[str, nn.Module]:
    return OrderedDict(
        conv1=_conv_bn_relu(3, width, 3, (1, 2, 2)),
        maxpool=nn.MaxPool3d(kernel_size=3, stride=2, padding=1),
    )


def _width_mult(name: str, width_mult: object, allowed: tuple[float, ...]) -> float:
    if isinstance(width_mult, bool) or not isinstance(width_mult, int | float):
        raise TypeError(f"{name}: width_mult must be a number, got {width_mult!r}")
    if float(width_mult) not in allowed:
        raise ValueError(
            f"{name}: width_mult must be one of {', '.join(map(str, allowed))} (the paper's "
            f"widths), got {width_mult!r}"
        )
    return float(width_mult)


class ShortcutPool(nn.Module):
    """The V1 stride-2 shortcut: a 2x3x3 average pool with stride 2 and spatial padding 1.

    The official ``nn.AvgPool3d((2, 3, 3), stride=2, padding=(0, 1, 1))`` counts its zero
    padding in the average; padding with zeros first and pooling without padding gives the same
    numbers, and also runs on maps smaller than the kernel (2 x 2 pixels), which PyTorch's pool
    refuses. It pools 2 frames without temporal padding, so on an odd number of frames it would
    yield one frame fewer than the strided conv path; here an odd map gets its last frame
    repeated first (the last window averages that frame alone, as a ceil-mode pool). On even
    frame counts, every size the official network runs, the output is the official one.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Return the pooled map, ``ceil(T/2) x ceil(H/2) x ceil(W/2)``."""
        if x.shape[2] % 2:
            x = torch.cat([x, x[:, :, -1:]], dim=2)
        return F.avg_pool3d(F.pad(x, (1, 1, 1, 1)), kernel_size=(2, 3, 3), stride=2)


class ShuffleV1Block(nn.Module):
    """ShuffleNet V1 unit: grouped 1x1x1 conv, channel shuffle, depthwise 3x3x3, grouped 1x1x1.

    Stride 1 adds the input (``in_channels == out_channels``); stride 2 concatenates a 2x3x3
    average pool of the input (stride 2, spatial padding 1) after the conv path, which then
    produces ``out_channels - in_channels`` channels. As the official code, the first 1x1x1
    conv is ungrouped when the block's input has 24 channels (the 1.0x stem).

    The shortcut is `ShortcutPool`, which runs on every size the strided conv does.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        self.groups = groups
        mid = out_channels // 4
        conv_out = out_channels - in_channels if stride == 2 else out_channels
        first_groups = 1 if in_channels == 24 else groups
        for what, channels, g in (
            ("input", in_channels, first_groups),
            ("bottleneck", mid, groups),
            ("conv3 output", conv_out, groups),
        ):
            if channels % g:
                raise ValueError(
                    f"ShuffleNet V1 block {in_channels}->{out_channels}: {channels} {what} "
                    f"channels do not split into {g} groups"
                )
        self.conv1 = nn.Conv3d(in_channels, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = nn.Conv3d(mid, conv_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm3d(conv_out)
        self.relu = nn.ReLU(inplace=True)
        if stride == 2:
            self.shortcut = ShortcutPool()

    def forward(self, x: Tensor) -> Tensor:
        """Return the block output; stride 2 halves T, H and W (rounding up)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = F.channel_shuffle(out, self.groups)
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        if self.stride == 1:
            return self.relu(out + x)
        return self.relu(torch.cat([out, self.shortcut(x)], dim=1))


class ShuffleV2Block(nn.Module):
    """ShuffleNet V2 unit, the official ``InvertedResidual``.

    Stride 1 passes the first half of the channels through and runs the second half through
    ``banch2`` (1x1x1 conv, depthwise 3x3x3, 1x1x1 conv); stride 2 runs the whole input through
    ``banch1`` (depthwise 3x3x3 with stride 2, 1x1x1 conv) and ``banch2`` (its depthwise conv
    with stride 2). Either way the two halves are concatenated and shuffled in 2 groups.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_channels // 2
        branch_in = in_channels if stride == 2 else half
        if stride == 2:
            self.banch1 = nn.Sequential(
                nn.Conv3d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False),
                nn.BatchNorm3d(in_channels),
                nn.Conv3d(in_channels, half, 1, bias=False),
                nn.BatchNorm3d(half),
                nn.ReLU(inplace=True),
            )
        self.banch2 = nn.Sequential(
            nn.Conv3d(branch_in, half, 1, bias=False),
            nn.BatchNorm3d(half),
            nn.ReLU(inplace=True),
            nn.Conv3d(half, half, 3, stride, 1, groups=half, bias=False),
            nn.BatchNorm3d(half),
            nn.Conv3d(half, half, 1, bias=False),
            nn.BatchNorm3d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the block output; stride 2 halves T, H and W (rounding up)."""
        if self.stride == 1:
            kept, processed = x.chunk(2, dim=1)
            out = torch.cat([kept, self.banch2(processed)], dim=1)
        else:
            out = torch.cat([self.banch1(x), self.banch2(x)], dim=1)
        return F.channel_shuffle(out, 2)


@register(
    "shufflenet3d_v1",
    input_size=(16, 112),
    source="vssl",
    description="3D ShuffleNet V1 (Kopuklu et al. 2019): grouped 1x1x1 convs, channel shuffle, "
    "depthwise 3x3x3; groups 1/2/3/4/8, width_mult 0.5/1.0/1.5/2.0",
)
def shufflenet3d_v1(groups: int = 3, width_mult: float = 1.0) -> Backbone:
    """Build 3D ShuffleNet V1 (out_dim: layer3's width, 960 at groups 3, 1.0x).

    ``groups`` sets the official stage widths (groups 3: 240, 480, 960) and the grouping of the
    1x1x1 convs; ``width_mult`` scales every width, the stem's 24 included, rounding down.
    Stages of 4, 8 and 4 blocks. Some combinations (groups 2, 4 or 8 at 0.5x or 1.5x) give
    channel counts that the groups do not divide and are rejected.
    """
    name = "shufflenet3d_v1"
    if isinstance(groups, bool) or groups not in V1_WIDTHS:
        raise ValueError(
            f"{name}: groups must be one of {', '.join(map(str, V1_WIDTHS))}, got {groups!r}"
        )
    width_mult = _width_mult(name, width_mult, V1_WIDTH_MULTS)
    widths = [int(w * width_mult) for w in V1_WIDTHS[groups]]
    layers = _stem(widths[0])
    in_channels = widths[0]
    for stage, (out_channels, blocks) in enumerate(zip(widths[1:], STAGE_BLOCKS, strict=True)):
        units = []
        for i in range(blocks):
            try:
                units.append(ShuffleV1Block(in_channels, out_channels, 2 if i == 0 else 1, groups))
            except ValueError as err:
                raise ValueError(
                    f"{name}(groups={groups}, width_mult={width_mult}): {err}"
                ) from None
            in_channels = out_channels
        layers[f"layer{stage + 1}"] = nn.Sequential(*units)
    return Backbone(nn.Sequential(layers), out_dim=in_channels)


@register(
    "shufflenet3d_v2",
    input_size=(16, 112),
    source="vssl",
    description="3D ShuffleNet V2 (Kopuklu et al. 2019): channel split, depthwise 3x3x3, "
    "channel shuffle, 1x1x1 conv_last; width_mult 0.25/0.5/1.0/1.5/2.0",
)
def shufflenet3d_v2(width_mult: float = 1.0) -> Backbone:
    """Build 3D ShuffleNet V2 (out_dim 1024, or 2048 at 2.0x).

    ``width_mult`` picks the official stage widths (1.0x: 116, 232, 464); stages of 4, 8 and 4
    blocks follow the stem and end in ``conv_last``, a 1x1x1 conv + BatchNorm + ReLU to 1024
    channels (2048 at 2.0x).
    """
    width_mult = _width_mult("shufflenet3d_v2", width_mult, tuple(V2_WIDTHS))
    *stages, last = V2_WIDTHS[width_mult]
    layers = _stem(stages[0])
    in_channels, units = stages[0], []
    for out_channels, blocks in zip(stages[1:], STAGE_BLOCKS, strict=True):
        for i in range(blocks):
            units.append(ShuffleV2Block(in_channels, out_channels, 2 if i == 0 else 1))
            in_channels = out_channels
    layers["features"] = nn.Sequential(*units)
    layers["conv_last"] = _conv_bn_relu(in_channels, last, 1, (1, 1, 1))
    return Backbone(nn.Sequential(layers), out_dim=last)
