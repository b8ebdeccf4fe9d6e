"""Supervised training of backbone + linear head: the upper bound and the fine-tuning task."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from vssl.heads import ClassifierHead
from vssl.tasks.base import EVAL_STAGES, StepOutput, VSSLTask


class Supervised(VSSLTask):
    """Cross-entropy training of the backbone and a linear classifier on its pooled features.

    Args:
        num_classes: number of classes (linked from the datamodule by the CLI).
        dropout: dropout before the classifier.
        label_smoothing: label smoothing of the cross-entropy.
        online_probe: off by default (the head already is a linear classifier).
        **kwargs: the shared settings of `VSSLTask` (backbone, optimiser, schedule, augment).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        dropout: float = 0.5,
        label_smoothing: float = 0.0,
        online_probe: bool = False,
        **kwargs: Any,
    ):
        super().__init__(num_classes=num_classes, online_probe=online_probe, **kwargs)
        if not num_classes:
            raise ValueError(
                "Supervised needs num_classes: use a labelled datamodule (the CLI links it) or set "
                "model.init_args.num_classes"
            )
        self.head = ClassifierHead(self.backbone.out_dim, num_classes, dropout)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.accuracy = nn.ModuleDict(
            {f"{s}_": MulticlassAccuracy(num_classes, average="micro") for s in EVAL_STAGES}
        )

    def step(self, batch: dict[str, Tensor], stage: str) -> StepOutput:
        features = self.backbone(batch["video"])
        logits = self.head(features)
        labels = batch["label"]
        if stage == "train":
            acc: Tensor | MulticlassAccuracy = (
                (logits.detach().argmax(dim=1) == labels).float().mean()
            )
        else:
            acc = self.accuracy[f"{stage}_"]
            acc(logits, labels)
        return StepOutput(self.criterion(logits, labels), {"acc": acc}, features)
