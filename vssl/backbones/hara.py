"""Hara et al.'s 3D ResNets ("Can Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and
ImageNet?", CVPR 2018), the 3D ResNet-18 of RSPNet and 3D RotNet, from torchvision's blocks."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register

_DESCRIPTION = (
    "Hara et al.'s 3D ResNet-{}: 7x7x7 stem conv stride (1,2,2), 3x3x3 max-pool stride 2, "
    "3x3x3 BasicBlocks, 1x1x1 conv shortcuts (type B)"
)


def _hara_resnet(layers: list[int]) -> Backbone:
    """Build Hara's 3D ResNet with ``layers`` BasicBlocks per stage (out_dim 512).

    The network of kenshohara/3D-ResNets-PyTorch ``models/resnet.py`` as RSPNet copies it
    (PeihaoChen/RSPNet ``models/resnet.py``, whose default and used shortcut type is B): stem
    conv 7x7x7 with stride (1, 2, 2), padding 3, no bias; BatchNorm, ReLU; max-pool 3x3x3 with
    stride 2, padding 1; then torchvision's ``BasicBlock`` with ``Conv3DSimple`` 3x3x3 convs,
    stride 2 in all three axes at the first block of layer2-4, whose shortcut is a 1x1x1 conv
    with stride 2 and BatchNorm. torchvision's initialisation (Kaiming normal, fan_out; BatchNorm
    1 and 0) is Hara's. The map is T/16 x H/32 x W/32.

    Checkpoint keys: the stem keeps Hara's names (``conv1``, ``bn1``); in the blocks, Hara's
    ``layerX.Y.conv1.weight`` / ``bn1.*`` / ``conv2.weight`` / ``bn2.*`` are torchvision's
    ``layerX.Y.conv1.0.weight`` / ``conv1.1.*`` / ``conv2.0.weight`` / ``conv2.1.*``;
    ``downsample.0`` / ``downsample.1`` are the same (tests/backbones/test_backbones.py loads the renamed
    official key set strictly). RSPNet's checkpoints add the prefix ``module.encoder.`` and a
    ``fc``, which ``trunk`` does not have.
    """
    from torchvision.models.video.resnet import BasicBlock, Conv3DSimple, VideoResNet

    def stem() -> nn.Module:
        return nn.Sequential(
            nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=3, stride=2, padding=1),
        )

    net = VideoResNet(BasicBlock, [Conv3DSimple] * 4, layers, stem)
    conv1, bn1, relu, maxpool = net.stem
    modules = OrderedDict(conv1=conv1, bn1=bn1, relu=relu, maxpool=maxpool)
    modules.update((name, getattr(net, name)) for name in ("layer1", "layer2", "layer3", "layer4"))
    return Backbone(nn.Sequential(modules), out_dim=net.fc.in_features)


@register(
    "r3d_18_hara",
    input_size=(16, 112),
    source="torchvision+vssl",
    description=_DESCRIPTION.format(18),
)
def r3d_18_hara() -> Backbone:
    """Build Hara et al.'s 3D ResNet-18, as RSPNet and 3D RotNet use it (out_dim 512)."""
    return _hara_resnet([2, 2, 2, 2])


@register(
    "r3d_34_hara",
    input_size=(16, 112),
    source="torchvision+vssl",
    description=_DESCRIPTION.format(34),
)
def r3d_34_hara() -> Backbone:
    """Build Hara et al.'s 3D ResNet-34 (out_dim 512)."""
    return _hara_resnet([3, 4, 6, 3])
