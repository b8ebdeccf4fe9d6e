"""V-JEPA: predict the features of masked video regions against an EMA target encoder.

Bardes et al., "Revisiting Feature Prediction for Learning Visual Representations from Video"
(2024), https://arxiv.org/abs/2404.08471. Follows the paper and the official code
(github.com/facebookresearch/jepa: ``src/masks/multiblock3d.py``, ``src/models/predictor.py``,
``app/vjepa/train.py``, ``app/vjepa/utils.py``, ``configs/pretrain/vitl16.yaml``):

- Multi-block 3D masking (`multiblock_mask`): two mask sets per clip, each its own prediction.
  Short-range: the union of 8 blocks of spatial scale 0.15; long-range: 2 blocks of scale 0.7;
  aspect ratios (height / width) drawn in [0.75, 1.5]; every block spans all time steps, so the
  mask is the same over time. As the official collator, one block size per mask set and batch
  (`block_size`: ``int(scale * H' W')`` tokens, ``h = round(sqrt(n * ar))``,
  ``w = round(sqrt(n / ar))``, clipped to the grid), a position per block and sample, redrawn
  when a sample's blocks cover every token. The context is the complement of the union; both
  index lists are cut to the shortest in the batch (`mask_indices`), as the official code, so
  that every sample has as many tokens.
- Context encoder: the task's video ViT (`vssl.backbones.vit`) on the context tokens only (the
  positions added before the tokens are dropped), then a LayerNorm (``encoder_norm``, the
  official encoder's final ``norm``). One encoder pass per mask set, as the official
  ``MultiMaskWrapper``. ``encoder_init="jepa"`` (the paper config) initialises it as the
  official ``VisionTransformer`` (`jepa_init_`); its positions stay the video ViT's 1-D
  sinusoids (the official encoder has the 3-D table of the predictor).
- Target: `vssl.tasks.momentum.MomentumEncoder` of the encoder and ``encoder_norm`` on every
  token of the clip, its output layer-normed again without affine parameters; the tokens of
  each mask set's target blocks are the targets. No gradient reaches it; after every optimiser
  step it moves towards the online weights with a momentum rising linearly from 0.998 to 1.0
  over ``schedule_scale`` times the training (the official ``ipe_scale`` 1.25: training ends at
  0.9996).
- Predictor (`JEPAPredictor`): a narrow ViT (384-d, 12 blocks, the encoder's head count, in the
  paper) on the context tokens mapped to its width plus one learnt mask token (zero-initialised,
  one per mask set) at each target position, each plus its fixed 3-D sine-cosine position
  (`sincos_3d_position_embedding`); a LayerNorm and ``Linear(dim, D)`` give the prediction of
  the target tokens. Initialised as the official code: truncated normal (std 0.02) Linear
  weights, zero biases, the output projections of block ``l`` divided by ``sqrt(2 l)``.
- Loss (`jepa_loss`): the L1 distance ``mean |prediction - target|`` of each mask set, averaged
  over the mask sets (the official ``loss_exp`` 1, no variance regulariser).
- Optimisation: AdamW (betas 0.9, 0.999), no weight decay on biases and 1-d parameters, weight
  decay rising on a cosine from 0.04 to 0.4; the lr warms up linearly from ``start_lr_ratio *
  lr`` (2e-4 for lr 6.25e-4) over ``warmup_epochs``, then decays on a cosine to ``min_lr_ratio *
  lr`` (1e-6), both cosines stretched over ``schedule_scale`` times the training, as the
  official schedulers (`VJEPA.lr_factor`, `VJEPA.weight_decay_at`). With ``clip_grad`` (10 in
  the paper config) the encoder's and the predictor's gradient norms are clipped separately,
  only after the warm-up (`VJEPA.clip_gradients_per_network`), as the official loop.
- Augmentation: random resized crop (``crop_ratio``: the official aspect range 0.75-1.35 in the
  paper config) and flips, no colour.

Online probe: its features are the pooled context tokens of the first mask set (detached), so
the probe costs no extra pass. Evaluation (``extract_features``, and `evaluation_tokens` for the
attentive probe) reads ``eval_encoder``: ``context`` (the default) runs the context encoder,
``self.backbone``, on every token without ``encoder_norm``; ``target`` is the official frozen
evaluation (``evals/video_classification_frozen/eval.py``: ``checkpoint_key: target_encoder``,
whose ``VisionTransformer.forward`` ends with its ``norm``): the target encoder's backbone on
every token, then the target's copy of ``encoder_norm``. The backbone's ``fc_norm`` takes no part
in the loss and is frozen, as in `vssl.tasks.VideoMAE`; pooled features are ``fc_norm`` of the
mean token of the chosen encoder. ``forward`` stays the context backbone's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vssl.backbones.vit import LN_EPS, Block, VideoViT, init_jepa_weights
from vssl.data.datamodule import default_clip_transform
from vssl.data.sampling import ClipSpec
from vssl.data.transforms import ViewTransform, train_clip_transform
from vssl.tasks.base import StepOutput, VSSLTask
from vssl.tasks.momentum import MomentumEncoder

#: How the encoder is initialised: ``vit``, the video ViT's own (Xavier-uniform Linears, as
#: VideoMAE); ``jepa``, the official V-JEPA ``VisionTransformer``'s (`jepa_init_`).
ENCODER_INITS = ("vit", "jepa")

#: Which encoder evaluation reads: ``context``, the online backbone without ``encoder_norm``;
#: ``target``, the EMA target and its norm, as the official frozen evaluation.
EVAL_ENCODERS = ("context", "target")

#: Redraws of a sample's blocks before a mask set whose blocks keep covering every token is an
#: error (the official collator loops until a context is left).
MAX_REDRAWS = 100


@dataclass(frozen=True)
class BlockMaskSpec:
    """One mask set of multi-block masking: ``num_blocks`` blocks of a spatial scale (fraction of
    the H' x W' positions), an aspect ratio (height / width) and a temporal scale (fraction of
    the T' time steps), each drawn uniformly in its range."""

    num_blocks: int
    spatial_scale: tuple[float, float]
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    temporal_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {self.num_blocks}")
        for name in ("spatial_scale", "aspect_ratio", "temporal_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high or (name != "aspect_ratio" and high > 1):
                bound = "" if name == "aspect_ratio" else " <= 1"
                raise ValueError(
                    f"{name} must be a range 0 < low <= high{bound}, got {getattr(self, name)}"
                )

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BlockMaskSpec:
        """A spec from a config mapping; a single number stands for a fixed scale."""
        unknown = set(config) - {"num_blocks", "spatial_scale", "aspect_ratio", "temporal_scale"}
        if unknown or "num_blocks" not in config or "spatial_scale" not in config:
            raise ValueError(
                "a mask set needs num_blocks and spatial_scale (and may give aspect_ratio and "
                f"temporal_scale), got {config}"
            )

        def pair(value: Any) -> tuple[float, float]:
            if isinstance(value, int | float):
                return float(value), float(value)
            low, high = value
            return float(low), float(high)

        return cls(
            num_blocks=int(config["num_blocks"]),
            spatial_scale=pair(config["spatial_scale"]),
            aspect_ratio=pair(config.get("aspect_ratio", (0.75, 1.5))),
            temporal_scale=pair(config.get("temporal_scale", (1.0, 1.0))),
        )


#: The paper's mask sets: short-range (8 blocks at scale 0.15) and long-range (2 at 0.7).
PAPER_MASKS = (
    BlockMaskSpec(num_blocks=8, spatial_scale=(0.15, 0.15)),
    BlockMaskSpec(num_blocks=2, spatial_scale=(0.7, 0.7)),
)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + torch.rand(1, generator=generator).item() * (high - low)


def block_size(
    spec: BlockMaskSpec, grid: tuple[int, int, int], generator: torch.Generator | None = None
) -> tuple[int, int, int]:
    """A block's (t, h, w) in tokens, as the official ``_sample_block_size``: ``t =
    max(1, int(T' * temporal_scale))``, ``n = int(H' W' * spatial_scale)`` positions shaped by
    the aspect ratio ``ar`` into ``h = round(sqrt(n ar))`` by ``w = round(sqrt(n / ar))``, each
    at most the grid's."""
    duration, height, width = grid
    t = max(1, int(duration * _uniform(*spec.temporal_scale, generator)))
    n = int(height * width * _uniform(*spec.spatial_scale, generator))
    ar = _uniform(*spec.aspect_ratio, generator)
    h = min(height, int(round(math.sqrt(n * ar))))
    w = min(width, int(round(math.sqrt(n / ar))))
    if h < 1 or w < 1:
        raise ValueError(
            f"a block of spatial scale {spec.spatial_scale} and aspect ratio {spec.aspect_ratio} "
            f"has no token on a {height} x {width} grid"
        )
    return t, h, w


def sample_blocks(
    batch: int,
    grid: tuple[int, int, int],
    spec: BlockMaskSpec,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, tuple[int, int, int]]:
    """Block corners ``(batch, spec.num_blocks, 3)`` as (start, top, left) in tokens, drawn per
    block and sample, and the one block size (t, h, w) drawn for the whole batch; a sample whose
    blocks cover every token is redrawn."""
    duration, height, width = grid
    size = t, h, w = block_size(spec, grid, generator)
    if size == grid:
        raise ValueError(
            f"a block of {t} x {h} x {w} tokens covers the whole {duration} x {height} x {width} "
            f"grid: no context is left (spatial scale {spec.spatial_scale})"
        )

    def draw(n: int) -> Tensor:
        shape = (n, spec.num_blocks)
        return torch.stack(
            [
                torch.randint(0, duration - t + 1, shape, generator=generator),
                torch.randint(0, height - h + 1, shape, generator=generator),
                torch.randint(0, width - w + 1, shape, generator=generator),
            ],
            dim=-1,
        )

    corners = draw(batch)
    for _ in range(MAX_REDRAWS):
        full = paint_blocks(corners, size, grid).flatten(1).all(dim=1)
        if not full.any():
            return corners, size
        corners[full] = draw(int(full.sum()))
    raise ValueError(
        f"{spec.num_blocks} blocks of {t} x {h} x {w} tokens covered the whole "
        f"{duration} x {height} x {width} grid in {MAX_REDRAWS} draws: use fewer or smaller blocks"
    )


def paint_blocks(corners: Tensor, size: tuple[int, int, int], grid: tuple[int, int, int]) -> Tensor:
    """The union ``(B, T', H', W')`` of blocks of ``size`` at ``corners`` ``(B, K, 3)``."""

    def span(first: Tensor, length: int, n: int) -> Tensor:  # (B, K, n)
        r = torch.arange(n, device=first.device)
        return (r >= first[..., None]) & (r < first[..., None] + length)

    in_t, in_h, in_w = (span(corners[..., i], size[i], grid[i]) for i in range(3))
    blocks = in_t[..., :, None, None] & in_h[..., None, :, None] & in_w[..., None, None, :]
    return blocks.any(dim=1)


def multiblock_mask(
    batch: int,
    grid: tuple[int, int, int],
    spec: BlockMaskSpec,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Target masks ``(batch, T' H' W')`` (True = predicted, not in the context): the union of
    each sample's blocks (`sample_blocks`), tokens in (t, h, w) raster order as the encoder's.
    Drawn on the CPU from ``generator`` (or torch's default generator)."""
    corners, size = sample_blocks(batch, grid, spec, generator)
    return paint_blocks(corners, size, grid).flatten(1)


def mask_indices(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Context and target token indices ``(B, K_context)`` and ``(B, K_target)`` of target masks
    ``(B, N)``, ascending, each cut to its shortest row in the batch (the official collator's
    ``min_keep``: a sample with more keeps its first ones)."""
    rows_context = [torch.nonzero(~row).flatten() for row in mask]
    rows_target = [torch.nonzero(row).flatten() for row in mask]
    keep_context = min(len(r) for r in rows_context)
    keep_target = min(len(r) for r in rows_target)
    if keep_context == 0 or keep_target == 0:
        raise ValueError("every sample needs at least one context and one target token")
    context = torch.stack([r[:keep_context] for r in rows_context])
    target = torch.stack([r[:keep_target] for r in rows_target])
    return context, target


def gather_tokens(tokens: Tensor, indices: Tensor) -> Tensor:
    """Tokens ``(B, N, D)`` at ``indices`` ``(B, K)`` -> ``(B, K, D)`` (official ``apply_masks``)."""
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angle = positions.reshape(-1, 1).double() * omega
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def sincos_3d_position_embedding(grid: tuple[int, int, int], dim: int) -> Tensor:
    """The official 3-D sine-cosine table ``(T' H' W', dim)`` with ``uniform_power`` (float32).

    Each of time, height and width gets ``2 ceil(dim / 6)`` channels, ``[sin(p w_k), cos(p w_k)]``
    with ``w_k = 10000^(-k / (c / 2))`` for ``c`` channels; they are concatenated (time, height,
    width) and cut to ``dim``. Rows are in (t, h, w) raster order.
    """
    if dim < 1 or min(grid) < 1:
        raise ValueError(f"dim and the grid must be positive, got {dim} and {grid}")
    duration, height, width = grid
    t, h, w = torch.meshgrid(
        torch.arange(duration), torch.arange(height), torch.arange(width), indexing="ij"
    )
    channels = int(math.ceil(dim / 6) * 2)
    table = torch.cat([_sincos_1d(channels, p) for p in (t, h, w)], dim=1)
    return table[:, :dim].float()


def jepa_init_(encoder: nn.Module, blocks: nn.ModuleList, init_std: float = 0.02) -> None:
    """The official ``VisionTransformer`` initialisation (``_init_weights``, ``_rescale_blocks``),
    in place: every Linear and convolution of ``encoder`` truncated normal (std ``init_std``) with
    zero biases, LayerNorms at weight 1 and bias 0, then the output projections of the attention
    and the MLP of block ``l`` (1-based) of ``blocks`` divided by ``sqrt(2 l)``."""
    encoder.apply(partial(init_jepa_weights, std=init_std))
    with torch.no_grad():
        for layer, block in enumerate(blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


def jepa_loss(predictions: list[Tensor], targets: list[Tensor]) -> Tensor:
    """The L1 loss: ``mean |prediction - target|`` of each mask set, averaged over the sets."""
    if len(predictions) != len(targets) or not predictions:
        raise ValueError(
            f"one target per prediction needed, got {len(predictions)} and {len(targets)}"
        )
    losses = []
    for prediction, target in zip(predictions, targets, strict=True):
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
            )
        losses.append((prediction.float() - target.float()).abs().mean())
    return torch.stack(losses).mean()


class JEPAPredictor(nn.Module):
    """The V-JEPA predictor: context tokens and mask tokens in, target-token features out.

    Args:
        embed_dim: the encoder's width (input and output).
        dim, depth, heads: the predictor's width, blocks and attention heads.
        num_mask_tokens: learnt mask tokens, one per mask set.
        mlp_ratio: MLP hidden width over ``dim``.
        init_std: std of the truncated-normal Linear initialisation.
    """

    def __init__(
        self,
        embed_dim: int,
        dim: int = 384,
        depth: int = 12,
        heads: int = 12,
        num_mask_tokens: int = 2,
        mlp_ratio: float = 4.0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if min(embed_dim, dim, depth, heads, num_mask_tokens) < 1:
            raise ValueError(
                f"predictor sizes must be positive, got embed_dim {embed_dim}, dim {dim}, "
                f"depth {depth}, heads {heads}, num_mask_tokens {num_mask_tokens}"
            )
        self.dim = dim
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.proj = nn.Linear(dim, embed_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            for layer, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

    def forward(
        self,
        context: Tensor,
        grid: tuple[int, int, int],
        context_indices: Tensor,
        target_indices: Tensor,
        mask_index: int = 0,
    ) -> Tensor:
        """Predictions ``(B, K_target, embed_dim)`` from encoded context tokens
        ``(B, K_context, embed_dim)`` at ``context_indices`` of the token ``grid``, for the
        tokens at ``target_indices``, with mask token ``mask_index``."""
        if context.shape[:2] != context_indices.shape:
            raise ValueError(
                f"context {tuple(context.shape)} and its indices "
                f"{tuple(context_indices.shape)} differ"
            )
        x = self.embed(context)
        b = x.shape[0]
        pos = sincos_3d_position_embedding(grid, self.dim).to(device=x.device, dtype=x.dtype)
        pos = pos.expand(b, -1, -1)
        x = x + gather_tokens(pos, context_indices)
        token = self.mask_tokens[mask_index % len(self.mask_tokens)].to(x.dtype)
        queries = token + gather_tokens(pos, target_indices)
        x = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x)[:, context.shape[1] :])


class VJEPA(VSSLTask):
    """V-JEPA pretraining: predict an EMA target's features of masked blocks from the context.

    Args:
        backbone: a ViT of `vssl.backbones.vit` (ViT-L/16 in the paper); others are refused.
        predictor_dim, predictor_depth: the predictor's width and blocks (384 and 12).
        predictor_heads: its attention heads; ``None``: the encoder's, as the official code.
        masks: the mask sets, mappings with ``num_blocks``, ``spatial_scale`` and optionally
            ``aspect_ratio`` and ``temporal_scale`` (ranges, or one number); ``None``: the
            paper's short-range and long-range sets (`PAPER_MASKS`).
        ema_momentum, final_ema_momentum: the target's momentum at the start and at the end of
            the stretched schedule (0.998 -> 1.0, linear).
        schedule_scale: how many times the training the momentum, lr and weight-decay
            schedules span (the official ``ipe_scale`` 1.25); 1 ends them with the training.
        start_lr_ratio: the lr at the start of warm-up over ``lr`` (2e-4 / 6.25e-4).
        final_weight_decay: weight decay at the end of the cosine from ``weight_decay``;
            ``None`` keeps it constant.
        augment: `BatchAugment` settings; ``None`` gives ``{}`` (normalisation only), as the
            paper uses no colour augmentation.
        crop_ratio: the aspect-ratio range (width / height) of the training clips' random
            resized crop (the official ``random_resize_aspect_ratio`` is ``[0.75, 1.35]``);
            ``None``: the datamodule's ``(3/4, 4/3)``.
        encoder_init: ``vit`` keeps the video ViT's initialisation (Xavier-uniform Linears);
            ``jepa`` re-initialises the encoder as the official ``VisionTransformer``
            (`jepa_init_`), before the target is copied from it.
        eval_encoder: what evaluation reads (`extract_features`, `evaluation_tokens`):
            ``context``, the context encoder ``self.backbone`` without ``encoder_norm`` (the
            earlier behaviour); ``target``, the target encoder followed by its copy of
            ``encoder_norm``, as the official frozen evaluation (``checkpoint_key:
            target_encoder``, the encoder's output after its final ``norm``).
        clip_grad: the official gradient clipping: the gradient norms of the encoder (with
            ``encoder_norm``) and of the predictor are each clipped to ``clip_grad``, from the
            first epoch after the warm-up on (the official ``epoch > warmup``; 10 in the paper).
            ``None``: none here (the trainer's ``gradient_clip_val``, over all parameters, still
            applies); with ``clip_grad`` set, ``gradient_clip_val`` must be unset.
        optimizer, lr, weight_decay, lr_schedule, warmup_epochs, min_lr_ratio: the official
            ViT-L run (AdamW, lr 6.25e-4 for its batch of 3072, weight decay 0.04, 40 warm-up
            epochs, cosine to 1e-6).
        **kwargs: the other settings of `VSSLTask` (backbone_kwargs, online_probe, ...).
    """

    def __init__(
        self,
        backbone: str = "vit_l_16",
        predictor_dim: int = 384,
        predictor_depth: int = 12,
        predictor_heads: int | None = None,
        masks: list[dict[str, Any]] | None = None,
        ema_momentum: float = 0.998,
        final_ema_momentum: float = 1.0,
        schedule_scale: float = 1.25,
        start_lr_ratio: float = 0.32,
        final_weight_decay: float | None = 0.4,
        augment: dict[str, Any] | None = None,
        crop_ratio: tuple[float, float] | list[float] | None = None,
        encoder_init: str = "vit",
        clip_grad: float | None = None,
        eval_encoder: str = "context",
        optimizer: str = "adamw",
        lr: float = 6.25e-4,
        weight_decay: float = 0.04,
        lr_schedule: str = "cosine",
        warmup_epochs: float = 40.0,
        min_lr_ratio: float = 0.0016,
        **kwargs: Any,
    ):
        specs = PAPER_MASKS if masks is None else tuple(BlockMaskSpec.from_dict(m) for m in masks)
        if not specs:
            raise ValueError("masks needs at least one mask set")
        if schedule_scale < 1.0:
            raise ValueError(f"schedule_scale must be at least 1, got {schedule_scale}")
        if not 0.0 <= start_lr_ratio <= 1.0:
            raise ValueError(f"start_lr_ratio must be in [0, 1], got {start_lr_ratio}")
        if encoder_init not in ENCODER_INITS:
            raise ValueError(f"encoder_init must be one of {ENCODER_INITS}, got {encoder_init!r}")
        if eval_encoder not in EVAL_ENCODERS:
            raise ValueError(f"eval_encoder must be one of {EVAL_ENCODERS}, got {eval_encoder!r}")
        if clip_grad is not None and clip_grad <= 0:
            raise ValueError(f"clip_grad must be positive or None, got {clip_grad}")
        if crop_ratio is not None:
            low, high = (float(r) for r in crop_ratio)
            if not 0 < low <= high:
                raise ValueError(f"crop_ratio must be a range 0 < low <= high, got {crop_ratio}")
            crop_ratio = (low, high)
        super().__init__(
            backbone=backbone,
            augment={} if augment is None else augment,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            warmup_epochs=warmup_epochs,
            min_lr_ratio=min_lr_ratio,
            **kwargs,
        )
        if not isinstance(self.backbone, VideoViT):
            raise ValueError(
                f"VJEPA needs a video ViT from vssl.backbones.vit (vit_s_16, vit_b_16, vit_l_16, "
                f"vit_tiny_8, ...), got backbone {backbone!r} ({type(self.backbone).__name__})"
            )
        self.mask_specs = specs
        self.crop_ratio = crop_ratio
        self.eval_encoder = eval_encoder
        self.clip_grad = None if clip_grad is None else float(clip_grad)
        self.schedule_scale = float(schedule_scale)
        self.start_lr_ratio = float(start_lr_ratio)
        self.final_weight_decay = final_weight_decay
        dim = self.backbone.out_dim
        heads = predictor_heads or self.backbone.trunk.blocks[0].attn.heads
        # The fine-tuning pooling norm is not part of the loss (see the module docstring).
        self.backbone.fc_norm.requires_grad_(False)
        self.encoder_norm = nn.LayerNorm(dim, eps=LN_EPS)
        if encoder_init == "jepa":
            jepa_init_(self.backbone, self.backbone.trunk.blocks)
        self.predictor = JEPAPredictor(
            dim, predictor_dim, predictor_depth, heads, num_mask_tokens=len(specs)
        )
        self.target_encoder = MomentumEncoder(
            self._online_encoder(), ema_momentum, final_ema_momentum, schedule="linear"
        )
        self._mask_generator: torch.Generator | None = None

    def _online_encoder(self) -> nn.ModuleDict:
        return nn.ModuleDict({"backbone": self.backbone, "norm": self.encoder_norm})

    # ---------------------------------------------------------------- data
    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """The datamodule's transforms; with ``crop_ratio``, the training crop's aspect range."""
        if stage != "train" or self.crop_ratio is None:
            return default_clip_transform(stage, spec)
        crop = train_clip_transform(
            spec.crop_size, scale=tuple(spec.scale), ratio=self.crop_ratio, flip=spec.flip
        )
        return ViewTransform(crop)

    # ---------------------------------------------------------------- masking
    def mask_generator(self) -> torch.Generator:
        """The CPU generator masks are drawn from, seeded on first use from torch's initial seed
        (``seed_everything``) plus the process rank, so runs are repeatable and processes differ."""
        if self._mask_generator is None:
            seed = (torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63
            self._mask_generator = torch.Generator().manual_seed(seed)
        return self._mask_generator

    def draw_masks(self, video: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per mask set, the (context, target) token indices of clips ``video``, on their
        device (`multiblock_mask`, then `mask_indices`)."""
        grid = self.backbone.grid(video.shape)
        out = []
        for spec in self.mask_specs:
            mask = multiblock_mask(video.shape[0], grid, spec, self.mask_generator())
            context, target = mask_indices(mask)
            out.append((context.to(video.device), target.to(video.device)))
        return out

    # ---------------------------------------------------------------- model and loss
    def encode_context(self, video: Tensor, context_indices: Tensor) -> Tensor:
        """The context encoder's output ``(B, K_context, D)`` on the context tokens only (before
        ``encoder_norm``)."""
        return self.backbone.encode(gather_tokens(self.backbone.embed(video), context_indices))

    @torch.no_grad()
    def target_features(self, video: Tensor) -> Tensor:
        """The target encoder's layer-normed features ``(B, N, D)`` of every token."""
        target = self.target_encoder.module
        tokens = target["norm"](target["backbone"].encode(target["backbone"].embed(video)))
        return F.layer_norm(tokens, (tokens.shape[-1],))

    def predict(
        self, video: Tensor, masks: list[tuple[Tensor, Tensor]]
    ) -> tuple[list[Tensor], Tensor]:
        """The predictor's output for each mask set, and the first set's encoded context."""
        grid = self.backbone.grid(video.shape)
        predictions, first = [], None
        for i, (context, target) in enumerate(masks):
            encoded = self.encode_context(video, context)
            first = encoded if first is None else first
            predictions.append(
                self.predictor(self.encoder_norm(encoded), grid, context, target, mask_index=i)
            )
        return predictions, first

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """The L1 loss between the predicted and the target features of each mask set's
        target tokens."""
        video = batch["video"]
        masks = self.draw_masks(video)
        full = self.target_features(video)
        targets = [gather_tokens(full, target) for _, target in masks]
        predictions, encoded = self.predict(video, masks)
        with torch.autocast(video.device.type, enabled=False):
            loss = jepa_loss(predictions, targets)
        logs = {"ema_momentum": self.target_encoder.momentum} if stage == "train" else {}
        return StepOutput(loss, logs, self.backbone.pool(encoded.detach()))

    # ---------------------------------------------------------------- evaluation
    def evaluation_tokens(self, video: Tensor) -> Tensor:
        """Frozen tokens ``(B, N, D)`` of float clips ``(B, 3, T, H, W)`` for the attentive
        probe (`vssl.eval.features.clip_tokens`), from ``eval_encoder``: the context backbone's
        token map (``forward_features``, no norm), or the target encoder's tokens after the
        target's ``encoder_norm`` (the official frozen evaluation's)."""
        if self.eval_encoder == "target":
            target = self.target_encoder.module
            return target["norm"](target["backbone"].encode(target["backbone"].embed(video)))
        return self.backbone.forward_features(video).flatten(2).transpose(1, 2)

    @torch.no_grad()
    def extract_features(self, video: Tensor) -> Tensor:
        """Pooled features for evaluation (uint8 ``(B, T, C, H, W)`` are normalised first): the
        context backbone's (``fc_norm`` of the mean token), or with ``eval_encoder: target`` the
        target backbone's ``fc_norm`` of the mean of `evaluation_tokens`."""
        if self.eval_encoder != "target":
            return super().extract_features(video)
        if video.dtype == torch.uint8:
            video = self._normalise(video)
        return self.target_encoder.module["backbone"].pool(self.evaluation_tokens(video))

    # ---------------------------------------------------------------- optimisation
    def ema_progress(self) -> float:
        """Where the momentum schedule is: the training's progress over ``schedule_scale``."""
        return self.training_progress() / self.schedule_scale

    def after_optimizer_step(self) -> None:
        """The EMA update of the target encoder, after every optimiser step."""
        self.target_encoder.update(self._online_encoder(), self.ema_progress())

    def clip_gradients_per_network(self, epoch: int) -> None:
        """The official clipping (``app/vjepa/train.py``): at 0-based ``epoch`` past
        ``warmup_epochs``, the encoder's gradients (backbone and ``encoder_norm``) and the
        predictor's are each clipped to norm ``clip_grad``; nothing before, or without
        ``clip_grad``."""
        if self.clip_grad is None or epoch <= self.hparams.warmup_epochs:
            return
        for network in (self._online_encoder(), self.predictor):
            grads = [p for p in network.parameters() if p.grad is not None]
            if grads:
                nn.utils.clip_grad_norm_(grads, self.clip_grad)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """With ``clip_grad``, `clip_gradients_per_network` (the trainer's ``gradient_clip_val``
        must then be unset); else Lightning's clipping over all parameters."""
        if self.clip_grad is None:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        if gradient_clip_val:
            raise ValueError(
                f"VJEPA clips the encoder and the predictor separately (clip_grad {self.clip_grad})"
                f"; unset trainer.gradient_clip_val ({gradient_clip_val}) or clip_grad"
            )
        self.clip_gradients_per_network(self.current_epoch)

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Biases and 1-d parameters get no weight decay (the official ``init_opt``)."""
        return param.ndim <= 1 or "bias" in name

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The base groups with the main group split into decay / no-decay; the decay group is
        marked ``scheduled_weight_decay`` for `on_train_batch_start`."""
        main, *rest = super().parameter_groups()
        return (
            self.split_weight_decay(main, self.no_weight_decay, scheduled_weight_decay=True) + rest
        )

    def weight_decay_at(self, step: int, total_steps: int) -> float:
        """The official cosine weight decay at optimisation ``step`` (0-based) of
        ``total_steps``: from ``weight_decay`` towards ``final_weight_decay`` over
        ``schedule_scale * total_steps`` steps."""
        start = self.hparams.weight_decay
        if self.final_weight_decay is None:
            return start
        end = self.final_weight_decay
        progress = (step + 1) / max(1.0, self.schedule_scale * total_steps)
        value = end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
        return max(end, value) if end <= start else min(end, value)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Sets the decay group's weight decay for this step (`weight_decay_at`)."""
        trainer = self.attached_trainer()
        if trainer is None or self.final_weight_decay is None:
            return
        total = max(1, int(trainer.estimated_stepping_batches))
        value = self.weight_decay_at(self.global_step, total)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if group.get("scheduled_weight_decay"):
                    group["weight_decay"] = value

    def lr_factor(self, step: int, total_steps: int, steps_per_epoch: float) -> float:
        """The official ``WarmupCosineSchedule`` as a multiple of ``lr`` for the cosine schedule:
        linear from ``start_lr_ratio`` over the warm-up, then a cosine to ``min_lr_ratio``
        over the rest of ``schedule_scale * total_steps``. Other schedules: the base's."""
        hp = self.hparams
        if hp.lr_schedule != "cosine":
            return super().lr_factor(step, total_steps, steps_per_epoch)
        s = step + 1  # the official scheduler steps before the first update
        warmup = int(hp.warmup_epochs * steps_per_epoch)
        if s < warmup:
            return self.start_lr_ratio + s / warmup * (1 - self.start_lr_ratio)
        span = max(1, int(self.schedule_scale * total_steps) - warmup)
        progress = (s - warmup) / span
        low = hp.min_lr_ratio
        return max(low, low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))
