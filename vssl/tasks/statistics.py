"""Spatio-temporal statistics: predict the motion and appearance statistics of a clip.

The task of MAS and STS: from the RGB frames alone, predict where a clip's largest motion is and
in which direction it goes, where its colours change most and least, and which colours
dominate, over three spatial partitions of the frame (14 motion and 13 appearance labels). The
labels, and the worker transform that computes them (optical flow on the frames as cropped and
flipped, then the labels), are in `vssl.data.statistics_labels`, and the same labels for a
batch on the model's device in `vssl.data.statistics_labels_torch`; this module holds the
task: its sampling, where its labels are computed, its two heads (`vssl.heads.StatisticsHead`)
and its loss.

- Wang et al., "Self-supervised Spatio-temporal Representation Learning for Videos by Predicting
  Motion and Appearance Statistics" (MAS), CVPR 2019, https://arxiv.org/abs/1904.03597
- Wang et al., "Self-Supervised Video Representation Learning by Uncovering Spatio-Temporal
  Statistics" (STS), TPAMI 2021, https://arxiv.org/abs/2008.13426
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vssl.data.flow import FLOW_METHODS
from vssl.data.sampling import ClipSampler, ClipSpec, RandomClip, UniformClips, WithFlow
from vssl.data.statistics_labels import (
    APPEARANCE_LABELS,
    LABEL_GROUPS,
    LABEL_PLACES,
    MOTION_LABELS,
    NUM_BINS,
    OCTANT_COLOURS,
    PATTERNS,
    AppearanceRegions,
    MotionBoundaries,
    StatisticsTransform,
    appearance_regions,
    appearance_statistics,
    colour_octants,
    label_classes,
    label_group,
    motion_boundaries,
    motion_statistics,
    orientation_histogram,
    prewitt,
    region_masks,
    region_scores,
)
from vssl.data.statistics_labels_torch import batch_labels
from vssl.heads import STATISTICS_HEAD_KINDS, StatisticsHead
from vssl.tasks.base import StepOutput, VSSLTask

#: The task, and the labels' public names, which lived here before `vssl.data.statistics_labels`
#: and are still importable from this module.
__all__ = [
    "APPEARANCE_LABELS",
    "LABEL_GROUPS",
    "LABEL_PLACES",
    "MOTION_LABELS",
    "NUM_BINS",
    "OCTANT_COLOURS",
    "PATTERNS",
    "AppearanceRegions",
    "MotionBoundaries",
    "SpatioTemporalStatistics",
    "StatisticsTransform",
    "appearance_regions",
    "appearance_statistics",
    "colour_octants",
    "label_classes",
    "label_group",
    "motion_boundaries",
    "motion_statistics",
    "orientation_histogram",
    "prewitt",
    "region_masks",
    "region_scores",
]


@dataclass(frozen=True)
class _Family:
    """The active labels of one family (motion or appearance) and how its head is laid out."""

    name: str
    key: str  # batch key of the full label vector
    labels: tuple[str, ...]
    index: tuple[int, ...]  # positions of the active labels in the full vector
    classes: tuple[int, ...]
    weight: float


class SpatioTemporalStatistics(VSSLTask):
    """Predict the motion (14) and appearance (13) statistics of a clip (MAS / STS).

    Views: T + 1 consecutive frames, one random ``crop_size`` crop shared by all (the papers'
    crop of 112 from frames decoded at 128x171, not a random *resized* crop: the datamodule's
    ``crop_scale`` is not used), flipped at random when the data allows (`ClipSpec.flip`); flow is
    computed in the workers on those frames (`StatisticsTransform`), or read with them when the
    dataset has precomputed flow, and the labels from it there or on the device (``labels``).
    Validation and test take the central window and the central crop, unflipped.

    Backbone -> pooled features -> a linear motion head and a linear appearance head
    (`StatisticsHead`). ``head="classification"``: one softmax per label (as many classes as the
    label has values), cross-entropy; ``head="regression"``: the papers' MSE on the integer
    labels. Either way the
    loss is ``motion_weight * L_motion + appearance_weight * L_appearance``, each the mean over
    the family's active labels of that label's loss (labels that are 0, "undefined", are left
    out). ``groups`` picks the label groups (`LABEL_GROUPS`: p1, p2, p3, global); ``motion`` /
    ``appearance`` switch a whole family off. Each group's loss is logged, and each label's
    accuracy on validation and test (regression: the rounded prediction).

    Classification is the default because its features are far better under a linear probe
    (the measurement is in README, section "Pretext tasks"). With MSE the heads settle on the
    labels' means and the backbone learns little: MSE on label indices rewards numerically
    close wrong answers, but index distance means little here: blocks 4 and 5 lie on opposite
    sides of the frame, and direction bins 1 and 8 are neighbours.

    Args:
        head: ``classification`` (default) or ``regression`` (the papers').
        motion, appearance: predict that family of labels.
        groups: the label groups to predict (`LABEL_GROUPS`).
        motion_weight, appearance_weight: the weights of the two families' losses (the papers'
            1.0 and 0.1).
        clip_len: frames the network sees (the datamodule's ``clip_len``; the task reads one
            more for the last flow field). Sets the classes of the global motion labels.
        flow_method: ``dis`` (default) or ``farneback`` (`vssl.data.flow.compute_flow`).
        labels: where the labels are computed. ``worker``: in the DataLoader workers, clip by
            clip (`StatisticsTransform`). ``device``: per batch on the model's device, from the
            uint8 frames and the flow that the workers send instead
            (`vssl.data.statistics_labels_torch.batch_labels`, before normalisation; the same
            labels). ``auto`` (default): ``device`` when the trainer runs on a CUDA GPU,
            where the labels cost next to nothing, ``worker`` otherwise, where the workers
            compute them in parallel with the training step and the main process would only
            add their time to every step.
        **kwargs: the shared settings of `VSSLTask`. Photometric ``augment`` settings are
            refused while appearance labels are on: colour changes after labelling would make
            the colour labels wrong.
    """

    def __init__(
        self,
        head: str = "classification",
        motion: bool = True,
        appearance: bool = True,
        groups: Sequence[str] = LABEL_GROUPS,
        motion_weight: float = 1.0,
        appearance_weight: float = 0.1,
        clip_len: int = 16,
        flow_method: str = "dis",
        labels: str = "auto",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if head not in STATISTICS_HEAD_KINDS:
            raise ValueError(f"head must be 'classification' or 'regression', got {head!r}")
        unknown = sorted(set(groups) - set(LABEL_GROUPS))
        if unknown:
            raise ValueError(f"unknown label groups {unknown}; choose from {list(LABEL_GROUPS)}")
        if flow_method not in FLOW_METHODS:
            raise ValueError(f"unknown flow_method {flow_method!r}; choose one of {FLOW_METHODS}")
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        if labels not in ("auto", *LABEL_PLACES):
            raise ValueError(f"labels must be 'auto', 'worker' or 'device', got {labels!r}")
        if appearance and self.augment.photometric:
            raise ValueError(
                "photometric augmentation (augment: jitter, grayscale, blur, solarize) would "
                "change the colours after the appearance labels were computed; switch it off "
                "or set appearance: false"
            )
        self.clip_len, self.flow_method, self.labels = clip_len, flow_method, labels
        families = []
        for name, key, names, on, weight in (
            ("motion", "motion", MOTION_LABELS, motion, motion_weight),
            ("appearance", "appearance", APPEARANCE_LABELS, appearance, appearance_weight),
        ):
            index = tuple(i for i, n in enumerate(names) if label_group(n) in groups) if on else ()
            if index:
                labels = tuple(names[i] for i in index)
                classes = tuple(label_classes(n, clip_len) for n in labels)
                families.append(_Family(name, key, labels, index, classes, float(weight)))
        if not families:
            raise ValueError("no labels left: enable motion or appearance and at least one group")
        self.families = tuple(families)
        for f in self.families:
            self.register_buffer(f"_{f.name}_index", torch.tensor(f.index), persistent=False)
        self.heads = nn.ModuleDict(
            {f.name: StatisticsHead(self.backbone.out_dim, f.classes, head) for f in self.families}
        )

    def clip_sampler(self, stage: str, spec: ClipSpec) -> ClipSampler:
        """T + 1 consecutive frames (a random window in training, the central one otherwise),
        with their T flow fields when the datamodule has precomputed flow (``data.flow``)."""
        if spec.clip_len != self.clip_len:
            raise ValueError(
                f"the datamodule's clip_len {spec.clip_len} differs from the statistics task's "
                f"clip_len {self.clip_len}; set model.init_args.clip_len: {spec.clip_len}"
            )
        if stage == "train":
            return WithFlow(RandomClip(spec.clip_len, spec.stride, extra_frames=1))
        return WithFlow(UniformClips(spec.clip_len + 1, spec.stride, num_clips=1, stack=False))

    def label_place(self) -> str:
        """Where this run computes the labels: ``worker`` or ``device`` (``labels="auto"``:
        ``device`` when the attached trainer runs on a CUDA GPU)."""
        if self.labels != "auto":
            return self.labels
        trainer = self.attached_trainer()
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return "device" if on_gpu else "worker"

    def clip_transform(self, stage: str, spec: ClipSpec) -> Callable:
        """Crop (random or central), flip (training, if the data allows), flow, and (with the
        labels in the workers) labels."""
        return StatisticsTransform(
            spec.crop_size, stage == "train", spec.flip, self.flow_method, labels=self.label_place()
        )

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The labels of a batch that brings flow instead (``labels="device"``), computed from
        its uint8 frames before they are normalised; then the shared augmentation."""
        if "flow" in batch:
            flow = batch.pop("flow")
            video = batch["video"]
            if video.dtype != torch.uint8:
                raise ValueError(
                    f"the statistics labels need the batch's uint8 frames, got {video.dtype}"
                )
            with torch.no_grad():
                batch["motion"], batch["appearance"] = batch_labels(video, flow)
        return super().augment_batch(batch)

    def _label_losses(self, family: _Family, out: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Per-label losses and accuracies ``(L,)`` over the samples whose label is defined."""
        head: StatisticsHead = self.heads[family.name]
        valid = targets > 0
        count = valid.sum(0).clamp(min=1)
        if head.kind == "regression":
            loss = (out - targets.float()) ** 2
        else:
            target = (targets - 1).clamp(min=0)
            loss = torch.stack(
                [
                    nn.functional.cross_entropy(c, target[:, k], reduction="none")
                    for k, c in enumerate(head.chunks(out))
                ],
                dim=1,
            )
        loss = (loss * valid).sum(0) / count
        acc = ((head.predict(out) == targets) & valid).sum(0) / count
        return loss, acc

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        """Weighted motion and appearance losses; group losses and (not in training) accuracies."""
        features = self.backbone(batch["video"])
        total = features.new_zeros(())
        logs: dict[str, Tensor | float] = {}
        for family in self.families:
            targets = batch[family.key].index_select(1, getattr(self, f"_{family.name}_index"))
            losses, accs = self._label_losses(family, self.heads[family.name](features), targets)
            family_loss = losses.mean()
            total = total + family.weight * family_loss
            logs[f"loss_{family.name}"] = family_loss.detach()
            groups = [label_group(n) for n in family.labels]
            for group in dict.fromkeys(groups):
                members = [k for k, g in enumerate(groups) if g == group]
                logs[f"loss_{family.name}_{group}"] = losses.detach()[members].mean()
            if stage != "train":
                for name, acc in zip(family.labels, accs, strict=True):
                    logs[f"acc/{family.name}_{name}"] = acc
        return StepOutput(total, logs, features)
