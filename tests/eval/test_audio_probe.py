"""The audio probe: the frozen audio backbone's input (spectrogram or waveform), its features
and labels per video, the probe on the synthetic dataset with sound, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vssl.data.synthetic import make_synthetic
from vssl.eval.audio_probe import audio_features, probe_audio
from vssl.tasks import AVID, VATT, Supervised

VATT_TINY = {
    "backbone": "vit_tiny_8",
    "backbone_kwargs": {"dim": 16, "depth": 1, "heads": 2},
    "audio_backbone": "vatt_audio_tiny",
    "audio_backbone_kwargs": {"dim": 16, "depth": 1, "heads": 2},
    "proj_dim": 8,
    "proj_hidden": 8,
    "audio_seconds": 0.512,  # 4096 samples at 8 kHz: 32 waveform tokens
    "sample_rate": 8000,
}
AVID_TINY = {
    "backbone": "tiny3d",
    "backbone_kwargs": {"width": 4},
    "audio_backbone": "audio_tiny",
    "audio_backbone_kwargs": {"width": 4},
    "proj_dims": [8],
    "audio_seconds": 0.5,
    "sample_rate": 8000,
    "n_fft": 128,
    "spectrogram_fps": 50,
    "n_mels": 16,
}


@pytest.fixture(scope="module")
def sound_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes, 3 videos each (2 train, 1 test), 16 frames of 32x32 at 8 fps, with sound."""
    root = tmp_path_factory.mktemp("audio_probe") / "synthetic"
    return make_synthetic(
        root, classes=4, videos_per_class=3, frames=16, size=32, fps=8, audio=True
    )


def test_features_take_the_input_the_backbone_was_trained_on() -> None:
    torch.manual_seed(0)
    wave = torch.randn(2, 1, 4000)
    avid = AVID(**AVID_TINY).eval()
    expected = avid.audio_backbone(avid.spectrogram(wave))
    torch.testing.assert_close(audio_features(avid, wave), expected)
    vatt = VATT(**VATT_TINY).eval()
    wave = torch.randn(2, 1, 4096)
    torch.testing.assert_close(audio_features(vatt, wave), vatt.audio_backbone(wave))
    with pytest.raises(ValueError, match="Supervised has no audio backbone"):
        audio_features(Supervised(backbone="tiny3d", num_classes=2), wave)


def test_probe_on_the_synthetic_sound(sound_synthetic: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = VATT(**VATT_TINY)
    result = probe_audio(
        task,
        sound_synthetic,
        clip_len=4,
        stride=2,
        decode_size=32,
        steps=50,
        cache_dir=str(tmp_path),
    )
    assert (result.num_classes, result.num_train, result.num_test) == (4, 8, 4)
    assert result.chance == 0.25
    # the classes' tones are 200 * 2^(c/6) Hz: apart even for an untrained network
    assert result.accuracy > result.chance
    with pytest.raises(ValueError, match="Supervised has no audio backbone"):
        probe_audio(Supervised(backbone="tiny3d", num_classes=2), sound_synthetic)
