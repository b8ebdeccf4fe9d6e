"""The attentive probe: cross-attention pooling of frozen token features, then a linear head.

The frozen-feature protocol of V-JEPA (Bardes et al., "Revisiting Feature Prediction for
Learning Visual Representations from Video", 2024), following its code (facebookresearch/jepa,
``src/models/attentive_pooler.py``, ``src/models/utils/modules.py`` and
``evals/video_classification_frozen/eval.py``):

- `AttentivePooler`: learnt query tokens and one cross-attention block,
  ``q = q + xattn(q, norm1(x))`` then ``q = q + mlp(norm2(q))`` (the tokens are normed, the
  queries are not, and nothing is normed after the block), then ``depth - 1`` self-attention
  blocks on the queries. Bias on the q, k and v projections, MLP ratio 4 with GELU, PyTorch's
  LayerNorm. Weights and queries truncated-normal with std 0.02, zero biases, and the output
  projections of the attention and the MLP of layer ``i`` (the cross-attention block is layer 1)
  divided by ``sqrt(2 i)``. The reference divides the extra blocks with a call that fails for
  depth > 1 (``enumerate(1, blocks)``); here they get the rescaling that call intends.
- `AttentiveClassifier`: the pooler with one query, then a linear layer. V-JEPA uses depth 1 and
  the encoder's head count (`encoder_heads`, which ``vssl probe`` passes); without one (a CNN's
  map) `default_heads` gives 64-channel heads, as V-JEPA's ViT-B and ViT-L have.
- `train_attentive_probe`: AdamW at lr 1e-3 held (no warm-up) and cosine-decayed to 0, weight
  decay cosine-decayed from 0.01 to 1e-6 on the weights (not on biases and norm gains), the
  gradient norm clipped at 1, cross-entropy; 20 epochs in the paper (at a batch of 256 over 64
  GPUs; the batch here is a parameter). Both schedules are stepped before each update, as there.
- `multiview_scores`: the multi-view test. Every clip x crop of a test video is classified on its
  own and the softmax probabilities are averaged (``average="logits"`` averages the logits
  instead). With ``attend_across_clips`` (V-JEPA's Kinetics and SSv2 setting,
  ``attend_across_segments``) the tokens of all clips of one crop are concatenated into one
  sequence, classified at once, and the probabilities averaged over crops; a training video then
  gives one sample from the tokens of all its random views.

Where vssl differs: the tokens are extracted once by `extract_tokens`, frozen and cached like the
pooled features of `vssl.eval.features`, so the training views are a fixed set of random clips
with random resized crops per video; V-JEPA decodes and augments anew every epoch (RandAugment,
random erasing). A token is one position of the backbone's unpooled map
(`vssl.backbones.Backbone.forward_features`, ``(B, C, T', H', W')`` flattened in (t, h, w) raster
order): a ViT's tokens, or a CNN's last feature map; a task may choose its own
(`vssl.eval.features.clip_tokens`: V-JEPA with ``eval_encoder: target`` gives the official
target encoder's tokens after its final norm, else its context encoder's without that norm).
Cached tokens take ``T' H' W' C`` numbers per view, so large encoders at full resolution need
``dtype=torch.float16`` or few views.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_accuracy

from vssl.backbones.vit import Block, Mlp, init_jepa_weights
from vssl.eval.classifiers import label_fraction_indices
from vssl.eval.features import Features, FeatureSettings, clip_tokens, extract_features
from vssl.tasks.base import VSSLTask

#: How the multi-view test combines the views of a video: V-JEPA's mean of probabilities, or
#: the mean of logits.
AVERAGES = ("softmax", "logits")
#: Standard deviation of the truncated-normal initialisation of the reference code.
INIT_STD = 0.02


def default_heads(dim: int) -> int:
    """Attention heads of a pooler over ``dim``-channel tokens: 64 channels a head when 64
    divides ``dim`` (ViT-S/B/L's head width), else one head."""
    if dim < 1:
        raise ValueError(f"token channels must be positive, got {dim}")
    return dim // 64 if dim % 64 == 0 else 1


def encoder_heads(model: VSSLTask) -> int | None:
    """The attention heads of the encoder whose tokens the probe reads, as V-JEPA's probe takes
    ``encoder.num_heads``: the last attention module of the backbone with an integer ``heads``
    (vssl's ViTs) or ``num_heads`` (torchvision's Video Swin: its last stage, whose tokens these
    are). None for a backbone without attention (a CNN's map: the pooler then uses
    `default_heads`) or whose head count does not divide its output channels."""
    found = None
    for module in model.backbone.modules():
        for name in ("heads", "num_heads"):
            value = getattr(module, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found = value
    dim = getattr(model.backbone, "out_dim", None)
    if found is None or not isinstance(dim, int) or dim % found:
        return None
    return found


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``(B, n, D)`` over tokens ``(B, N, D)``: a q projection,
    a joint k/v projection (both with bias), scaled dot-product attention, an output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"token channels {dim} must be divisible by the heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: Tensor, x: Tensor) -> Tensor:
        """``(B, n, D)`` queries over ``(B, N, D)`` tokens -> ``(B, n, D)``."""
        b, n, d = q.shape
        q = self.q(q).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
        kv = self.kv(x).reshape(b, x.shape[1], 2, self.heads, d // self.heads)
        k, v = kv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttentionBlock(nn.Module):
    """``q + xattn(q, norm1(x))``, then ``+ mlp(norm2(.))``: the tokens are normed, the queries
    are not (the reference's arrangement)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.xattn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, q: Tensor, x: Tensor) -> Tensor:
        """Queries ``(B, n, D)`` updated from tokens ``(B, N, D)``."""
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class AttentivePooler(nn.Module):
    """Learnt queries that pool a token sequence ``(B, N, D)`` into ``(B, queries, D)``.

    One cross-attention block, then ``depth - 1`` self-attention blocks over the queries
    (`vssl.backbones.vit.Block`, with PyTorch's LayerNorm epsilon as the reference).
    """

    def __init__(
        self,
        dim: int,
        heads: int | None = None,
        depth: int = 1,
        mlp_ratio: float = 4.0,
        queries: int = 1,
    ) -> None:
        super().__init__()
        heads = default_heads(dim) if heads is None else heads
        if min(dim, heads, depth, queries) < 1:
            raise ValueError(
                f"dim, heads, depth and queries must be positive, got dim {dim}, heads {heads}, "
                f"depth {depth}, queries {queries}"
            )
        self.query_tokens = nn.Parameter(torch.zeros(1, queries, dim))
        self.cross_attention_block = CrossAttentionBlock(dim, heads, mlp_ratio)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth - 1))
        for block in self.blocks:
            block.norm1.eps = block.norm2.eps = nn.LayerNorm(dim).eps
        nn.init.trunc_normal_(self.query_tokens, std=INIT_STD)
        self.apply(partial(init_jepa_weights, std=INIT_STD))
        with torch.no_grad():
            self.cross_attention_block.xattn.proj.weight.div_(math.sqrt(2.0))
            self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0))
            for layer, block in enumerate(self.blocks, start=2):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(B, N, D)`` -> pooled queries ``(B, queries, D)``."""
        if x.ndim != 3 or x.shape[-1] != self.query_tokens.shape[-1]:
            raise ValueError(
                f"expected tokens (B, N, {self.query_tokens.shape[-1]}), got {tuple(x.shape)}"
            )
        q = self.cross_attention_block(self.query_tokens.expand(len(x), -1, -1), x)
        for block in self.blocks:
            q = block(q)
        return q


class AttentiveClassifier(nn.Module):
    """`AttentivePooler` with one query, then a linear layer: tokens ``(B, N, D)`` -> logits."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        heads: int | None = None,
        depth: int = 1,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.pooler = AttentivePooler(dim, heads, depth, mlp_ratio, queries=1)
        self.linear = nn.Linear(dim, num_classes)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(B, N, D)`` -> logits ``(B, num_classes)``."""
        return self.linear(self.pooler(x).squeeze(1))


# ------------------------------------------------------------------------------ token features
def extract_tokens(
    settings: FeatureSettings,
    model: VSSLTask | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> Features:
    """Token features of one split, every view kept: ``feats`` is ``(V, M, N, C)``
    (`vssl.eval.features.extract_features` with ``tokens=True``).

    The views are those `extract_features` averages for the same settings (the same seeded
    random views, or ``clips`` x ``crops`` with the crops of a clip next to each other), so
    ``feats.mean(dim=2)`` of a CNN is its per-view pooled features. With ``cache_dir``, a
    ``tokens-<key>.pt`` file of identical settings and ``dtype`` is reused and a new result
    written there. ``dtype``: what the tokens are stored as (float16 halves the size).
    """
    return extract_features(
        settings,
        model=model,
        batch_size=batch_size,
        num_workers=num_workers,
        cache_dir=cache_dir,
        device=device,
        progress=progress,
        tokens=True,
        dtype=dtype,
    )


# ------------------------------------------------------------------------------ training, test
def _cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_attentive_probe(
    tokens: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    final_lr: float = 0.0,
    weight_decay: float = 0.01,
    final_weight_decay: float = 1e-6,
    heads: int | None = None,
    depth: int = 1,
    mlp_ratio: float = 4.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> AttentiveClassifier:
    """An `AttentiveClassifier` trained on frozen tokens ``(S, N, C)`` of ``S`` samples.

    V-JEPA's recipe (see the module docstring): AdamW, lr cosine from ``lr`` to ``final_lr``
    and weight decay cosine from ``weight_decay`` to ``final_weight_decay`` over all steps
    (biases and 1-d parameters without decay), gradients clipped to norm 1, shuffled
    mini-batches of ``batch_size`` (the last one smaller), ``seed`` fixing init and order.
    The tokens stay where they are; each mini-batch goes to ``device`` as float32.
    """
    if tokens.ndim != 3 or labels.shape != (tokens.shape[0],):
        raise ValueError(
            f"expected tokens (S, N, C) and labels (S,), got {tuple(tokens.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = AttentiveClassifier(tokens.shape[-1], num_classes, heads, depth, mlp_ratio)
    probe.to(device)
    decay = [p for n, p in probe.named_parameters() if "bias" not in n and p.ndim != 1]
    no_decay = [p for n, p in probe.named_parameters() if "bias" in n or p.ndim == 1]
    opt = torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "exclude": True}], lr=lr
    )
    gen = torch.Generator().manual_seed(seed)
    y = labels.long().to(device)
    per_epoch = math.ceil(tokens.shape[0] / batch_size)
    total = epochs * per_epoch
    step = 0
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(tokens.shape[0], generator=gen)
        for idx in order.split(batch_size):
            step += 1
            for group in opt.param_groups:
                group["lr"] = _cosine(lr, final_lr, step / total)
                if not group.get("exclude"):
                    group["weight_decay"] = _cosine(weight_decay, final_weight_decay, step / total)
            x = tokens[idx].to(device, torch.float32)
            loss = F.cross_entropy(probe(x), y[idx.to(device)])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
            opt.step()
    return probe.eval()


def _check_tokens(name: str, feats: Tensor) -> None:
    if feats.ndim != 4:
        raise ValueError(
            f"{name} features must be tokens (videos, views, tokens, channels) from "
            f"extract_tokens, got shape {tuple(feats.shape)} (pooled features?)"
        )


def _views(feats: Tensor, crops: int, attend_across_clips: bool) -> Tensor:
    """Test tokens ``(V, clips * crops, N, C)`` as the sequences classified: each view, or per
    crop the clips' tokens concatenated ``(V, crops, clips * N, C)``."""
    if not attend_across_clips:
        return feats
    v, m, n, c = feats.shape
    if m % crops:
        raise ValueError(f"{m} views per video are not a whole number of clips x {crops} crops")
    return feats.reshape(v, m // crops, crops, n, c).transpose(1, 2).reshape(v, crops, -1, c)


@torch.no_grad()
def multiview_scores(
    probe: nn.Module,
    feats: Tensor,
    crops: int = 1,
    average: str = "softmax",
    attend_across_clips: bool = False,
    batch_size: int = 64,
) -> Tensor:
    """Scores ``(V, classes)`` of test videos with tokens ``(V, clips * crops, N, C)``.

    Each view is classified on its own, or with ``attend_across_clips`` the clips of one crop
    together; the results are averaged as probabilities (``average="softmax"``, V-JEPA) or as
    logits (``"logits"``). ``batch_size``: sequences per forward pass, on the probe's device.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    _check_tokens("test", feats)
    seqs = _views(feats, crops, attend_across_clips)
    flat = seqs.flatten(0, 1)
    device = next(probe.parameters()).device
    logits = torch.cat(
        [probe(chunk.to(device, torch.float32)).cpu() for chunk in flat.split(batch_size)]
    )
    per_view = logits.softmax(dim=-1) if average == "softmax" else logits
    return per_view.reshape(*seqs.shape[:2], -1).mean(dim=1)


def attentive_probe(
    train: Features,
    test: Features,
    fractions: tuple[float, ...] | list[float] = (1.0,),
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    heads: int | None = None,
    depth: int = 1,
    average: str = "softmax",
    attend_across_clips: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Top-1 accuracy of attentive probes trained on ``fractions`` of the training labels.

    ``train`` and ``test`` are `extract_tokens` results: the training views each a sample (all
    of a video's views one sample with ``attend_across_clips``), the test views averaged by
    `multiview_scores`, the test crops read from ``test.settings``. Label subsets are per-class
    stratified with `label_fraction_indices`, as the linear probe's. Returns
    ``{"attentive": {fraction: top-1}, "train_videos": {fraction: videos}}`` with the fractions
    as strings, the layout of the linear probe's results. ``device``: where the probes train.
    """
    _check_tokens("training", train.feats)
    _check_tokens("test", test.feats)
    if train.classes != test.classes:
        raise ValueError(
            f"training and test splits have different classes: {train.classes} vs {test.classes}"
        )
    if train.feats.shape[-1] != test.feats.shape[-1]:
        raise ValueError(
            f"training and test tokens have {train.feats.shape[-1]} and {test.feats.shape[-1]} "
            "channels: not the same model"
        )
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    num_classes = len(train.classes)
    v, m, n, c = train.feats.shape
    results: dict[str, Any] = {"attentive": {}, "train_videos": {}}
    for fraction in fractions:
        idx = label_fraction_indices(train.labels, fraction, seed=seed)
        if attend_across_clips:
            x, y = train.feats[idx].reshape(len(idx), m * n, c), train.labels[idx]
        else:
            x, y = train.feats[idx].flatten(0, 1), train.labels[idx].repeat_interleave(m)
        probe = train_attentive_probe(
            x,
            y,
            num_classes,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            heads=heads,
            depth=depth,
            seed=seed,
            device=device,
        )
        scores = multiview_scores(
            probe,
            test.feats,
            crops=int(test.settings.get("crops", 1)),
            average=average,
            attend_across_clips=attend_across_clips,
        )
        acc = multiclass_accuracy(scores, test.labels.long(), num_classes, average="micro")
        results["attentive"][str(fraction)] = float(acc)
        results["train_videos"][str(fraction)] = int(idx.numel())
    return results


__all__ = [
    "AVERAGES",
    "AttentiveClassifier",
    "AttentivePooler",
    "CrossAttention",
    "CrossAttentionBlock",
    "attentive_probe",
    "clip_tokens",
    "default_heads",
    "encoder_heads",
    "extract_tokens",
    "multiview_scores",
    "train_attentive_probe",
]
