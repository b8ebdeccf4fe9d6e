"""The audio probe: the frozen audio backbone's input (spectrogram or waveform), its features
and labels per video, the probe on the synthetic dataset with sound, ``vssl probe --modality
audio`` end to end, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vssl.cli import main
from vssl.data.synthetic import make_synthetic
from vssl.eval.audio_probe import (
    audio_features,
    extract_audio_features,
    probe_audio,
    untrained_task,
)
from vssl.eval.classifiers import probe_accuracy, train_linear_probe
from vssl.eval.features import save_task
from vssl.tasks import AVID, VATT, Supervised
from vssl.tasks.avid import AudioVisualClip

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
    task = VATT(**VATT_TINY).eval()
    settings = {"clip_len": 4, "stride": 2, "decode_size": 32, "cache_dir": str(tmp_path)}
    result = probe_audio(task, sound_synthetic, steps=50, **settings)
    assert (result.num_classes, result.num_train, result.num_test) == (4, 8, 4)
    assert result.chance == 0.25
    # by hand: the task's window centred on each video's centre clip, a linear probe
    from vssl.data.datamodule import VideoDataModule

    data = VideoDataModule(str(sound_synthetic), crop_size=32, flip=False, **settings)
    sampler = AudioVisualClip(4, 2, 0.512, 8000, True, random=False)
    feats = [
        extract_audio_features(task, data.build_dataset(stage, sampler=sampler))
        for stage in ("train", "val")
    ]
    probe = train_linear_probe(*feats[0], 4, steps=50, lr=0.1, seed=0)
    assert result.accuracy == probe_accuracy(probe, *feats[1])
    with pytest.raises(ValueError, match="Supervised has no audio backbone"):
        probe_audio(Supervised(backbone="tiny3d", num_classes=2), sound_synthetic)


def test_untrained_task_is_the_same_task_with_fresh_weights() -> None:
    task = AVID(**AVID_TINY)
    with torch.no_grad():
        for p in task.audio_backbone.parameters():
            p.add_(1.0)
    fresh = untrained_task(task, seed=3)
    assert type(fresh) is AVID and fresh.audio_seconds == 0.5 and not fresh.training
    assert not torch.equal(
        next(fresh.audio_backbone.parameters()), next(task.audio_backbone.parameters())
    )
    again = untrained_task(task, seed=3)
    for a, b in zip(fresh.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_cli_audio_probe(
    sound_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    task = AVID(**AVID_TINY)
    ckpt = save_task(task, tmp_path / "avid.ckpt")
    common = ["--ckpt", str(ckpt), "--data.root", str(sound_synthetic), "--clip-len", "4"]
    common += ["--stride", "2", "--decode-size", "32", "--steps", "50"]
    settings = {"clip_len": 4, "stride": 2, "decode_size": 32, "steps": 50}
    out = tmp_path / "audio.json"
    assert main(["probe", "--modality", "audio", *common, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"audio probe of {ckpt}" in printed and "audio linear top-1 (8 train, 4 test" in printed
    record = json.loads(out.read_text())
    assert (record["protocol"], record["task"], record["untrained"]) == (
        "audio_probe",
        "AVID",
        False,
    )
    assert (record["num_train"], record["num_test"], record["num_classes"]) == (8, 4, 4)
    expected = probe_audio(task.eval(), sound_synthetic, **settings)
    assert record["results"] == {"accuracy": expected.accuracy, "chance": 0.25}
    # the baseline: the same task untrained, seeded
    assert main(["probe", "--modality", "audio", *common, "--untrained", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    baseline = probe_audio(untrained_task(task, 1), sound_synthetic, **settings, seed=1)
    assert "(untrained)" in printed and f"{100 * baseline.accuracy:.2f}" in printed


def test_cli_audio_probe_errors(
    sound_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video_only = save_task(Supervised(backbone="tiny3d", num_classes=2), tmp_path / "sup.ckpt")
    data = ["--data.root", str(sound_synthetic)]
    assert main(["probe", "--modality", "audio", "--ckpt", str(video_only), *data]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"vssl probe: error: {video_only}: a Supervised checkpoint has no audio network; the "
        "audio probe needs an audio-visual task (AVID, VATT)"
    )
    assert main(["probe", "--modality", "audio", "--backbone", "tiny3d", *data]) == 2
    assert "give --ckpt CKPT of an AVID or VATT run" in capsys.readouterr().err
    silent = make_synthetic(tmp_path / "silent", classes=2, videos_per_class=2, frames=8, size=16)
    avid = save_task(AVID(**AVID_TINY), tmp_path / "avid.ckpt")
    argv = ["probe", "--modality", "audio", "--ckpt", str(avid), "--data.root", str(silent)]
    assert main([*argv, "--clip-len", "4", "--decode-size", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(silent) in err[0] and "has an audio stream" in err[0]
    assert main(["probe", "--untrained", "--backbone", "tiny3d", *data]) == 2
    assert "--untrained is for --modality audio" in capsys.readouterr().err
