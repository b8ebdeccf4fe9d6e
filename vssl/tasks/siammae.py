"""SiamMAE: masked autoencoding of a future frame from a fully visible past frame.

Gupta, Wu, Deng and Fei-Fei, "Siamese Masked Autoencoders", NeurIPS 2023,
https://arxiv.org/abs/2305.14344. An extension of MAE (He et al., "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022) to pairs of video frames:

- Frame pairs (`FramePairs`): two frames of one video, the gap between them drawn uniformly
  from a range of frame counts (4 to 48 in the paper), the earlier one first. Both frames get
  the same random resized crop and flip (the workers' clip transform on the two-frame clip).
- Encoder: an image ViT (`vssl.backbones.vit.ImageViT`, ViT-S/16 in the paper), shared by the
  two frames and run on each on its own: the past frame on all its patches, the future frame on
  its visible patches only, each frame with its own positions.
- Masking (`random_mask`): the future frame is masked at 95% with MAE's random patch masking,
  per sample ``visible_count(N, ratio) = int(N (1 - ratio))`` patches kept (9 of the 196 of a
  224 x 224 frame, so 187 masked, 95.4%); the past frame is never masked.
- Decoder: both frames' tokens after the encoder's LayerNorm (``encoder_norm``) and a shared
  ``Linear(D, decoder_dim)``; the future frame's sequence is its visible tokens with a learnt
  mask token at every masked position, plus the decoder's sinusoidal positions. Each
  `CrossSelfBlock` (the paper's cross-self decoder) lets these tokens attend to the past frame's
  tokens (cross-attention), then to each other (self-attention), then applies an MLP, all
  pre-norm. A LayerNorm and ``Linear(decoder_dim, 3 p p)`` (`vssl.heads.PixelHead`) predict the
  pixels of the masked patches.
- Loss (`siammae_loss`): MAE's normalised-pixel MSE on the masked patches only: each patch of
  the future frame (as the encoder sees it, p x p x 3 values in (row, column, channel) order) is
  standardised over its values, ``(x - mean) / sqrt(unbiased var + 1e-6)`` (MAE's
  ``norm_pix_loss``), and the squared error is averaged over the masked patches.
- Optimisation (the paper's pretraining table, MAE's recipe): AdamW with betas (0.9, 0.95),
  weight decay 0.05 except on biases and 1-d parameters (MAE's groups: the mask token decays),
  lr 1.5e-4 per 256 samples scaled linearly, 40 warm-up epochs, cosine decay to 0.

Online probe: its features are the pooled encoder tokens of the past frame (detached), which
the loss computes anyway. Evaluation (``forward``, ``extract_features``, ``vssl probe``) runs
the image ViT on every frame of a clip on its own and averages the frames' features (see
`ImageViT`); the tokens of ``extract_features(tokens=True)`` are every frame's. The backbone's
``fc_norm`` takes no part in the loss and is frozen, as in `vssl.tasks.VideoMAE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vssl.backbones.vit import LN_EPS, ImageViT, Mlp, init_vit_weights, sinusoid_position_embedding
from vssl.data.sampling import ClipSampler, ClipSpec
from vssl.heads import PixelHead
from vssl.tasks.base import StepOutput, VSSLTask
from vssl.tasks.videomae import patchify

#: Epsilon of MAE's per-patch target normalisation, ``(x - mean) / (var + eps) ** 0.5``.
TARGET_EPS = 1e-6

#: The paper's range of frame gaps between the past and the future frame.
PAPER_GAPS = (4, 48)


@dataclass
class FramePairs(ClipSampler):
    """Two frames of one video ``gap`` frames apart, ``gap`` uniform on ``[min_gap, max_gap]``.

    Returns ``{view: [start, start + gap]}`` (a two-frame clip, past frame first), the start
    uniform over the positions that keep both frames in the video. Short videos clamp the
    range: the largest gap is ``min(max_gap, num_frames - 1)`` and the smallest
    ``min(min_gap, that)``, so a video shorter than ``min_gap + 1`` frames gives its first and
    last frames, and a one-frame video that frame twice. Both draws come from the dataset's
    generator, so a sample is a function of the dataset's seed, the epoch and the index.
    """

    min_gap: int = PAPER_GAPS[0]
    max_gap: int = PAPER_GAPS[1]
    view: str = "video"

    def __post_init__(self) -> None:
        if int(self.min_gap) != self.min_gap or int(self.max_gap) != self.max_gap:
            raise ValueError(
                f"min_gap and max_gap must be whole frame counts, got {self.min_gap} and "
                f"{self.max_gap}"
            )
        if not 1 <= self.min_gap <= self.max_gap:
            raise ValueError(
                f"frame gaps need 1 <= min_gap <= max_gap, got min_gap {self.min_gap} and "
                f"max_gap {self.max_gap}"
            )
        self.min_gap, self.max_gap = int(self.min_gap), int(self.max_gap)

    def gap_range(self, num_frames: int) -> tuple[int, int]:
        """The smallest and largest gap a video of ``num_frames`` frames allows (clamped)."""
        if num_frames < 1:
            raise ValueError(f"a video must have at least one frame, got num_frames={num_frames}")
        high = min(self.max_gap, num_frames - 1)
        return min(self.min_gap, high), high

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        low, high = self.gap_range(num_frames)
        gap = int(rng.integers(low, high + 1))
        start = int(rng.integers(0, num_frames - gap))
        return {self.view: np.array([start, start + gap], dtype=np.int64)}


def visible_count(num_tokens: int, mask_ratio: float) -> int:
    """Patches of the future frame left visible: MAE's ``int(N (1 - mask_ratio))`` (with a 1e-6
    tolerance against rounding), at least one; the other ``N - visible`` are masked."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if num_tokens < 2:
        raise ValueError(f"a frame needs at least 2 patches to mask some, got {num_tokens}")
    return max(1, int(num_tokens * (1.0 - mask_ratio) + 1e-6))


def random_mask(
    batch: int, num_tokens: int, mask_ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """MAE's random patch masks ``(batch, num_tokens)`` (True = masked): per sample, the
    `visible_count` patches of lowest uniform noise stay visible. Drawn on the CPU from
    ``generator`` (or torch's default generator)."""
    keep = visible_count(num_tokens, mask_ratio)
    order = torch.rand(batch, num_tokens, generator=generator).argsort(dim=1)
    mask = torch.ones(batch, num_tokens, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], False)
    return mask


def patch_target(frame: Tensor, patch: tuple[int, int], normalize: bool = True) -> Tensor:
    """The pixels SiamMAE reconstructs: frames ``(B, C, H, W)`` -> ``(B, N, ph pw C)`` float32.

    Patches in raster order, values in (row, column, channel) order (MAE's ``patchify``). With
    ``normalize`` each patch is standardised over all its values: ``(x - mean) /
    sqrt(unbiased var + 1e-6)`` (MAE's ``norm_pix_loss``).
    """
    if frame.ndim != 4:
        raise ValueError(f"frames must be shaped (B, C, H, W), got {tuple(frame.shape)}")
    patches = patchify(frame.float().unsqueeze(2), (1, *patch)).flatten(2)
    if normalize:
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        patches = (patches - mean) / (var + TARGET_EPS).sqrt()
    return patches


def siammae_loss(
    prediction: Tensor, frame: Tensor, mask: Tensor, patch: tuple[int, int], normalize: bool = True
) -> Tensor:
    """Mean squared error between ``prediction`` ``(B, M, ph pw C)``, the masked patches of
    ``mask`` ``(B, N)`` in raster order, and their `patch_target` in ``frame`` ``(B, C, H, W)``;
    the visible patches take no part. Computed in float32."""
    target = patch_target(frame, patch, normalize)
    if mask.shape != target.shape[:2]:
        raise ValueError(
            f"mask must be shaped {tuple(target.shape[:2])} (a frame's patches), got "
            f"{tuple(mask.shape)}"
        )
    masked = target[mask].reshape(target.shape[0], -1, target.shape[-1])
    if prediction.shape != masked.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} must match the masked patches "
            f"{tuple(masked.shape)}"
        )
    with torch.autocast(prediction.device.type, enabled=False):
        return F.mse_loss(prediction.float(), masked)


def future_sequence(visible: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
    """The decoder's future-frame sequence ``(B, N, d)``: the visible tokens ``(B, N_visible,
    d)`` (ascending positions, as the encoder kept them) at the unmasked positions of ``mask``
    ``(B, N)``, ``mask_token`` ``(d,)`` at the masked ones."""
    b, n = mask.shape
    d = visible.shape[-1]
    counts = (~mask).sum(dim=1)
    if visible.shape[0] != b or (counts != visible.shape[1]).any() or mask_token.numel() != d:
        raise ValueError(
            f"visible tokens {tuple(visible.shape)} do not fit the mask {tuple(mask.shape)} and "
            f"the mask token {tuple(mask_token.shape)}"
        )
    tokens = mask_token.reshape(1, 1, d).to(visible.dtype).expand(b, n, d)
    return tokens.masked_scatter(~mask.unsqueeze(-1), visible)


class CrossSelfBlock(nn.Module):
    """The cross-self decoder block: ``x + cross(norm1(x), memory)``, then ``x +
    self(norm2(x))``, then ``x + mlp(norm3(x))``.

    The future frame's tokens ``x`` query the past frame's tokens ``memory`` (keys and values),
    then attend to each other; `torch.nn.MultiheadAttention` for both attentions.

    Args:
        dim: token width (both sequences).
        heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if min(dim, heads) < 1 or dim % heads:
            raise ValueError(f"dim {dim} must be a positive multiple of heads {heads}")
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm3 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """Queries ``(B, N, D)`` and the past frame's tokens ``(B, M, D)`` -> ``(B, N, D)``."""
        if x.ndim != 3 or memory.ndim != 3 or x.shape[::2] != memory.shape[::2]:
            raise ValueError(
                f"queries (B, N, D) and memory (B, M, D) must share B and D, got "
                f"{tuple(x.shape)} and {tuple(memory.shape)}"
            )
        x = x + self.cross_attn(self.norm1(x), memory, memory, need_weights=False)[0]
        h = self.norm2(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


class SiamMAE(VSSLTask):
    """SiamMAE pretraining: reconstruct a future frame masked at 95% from the past frame.

    Args:
        backbone: an image ViT of `vssl.backbones.vit` (``vit_s_16_image`` in the paper,
            ``vit_tiny_8_image`` for CPU runs); other backbones are refused.
        mask_ratio: fraction of the future frame's patches masked (MAE's rounding, see
            `visible_count`); 0.95 in the paper.
        min_gap, max_gap: the range of frame gaps between the two frames (`FramePairs`); the
            paper's 4 and 48.
        decoder_dim, decoder_depth, decoder_heads: the cross-self decoder (256-d, 4 blocks, 8
            heads for ViT-S/16).
        normalize_target: standardise each target patch (MAE's ``norm_pix_loss``).
        augment: `BatchAugment` settings; ``None`` gives ``{}`` (normalisation only): the paper
            uses crops and flips, no colour augmentation.
        optimizer, lr, reference_batch_size, weight_decay, lr_schedule, warmup_epochs,
            min_lr_ratio: the paper's AdamW (lr 1.5e-4 per 256 samples, weight decay 0.05,
            40 warm-up epochs, cosine decay to 0) as defaults.
        betas: Adam betas; the paper's (0.9, 0.95).
        **kwargs: the other settings of `VSSLTask` (backbone_kwargs, online_probe, ...).
    """

    def __init__(
        self,
        backbone: str = "vit_s_16_image",
        mask_ratio: float = 0.95,
        min_gap: int = PAPER_GAPS[0],
        max_gap: int = PAPER_GAPS[1],
        decoder_dim: int = 256,
        decoder_depth: int = 4,
        decoder_heads: int = 8,
        normalize_target: bool = True,
        augment: dict[str, Any] | None = None,
        optimizer: str = "adamw",
        lr: float = 1.5e-4,
        reference_batch_size: int | None = 256,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        lr_schedule: str = "cosine",
        warmup_epochs: float = 40.0,
        min_lr_ratio: float = 0.0,
        **kwargs: Any,
    ):
        visible_count(1000, mask_ratio)  # validates the ratio
        pairs = FramePairs(min_gap, max_gap)  # validates the gaps
        if min(decoder_dim, decoder_depth, decoder_heads) < 1:
            raise ValueError(
                f"decoder_dim, decoder_depth and decoder_heads must be positive, got "
                f"{decoder_dim}, {decoder_depth}, {decoder_heads}"
            )
        super().__init__(
            backbone=backbone,
            augment={} if augment is None else augment,
            optimizer=optimizer,
            lr=lr,
            reference_batch_size=reference_batch_size,
            weight_decay=weight_decay,
            betas=betas,
            lr_schedule=lr_schedule,
            warmup_epochs=warmup_epochs,
            min_lr_ratio=min_lr_ratio,
            **kwargs,
        )
        if not isinstance(self.backbone, ImageViT):
            raise ValueError(
                f"SiamMAE needs an image ViT from vssl.backbones.vit (vit_s_16_image, "
                f"vit_tiny_8_image), got backbone {backbone!r} ({type(self.backbone).__name__})"
            )
        self.mask_ratio = float(mask_ratio)
        self.min_gap, self.max_gap = pairs.min_gap, pairs.max_gap
        self.normalize_target = normalize_target
        self.patch = tuple(self.backbone.tubelet[1:])
        dim = self.backbone.out_dim
        # The fine-tuning pooling norm is not part of the pretext loss (see the module docstring).
        self.backbone.fc_norm.requires_grad_(False)
        self.encoder_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.decoder = nn.ModuleList(
            CrossSelfBlock(decoder_dim, decoder_heads) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=LN_EPS)
        self.head = PixelHead(decoder_dim, (1, *self.patch))
        for module in (self.encoder_norm, self.decoder_embed, self.decoder, self.decoder_norm):
            module.apply(init_vit_weights)
        self.head.apply(init_vit_weights)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self._mask_generator: torch.Generator | None = None

    # ---------------------------------------------------------------- data
    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """Frame pairs (`FramePairs`) in every stage; the clip length and stride are not used."""
        return FramePairs(self.min_gap, self.max_gap)

    def frame_pair(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The past and the future frame ``(B, C, 1, H, W)`` of a batch's two-frame clips."""
        video = batch["video"]
        if video.ndim != 5 or video.shape[2] != 2 or not video.is_floating_point():
            raise ValueError(
                "SiamMAE expects batch['video'] as augmented float frame pairs (B, C, 2, H, W), "
                f"got {tuple(video.shape)} {video.dtype}"
            )
        return video[:, :, :1], video[:, :, 1:]

    # ---------------------------------------------------------------- masking
    def mask_generator(self) -> torch.Generator:
        """The CPU generator masks are drawn from, seeded on first use from torch's initial seed
        (``seed_everything``) plus the process rank, so runs are repeatable and processes differ."""
        if self._mask_generator is None:
            seed = (torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63
            self._mask_generator = torch.Generator().manual_seed(seed)
        return self._mask_generator

    def draw_mask(self, frame: Tensor) -> Tensor:
        """A random patch mask ``(B, N)`` (True = masked) for frames ``(B, C, 1, H, W)``."""
        _, h, w = self.backbone.grid(frame.shape)
        mask = random_mask(frame.shape[0], h * w, self.mask_ratio, self.mask_generator())
        return mask.to(frame.device)

    # ---------------------------------------------------------------- model and loss
    def encode(self, frame: Tensor, mask: Tensor | None = None) -> Tensor:
        """The encoder's tokens ``(B, n, D)`` of frames ``(B, C, 1, H, W)``: all of them, or the
        visible ones of ``mask`` ``(B, N)`` (before ``encoder_norm``)."""
        tokens = self.backbone.embed(frame)
        if mask is not None:
            b, n, d = tokens.shape
            if mask.shape != (b, n):
                raise ValueError(f"mask must be shaped {(b, n)}, got {tuple(mask.shape)}")
            tokens = tokens[~mask].reshape(b, -1, d)
        return self.backbone.encode(tokens)

    def decode(self, past: Tensor, visible: Tensor, mask: Tensor) -> Tensor:
        """Predicted pixels ``(B, N_masked, ph pw 3)`` of the future frame's masked patches, in
        raster order, from the past frame's encoder tokens ``(B, N, D)`` and the future frame's
        visible ones ``(B, N_visible, D)``."""
        memory = self.decoder_embed(self.encoder_norm(past))
        visible = self.decoder_embed(self.encoder_norm(visible))
        b, n = mask.shape
        d = visible.shape[-1]
        x = future_sequence(visible, mask, self.mask_token)
        x = x + sinusoid_position_embedding(n, d).to(device=x.device, dtype=x.dtype)
        for block in self.decoder:
            x = block(x, memory)
        return self.head(self.decoder_norm(x[mask].reshape(b, -1, d)))

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """Normalised-pixel MSE on the future frame's masked patches."""
        past, future = self.frame_pair(batch)
        mask = self.draw_mask(future)
        encoded_past = self.encode(past)
        prediction = self.decode(encoded_past, self.encode(future, mask), mask)
        loss = siammae_loss(prediction, future[:, :, 0], mask, self.patch, self.normalize_target)
        features = self.backbone.pool(encoded_past.detach())
        return StepOutput(loss, {}, features)

    # ---------------------------------------------------------------- optimisation
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """MAE's groups: biases and 1-d parameters (norms) get no weight decay."""
        return param.ndim <= 1 or name.endswith(".bias")

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The base groups (with the paper's betas) with the main group split into decay /
        no-decay."""
        main, *rest = super().parameter_groups()
        return self.split_weight_decay(main, self.no_weight_decay) + rest
