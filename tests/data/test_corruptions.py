"""ImageNet-C noise corruptions of clips: the statistics of each severity on constant frames."""

from __future__ import annotations

import math

import pytest
import torch

from vssl.data.corruptions import SEVERITIES, Corruption, corrupt, corruption_names
from vssl.errors import InvalidInputError

GREY = 128  # x = 128 / 255 on every pixel
X = GREY / 255


def grey(frames: int = 4, side: int = 64) -> torch.Tensor:
    return torch.full((frames, 3, side, side), GREY, dtype=torch.uint8)


def noise(kind: str, severity: int) -> torch.Tensor:
    out = Corruption(kind, severity)(grey())
    assert out.dtype == torch.uint8 and out.shape == grey().shape
    return out.double() / 255


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_gaussian_noise_has_the_severity_std(severity):
    out = noise("gaussian", severity)
    c = (0.08, 0.12, 0.18)[severity - 1]
    assert out.mean().item() == pytest.approx(X, abs=0.005)
    assert out.std().item() == pytest.approx(c, rel=0.03)


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_shot_noise_is_poisson_counts_over_c(severity):
    out = noise("shot", severity)
    c = (60, 25, 12)[severity - 1]
    counts = out * c  # Poisson(x c) counts, rounded to grey levels on the way
    assert torch.allclose(counts, counts.round(), atol=c / 255)
    assert out.mean().item() == pytest.approx(X, abs=0.01)
    assert out.std().item() == pytest.approx(math.sqrt(X / c), rel=0.05)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_impulse_noise_sets_a_fraction_c_to_black_or_white(severity):
    out = Corruption("impulse_noise", severity)(grey())
    c = SEVERITIES["impulse"][severity - 1]
    black, white = (out == 0).double().mean().item(), (out == 255).double().mean().item()
    assert black == pytest.approx(c / 2, rel=0.1) and white == pytest.approx(c / 2, rel=0.1)
    assert ((out == GREY) | (out == 0) | (out == 255)).all()


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_speckle_noise_scales_with_the_pixel(severity):
    out = noise("speckle", severity)
    c = SEVERITIES["speckle"][severity - 1]
    assert out.mean().item() == pytest.approx(X, abs=0.005)
    assert out.std().item() == pytest.approx(X * c, rel=0.03)
    black = torch.zeros((2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(Corruption("speckle", severity)(black), black)  # x + x n = 0


def test_severity_grows_the_noise():
    stds = [noise("gaussian", s).std().item() for s in range(1, 6)]
    assert stds == sorted(stds)


def test_seeded_by_the_clip_not_the_call_order():
    clip = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    other = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    a = Corruption("gaussian", 3, seed=0)
    first = a(clip)
    a(other)
    assert torch.equal(a(clip), first)  # the same clip, the same noise, in any order
    assert torch.equal(Corruption("gaussian", 3, seed=0)(clip), first)
    assert not torch.equal(Corruption("gaussian", 3, seed=1)(clip), first)
    frames = first.double() - clip.double()
    assert not torch.equal(frames[0], frames[1])  # each frame its own draw


def test_bad_settings_are_named():
    assert corruption_names() == ["gaussian", "impulse", "shot", "speckle"]
    with pytest.raises(InvalidInputError, match="unknown corruption 'fog'; available: gaussian"):
        Corruption("fog", 1)
    for severity in (0, 6, 2.5, True):
        with pytest.raises(InvalidInputError, match="severity must be 1, 2, 3, 4 or 5"):
            Corruption("shot", severity)
    with pytest.raises(InvalidInputError, match="expects uint8"):
        corrupt(torch.zeros(2, 3, 4, 4), "gaussian", 1)


def test_probe_corrupts_the_test_clips_only(tiny_synthetic, tmp_path, capsys):
    import json

    from vssl.commands.probe import main as probe_main
    from vssl.eval.features import FeatureSettings, extract_features

    common = dict(
        root=str(tiny_synthetic),
        backbone="tiny3d",
        clips=1,
        clip_len=4,
        crop_size=16,
        decode_size=32,
    )
    clean = extract_features(FeatureSettings(split="test", **common))
    noisy = FeatureSettings(split="test", corruption="gaussian", severity=5, **common)
    first, again = extract_features(noisy), extract_features(noisy)
    assert torch.equal(first.feats, again.feats)  # seeded: the same noise each time
    assert not torch.allclose(first.feats, clean.feats)
    assert noisy.key() != FeatureSettings(split="test", **common).key()
    with pytest.raises(InvalidInputError, match="severity must be"):
        FeatureSettings(split="test", corruption="shot", severity=9, **common)

    out = tmp_path / "probe.json"
    assert (
        probe_main(
            [
                "--backbone",
                "tiny3d",
                "--data.root",
                str(tiny_synthetic),
                "--clip-len",
                "4",
                "--crop-size",
                "16",
                "--decode-size",
                "32",
                "--clips",
                "1",
                "--crops",
                "1",
                "--train-views",
                "1",
                "--steps",
                "5",
                "--cache-dir",
                "none",
                "--corruption",
                "impulse",
                "--severity",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "with impulse noise at severity 2; training clips clean" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert (record["test_features"]["corruption"], record["test_features"]["severity"]) == (
        "impulse",
        2,
    )
    assert record["train_features"]["corruption"] is None
