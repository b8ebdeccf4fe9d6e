"""Audio classification with a linear probe on a frozen audio backbone: does the audio branch of
an audio-visual task (AVID, VATT) learn?

The task's audio network is frozen; each video gives one window of its sound, centred on the
video's centre clip (`vssl.tasks.avid.AudioVisualClip`, the window the task trains on), and the
pooled audio features of the training split train a linear classifier
(`vssl.eval.classifiers.train_linear_probe`) that is scored on the test split. On the synthetic
dataset with sound (``make_synthetic(audio=True)``) the labels are the motion classes, which the
sound follows (which voice glides, and which way) under per-video pitches, loudness and vibrato
that a random network does not see past. Compare the accuracy with chance (the most common test
class) and the same probe on the task's untrained audio network (`untrained_task`; ``python -m
vssl probe --modality audio --untrained``).

From Python::

    from vssl.eval.audio_probe import probe_audio

    result = probe_audio("runs/vatt/synthetic_tiny/version_0/checkpoints/last.ckpt",
                         "data/synthetic_audio")
    print(result.accuracy, result.chance)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from vssl.data.datamodule import VideoDataModule
from vssl.errors import InvalidInputError
from vssl.eval.classifiers import probe_accuracy, train_linear_probe
from vssl.eval.features import load_task
from vssl.tasks.avid import AudioVisualClip
from vssl.tasks.base import VSSLTask

__all__ = [
    "AudioProbeResult",
    "audio_features",
    "extract_audio_features",
    "probe_audio",
    "untrained_task",
]


@dataclass(frozen=True)
class AudioProbeResult:
    """Top-1 accuracy of the audio probe on the test split, chance (the share of the test
    split's most common class), and the split sizes."""

    accuracy: float
    chance: float
    num_classes: int
    num_train: int
    num_test: int


def _audio_backbone(task: VSSLTask, source: str | Path | None = None) -> Any:
    backbone = getattr(task, "audio_backbone", None)
    if backbone is None:
        where = f"{source}: " if source is not None else ""
        raise InvalidInputError(
            f"{where}{type(task).__name__} has no audio backbone: the audio probe needs an "
            f"audio-visual task (AVID, VATT)"
        )
    return backbone


def untrained_task(task: VSSLTask, seed: int = 0) -> VSSLTask:
    """The same task as ``task`` (its class and hyperparameters) with fresh random weights
    drawn under ``seed``, in eval mode: the audio probe's baseline."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh = type(task)(**dict(task.hparams))
    return fresh.eval()


@torch.no_grad()
def audio_features(task: VSSLTask, waveform: Tensor) -> Tensor:
    """Pooled features ``(B, D)`` of the task's frozen audio backbone for waveforms
    ``(B, C, N)``: a spectrogram backbone gets the task's log spectrogram (``task.spectrogram``,
    as in training), a waveform transformer the waveform itself."""
    backbone = _audio_backbone(task)
    if getattr(backbone, "input_kind", "spectrogram") == "waveform":
        return backbone(waveform)
    spectrogram = getattr(task, "spectrogram", None)
    if spectrogram is None:
        raise ValueError(
            f"{type(task).__name__}: its audio backbone takes spectrograms, but the task has no "
            f"spectrogram module to make them"
        )
    return backbone(spectrogram(waveform))


@torch.no_grad()
def extract_audio_features(
    task: VSSLTask, dataset: Any, batch_size: int = 8, num_workers: int = 0
) -> tuple[Tensor, Tensor]:
    """Audio features ``(V, D)`` and labels ``(V,)`` of a dataset whose samples hold an
    ``audio`` waveform and a ``label``."""
    task = task.eval()
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    device = next(task.parameters()).device
    for batch in loader:
        feats.append(audio_features(task, batch["audio"].to(device)).float().cpu())
        labels.append(batch["label"])
    return torch.cat(feats), torch.cat(labels)


def probe_audio(
    task: VSSLTask | str | Path,
    root: str | Path,
    *,
    layout: str = "folder",
    train_split: str = "train",
    test_split: str = "test",
    clip_len: int = 8,
    stride: int = 2,
    decode_size: int = 64,
    batch_size: int = 8,
    num_workers: int = 0,
    cache_dir: str | None = None,
    steps: int = 300,
    lr: float = 0.1,
    seed: int = 0,
    untrained: bool = False,
    data_options: dict[str, Any] | None = None,
) -> AudioProbeResult:
    """Linear-probe accuracy of ``task``'s frozen audio backbone (a task or a Lightning
    checkpoint of AVID or VATT) on the test split of the dataset at ``root``.

    The audio window is the task's own (``audio_seconds`` at ``sample_rate``, mono), centred on
    the centre clip of ``clip_len`` frames every ``stride``; videos without sound are left out
    (logged). ``steps``, ``lr``, ``seed``: of `train_linear_probe`, on L2-normalised features
    (the protocol the audio probe's figures were measured with). ``untrained``: probe
    `untrained_task` (seeded by ``seed``) instead, the baseline. ``data_options``: more
    `VideoDataModule` settings (``fold``, ``annotations``, ``backend``, ...).

    Raises `InvalidInputError` for a task without an audio network and for a split without a
    video with sound, naming the checkpoint or the dataset.
    """
    source = None if isinstance(task, VSSLTask) else task
    if not isinstance(task, VSSLTask):
        task = load_task(task)
    _audio_backbone(task, source)
    if untrained:
        task = untrained_task(task, seed).to(next(task.parameters()).device)
    seconds, rate = getattr(task, "audio_seconds", None), getattr(task, "sample_rate", None)
    if seconds is None or rate is None:
        raise ValueError(f"{type(task).__name__} sets no audio window (audio_seconds, sample_rate)")
    data = VideoDataModule(
        str(root),
        layout=layout,
        train_split=train_split,
        val_split=test_split,
        clip_len=clip_len,
        stride=stride,
        crop_size=min(32, decode_size),
        decode_size=decode_size,
        flip=False,
        cache_dir=cache_dir,
        **(data_options or {}),
    )
    sampler = AudioVisualClip(clip_len, stride, seconds, rate, True, random=False)
    transform = task.clip_transform("val", data.clip_spec)
    splits = {}
    for stage in ("train", "val"):
        try:
            dataset = data.build_dataset(stage, sampler=sampler, transform=transform)
        except ValueError as err:
            split = train_split if stage == "train" else test_split
            raise InvalidInputError(
                f"{root}: split {split!r}: {err} (the audio probe needs videos with sound)"
            ) from err
        splits[stage] = extract_audio_features(task, dataset, batch_size, num_workers)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["val"]
    num_classes = len(data.classes)
    probe = train_linear_probe(
        train_x, train_y, num_classes, steps=steps, lr=lr, seed=seed, normalize="l2"
    )
    return AudioProbeResult(
        accuracy=probe_accuracy(probe, test_x, test_y),
        chance=float(torch.bincount(test_y).max()) / len(test_y),
        num_classes=num_classes,
        num_train=len(train_y),
        num_test=len(test_y),
    )
