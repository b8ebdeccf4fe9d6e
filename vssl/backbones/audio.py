"""Audio backbones: 2D CNNs on log spectrograms ``(B, C, F, T)``, as AVID and XDC use.

- ``audio_resnet18``: torchvision's ResNet-18 (He et al., "Deep Residual Learning for Image
  Recognition", CVPR 2016) with a stem for ``in_channels`` spectrogram channels and no
  classifier, the 2D ResNet-18 audio network of XDC (Alwassel et al., "Self-Supervised Learning
  by Cross-Modal Audio-Video Clustering", NeurIPS 2020) and the family of AVID's ``Conv2D``
  (Morgado et al., "Audio-Visual Instance Discrimination with Cross-Modal Agreement", CVPR
  2021: a 7x7 stride-2 stem and four stages of basic blocks, 64 to 512 channels, global max
  pooling).
- ``avid_conv2d_10``: AVID's official audio network (``models/audio.py`` ``Conv2D``, depth 10,
  facebookresearch/AVID-CMA): a 7x7 stride-2 conv, then four blocks of two 3x3 conv + BN + ReLU
  (no shortcut), 64, 128, 256 and 512 channels, the first three of stride 2; module names as
  the official ones (``conv1.0``, ``block1.conv1``, ...) under ``trunk.``.
- ``audio_tiny``: three conv + BN + ReLU layers, for CPU tests and the synthetic runs.

Features are pooled by the maximum over frequency and time (AVID's ``AdaptiveMaxPool2d``):
a sound event anywhere in the window counts.

A waveform transformer (`WaveformTransformer`) takes the raw waveform ``(B, C, N)`` instead, as
VATT's audio network (Akbari et al., "VATT: Transformers for Multimodal Self-Supervised
Learning from Raw Video, Audio and Text", NeurIPS 2021): the waveform is cut into patches of
``patch_size`` samples (128 at 48 kHz in the paper), each patch linearly projected to a token,
position embeddings added (learnable, as VATT's audio positions: a table drawn from a truncated
normal of std ``dim ** -0.5`` whose rows pass a LayerNorm before they are added, as the official
``TemporalEmbeddings``; or the fixed sinusoid table of `vssl.backbones.vit`) and the tokens run
through the pre-norm blocks of `vssl.backbones.vit`.

- ``vatt_audio_base``: VATT's audio Transformer-Base (768-d, 12 blocks, 12 heads, MLP 3072) on
  128-sample patches, 1200 learnable positions (3.2 s at 48 kHz).
- ``vatt_audio_tiny``: the same design at 64-d, 2 blocks, for CPU tests and the synthetic runs.

Its features are the mean of the tokens followed by a LayerNorm (`VideoViT`'s pooling), where
VATT reads a learned aggregation token. Every audio backbone says what it takes in
``input_kind``: ``"spectrogram"`` or ``"waveform"``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from vssl.backbones.registry import register_audio
from vssl.backbones.vit import LN_EPS, Block, init_vit_weights, sinusoid_position_embedding


class AudioBackbone(nn.Module):
    """A spectrogram trunk: ``(B, in_channels, F, T)`` in, ``(B, out_dim)`` features out.

    ``forward_features`` gives the unpooled ``(B, out_dim, F', T')`` map; ``forward`` takes its
    maximum over frequency and time.
    """

    #: What the backbone takes in: log spectrograms ``(B, C, F, T)``.
    input_kind = "spectrogram"

    def __init__(self, trunk: nn.Module, out_dim: int, in_channels: int) -> None:
        super().__init__()
        if out_dim <= 0 or in_channels <= 0:
            raise ValueError(
                f"out_dim and in_channels must be positive, got {out_dim} and {in_channels}"
            )
        self.trunk = trunk
        self.out_dim = out_dim
        self.in_channels = in_channels

    def forward_features(self, x: Tensor) -> Tensor:
        """The unpooled map ``(B, out_dim, F', T')`` of spectrograms ``(B, C, F, T)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects spectrograms shaped (B, {self.in_channels}, F, T),"
                f" got {tuple(x.shape)}"
            )
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, out_dim)``: the maximum of the map over frequency and time."""
        return torch.amax(self.forward_features(x), dim=(2, 3))


def _check_channels(in_channels: int) -> None:
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")


@register_audio(
    "audio_resnet18",
    input_size=(257, 200),
    source="torchvision",
    description="2D ResNet-18 on log spectrograms (torchvision resnet18, no fc), 11.2M params",
)
def audio_resnet18(in_channels: int = 1) -> AudioBackbone:
    """torchvision's ResNet-18 trunk with an ``in_channels`` stem (out_dim 512); the map is
    ``F / 32 x T / 32`` (rounded up)."""
    from torchvision.models import resnet18

    _check_channels(in_channels)
    net = resnet18()
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return AudioBackbone(trunk, out_dim=512, in_channels=in_channels)


class _Block2D(nn.Module):
    """AVID's ``Basic2DBlock``: two 3x3 conv + BN + ReLU, the first with ``stride``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


@register_audio(
    "avid_conv2d_10",
    input_size=(257, 200),
    source="facebookresearch/AVID-CMA",
    description="AVID's Conv2D-10: 7x7/2 stem, four plain blocks of two 3x3 convs, 64-512 ch",
)
def avid_conv2d_10(in_channels: int = 1) -> AudioBackbone:
    """AVID's audio network (out_dim 512); the map is ``F / 16 x T / 16`` (rounded up)."""
    _check_channels(in_channels)
    stem = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, padding=3, stride=2, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
    )
    trunk = nn.Sequential(
        OrderedDict(
            conv1=stem,
            block1=_Block2D(64, 64, 2),
            block2=_Block2D(64, 128, 2),
            block3=_Block2D(128, 256, 2),
            block4=_Block2D(256, 512),
        )
    )
    return AudioBackbone(trunk, out_dim=512, in_channels=in_channels)


@register_audio(
    "audio_tiny",
    input_size=(64, 64),
    source="vssl",
    description="three 3x3 conv+BN+ReLU layers (16-32-64 channels), for CPU runs and tests",
)
def audio_tiny(in_channels: int = 1, width: int = 16) -> AudioBackbone:
    """Three stride-2 3x3 conv + BN + ReLU layers of ``width``, 2x and 4x channels (out_dim
    ``4 * width``); the map is ``F / 8 x T / 8`` (rounded up)."""
    _check_channels(in_channels)
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    layers: list[nn.Module] = []
    channels = in_channels
    for out in (width, 2 * width, 4 * width):
        layers += [
            nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    return AudioBackbone(nn.Sequential(*layers), out_dim=4 * width, in_channels=in_channels)


class WaveformTransformer(nn.Module):
    """A transformer on raw waveform patches: ``(B, in_channels, N)`` in, ``(B, dim)`` out.

    Args:
        dim, depth, heads: width, number of blocks and attention heads.
        patch_size: samples per token (VATT: 128); ``N`` must be a multiple of it.
        in_channels: waveform channels (1: mono).
        positions: ``"learnable"`` (a table of ``max_tokens`` rows, the first ``N / patch_size``
            used, each through a LayerNorm, as VATT) or ``"sinusoid"`` (fixed, any length).
        max_tokens: rows of the learnable table (VATT: 1200, 3.2 s at 48 kHz).
        mlp_ratio: MLP hidden width over ``dim``.
    """

    #: What the backbone takes in: raw waveforms ``(B, C, N)``.
    input_kind = "waveform"

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        patch_size: int = 128,
        in_channels: int = 1,
        positions: str = "learnable",
        max_tokens: int = 1200,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if min(dim, depth, heads, patch_size, in_channels, max_tokens) < 1:
            raise ValueError(
                f"dim, depth, heads, patch_size, in_channels and max_tokens must be positive, got "
                f"{dim}, {depth}, {heads}, {patch_size}, {in_channels} and {max_tokens}"
            )
        if positions not in ("learnable", "sinusoid"):
            raise ValueError(f"positions must be 'learnable' or 'sinusoid', got {positions!r}")
        self.dim, self.out_dim = dim, dim
        self.patch_size, self.in_channels = patch_size, in_channels
        self.positions, self.max_tokens = positions, max_tokens
        self.patch_embed = nn.Linear(in_channels * patch_size, dim)
        learnable = positions == "learnable"
        self.pos_embed = nn.Parameter(torch.zeros(max_tokens, dim)) if learnable else None
        self.pos_norm = nn.LayerNorm(dim, eps=LN_EPS) if learnable else None
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.apply(init_vit_weights)
        if self.pos_embed is not None:
            std = dim**-0.5
            nn.init.trunc_normal_(self.pos_embed, std=std, a=-2 * std, b=2 * std)

    def num_tokens(self, num_samples: int) -> int:
        """Tokens of a waveform of ``num_samples`` samples; a clear error if they do not fit."""
        if num_samples < self.patch_size or num_samples % self.patch_size:
            raise ValueError(
                f"{type(self).__name__}: the waveform's {num_samples} samples must be a positive "
                f"multiple of the patch size {self.patch_size}"
            )
        tokens = num_samples // self.patch_size
        if self.pos_embed is not None and tokens > self.max_tokens:
            raise ValueError(
                f"{type(self).__name__}: {num_samples} samples make {tokens} tokens, more than "
                f"the {self.max_tokens} learnable positions (raise max_tokens)"
            )
        return tokens

    def patchify(self, waveform: Tensor) -> Tensor:
        """Waveforms ``(B, C, N)`` -> patches ``(B, N / patch_size, C * patch_size)``: patch
        ``i`` holds samples ``i * patch_size .. (i + 1) * patch_size - 1`` of each channel."""
        if waveform.ndim != 3 or waveform.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects waveforms shaped (B, {self.in_channels}, N), got "
                f"{tuple(waveform.shape)}"
            )
        b, c, n = waveform.shape
        tokens = self.num_tokens(n)
        return waveform.reshape(b, c, tokens, self.patch_size).transpose(1, 2).flatten(2)

    def embed(self, waveform: Tensor) -> Tensor:
        """Tokens ``(B, n, dim)`` of waveforms ``(B, C, N)``, position embeddings added."""
        tokens = self.patch_embed(self.patchify(waveform))
        n = tokens.shape[1]
        if self.pos_embed is not None and self.pos_norm is not None:
            pos = self.pos_norm(self.pos_embed[:n])
        else:
            pos = sinusoid_position_embedding(n, self.dim).to(tokens.device)
        return tokens + pos.to(dtype=tokens.dtype)

    def encode(self, tokens: Tensor) -> Tensor:
        """The transformer blocks on ``(B, n, dim)`` tokens (all of them, or a kept subset)."""
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def pool(self, tokens: Tensor) -> Tensor:
        """Features ``(B, dim)`` of encoded tokens: their mean, then a LayerNorm."""
        return self.norm(tokens.mean(dim=1))

    def forward_features(self, waveform: Tensor) -> Tensor:
        """The last block's tokens as a map ``(B, dim, N / patch_size)``."""
        return self.encode(self.embed(waveform)).transpose(1, 2)

    def forward(self, waveform: Tensor) -> Tensor:
        """Features ``(B, dim)`` of waveforms ``(B, C, N)``."""
        return self.pool(self.encode(self.embed(waveform)))


@register_audio(
    "vatt_audio_base",
    input_size=(1, 153600),
    source="vssl (VATT)",
    description="VATT's audio Transformer-Base on raw waveform: 128-sample patches, 768-d, "
    "12 blocks, 12 heads, 1200 learnable positions (3.2 s at 48 kHz)",
)
def vatt_audio_base(
    in_channels: int = 1, patch_size: int = 128, max_tokens: int = 1200
) -> WaveformTransformer:
    """VATT's audio Transformer-Base (out_dim 768)."""
    return WaveformTransformer(768, 12, 12, patch_size, in_channels, "learnable", max_tokens)


@register_audio(
    "vatt_audio_tiny",
    input_size=(1, 16000),
    source="vssl",
    description="a tiny waveform transformer for CPU runs and tests: 64-d, 2 blocks, 2 heads, "
    "128-sample patches, sinusoid positions",
)
def vatt_audio_tiny(
    in_channels: int = 1,
    dim: int = 64,
    depth: int = 2,
    heads: int = 2,
    patch_size: int = 128,
    positions: str = "sinusoid",
    max_tokens: int = 1200,
) -> WaveformTransformer:
    """A small `WaveformTransformer` (sizes configurable; out_dim ``dim``)."""
    return WaveformTransformer(dim, depth, heads, patch_size, in_channels, positions, max_tokens)
