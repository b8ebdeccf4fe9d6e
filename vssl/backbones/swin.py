"""Video Swin Transformers (Liu et al., "Video Swin Transformer", CVPR 2022) from torchvision:
``swin3d_t``, ``swin3d_s`` and ``swin3d_b``, the large end of the Large-Scale Analysis
backbones."""

from __future__ import annotations

from torch import Tensor, nn

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register


class SwinTrunk(nn.Module):
    """torchvision's ``SwinTransformer3d`` up to its final LayerNorm, as a channels-first map.

    Keeps ``patch_embed``, ``pos_drop``, ``features`` and ``norm`` under torchvision's names and
    drops ``avgpool`` and ``head``, so ``trunk.`` stripped from a state dict gives the keys of
    torchvision's model without ``head.weight`` and ``head.bias``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.patch_embed = model.patch_embed
        self.pos_drop = model.pos_drop
        self.features = model.features
        self.norm = model.norm

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, 3, T, H, W)`` clips to ``(B, C, T', H', W')`` normalised tokens."""
        tokens = self.norm(self.features(self.pos_drop(self.patch_embed(x))))
        return tokens.permute(0, 4, 1, 2, 3)


def _swin(name: str) -> Backbone:
    from torchvision.models import video

    model = getattr(video, name)(weights=None)
    return Backbone(SwinTrunk(model), out_dim=model.num_features)


_DESCRIPTION = (
    "Video Swin-{}, torchvision.models.video.{} without head: 2x4x4 patches, (8, 7, 7) "
    "shifted windows, {} blocks"
)


@register(
    "swin3d_t",
    input_size=(32, 224),
    source="torchvision",
    description=_DESCRIPTION.format("T", "swin3d_t", "2-2-6-2"),
)
def swin3d_t() -> Backbone:
    """Build torchvision's Video Swin-T trunk (embed dim 96, out_dim 768).

    Patches of 2 x 4 x 4 (frames x pixels x pixels) and three 2x2 patch mergings: the map is
    T/2 x H/32 x W/32, sizes rounded up (torchvision pads the input to whole patches and windows).
    The paper and torchvision's Kinetics-400 weights use 32-frame 224 x 224 clips.
    """
    return _swin("swin3d_t")


@register(
    "swin3d_s",
    input_size=(32, 224),
    source="torchvision",
    description=_DESCRIPTION.format("S", "swin3d_s", "2-2-18-2"),
)
def swin3d_s() -> Backbone:
    """Build torchvision's Video Swin-S trunk (embed dim 96, out_dim 768); the map as Swin-T."""
    return _swin("swin3d_s")


@register(
    "swin3d_b",
    input_size=(32, 224),
    source="torchvision",
    description=_DESCRIPTION.format("B", "swin3d_b", "2-2-18-2"),
)
def swin3d_b() -> Backbone:
    """Build torchvision's Video Swin-B trunk (embed dim 128, out_dim 1024); the map as Swin-T."""
    return _swin("swin3d_b")
