"""The interface every backbone implements."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A video network trunk: ``(B, 3, T, H, W)`` clips in, ``(B, out_dim)`` features out.

    Tasks and evaluators depend only on this interface, so any trunk can serve any pretext task.
    ``forward_features`` gives the unpooled ``(B, out_dim, T', H', W')`` map for dense heads;
    ``forward`` averages it over time and space, so no backbone hard-codes a pooling size and all
    of them accept any clip length and crop size their strides allow.

    The trunk is stored as ``self.trunk``; families keep the parameter names of the library they
    wrap under it, so ``trunk.`` stripped from a state dict gives keys that torchvision or
    pytorchvideo models accept (with their classification heads missing).
    """

    in_channels = 3

    def __init__(self, trunk: nn.Module, out_dim: int) -> None:
        super().__init__()
        if out_dim <= 0:
            raise ValueError(f"out_dim must be positive, got {out_dim}")
        self.trunk = trunk
        self.out_dim = out_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the unpooled feature map ``(B, out_dim, T', H', W')`` of a clip batch."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects clips shaped (B, {self.in_channels}, T, H, W), "
                f"got {tuple(x.shape)}"
            )
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return features ``(B, out_dim)`` averaged over time and space."""
        return self.forward_features(x).mean(dim=(2, 3, 4))
