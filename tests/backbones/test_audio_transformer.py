"""The waveform transformer (VATT's audio network): patching, token counts, positions, errors."""

from __future__ import annotations

import pytest
import torch

from vssl.backbones.audio import WaveformTransformer
from vssl.backbones.registry import build_audio
from vssl.backbones.vit import sinusoid_position_embedding


def test_patches_are_consecutive_samples_channel_by_channel() -> None:
    model = WaveformTransformer(8, 1, 2, patch_size=4, in_channels=2, positions="sinusoid")
    wave = torch.arange(2 * 2 * 12, dtype=torch.float32).reshape(2, 2, 12)
    patches = model.patchify(wave)
    assert patches.shape == (2, 3, 8)
    # patch 1 of sample 0: samples 4..7 of channel 0, then samples 4..7 of channel 1
    torch.testing.assert_close(patches[0, 1], torch.tensor([4.0, 5, 6, 7, 16, 17, 18, 19]))
    torch.testing.assert_close(patches[1, 2], torch.tensor([32.0, 33, 34, 35, 44, 45, 46, 47]))
    assert model.forward_features(wave).shape == (2, 8, 3)
    assert model(wave).shape == (2, 8)


def test_vatt_audio_base_on_meta_has_1200_tokens_for_3_2_s_at_48_khz() -> None:
    with torch.device("meta"):
        model = build_audio("vatt_audio_base").eval()
    assert model.input_kind == "waveform" and model.out_dim == 768
    # 86,076,672 + the position LayerNorm's 2 x 768
    assert sum(p.numel() for p in model.parameters()) == 86_078_208
    assert model.num_tokens(153_600) == 1200
    wave = torch.empty(2, 1, 153_600, device="meta")
    assert model.embed(wave).shape == (2, 1200, 768)
    assert model(wave).shape == (2, 768)
    with pytest.raises(ValueError, match="153728 samples make 1201 tokens, more than the 1200"):
        model.num_tokens(153_728)


def test_positions_learnable_rows_or_the_sinusoid_table() -> None:
    torch.manual_seed(0)
    learnable = build_audio("vatt_audio_tiny", dim=16, depth=1, positions="learnable")
    wave = torch.randn(1, 1, 3 * 128)
    patches = learnable.patch_embed(learnable.patchify(wave))
    # VATT's TemporalEmbeddings: the rows pass a LayerNorm (unit at init) before they are added
    rows = learnable.pos_embed[:3]
    normed = (rows - rows.mean(1, keepdim=True)) / (rows.var(1, False, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(learnable.embed(wave), patches + normed)
    # the table is drawn from a normal of std dim ** -0.5 cut at two standard deviations
    table = learnable.pos_embed.detach()
    assert table.abs().max() <= 2 * 16**-0.5 and 0.15 < float(table.std()) < 0.25
    fixed = build_audio("vatt_audio_tiny", dim=16, depth=1)
    assert fixed.pos_embed is None
    patches = fixed.patch_embed(fixed.patchify(wave))
    torch.testing.assert_close(fixed.embed(wave), patches + sinusoid_position_embedding(3, 16))


def test_bad_waveforms_and_settings_are_refused() -> None:
    model = build_audio("vatt_audio_tiny", dim=16, depth=1)
    with pytest.raises(ValueError, match="1000 samples must be a positive multiple of the patch"):
        model(torch.zeros(1, 1, 1000))
    with pytest.raises(ValueError, match=r"expects waveforms shaped \(B, 1, N\)"):
        model(torch.zeros(1, 2, 256))
    with pytest.raises(ValueError, match="positions must be 'learnable' or 'sinusoid'"):
        WaveformTransformer(16, 1, 2, positions="rotary")


def test_tiny_waveform_transformer_trains() -> None:
    torch.manual_seed(0)
    model = build_audio("vatt_audio_tiny", dim=16, depth=1, positions="learnable")
    model(torch.randn(2, 1, 512)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
