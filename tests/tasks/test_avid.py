"""AVID: the sampler, the memory, the NCE loss against a hand computation, the volume jitter,
and a short training on the synthetic dataset with sound whose loss falls."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from vssl.data.datamodule import VideoDataModule
from vssl.data.sampling import AudioSpan, ClipSpec
from vssl.data.synthetic import make_synthetic
from vssl.tasks import AVID
from vssl.tasks.avid import (
    AudioVisualClip,
    AVIDProjectionHead,
    InstanceMemory,
    batch_nce,
    nce_loss,
    volume_jitter,
)

TINY = {
    "backbone": "tiny3d",
    "backbone_kwargs": {"width": 4},
    "audio_backbone": "audio_tiny",
    "audio_backbone_kwargs": {"width": 4},
    "proj_dims": [16],
    "num_negatives": 4,
    "audio_seconds": 0.5,
    "sample_rate": 8000,
    "n_fft": 128,
    "spectrogram_fps": 50,
    "n_mels": 16,
}


def test_nce_loss_by_hand() -> None:
    # one sample, K = 2 negatives, Z = 2: K Z = 4
    data = -math.log(math.exp(0.5) / (math.exp(0.5) + 4))
    noise = -math.log(4 / (math.exp(0.1) + 4)) - math.log(4 / (math.exp(-0.2) + 4))
    loss = nce_loss(torch.tensor([0.5]), torch.tensor([[0.1, -0.2]]), 2.0)
    assert abs(float(loss) - (data + noise)) < 1e-6
    # the batch mean
    two = nce_loss(torch.tensor([0.5, 0.0]), torch.tensor([[0.1, -0.2], [0.0, 0.0]]), 2.0)
    other = -math.log(1 / 5) - 2 * math.log(4 / 5)
    assert abs(float(two) - (data + noise + other) / 2) < 1e-6


def test_batch_nce_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # scores over t = 0.5: row 0 [1.2 (its own key), 2.0], row 1 [1.6, 0.0 (its own key)]
    row0 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(2.0)))
    row1 = -math.log(math.exp(0.0) / (math.exp(1.6) + math.exp(0.0)))
    assert abs(float(batch_nce(q, k, 0.5)) - (row0 + row1) / 2) < 1e-6
    # under DDP the keys are every process's; rank 1's queries own rows 2 and 3. Each key
    # twice doubles every denominator: log 2 more per row
    keys = torch.cat([k.flip(0), k])
    expected = (row0 + row1) / 2 + math.log(2)
    assert abs(float(batch_nce(q, keys, 0.5, rank=1)) - expected) < 1e-6


def test_sampler_centres_the_sound_on_the_clip() -> None:
    sampler = AudioVisualClip(clip_len=4, stride=2, audio_seconds=1.0, sample_rate=8000)
    assert sampler.needs_audio
    views = sampler(40, np.random.default_rng(0))
    start = int(views["video"][0])
    np.testing.assert_array_equal(views["video"], start + 2 * np.arange(4))
    assert views["audio"] == AudioSpan(start, start + 7, 1.0, 8000, True, video_frames=40)
    # the 7 frames from `start` at 8 fps last 0.875 s, centred in the 1 s window
    assert views["audio"].start_time(8.0) == pytest.approx(start / 8 - 0.0625)
    centre = AudioVisualClip(4, 2, 1.0, 8000, random=False)(40, np.random.default_rng(0))
    assert int(centre["video"][0]) == (40 - 7) // 2
    with pytest.raises(ValueError, match="audio_seconds"):
        AudioVisualClip(audio_seconds=0)


def test_sampler_jitters_the_sound_as_the_official_loader() -> None:
    jittered = AudioVisualClip(clip_len=4, stride=2, audio_seconds=1.0, offsync=0.5)
    plain = AudioVisualClip(clip_len=4, stride=2, audio_seconds=1.0)
    spans = []
    for seed in range(400):
        views = jittered(40, np.random.default_rng(seed))
        # the clip is drawn first, as without the jitter
        np.testing.assert_array_equal(
            views["video"], plain(40, np.random.default_rng(seed))["video"]
        )
        span = views["audio"]
        assert (span.offsync, span.video_frames, span.stop - span.start) == (0.5, 40, 7)
        spans.append(span)
    # at 8 fps: a clip from s lasting 0.875 s, a window starting in [s - 0.625, s + 0.5], cut
    # to [0, 4] s (a 5 s video)
    offsets = np.array([sp.start_time(8.0) - sp.start / 8 for sp in spans])
    lows = np.array([max(sp.start / 8 - 0.625, 0.0) - sp.start / 8 for sp in spans])
    highs = np.array([min(sp.start / 8 + 0.5, 4.0) - sp.start / 8 for sp in spans])
    assert np.all(offsets >= lows - 1e-9) and np.all(offsets <= highs + 1e-9)
    draws = np.array([sp.draw for sp in spans])
    assert 0.45 < draws.mean() < 0.55 and draws.min() < 0.02 and draws.max() > 0.98
    # evaluation: the centre clip, its sound centred whatever offsync is
    centre = AudioVisualClip(4, 2, 1.0, random=False, offsync=0.5)(40, np.random.default_rng(0))
    assert centre["audio"].offsync is None
    with pytest.raises(ValueError, match="offsync must be >= 0"):
        AudioVisualClip(offsync=-1.0)


def test_task_jitters_in_training_only() -> None:
    task = AVID(**TINY)
    spec = ClipSpec(clip_len=4, stride=2)
    assert task.audio_offsync == 0.5  # the official max_offsync_augm
    assert task.clip_sampler("train", spec).offsync == 0.5
    assert not task.clip_sampler("val", spec).random
    assert AVID(**TINY, audio_offsync=None).clip_sampler("train", spec).offsync is None
    with pytest.raises(ValueError, match="offsync must be >= 0"):
        AVID(**TINY, audio_offsync=-0.5)


def test_memory_negatives_update_and_loading() -> None:
    memory = InstanceMemory(5, 3)
    assert memory.size == 5
    torch.testing.assert_close(memory.video.norm(dim=1), torch.ones(5))
    index = torch.tensor([0, 4, 2])
    drawn = memory.negatives(index, 400, torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 400)
    for row, own in zip(drawn, index.tolist(), strict=True):
        assert set(row.tolist()) == set(range(5)) - {own}  # uniform over the others
    memory.video.zero_()
    memory.video[1] = torch.tensor([1.0, 0.0, 0.0])
    memory.update(torch.tensor([1]), torch.tensor([[0.0, 1.0, 0.0]]), torch.zeros(1, 3), 0.5)
    torch.testing.assert_close(memory.video[1], torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    fresh = InstanceMemory(0, 3)
    fresh.load_state_dict(memory.state_dict())
    assert fresh.size == 5
    torch.testing.assert_close(fresh.video, memory.video)
    with pytest.raises(ValueError, match="at least 2 videos"):
        InstanceMemory(1, 3).negatives(torch.tensor([0]), 2)


def test_projection_head_is_linear_layers_with_relu_between() -> None:
    head = AVIDProjectionHead(8, [6, 4])
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear"]
    assert [type(m).__name__ for m in AVIDProjectionHead(8)] == ["Linear"]


def _batch(n: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {
        "video": torch.randn(n, 3, 4, 16, 16),
        "audio": torch.randn(n, 1, 4000),
        "index": torch.arange(n),
        "label": torch.zeros(n, dtype=torch.long),
    }


def test_step_scores_against_the_memory_and_moves_it() -> None:
    torch.manual_seed(0)
    task = AVID(memory_size=6, memory_momentum=0.5, **TINY)
    batch = task.augment_batch(_batch())
    assert batch["audio"].shape == (3, 1, 16, 0.5 * 50 + 1)
    before_v, before_a = task.memory.video.clone(), task.memory.audio.clone()
    assert float(task.partition) == -1.0
    out = task.step(batch, "train")
    assert torch.isfinite(out.loss) and out.features.shape == (3, 16)
    assert float(task.partition) > 0  # Z from this first batch, then kept
    z = float(task.partition)
    _, v, a = task.embed(batch["video"], batch["audio"])
    expected = F.normalize(0.5 * before_v[:3] + 0.5 * v.detach(), dim=1)
    torch.testing.assert_close(task.memory.video[:3], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(task.memory.audio[3:], before_a[3:])
    task.step(batch, "train")
    assert float(task.partition) == z
    assert set(out.logs) == {"xmodal_acc", "nce_v2a", "nce_a2v"}
    evaluation = task.step(batch, "val")  # no memory of these videos: the in-batch InfoNCE
    assert set(evaluation.logs) == {"xmodal_acc"} and torch.isfinite(evaluation.loss)
    with pytest.raises(ValueError, match="video index 7 does not fit the memory of 6 videos"):
        task.step({**batch, "index": torch.tensor([0, 1, 7])}, "train")


def test_batch_negatives_train_without_the_memory() -> None:
    torch.manual_seed(0)
    task = AVID(negatives="batch", **TINY)
    batch = task.augment_batch(_batch())
    out = task.step(batch, "train")
    assert task.memory.size == 0 and float(task.partition) == -1.0
    assert set(out.logs) == {"xmodal_acc", "nce_v2a", "nce_a2v"}
    _, v, a = task.embed(batch["video"], batch["audio"])
    expected = 0.5 * (batch_nce(v, a, 0.07) + batch_nce(a, v, 0.07))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logs["nce_v2a"], batch_nce(v, a, 0.07))
    # the same loss as the evaluation one
    torch.testing.assert_close(task.step(batch, "val").loss, expected)


def test_volume_jitter_scales_each_waveform_once() -> None:
    wave = torch.tensor([[[1.0, -2.0, 0.5]], [[0.25, 0.0, 4.0]]])
    jittered = volume_jitter(wave, 0.1, torch.Generator().manual_seed(5))
    u = torch.rand(2, 1, 1, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(jittered, wave * (0.9 + 0.2 * u))
    assert volume_jitter(wave, 0.0) is wave
    with pytest.raises(ValueError, match=r"volume jitter must be in \[0, 1\)"):
        volume_jitter(wave, 1.0)


def test_volume_jitter_in_training_only() -> None:
    torch.manual_seed(0)
    task = AVID(**TINY)
    task.spectrogram = torch.nn.Identity()  # the waveforms as augment_batch hands them on
    wave = _batch()["audio"]
    task.eval()
    torch.testing.assert_close(task.augment_batch({"audio": wave.clone()})["audio"], wave)
    task.train()
    factor = task.augment_batch({"audio": wave.clone()})["audio"] / wave
    per_sample = factor.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1])  # one factor per waveform
    assert ((per_sample > 0.9) & (per_sample < 1.1)).all() and not torch.allclose(
        factor, wave / wave
    )
    off = AVID(**{**TINY, "audio_volume_jitter": 0.0})
    off.spectrogram = torch.nn.Identity()
    torch.testing.assert_close(off.augment_batch({"audio": wave.clone()})["audio"], wave)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="audio_volume_jitter must be in"):
        AVID(audio_volume_jitter=1.5, **TINY)
    with pytest.raises(ValueError, match="memory_momentum"):
        AVID(memory_momentum=1.0, **TINY)
    with pytest.raises(ValueError, match="cross_weight and within_weight"):
        AVID(cross_weight=0.0, **TINY)
    with pytest.raises(ValueError, match="negatives must be 'memory' or 'batch', got 'bank'"):
        AVID(negatives="bank", **TINY)
    with pytest.raises(ValueError, match="within_weight needs negatives='memory'"):
        AVID(negatives="batch", within_weight=1.0, **TINY)


@pytest.fixture(scope="module")
def sound_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes, 3 videos each (2 train, 1 test), 16 frames of 32x32 at 8 fps, with sound."""
    root = tmp_path_factory.mktemp("avid") / "synthetic"
    return make_synthetic(
        root, classes=4, videos_per_class=3, frames=16, size=32, fps=8, audio=True
    )


def test_short_training_loss_falls(sound_synthetic: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)  # seeds 1 to 3 pass too
    data = VideoDataModule(
        str(sound_synthetic),
        clip_len=4,
        stride=2,
        crop_size=24,
        decode_size=32,
        batch_size=4,
        num_workers=0,
        flip=False,
        cache_dir=str(tmp_path / "cache"),
    )
    task = AVID(**{**TINY, "audio_seconds": 1.0}, lr=3e-3, num_classes=4)
    trainer = pl.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=pl.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        log_every_n_steps=1,
    )
    trainer.fit(task, data)
    assert task.memory.size == 8  # the training videos

    (metrics,) = tmp_path.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    epochs = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(epochs) == 5 and all(math.isfinite(x) for x in epochs)
    assert sum(epochs[-2:]) / 2 < sum(epochs[:2]) / 2 - 1.0, epochs
    # a checkpoint's memory loads into a task that has none yet
    fresh = AVID(**{**TINY, "audio_seconds": 1.0}, num_classes=4)
    fresh.load_state_dict(task.state_dict())
    assert fresh.memory.size == 8 and float(fresh.partition) == float(task.partition)
