"""The one place vssl imports pytorchvideo: a break in that unmaintained package touches one file.

Import this module lazily (inside builders): importing it loads pytorchvideo and fvcore.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

from torch import nn

with warnings.catch_warnings():
    # fvcore decorates functions with torch.jit.script at import, which torch now deprecates.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from pytorchvideo.models.net import Net
    from pytorchvideo.models.resnet import create_resnet
    from pytorchvideo.models.x3d import ProjectedPool, create_x3d

__all__ = ["resnet_trunk", "x3d_trunk"]


def resnet_trunk(
    *,
    depth: int,
    stem_kernel: tuple[int, int, int],
    stem_stride: tuple[int, int, int],
    conv_a_kernels: tuple[tuple[int, int, int], ...],
    stem_width: int,
) -> tuple[nn.Module, int]:
    """Build a pytorchvideo 3D ResNet without its head; return it and its output channels.

    The stem max-pool is pytorchvideo's default, 1x3x3 with stride (1, 2, 2).
    """
    net = create_resnet(
        model_depth=depth,
        stem_dim_out=stem_width,
        stem_conv_kernel_size=stem_kernel,
        stem_conv_stride=stem_stride,
        stage_conv_a_kernel_size=conv_a_kernels,
        head=None,
    )
    last_conv = [m for m in net.modules() if isinstance(m, nn.Conv3d)][-1]
    return net, last_conv.out_channels


def x3d_trunk(
    *, clip_length: int, crop_size: int, depth_factor: float, width_factor: float = 2.0
) -> tuple[nn.Module, int]:
    """Build a pytorchvideo X3D up to and including conv5; return it and conv5's channels.

    conv5 (the 1x1x1 conv to 432 channels with BN and ReLU) is the last layer that operates
    on the feature map; pytorchvideo keeps it inside the head's ProjectedPool. The rest of
    the head (global pool, fc 2048, classifier) is dropped. conv5 is rebuilt under the same
    names (``blocks.5.pool.pre_conv`` ...) so state-dict keys still match pytorchvideo's.
    """
    net = create_x3d(
        input_clip_length=clip_length,
        input_crop_size=crop_size,
        depth_factor=depth_factor,
        width_factor=width_factor,
    )
    *body, head = net.blocks
    pool = head.pool
    if not isinstance(pool, ProjectedPool):
        raise TypeError(f"unexpected pytorchvideo X3D head: {type(pool).__name__}")
    conv5 = nn.Sequential(
        OrderedDict(pre_conv=pool.pre_conv, pre_norm=pool.pre_norm, pre_act=pool.pre_act)
    )
    blocks = nn.ModuleList([*body, nn.Sequential(OrderedDict(pool=conv5))])
    return Net(blocks=blocks), pool.pre_conv.out_channels
