"""VideoMAE: masked autoencoders for video pretraining.

Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video
Pre-Training", NeurIPS 2022, https://arxiv.org/abs/2203.12602. Follows the paper and the official
code (github.com/MCG-NJU/VideoMAE: ``modeling_pretrain.py``, ``masking_generator.py``,
``engine_for_pretraining.py``, ``run_mae_pretraining.py``):

- Encoder: a video ViT from `vssl.backbones.vit` (``vit_s_16``, ``vit_b_16``, ``vit_tiny_8``);
  the tubelet size (2 x 16 x 16 in the paper) is read from the backbone.
- Tube masking (`tube_mask`): per sample one random spatial mask of
  ``int(mask_ratio * H' W')`` positions (H' x W' tokens per time step), the same at every one of
  the T' = T / 2 time steps, so the ratio is exact and every sample has the same number of
  visible tokens. 0.9 is the paper's ratio for Kinetics and SSv2, 0.75 for UCF101.
- The encoder sees only the visible tokens (with their sinusoidal positions), then the
  pretraining LayerNorm (``encoder_norm``, the official encoder's ``norm``) and
  ``Linear(D, decoder_dim, bias=False)`` (PyTorch's default initialisation, as the official
  ``encoder_to_decoder``, which its Xavier ``_init_weights`` never reaches). The decoder input is the visible tokens followed by a
  learned mask token for every masked position, each plus its sinusoidal position; after
  ``decoder_depth`` pre-norm blocks and a LayerNorm, ``Linear(decoder_dim, 3 * 2 * 16 * 16)``
  (`vssl.heads.PixelHead`) predicts the pixels of the masked tubelets only.
- Target (`reconstruction_target`): the clip un-normalised back to [0, 1] pixels, cut into
  tubelets; each tubelet and channel normalised by the mean and unbiased standard deviation of
  its 2 x 16 x 16 pixels, ``(x - mean) / (std + 1e-6)`` (the official ``normlize_target``),
  flattened as (t, h, w, channel). Loss: MSE over the masked tubelets, in float32.
- Optimisation (paper and official scripts): AdamW, betas (0.9, 0.95), weight decay 0.05 except
  on biases, norms and the mask token, lr 1.5e-4 per 256 samples scaled linearly, 40 warm-up
  epochs, cosine decay to ``lr / 15`` (the official ``min_lr`` 1e-5 scales with the batch as
  the lr), 800-1600 epochs.
- Augmentation: the paper's multi-scale crop and flip only. The workers' random resized crop
  (`VSSLTask.clip_transform`, the datamodule's ``crop_scale`` and ``flip``) stands in for the
  multi-scale crop; ``augment`` defaults to ``{}``, so `BatchAugment` only normalises.

Online probe: its features are ``fc_norm`` of the mean of the *visible* encoder tokens
(detached), so that the probe costs no second, unmasked encoder pass. Evaluation (``forward``,
``extract_features``) runs the full encoder on every token. The backbone's ``fc_norm`` (the
fine-tuning pooling norm) takes no part in the reconstruction loss: it is frozen at its initial
identity affine during pretraining (so that DDP finds no unused parameter), as the official
fine-tuning code creates it anew.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vssl.backbones.vit import Block, VideoViT, init_vit_weights, sinusoid_position_embedding
from vssl.heads import PixelHead
from vssl.tasks.base import StepOutput, VSSLTask

#: Epsilon of the per-tubelet target normalisation (official ``engine_for_pretraining.py``).
TARGET_EPS = 1e-6


def masked_count(tokens_per_frame: int, mask_ratio: float) -> int:
    """Masked positions per time step: ``int(mask_ratio * tokens_per_frame)`` as the official code
    (with a 1e-6 tolerance, so that e.g. 0.29 * 100 gives 29 and not 28)."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    masked = int(mask_ratio * tokens_per_frame + 1e-6)
    if masked >= tokens_per_frame:
        raise ValueError(
            f"mask_ratio {mask_ratio} masks all {tokens_per_frame} tokens of a time step"
        )
    return masked


def tube_mask(
    batch: int,
    grid: tuple[int, int, int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Tube masks ``(batch, T' H' W')`` (True = masked) for a token grid ``(T', H', W')``.

    Each sample gets its own random set of ``masked_count(H' W', mask_ratio)`` spatial positions,
    repeated at every time step; tokens are in (t, h, w) raster order as the encoder's. Drawn on
    the CPU from ``generator`` (or torch's default generator).
    """
    t, h, w = grid
    masked = masked_count(h * w, mask_ratio)
    order = torch.rand(batch, h * w, generator=generator).argsort(dim=1)
    spatial = torch.zeros(batch, h * w, dtype=torch.bool)
    spatial.scatter_(1, order[:, :masked], True)
    return spatial.repeat(1, t)


def patchify(video: Tensor, tubelet: tuple[int, int, int]) -> Tensor:
    """Clips ``(B, C, T, H, W)`` -> tubelets ``(B, N, pt * ph * pw, C)`` in raster order."""
    b, c, t, h, w = video.shape
    pt, ph, pw = tubelet
    if t % pt or h % ph or w % pw:
        raise ValueError(f"the clip's T x H x W {(t, h, w)} must be multiples of {tubelet}")
    x = video.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, t', h', w', pt, ph, pw, c
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw, c)


def reconstruction_target(
    video: Tensor,
    tubelet: tuple[int, int, int],
    mean: Tensor,
    std: Tensor,
    normalize: bool = True,
) -> Tensor:
    """The pixels VideoMAE reconstructs: ``(B, N, pt * ph * pw * C)`` in float32.

    ``video`` is normalised with ``mean`` and ``std`` (per channel); it is mapped back to [0, 1]
    pixels first. With ``normalize`` each tubelet and channel is standardised over its pixels:
    ``(x - mean) / (unbiased std + 1e-6)``.
    """
    c = video.shape[1]
    pixels = video.float() * std.float().view(1, c, 1, 1, 1) + mean.float().view(1, c, 1, 1, 1)
    patches = patchify(pixels, tubelet)
    if normalize:
        mu = patches.mean(dim=2, keepdim=True)
        sigma = patches.var(dim=2, unbiased=True, keepdim=True).sqrt()
        patches = (patches - mu) / (sigma + TARGET_EPS)
    return patches.flatten(2)


class VideoMAE(VSSLTask):
    """VideoMAE pretraining: reconstruct the pixels of tube-masked tubelets from the visible ones.

    Args:
        backbone: a ViT of `vssl.backbones.vit` (``vit_b_16`` in the paper); other backbones
            are refused.
        mask_ratio: fraction of the tokens masked (per time step, the same positions at every
            step): 0.9 (Kinetics, SSv2) or 0.75 (UCF101).
        decoder_dim, decoder_depth, decoder_heads: the light decoder; the official ViT-B uses
            384-d, 4 blocks, 6 heads and ViT-S 192-d, 4 blocks, 3 heads.
        normalize_target: standardise each tubelet's pixels per channel (the paper's target).
        augment: `BatchAugment` settings; ``None`` gives ``{}`` (normalisation only), as the
            paper uses no colour augmentation.
        optimizer, lr, reference_batch_size, weight_decay, lr_schedule, warmup_epochs,
            min_lr_ratio: the paper's AdamW (lr 1.5e-4 per 256 samples, weight decay 0.05,
            40 warm-up epochs, cosine decay to lr / 15) as defaults.
        betas: Adam betas; the paper's (0.9, 0.95).
        **kwargs: the other settings of `VSSLTask` (backbone_kwargs, online_probe, ...).
    """

    def __init__(
        self,
        backbone: str = "vit_b_16",
        mask_ratio: float = 0.9,
        decoder_dim: int = 384,
        decoder_depth: int = 4,
        decoder_heads: int = 6,
        normalize_target: bool = True,
        augment: dict[str, Any] | None = None,
        optimizer: str = "adamw",
        lr: float = 1.5e-4,
        reference_batch_size: int | None = 256,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        lr_schedule: str = "cosine",
        warmup_epochs: float = 40.0,
        min_lr_ratio: float = 1 / 15,
        **kwargs: Any,
    ):
        masked_count(1000, mask_ratio)  # validates the ratio
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
        if not isinstance(self.backbone, VideoViT):
            raise ValueError(
                f"VideoMAE needs a video ViT from vssl.backbones.vit (vit_s_16, vit_b_16, "
                f"vit_tiny_8), got backbone {backbone!r} ({type(self.backbone).__name__})"
            )
        self.mask_ratio = float(mask_ratio)
        self.normalize_target = normalize_target
        self.tubelet = self.backbone.tubelet
        dim = self.backbone.out_dim
        # The fine-tuning pooling norm is not part of the pretext loss (see the module docstring).
        self.backbone.fc_norm.requires_grad_(False)
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.encoder_to_decoder = nn.Linear(dim, decoder_dim, bias=False)
        self.decoder = nn.ModuleList(
            Block(decoder_dim, decoder_heads) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.head = PixelHead(decoder_dim, self.tubelet)
        # The official code applies its Xavier `_init_weights` inside the encoder and the decoder
        # only: ``encoder_to_decoder`` keeps PyTorch's default Linear initialisation.
        for module in (self.encoder_norm, self.decoder, self.decoder_norm, self.head):
            module.apply(init_vit_weights)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self._mask_generator: torch.Generator | None = None

    # ---------------------------------------------------------------- masking
    def mask_generator(self) -> torch.Generator:
        """The CPU generator masks are drawn from, seeded on first use from torch's initial seed
        (``seed_everything``) plus the process rank, so runs are repeatable and processes differ."""
        if self._mask_generator is None:
            seed = (torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63
            self._mask_generator = torch.Generator().manual_seed(seed)
        return self._mask_generator

    def draw_mask(self, video: Tensor) -> Tensor:
        """A tube mask ``(B, N)`` (True = masked) for clips ``video``, on their device."""
        grid = self.backbone.grid(video.shape)
        mask = tube_mask(video.shape[0], grid, self.mask_ratio, self.mask_generator())
        return mask.to(video.device)

    # ---------------------------------------------------------------- model and loss
    def encode_visible(self, video: Tensor, mask: Tensor) -> Tensor:
        """The encoder's output ``(B, N_visible, D)`` on the visible tokens only (before
        ``encoder_norm``)."""
        tokens = self.backbone.embed(video)
        b, n, d = tokens.shape
        if mask.shape != (b, n):
            raise ValueError(f"mask must be shaped {(b, n)}, got {tuple(mask.shape)}")
        visible = tokens[~mask].reshape(b, -1, d)
        return self.backbone.encode(visible)

    def decode(self, encoded: Tensor, mask: Tensor) -> Tensor:
        """Predicted pixels ``(B, N_masked, 3 * pt * ph * pw)`` of the masked tubelets, in
        raster order, from the visible tokens' encoder output ``(B, N_visible, D)``."""
        x = self.encoder_to_decoder(self.encoder_norm(encoded))
        b, _, d = x.shape
        pos = sinusoid_position_embedding(mask.shape[1], d).to(device=x.device, dtype=x.dtype)
        pos = pos.expand(b, -1, -1)
        pos_visible = pos[~mask].reshape(b, -1, d)
        pos_masked = pos[mask].reshape(b, -1, d)
        x = torch.cat([x + pos_visible, self.mask_token.to(x.dtype) + pos_masked], dim=1)
        for block in self.decoder:
            x = block(x)
        return self.head(self.decoder_norm(x[:, -pos_masked.shape[1] :]))

    def target(self, video: Tensor, mask: Tensor) -> Tensor:
        """The reconstruction target of the masked tubelets ``(B, N_masked, 3 * pt * ph * pw)``."""
        full = reconstruction_target(
            video, self.tubelet, self.augment.mean, self.augment.std, self.normalize_target
        )
        return full[mask].reshape(video.shape[0], -1, full.shape[-1])

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """MSE between the predicted and the target pixels of the masked tubelets."""
        video = batch["video"]
        mask = self.draw_mask(video)
        encoded = self.encode_visible(video, mask)
        prediction = self.decode(encoded, mask)
        with torch.autocast(video.device.type, enabled=False):
            loss = F.mse_loss(prediction.float(), self.target(video, mask))
        features = self.backbone.pool(encoded.detach())
        return StepOutput(loss, {}, features)

    # ---------------------------------------------------------------- optimisation
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Biases, norm weights (all 1-d parameters) and the mask token get no weight decay."""
        return param.ndim <= 1 or name.endswith(".bias") or name == "mask_token"

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The base groups (with the paper's betas) with the main group split into decay /
        no-decay."""
        main, *rest = super().parameter_groups()
        return self.split_weight_decay(main, self.no_weight_decay) + rest
