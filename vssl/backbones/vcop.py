"""The 10-layer R3D and R(2+1)D of VCOP ("Self-supervised Spatiotemporal Learning via Video Clip
Order Prediction", Xu et al., CVPR 2019), also used by PRP, STS and RSPNet, from torchvision's
blocks.

VCOP's ``models/r3d.py`` and ``models/r21d.py`` (xudejing/video-clip-order-prediction), built
with ``layer_sizes (1, 1, 1, 1)``: a stem, then one residual block per stage (64, 128, 256,
512 channels), stride 2 in all three axes at the first conv of stages 2-4 and in their 1x1x1
projection shortcut; no max-pool, so the map is T/8 x H/16 x W/16. Every conv is bias-free.
The official code never re-initialises its layers, so these keep PyTorch's default
initialisation (torchvision's ``VideoResNet`` Kaiming init is undone).

Checkpoint keys (VCOP, PRP, STS and RSPNet's ``r2plus1d-vcop`` name layers the same way; PRP and
RSPNet add a wrapper prefix; tests/backbones/test_backbones.py loads the renamed official key set strictly):
VCOP's ``conv{k}.block1`` is ``layer{k-1}.0`` here, and a block's ``conv1`` / ``bn1`` /
``conv2`` / ``bn2`` / ``downsampleconv`` / ``downsamplebn`` are ``conv1.0`` / ``conv1.1`` /
``conv2.0`` / ``conv2.1`` / ``downsample.0`` / ``downsample.1``. Inside a conv, R3D's
``temporal_spatial_conv`` is the conv itself (drop it) and R(2+1)D's ``spatial_conv`` / ``bn``
/ ``temporal_conv`` are ``0`` / ``1`` / ``3``. The stem: R3D's ``conv1`` / ``bn1`` are
``stem.0`` / ``stem.1``; R(2+1)D's ``conv1.spatial_conv`` / ``conv1.bn`` /
``conv1.temporal_conv`` / ``bn1`` are ``stem.0`` / ``stem.1`` / ``stem.3`` / ``stem.4``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register

_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
_LAYERS = [1, 1, 1, 1]


def vcop_midplanes(kernel: tuple[int, int, int], in_channels: int, out_channels: int) -> int:
    """Intermediate channels of a (2+1)D conv: the R(2+1)D paper's section 3.5 formula.

    ``floor(t * h * w * N_in * N_out / (h * w * N_in + t * N_out))``, so the factorised conv has
    about the parameters of the full ``t x h x w`` one; VCOP computes it for every conv from its
    own input and output channels.
    """
    t, h, w = kernel
    return (t * h * w * in_channels * out_channels) // (h * w * in_channels + t * out_channels)


def _factorised(
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int],
) -> nn.Sequential:
    """A (2+1)D conv laid out as torchvision's ``Conv2Plus1D``, for any kernel and stride.

    1 x h x w conv with the spatial stride, BatchNorm, ReLU, t x 1 x 1 conv with the temporal
    stride; no bias, 'same' padding.
    """
    t, h, w = kernel
    mid = vcop_midplanes(kernel, in_channels, out_channels)
    spatial = nn.Conv3d(
        in_channels, mid, (1, h, w), (1, stride[1], stride[2]), (0, h // 2, w // 2), bias=False
    )
    temporal = nn.Conv3d(
        mid, out_channels, (t, 1, 1), (stride[0], 1, 1), (t // 2, 0, 0), bias=False
    )
    return nn.Sequential(spatial, nn.BatchNorm3d(mid), nn.ReLU(inplace=True), temporal)


def _trunk(net: nn.Module) -> Backbone:
    """Keep the stem and layer1-4 of a torchvision ``VideoResNet`` with PyTorch's default init."""
    trunk = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in _STAGES))
    for module in trunk.modules():
        if isinstance(module, (nn.Conv3d, nn.BatchNorm3d)):
            module.reset_parameters()
    return Backbone(trunk, out_dim=net.fc.in_features)


@register(
    "r3d_10",
    input_size=(16, 112),
    source="torchvision+vssl",
    description="VCOP's 10-layer R3D: torchvision's R3D with one BasicBlock per stage "
    "(3x7x7 stem, 3x3x3 convs)",
)
def r3d_10() -> Backbone:
    """Build VCOP's R3D-10 (out_dim 512): torchvision's R3D-18 with one block per stage.

    VCOP's stem (3x7x7 conv, stride (1, 2, 2), BatchNorm, ReLU) and blocks are torchvision's
    ``BasicStem`` and ``BasicBlock`` with ``Conv3DSimple``, layer for layer.
    """
    from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, VideoResNet

    return _trunk(VideoResNet(BasicBlock, [Conv3DSimple] * 4, _LAYERS, BasicStem))


@register(
    "r2plus1d_10",
    input_size=(16, 112),
    source="torchvision+vssl",
    description="VCOP's 10-layer R(2+1)D: one (2+1)D BasicBlock per stage, intermediate "
    "channels per conv as VCOP, factorised stem and shortcuts",
)
def r2plus1d_10() -> Backbone:
    """Build VCOP's R(2+1)D-10 (out_dim 512), the ``r2plus1d-vcop`` of RSPNet.

    torchvision's ``BasicBlock`` with ``Conv2Plus1D``, changed where VCOP's ``r21d.py`` differs
    from torchvision's R(2+1)D: every factorised conv takes the intermediate width of
    ``vcop_midplanes`` for its own channels (torchvision gives a block's second conv the width
    of its first, which differs in the first block of stages 2-4), the stem is a factorised
    3x7x7 conv (83 intermediate channels, not torchvision's 45), and the 1x1x1 stride-2
    shortcuts are factorised too (1x1x1 spatial conv with stride (1, 2, 2), BatchNorm, ReLU,
    1x1x1 temporal conv with stride (2, 1, 1)).
    """
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, VideoResNet

    def stem() -> nn.Module:
        return nn.Sequential(
            *_factorised(3, 64, (3, 7, 7), stride=(1, 2, 2)),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
        )

    net = VideoResNet(BasicBlock, [Conv2Plus1D] * 4, _LAYERS, stem)
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(net, name)[0]
        planes = block.conv2[1].num_features
        in_channels = block.conv1[0][0].in_channels
        mid = vcop_midplanes((3, 3, 3), planes, planes)
        block.conv2[0] = Conv2Plus1D(planes, planes, mid)
        block.downsample[0] = _factorised(in_channels, planes, (1, 1, 1), stride=(2, 2, 2))
    return _trunk(net)
