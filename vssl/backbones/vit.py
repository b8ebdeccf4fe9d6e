"""Video ViT with tubelet embedding: the encoder of VideoMAE (Tong et al., NeurIPS 2022).

Follows the official VideoMAE code (``modeling_finetune.py``, ``modeling_pretrain.py``):

- Tubelet embedding: ``Conv3d(3, D, kernel=tubelet, stride=tubelet)`` with tubelets of
  2 x 16 x 16 (frames x pixels x pixels); tokens are numbered in (t, h, w) raster order.
- Fixed 1-D sinusoidal position embeddings over all tokens (the official
  ``get_sinusoid_encoding_table``: sine on even channels, cosine on odd ones). They have no
  parameters and are computed for the token count of each input, so one model accepts every clip
  length and crop size its tubelets divide (as the official code, a 1-D numbering: a grid of
  another size gives a token other neighbours than at the training size).
- Pre-norm transformer blocks: LayerNorm (eps 1e-6), multi-head self-attention with a bias on
  q, k and v (`torch.nn.functional.scaled_dot_product_attention`), MLP ratio 4 with GELU. The
  official code has no bias on k; a k bias adds the same value to all logits of a query and
  cannot change the attention, so the two are the same function.
- Pooled features (``forward``): the mean of the tokens followed by a LayerNorm, the fine-tuning
  model's ``fc_norm``. ``forward_features`` returns the last block's tokens as a map
  ``(B, D, T/2, H/16, W/16)`` without that norm.

Linear layers are initialised as the official code (Xavier uniform, zero bias). VideoMAE itself
(`vssl.tasks.VideoMAE`) uses `VideoViT.embed`, `VideoViT.encode` and `VideoViT.pool` to run the
encoder on the visible tokens only.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vssl.backbones.base import Backbone
from vssl.backbones.registry import register

#: LayerNorm epsilon of the official VideoMAE models.
LN_EPS = 1e-6


@lru_cache(maxsize=32)
def _sinusoid_table(num_tokens: int, dim: int) -> Tensor:
    position = torch.arange(num_tokens, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angle = position / torch.pow(10000.0, exponent)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def sinusoid_position_embedding(num_tokens: int, dim: int) -> Tensor:
    """The official VideoMAE 1-D sinusoidal table ``(num_tokens, dim)`` (float32, on the CPU).

    Channel ``j`` of position ``p`` is ``sin(p / 10000^(2 floor(j/2) / dim))`` for even ``j`` and
    the cosine of that angle for odd ``j``.
    """
    if num_tokens < 1 or dim < 1:
        raise ValueError(f"num_tokens and dim must be positive, got {num_tokens} and {dim}")
    return _sinusoid_table(num_tokens, dim)


def init_jepa_weights(module: nn.Module, std: float = 0.02) -> None:
    """The official V-JEPA initialisation of one module (``_init_weights`` of its
    ``VisionTransformer`` and ``AttentivePooler``): truncated-normal Linear and convolution
    weights (std ``std``), zero biases, unit LayerNorms; use with ``module.apply``."""
    if isinstance(module, nn.Linear | nn.Conv2d | nn.Conv3d):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_vit_weights(module: nn.Module) -> None:
    """The official initialisation: Xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Attention(nn.Module):
    """Multi-head self-attention with a qkv projection (with bias) and an output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, D)`` tokens -> ``(B, N, D)``."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    """Linear(D, ratio * D), GELU, Linear(ratio * D, D)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        hidden = int(dim * mlp_ratio)
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, D)`` tokens -> ``(B, N, D)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTTrunk(nn.Module):
    """Tubelet embedding and transformer blocks; ``forward`` gives the token map."""

    def __init__(
        self, dim: int, depth: int, heads: int, tubelet: tuple[int, int, int], mlp_ratio: float
    ) -> None:
        super().__init__()
        self.tubelet = tubelet
        self.dim = dim
        self.patch_embed = nn.Conv3d(3, dim, kernel_size=tubelet, stride=tubelet)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.apply(init_vit_weights)

    def grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Tokens along (T, H, W) of clips shaped ``(..., T, H, W)``; sizes must divide evenly."""
        sizes = tuple(int(s) for s in shape[-3:])
        if any(s % p for s, p in zip(sizes, self.tubelet, strict=True)):
            raise ValueError(
                f"the clip's T x H x W {sizes} must be multiples of the tubelet {self.tubelet}"
            )
        t, h, w = (s // p for s, p in zip(sizes, self.tubelet, strict=True))
        return t, h, w

    def embed(self, x: Tensor) -> Tensor:
        """Clips ``(B, 3, T, H, W)`` -> tokens ``(B, N, D)`` with their position embeddings."""
        self.grid(x.shape)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        pos = sinusoid_position_embedding(tokens.shape[1], self.dim)
        return tokens + pos.to(device=tokens.device, dtype=tokens.dtype)

    def encode(self, tokens: Tensor) -> Tensor:
        """Runs the blocks on tokens ``(B, n, D)`` (all of a clip's, or a visible subset)."""
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward(self, x: Tensor) -> Tensor:
        """Clips ``(B, 3, T, H, W)`` -> the last block's map ``(B, D, T', H', W')``."""
        t, h, w = self.grid(x.shape)
        tokens = self.encode(self.embed(x))
        return tokens.transpose(1, 2).reshape(x.shape[0], self.dim, t, h, w)


class VideoViT(Backbone):
    """A video ViT: ``(B, 3, T, H, W)`` -> ``(B, dim)`` (token mean, then ``fc_norm``).

    Args:
        dim, depth, heads: width, number of blocks and attention heads.
        tubelet: (frames, height, width) of a tubelet; T, H, W must be multiples of it.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        tubelet: tuple[int, int, int] = (2, 16, 16),
        mlp_ratio: float = 4.0,
    ) -> None:
        tubelet = (int(tubelet[0]), int(tubelet[1]), int(tubelet[2]))
        if min(dim, depth, heads, *tubelet) < 1:
            raise ValueError(
                f"dim, depth, heads and the tubelet sizes must be positive, got dim {dim}, "
                f"depth {depth}, heads {heads}, tubelet {tubelet}"
            )
        super().__init__(ViTTrunk(dim, depth, heads, tubelet, mlp_ratio), out_dim=dim)
        self.fc_norm = nn.LayerNorm(dim, eps=LN_EPS)

    @property
    def tubelet(self) -> tuple[int, int, int]:
        """(frames, height, width) of one token's tubelet."""
        return self.trunk.tubelet

    def grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Tokens along (T, H, W) for clips of ``shape``; a clear error if it does not divide."""
        return self.trunk.grid(shape)

    def embed(self, x: Tensor) -> Tensor:
        """Tokens ``(B, N, D)`` of clips ``(B, 3, T, H, W)``, position embeddings added."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects clips shaped (B, 3, T, H, W), got {tuple(x.shape)}"
            )
        return self.trunk.embed(x)

    def encode(self, tokens: Tensor) -> Tensor:
        """The transformer blocks on ``(B, n, D)`` tokens (e.g. the visible ones only)."""
        return self.trunk.encode(tokens)

    def pool(self, tokens: Tensor) -> Tensor:
        """Pooled features ``(B, D)`` of encoded tokens ``(B, n, D)``: mean, then ``fc_norm``."""
        return self.fc_norm(tokens.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, dim)``: ``fc_norm`` of the mean of all tokens of the full clip."""
        return self.fc_norm(self.forward_features(x).mean(dim=(2, 3, 4)))


def _tubelet(tubelet_frames: int, patch_size: int) -> tuple[int, int, int]:
    return (tubelet_frames, patch_size, patch_size)


@register(
    "vit_s_16",
    input_size=(16, 224),
    source="vssl (VideoMAE)",
    description="ViT-S video transformer (384-d, 12 blocks, 6 heads) on 2x16x16 tubelets, "
    "sinusoidal positions, about 21.9M parameters (VideoMAE)",
)
def vit_s_16(patch_size: int = 16, tubelet_frames: int = 2) -> VideoViT:
    """Build ViT-S/16 with ``tubelet_frames`` x ``patch_size`` x ``patch_size`` tubelets."""
    return VideoViT(384, 12, 6, _tubelet(tubelet_frames, patch_size))


@register(
    "vit_b_16",
    input_size=(16, 224),
    source="vssl (VideoMAE)",
    description="ViT-B video transformer (768-d, 12 blocks, 12 heads) on 2x16x16 tubelets, "
    "sinusoidal positions, about 86.2M parameters (VideoMAE)",
)
def vit_b_16(patch_size: int = 16, tubelet_frames: int = 2) -> VideoViT:
    """Build ViT-B/16 with ``tubelet_frames`` x ``patch_size`` x ``patch_size`` tubelets."""
    return VideoViT(768, 12, 12, _tubelet(tubelet_frames, patch_size))


@register(
    "vit_l_16",
    input_size=(16, 224),
    source="vssl (VideoMAE)",
    description="ViT-L video transformer (1024-d, 24 blocks, 16 heads) on 2x16x16 tubelets, "
    "sinusoidal positions, about 303.9M parameters (VideoMAE, V-JEPA)",
)
def vit_l_16(patch_size: int = 16, tubelet_frames: int = 2) -> VideoViT:
    """Build ViT-L/16 with ``tubelet_frames`` x ``patch_size`` x ``patch_size`` tubelets."""
    return VideoViT(1024, 24, 16, _tubelet(tubelet_frames, patch_size))


@register(
    "vit_tiny_8",
    input_size=(16, 32),
    source="vssl",
    description="a tiny video ViT for tests and CPU runs: 64-d, 2 blocks, 2 heads, 2x8x8 tubelets",
)
def vit_tiny_8(
    dim: int = 64, depth: int = 2, heads: int = 2, patch_size: int = 8, tubelet_frames: int = 2
) -> VideoViT:
    """Build a small ViT (sizes configurable) with 2x8x8 tubelets by default."""
    return VideoViT(dim, depth, heads, _tubelet(tubelet_frames, patch_size))


def conv_stem(dim: int, tubelet: tuple[int, int, int], width: int = 32) -> nn.Sequential:
    """A convolutional stem that replaces the tubelet embedding, with the same output grid.

    After "Early Convolutions Help Transformers See Better" (Xiao et al., NeurIPS 2021): 3x3x3
    convolutions with BatchNorm and ReLU, each halving every axis that the tubelet still has to
    reduce, then a 1x1x1 convolution to ``dim``. A token sees its tubelet and a margin of its
    neighbours, so small motions that a linear tubelet embedding misses reach the transformer.
    The tubelet sizes must be powers of two.
    """
    if any(p & (p - 1) for p in tubelet):
        raise ValueError(f"a convolutional stem needs power-of-two tubelet sizes, got {tubelet}")
    layers: list[nn.Module] = []
    left, channels = list(tubelet), 3
    while max(left) > 1:
        stride = tuple(2 if p > 1 else 1 for p in left)
        left = [p // s for p, s in zip(left, stride, strict=True)]
        out = width if max(left) > 1 else 2 * width
        layers += [
            nn.Conv3d(channels, out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm3d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    layers.append(nn.Conv3d(channels, dim, 1))
    return nn.Sequential(*layers)


class ConvStemViT(VideoViT):
    """A `VideoViT` whose tubelet embedding is a convolutional stem (`conv_stem`).

    Tokens, positions, blocks and pooling are those of `VideoViT`, and ``tubelet`` is still the
    pixels per token, so VideoMAE and V-JEPA run on it unchanged. The stem runs on the whole clip
    before tokens are dropped, so a visible token also sees a few pixels of masked neighbours.

    Args:
        dim, depth, heads, tubelet, mlp_ratio: as `VideoViT`.
        stem_width: channels of the stem's convolutions (the last one has twice as many).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        tubelet: tuple[int, int, int] = (2, 8, 8),
        mlp_ratio: float = 4.0,
        stem_width: int = 32,
    ) -> None:
        super().__init__(dim, depth, heads, tubelet, mlp_ratio)
        self.trunk.patch_embed = conv_stem(dim, self.tubelet, stem_width)


@register(
    "vit_tiny_8_convstem",
    input_size=(16, 32),
    source="vssl",
    description="a tiny video ViT that learns on a CPU: 64-d, 2 blocks, 2 heads, 2x8x8 tokens "
    "from a 3-layer convolutional stem (Xiao et al. 2021), sinusoidal positions",
)
def vit_tiny_8_convstem(
    dim: int = 64,
    depth: int = 2,
    heads: int = 2,
    patch_size: int = 8,
    tubelet_frames: int = 2,
    stem_width: int = 32,
) -> ConvStemViT:
    """Build a small ViT whose 2x8x8 tokens come from a convolutional stem (sizes configurable)."""
    return ConvStemViT(dim, depth, heads, _tubelet(tubelet_frames, patch_size), 4.0, stem_width)


class ImageViT(VideoViT):
    """An image ViT applied to clips frame by frame: each frame is its own token grid.

    The encoder of frame-based methods (SiamMAE, Gupta et al., "Siamese Masked Autoencoders",
    NeurIPS 2023): ``patch x patch`` patches of one frame (a `VideoViT` with one-frame tubelets),
    the 1-D sinusoidal positions of one frame's ``H' W'`` tokens, and attention within a frame
    only. On a clip ``(B, 3, T, H, W)`` every frame is encoded on its own (time folded into the
    batch), so one model serves frames and clips alike:

    - ``forward_features``: the per-frame token maps stacked over time, ``(B, D, T, H', W')``;
      the attentive probe and ``extract_features(tokens=True)`` read its ``T H' W'`` tokens.
    - ``forward``: ``fc_norm`` of the mean of all those tokens, i.e. of the average of the
      frames' mean tokens: per-frame features averaged over the clip.
    - ``embed``: tokens ``(B, T H' W', D)`` with each frame's positions ``0 .. H' W' - 1``;
      ``encode`` runs the blocks on the tokens it is given, so a task that wants one frame's
      attention passes one frame's tokens (frames as one-frame clips, ``(B T, 3, 1, H, W)``).

    Args:
        dim, depth, heads: width, number of blocks and attention heads.
        patch_size: side of a square patch in pixels.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(
        self, dim: int, depth: int, heads: int, patch_size: int = 16, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__(dim, depth, heads, (1, patch_size, patch_size), mlp_ratio)

    @staticmethod
    def frames(x: Tensor) -> Tensor:
        """Clips ``(B, 3, T, H, W)`` -> one-frame clips ``(B T, 3, 1, H, W)``, frame-major."""
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, 1, h, w)

    def embed(self, x: Tensor) -> Tensor:
        """Tokens ``(B, T H' W', D)`` of clips, each frame's with that frame's positions."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects clips shaped (B, 3, T, H, W), got {tuple(x.shape)}"
            )
        self.grid(x.shape)
        tokens = self.trunk.embed(self.frames(x))
        return tokens.reshape(x.shape[0], -1, self.out_dim)

    def forward_features(self, x: Tensor) -> Tensor:
        """The token maps ``(B, D, T, H', W')`` of every frame, each frame encoded on its own."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects clips shaped (B, 3, T, H, W), got {tuple(x.shape)}"
            )
        b, t = x.shape[0], x.shape[2]
        maps = self.trunk(self.frames(x))  # (B T, D, 1, H', W')
        return maps.reshape(b, t, *maps.shape[1:]).squeeze(3).transpose(1, 2)


@register(
    "vit_s_16_image",
    input_size=(2, 224),
    source="vssl (SiamMAE)",
    description="ViT-S image transformer (384-d, 12 blocks, 6 heads) on 16x16 patches of each "
    "frame, sinusoidal positions per frame, about 21.6M parameters; clips frame by frame (SiamMAE)",
)
def vit_s_16_image(patch_size: int = 16) -> ImageViT:
    """Build the image ViT-S/16 that SiamMAE pretrains."""
    return ImageViT(384, 12, 6, patch_size)


@register(
    "vit_tiny_8_image",
    input_size=(2, 64),
    source="vssl",
    description="a tiny image ViT for tests and CPU runs: 64-d, 2 blocks, 2 heads, 8x8 patches "
    "of each frame, clips frame by frame",
)
def vit_tiny_8_image(
    dim: int = 64, depth: int = 2, heads: int = 2, patch_size: int = 8
) -> ImageViT:
    """Build a small image ViT (sizes configurable) with 8x8 patches by default."""
    return ImageViT(dim, depth, heads, patch_size)
