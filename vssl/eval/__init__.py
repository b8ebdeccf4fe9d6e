"""Downstream evaluation: feature extraction, linear probe, kNN, retrieval and fine-tuning (their
command-line front-ends are in `vssl.commands`)."""

from vssl.eval.attentive import AttentiveClassifier, attentive_probe, extract_tokens
from vssl.eval.classifiers import (
    FeatureNorm,
    LinearProbe,
    knn_accuracy,
    knn_scores,
    label_fraction_indices,
    probe_accuracy,
    probe_fit,
    train_linear_probe,
)
from vssl.eval.features import (
    DATA_DEFAULTS,
    Features,
    FeatureSettings,
    MultiCrop,
    build_model,
    checkpoint_data_settings,
    crop_offsets,
    describe_data_settings,
    extract_features,
    load_task,
    resolve_data_settings,
    save_task,
)
from vssl.eval.retrieval import retrieval_recall

__all__ = [
    "AttentiveClassifier",
    "DATA_DEFAULTS",
    "FeatureSettings",
    "FeatureNorm",
    "Features",
    "LinearProbe",
    "MultiCrop",
    "attentive_probe",
    "build_model",
    "checkpoint_data_settings",
    "crop_offsets",
    "describe_data_settings",
    "extract_features",
    "extract_tokens",
    "knn_accuracy",
    "knn_scores",
    "label_fraction_indices",
    "load_task",
    "save_task",
    "probe_accuracy",
    "probe_fit",
    "resolve_data_settings",
    "retrieval_recall",
    "train_linear_probe",
]
