"""S3D-G: separable 3D Inception network with feature self-gating (Xie et al., ECCV 2018)."""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register


class SelfGating(nn.Module):
    """Per-channel gate ``x * sigmoid(W mean_THW(x) + b)``: S3D-G's context-based reweighting."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` (B, C, T, H, W) by its gate."""
        gate = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
        return x * gate[:, :, None, None, None]


def _out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv3d)]
    return convs[-1].out_channels


def _gate(block: nn.Sequential) -> None:
    block.append(SelfGating(_out_channels(block)))


@register(
    "s3dg",
    input_size=(64, 224),
    source="torchvision+vssl",
    description="S3D-G: torchvision's S3D trunk plus self-gating after every separable conv "
    "block and inception branch (Xie et al. 2018)",
)
def s3dg() -> Backbone:
    """Build S3D-G (out_dim 1024) from torchvision's S3D by appending the gates.

    Gating starts at the second separable conv (Conv2d_2c) and covers all four branches of
    every inception block, as in the reference TF-Slim ``s3dg`` (``gating_startat``); the
    7x7 stem is not gated. The gates are appended to torchvision's ``nn.Sequential`` blocks,
    so every torchvision S3D parameter keeps its name under ``trunk.features``. BatchNorm
    uses momentum 0.1: torchvision's 0.001 mirrors TF's decay for ported weights and leaves
    running statistics far behind in training from scratch.
    """
    from torchvision.models.video import s3d
    from torchvision.models.video.s3d import SepInceptionBlock3D, TemporalSeparableConv

    model = s3d(weights=None, norm_layer=partial(nn.BatchNorm3d, eps=1e-3, momentum=0.1))
    features = model.features
    separable = [m for m in features if isinstance(m, TemporalSeparableConv)]
    _gate(separable[1])
    for block in features:
        if isinstance(block, SepInceptionBlock3D):
            for branch in (block.branch0, block.branch1, block.branch2, block.branch3):
                _gate(branch)
    trunk = nn.Sequential(OrderedDict(features=features))
    return Backbone(trunk, out_dim=model.classifier[-1].in_channels)
