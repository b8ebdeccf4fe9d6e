"""Video backbones by name: ``build("r3d_18")``, ``available()``, ``info(name)``, ``register``.

Every backbone maps ``(B, 3, T, H, W)`` float clips to ``(B, out_dim)`` features and exposes the
unpooled map through ``forward_features``. Importing this package builds no model and does not
import torchvision or pytorchvideo; builders import what they need when called.
"""

# Importing the family modules registers their builders.
from vssl.backbones import (  # noqa: F401
    c3d,
    hara,
    resnet,
    s3dg,
    shufflenet,
    swin,
    tiny,
    torchvision_video,
    vcop,
    vit,
    x3d,
)
from vssl.backbones.base import Backbone
from vssl.backbones.registry import BackboneInfo, available, build, info, register

__all__ = ["Backbone", "BackboneInfo", "available", "build", "info", "register"]
