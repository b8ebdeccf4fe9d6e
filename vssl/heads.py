"""The heads of vssl's tasks: what maps a backbone's pooled features ``(B, D)`` to what a loss needs.

One class per head of a paper, each citing it, so that a task file holds the task's sampling and
loss and this file holds the layers that sit on the backbone (as lightly's
``models/modules/heads.py``). A head's module names are part of the task's checkpoint keys
(``head.0.weight``, ``speed_head.weight``, ...): change them only with a checkpoint conversion.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

STATISTICS_HEAD_KINDS = ("classification", "regression")
"""How `StatisticsHead` reads the labels: one softmax per label, or one number per label."""


class ProjectionHead(nn.Sequential):
    """CVRL's MLP projection: ``hidden_layers`` x (Linear + BatchNorm1d + ReLU), then Linear.

    The contrastive loss is computed on its output; the representation kept for downstream use
    is the backbone's features before it, as in SimCLR, whose head CVRL deepens to three hidden
    layers of 2048 (output 128). Layers are numbered as an ``nn.Sequential``: ``0`` to ``2`` the
    first hidden block, and so on, the last Linear at ``3 * hidden_layers``.

    - Qian et al., "Spatiotemporal Contrastive Video Representation Learning", CVPR 2021,
      https://arxiv.org/abs/2008.03800
    - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
      ICML 2020, https://arxiv.org/abs/2002.05709

    Args:
        in_dim: the backbone's feature size.
        hidden_dim: width of the hidden layers (paper: 2048).
        hidden_layers: number of hidden blocks (paper: 3); 0 gives a single Linear.
        out_dim: size of the projection (paper: 128).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, hidden_layers: int = 3, out_dim: int = 128
    ):
        if min(in_dim, hidden_dim, out_dim) < 1 or hidden_layers < 0:
            raise ValueError(
                f"projection head sizes must be positive (in {in_dim}, hidden {hidden_dim}, out "
                f"{out_dim}) and hidden_layers >= 0 (got {hidden_layers})"
            )
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(True)]
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)


class VCOPHead(nn.Module):
    """VCOP's order classifier: the features of a tuple of clips -> logits of their permutation.

    Each pair ``(i, j)``, ``i < j``, of the ``tuple_len`` clip features is concatenated and mapped
    by one shared Linear(2D, hidden) + ReLU (the pairwise relation); the pair features are
    concatenated in `itertools.combinations` order, then dropout and Linear to ``tuple_len!``
    logits, one per order of `itertools.permutations`. This is the official code's ``VCOPN``
    head (``fc7``, ``fc8``, dropout 0.5).

    - Xu et al., "Self-supervised Spatiotemporal Learning via Video Clip Order Prediction",
      CVPR 2019, https://openaccess.thecvf.com/content_CVPR_2019/html/Xu_Self-Supervised_Spatiotemporal_Learning_via_Video_Clip_Order_Prediction_CVPR_2019_paper.html

    Args:
        in_dim: the backbone's feature size D.
        tuple_len: clips per tuple (paper: 3, so 6 orders).
        hidden_dim: width of the pairwise layer (paper: 512).
        dropout: dropout before the classifier (paper: 0.5).
    """

    def __init__(self, in_dim: int, tuple_len: int, hidden_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        if min(in_dim, hidden_dim) < 1 or tuple_len < 2:
            raise ValueError(
                f"VCOP head needs positive sizes (in {in_dim}, hidden {hidden_dim}) and at least "
                f"2 clips per tuple (got {tuple_len})"
            )
        self.pairs = list(itertools.combinations(range(tuple_len), 2))
        self.pair = nn.Linear(2 * in_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_dim * len(self.pairs), math.factorial(tuple_len))

    def forward(self, features: Tensor) -> Tensor:
        """Order logits ``(B, tuple_len!)`` of clip features ``(B, tuple_len, D)``."""
        pairs = [torch.cat([features[:, i], features[:, j]], dim=1) for i, j in self.pairs]
        hidden = torch.cat([F.relu(self.pair(p)) for p in pairs], dim=1)
        return self.classifier(self.dropout(hidden))


class RSPNetProjectionHead(nn.Linear):
    """One of RSPNet's two projection heads: Linear to ``out_dim``, then L2 normalisation.

    RSPNet puts two such heads on one encoder: ``g_m`` (vssl's ``speed_head``) embeds clips for
    relative speed perception, where the similarity of two clips at the same speed must exceed
    that of two clips at different speeds (a margin ranking loss); ``g_a`` (``appearance_head``)
    embeds them for the appearance-focused instance discrimination (InfoNCE against a MoCo
    queue). Both compare unit vectors by their dot product, hence the normalisation (the
    official ``MoCoDiffLossTwoFc`` normalises each head's output).

    - Chen et al., "RSPNet: Relative Speed Perception for Unsupervised Video Representation
      Learning", AAAI 2021, https://arxiv.org/abs/2011.07949
    """

    def __init__(self, in_dim: int, out_dim: int = 128):
        if min(in_dim, out_dim) < 1:
            raise ValueError(f"projection sizes must be positive, got in {in_dim}, out {out_dim}")
        super().__init__(in_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        """Unit-length projections ``(B, out_dim)`` of features ``(B, in_dim)``."""
        return F.normalize(super().forward(features), dim=1)


class PlaybackRateHead(nn.Linear):
    """The playback-rate classifier: one Linear from pooled features to a logit per rate.

    This is PRP's discriminative branch (which of the rates a clip was sampled at); SpeedNet's
    (sped up or not) and Pace Prediction's heads are the same layer with other rate sets. PRP's
    generative branch is :class:`PlaybackRateDecoder`.

    - Yao et al., "Video Playback Rate Perception for Self-supervised Spatio-Temporal
      Representation Learning", CVPR 2020, https://arxiv.org/abs/2006.11476
    - Benaim et al., "SpeedNet: Learning the Speediness in Videos", CVPR 2020,
      https://arxiv.org/abs/2004.06130
    - Wang et al., "Self-Supervised Video Representation Learning by Pace Prediction",
      ECCV 2020, https://arxiv.org/abs/2008.05861
    """

    def __init__(self, in_dim: int, num_rates: int):
        if in_dim < 1 or num_rates < 2:
            raise ValueError(
                f"playback-rate head needs in_dim >= 1 and at least 2 rates, got {in_dim}, "
                f"{num_rates}"
            )
        super().__init__(in_dim, num_rates)


class RotationHead(nn.Linear):
    """3D RotNet's classifier: one Linear from pooled features to a logit per rotation.

    The rotations are ``90 * k`` degrees for ``k`` in 0..3 (``num_rotations`` 4), as image
    RotNet's.

    - Jing et al., "Self-supervised Spatiotemporal Feature Learning via Video Rotation
      Prediction", 2018, https://arxiv.org/abs/1811.11387
    - Gidaris et al., "Unsupervised Representation Learning by Predicting Image Rotations",
      ICLR 2018, https://arxiv.org/abs/1803.07728
    """

    def __init__(self, in_dim: int, num_rotations: int = 4):
        if in_dim < 1 or num_rotations < 2:
            raise ValueError(
                f"rotation head needs in_dim >= 1 and at least 2 rotations, got {in_dim}, "
                f"{num_rotations}"
            )
        super().__init__(in_dim, num_rotations)


class StatisticsHead(nn.Linear):
    """A head of the spatio-temporal statistics task: one Linear for a family of labels.

    The task has one for the motion labels and one for the appearance labels. Label ``k`` takes
    the values ``1..classes[k]`` (0 means undefined and is left out by the loss).

    - ``classification`` (vssl's default): ``sum(classes)`` outputs, label ``k``'s logits in the
      ``k``-th chunk of ``classes[k]`` (`chunks`); one softmax and cross-entropy per label.
    - ``regression`` (the papers'): one output per label, regressed onto the integer label
      with MSE; `predict` rounds it into ``1..classes[k]``.

    Why classification is the default (it learned far better features): README, section
    "Pretext tasks".

    - Wang et al., "Self-supervised Spatio-temporal Representation Learning for Videos by
      Predicting Motion and Appearance Statistics", CVPR 2019, https://arxiv.org/abs/1904.03597
    - Wang et al., "Self-Supervised Video Representation Learning by Uncovering Spatio-Temporal
      Statistics", TPAMI 2021, https://arxiv.org/abs/2008.13426

    Args:
        in_dim: the backbone's feature size.
        classes: the number of values of each label of the family.
        kind: ``classification`` or ``regression`` (`STATISTICS_HEAD_KINDS`).
    """

    def __init__(self, in_dim: int, classes: Sequence[int], kind: str = "classification"):
        if kind not in STATISTICS_HEAD_KINDS:
            raise ValueError(f"head must be 'classification' or 'regression', got {kind!r}")
        classes = tuple(int(c) for c in classes)
        if not classes or min(classes) < 1 or in_dim < 1:
            raise ValueError(
                f"statistics head needs in_dim >= 1 and at least one label with >= 1 class, got "
                f"in_dim {in_dim}, classes {classes}"
            )
        super().__init__(in_dim, sum(classes) if kind == "classification" else len(classes))
        self.classes, self.kind = classes, kind
        self.register_buffer("top", torch.tensor(classes), persistent=False)

    def chunks(self, out: Tensor) -> tuple[Tensor, ...]:
        """The per-label logits ``(B, classes[k])`` of a classification output ``(B, sum)``."""
        if self.kind != "classification":
            raise ValueError("chunks are the logits of a classification head; this one regresses")
        return out.split(self.classes, dim=1)

    @torch.no_grad()
    def predict(self, out: Tensor) -> Tensor:
        """The predicted labels ``(B, L)``, each in ``1..classes[k]``, of the head's output."""
        if self.kind == "regression":
            return out.round().clamp(min=1).minimum(self.top).long()
        return torch.stack([c.argmax(1) + 1 for c in self.chunks(out)], dim=1)


class ClassifierHead(nn.Sequential):
    """The supervised classifier: dropout, then one Linear to ``num_classes`` logits.

    Not a pretext head: the classifier of `vssl.tasks.Supervised`, the supervised reference and
    the fine-tuning task (``0`` is the dropout, ``1`` the Linear).
    """

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.5):
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"classifier sizes must be positive, got {in_dim}, {num_classes}")
        super().__init__(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))


class PixelHead(nn.Linear):
    """VideoMAE's reconstruction head: decoder tokens -> the pixels of their tubelets.

    One Linear from the decoder width to ``channels * pt * ph * pw`` values per token, flattened
    as (t, h, w, channel), the layout of `vssl.tasks.videomae.reconstruction_target`.

    - Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised
      Video Pre-Training", NeurIPS 2022, https://arxiv.org/abs/2203.12602
    """

    def __init__(self, in_dim: int, tubelet: Sequence[int], channels: int = 3):
        pt, ph, pw = (int(x) for x in tubelet)
        if min(in_dim, pt, ph, pw, channels) < 1:
            raise ValueError(
                f"pixel head sizes must be positive, got in_dim {in_dim}, tubelet {tuple(tubelet)},"
                f" channels {channels}"
            )
        super().__init__(in_dim, channels * pt * ph * pw)


class TDLProjectionHead(RSPNetProjectionHead):
    """TDL's embedding head: Linear from pooled features to ``out_dim``, then L2 normalisation.

    The official code's ``id_head`` (average pool, Linear 512 -> 128, ``Normalize(2)``): the
    anchor, its positive (through the momentum copy) and its temporal negative are compared by
    the dot products of these unit vectors, and the memory bank stores them.

    - Wang et al., "Self-supervised Temporal Discriminative Learning for Video Representation
      Learning", 2020, https://arxiv.org/abs/2008.02129
    """


class DistillationProjectionHead(nn.Linear):
    """A student-to-teacher projection of feature distillation: one Linear from the student's
    feature size to a teacher's, used when the two differ (one per such teacher).

    The feature-matching loss compares the projected student features with the frozen
    teacher's; the representation kept for downstream use is the student backbone's, before
    the projection.

    - Kumar et al., "A Large-Scale Analysis on Contextual Self-Supervised Video Representation
      Learning", 2025
    - Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
      https://arxiv.org/abs/1412.6550
    """

    def __init__(self, in_dim: int, out_dim: int):
        if min(in_dim, out_dim) < 1:
            raise ValueError(f"projection sizes must be positive, got in {in_dim}, out {out_dim}")
        super().__init__(in_dim, out_dim)


class PlaybackRateDecoder(nn.Module):
    """PRP's generative branch: the backbone's unpooled map -> the clip at twice its frame rate.

    The official code's ``SSCN_OneClip`` decoder, generalised from its C3D/R3D/R(2+1)D layout
    (a ``(512, T/8, H/16, W/16)`` map, four 2x stages) to any map: ``neck`` (the official
    ``conv6_rec``: Conv3d 3x3x3 + BatchNorm + ReLU at the map's width), then ``stages``
    transposed convolutions (kernel = stride, 2 on each axis still to upsample, else 1, the
    official ``up1`` .. ``up4_1``), each but the last followed by a Conv3d 3x3x3 + BatchNorm +
    ReLU that halves the width (512 -> 256 -> 128 -> 64), then ``out`` (the official ``outc``:
    Conv3d 3x3x3 to 3 channels + BatchNorm + ReLU: frames in [0, 1], never negative).

    - Yao et al., "Video Playback Rate Perception for Self-supervised Spatio-Temporal
      Representation Learning", CVPR 2020, https://arxiv.org/abs/2006.11476

    Args:
        in_dim: the channels of the backbone's map.
        scale: ``(temporal, spatial)`` upsampling from the map to the reconstructed clip,
            powers of two (C3D and R3D-10 at 16 x 112: ``(16, 16)``, 2 frames to 32).
        channels: channels of the reconstructed frames.
    """

    def __init__(self, in_dim: int, scale: Sequence[int], channels: int = 3):
        super().__init__()
        temporal, spatial = (int(s) for s in scale)
        if in_dim < 1 or channels < 1:
            raise ValueError(f"decoder sizes must be positive, got {in_dim}, {channels}")
        for factor in (temporal, spatial):
            if factor < 1 or factor & (factor - 1):
                raise ValueError(
                    f"decoder scale must be two powers of two >= 1 (temporal, spatial), got "
                    f"{tuple(scale)}"
                )
        self.scale = (temporal, spatial)
        steps_t, steps_s = temporal.bit_length() - 1, spatial.bit_length() - 1
        self.neck = self._block(in_dim, in_dim)
        self.up = nn.ModuleList()
        width = in_dim
        count = max(steps_t, steps_s)
        for i in range(count):
            stride = (2 if i < steps_t else 1, 2 if i < steps_s else 1, 2 if i < steps_s else 1)
            layers: list[nn.Module] = [nn.ConvTranspose3d(width, width, stride, stride=stride)]
            if i < count - 1:
                layers.append(self._block(width, max(width // 2, 1)))
                width = max(width // 2, 1)
            self.up.append(nn.Sequential(*layers))
        self.out = self._block(width, channels)

    @staticmethod
    def _block(in_dim: int, out_dim: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv3d(in_dim, out_dim, 3, padding=1), nn.BatchNorm3d(out_dim), nn.ReLU(True)
        )

    def forward(self, features: Tensor) -> Tensor:
        """Frames ``(B, channels, T' * temporal, H' * spatial, W' * spatial)`` of a map
        ``(B, in_dim, T', H', W')``."""
        x = self.neck(features)
        for stage in self.up:
            x = stage(x)
        return self.out(x)


class MoCoProjectionHead(nn.Sequential):
    """MoCo's MLP projection without batch norm: ``hidden_layers`` x (Linear + ReLU), then Linear.

    MoCo v2 puts one hidden layer of 2048 on the backbone; rho-MoCo's official config
    (SlowFast, ``MoCo_SlowR50_8x8``: three MLP layers, no BN in the MLP) two, then 128. The
    InfoNCE loss compares the L2-normalised outputs; downstream use keeps the backbone's
    features. Layers are numbered as an ``nn.Sequential``: ``0`` and ``1`` the first hidden
    block, the last Linear at ``2 * hidden_layers``.

    - Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020,
      https://arxiv.org/abs/2003.04297
    - Feichtenhofer et al., "A Large-Scale Study on Unsupervised Spatiotemporal Representation
      Learning", CVPR 2021, https://arxiv.org/abs/2104.14558

    Args:
        in_dim: the backbone's feature size.
        hidden_dim: width of the hidden layers (paper: 2048).
        hidden_layers: number of hidden blocks (rho-MoCo: 2); 0 gives a single Linear.
        out_dim: size of the projection (paper: 128).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, hidden_layers: int = 2, out_dim: int = 128
    ):
        if min(in_dim, hidden_dim, out_dim) < 1 or hidden_layers < 0:
            raise ValueError(
                f"projection head sizes must be positive (in {in_dim}, hidden {hidden_dim}, out "
                f"{out_dim}) and hidden_layers >= 0 (got {hidden_layers})"
            )
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(True)]
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)
