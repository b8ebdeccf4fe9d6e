"""Downstream evaluation: feature extraction, linear probe, kNN, retrieval, and their commands."""

from vssl.eval.classifiers import (
    knn_accuracy,
    knn_scores,
    label_fraction_indices,
    probe_accuracy,
    train_linear_probe,
)
from vssl.eval.features import (
    Features,
    FeatureSettings,
    MultiCrop,
    build_model,
    crop_offsets,
    extract_features,
    load_task,
)
from vssl.eval.retrieval import retrieval_recall

__all__ = [
    "FeatureSettings",
    "Features",
    "MultiCrop",
    "build_model",
    "crop_offsets",
    "extract_features",
    "knn_accuracy",
    "knn_scores",
    "label_fraction_indices",
    "load_task",
    "probe_accuracy",
    "retrieval_recall",
    "train_linear_probe",
]
