"""VATT: DropToken, the waveform noise, the video-audio NCE against a hand computation, the
projection heads, a few steps that lower the loss, and the paper config on the meta device."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from vssl.tasks import VATT
from vssl.tasks.vatt import (
    VideoAudioProjection,
    drop_tokens,
    kept_tokens,
    video_audio_nce,
    waveform_noise,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "vatt"

TINY = {
    "backbone": "vit_tiny_8",
    "backbone_kwargs": {"dim": 16, "depth": 1, "heads": 2},
    "audio_backbone": "vatt_audio_tiny",
    "audio_backbone_kwargs": {"dim": 16, "depth": 1, "heads": 2},
    "proj_dim": 8,
    "proj_hidden": 8,
    "audio_seconds": 0.064,  # 512 samples: 4 waveform tokens
    "sample_rate": 8000,
}


def test_drop_tokens_keeps_the_stated_fraction_in_order() -> None:
    assert kept_tokens(1568, 0.5) == 784 and kept_tokens(1200, 0.5) == 600
    assert kept_tokens(10, 0.25) == 8 and kept_tokens(3, 0.9) == 1
    tokens = torch.arange(3 * 10, dtype=torch.float32).reshape(3, 10, 1).expand(3, 10, 2)
    for per_sample in (False, True):
        kept = drop_tokens(tokens, 0.5, torch.Generator().manual_seed(0), per_sample)
        assert kept.shape == (3, 5, 2)
        for row, source in zip(kept[..., 0], tokens[..., 0], strict=True):
            assert set(row.tolist()) <= set(source.tolist())
            assert row.tolist() == sorted(set(row.tolist()))  # distinct, in their order
        positions = kept[..., 0] - tokens[:, :1, 0]  # the kept token indices of each sample
        # the official code keeps one subset for the batch; per_sample draws one per sample
        assert torch.equal(positions[0], positions[1]) is not per_sample
    assert drop_tokens(tokens, 0.0) is tokens
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\)"):
        kept_tokens(10, 1.0)


def test_video_audio_nce_by_hand() -> None:
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # unit rows after normalising: e1, e2
    a = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # (0.6, 0.8) and e2
    t = 0.5
    # similarities v_i . a_j: [[0.6, 0], [0.8, 1]], over t: [[1.2, 0], [1.6, 2]]
    # clip 0: its audio candidates (1.2, 0) and its audio's clip candidates (1.2, 1.6)
    clip0 = -math.log(math.exp(1.2) / (math.exp(1.2) + 1 + math.exp(1.2) + math.exp(1.6)))
    # clip 1: audio candidates (1.6, 2), clip candidates (0, 2)
    clip1 = -math.log(math.exp(2) / (math.exp(1.6) + math.exp(2) + 1 + math.exp(2)))
    loss = video_audio_nce(v, a, t)
    assert abs(float(loss) - (clip0 + clip1) / 2) < 1e-6
    # a global batch: this process's rows are rows 2 and 3 of the gathered ones (the other
    # process's unit embeddings first)
    others = torch.tensor([[0.6, -0.8], [-1.0, 0.0]])
    gathered = video_audio_nce(v, a, t, gather=lambda x: torch.cat([others, x]), rank=1)
    keys_a = torch.cat([others, a / a.norm(dim=1, keepdim=True)])
    keys_v = torch.cat([others, v / v.norm(dim=1, keepdim=True)])
    scores_v = (v / v.norm(dim=1, keepdim=True)) @ keys_a.T / t
    scores_a = (a / a.norm(dim=1, keepdim=True)) @ keys_v.T / t
    rows = torch.log_softmax(torch.cat([scores_v, scores_a], dim=1), dim=1)
    torch.testing.assert_close(gathered, -rows[[0, 1], [2, 3]].mean())
    with pytest.raises(ValueError, match="embeddings of one shape"):
        video_audio_nce(v, a[:1])


def test_waveform_noise_is_scaled_by_each_waveforms_peak() -> None:
    wave = torch.tensor([[[0.5, -2.0, 1.0]], [[0.1, 0.0, -0.05]]])
    noisy = waveform_noise(wave, 0.01, torch.Generator().manual_seed(3))
    expected = torch.randn(wave.shape, generator=torch.Generator().manual_seed(3))
    expected = expected * 0.01 * torch.tensor([2.0, 0.1])[:, None, None]
    torch.testing.assert_close(noisy - wave, expected)
    assert waveform_noise(wave, 0.0) is wave
    with pytest.raises(ValueError, match="noise factor must be non-negative"):
        waveform_noise(wave, -0.1)


def test_projection_heads_as_the_official_fac_head() -> None:
    head = VideoAudioProjection(16, 12, dim=8, hidden=6)
    names = [type(m).__name__ for m in head.video]
    assert names == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert head.video[0].bias is None and head.video[3].bias is None  # batch norm follows
    assert isinstance(head.audio, torch.nn.Linear) and head.audio.bias is not None
    assert head.video[0].out_features == 6 and head.audio.in_features == 12


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"video": torch.randn(n, 3, 4, 16, 16), "audio": torch.randn(n, 1, 512)}


def test_droptoken_in_training_only() -> None:
    torch.manual_seed(0)
    task = VATT(**TINY)
    seen: list[tuple[int, ...]] = []
    for backbone in (task.backbone.trunk, task.audio_backbone):
        backbone.blocks[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    batch = _batch()
    task.step(batch, "train")
    # video: 2 x 2 x 2 = 8 tubelets, 4 kept; audio: 4 patches, 2 kept
    assert seen == [(4, 4, 16), (4, 2, 16)]
    seen.clear()
    task.eval()
    out = task.step(batch, "val")
    assert seen == [(4, 8, 16), (4, 4, 16)]
    assert set(out.logs) == {"xmodal_acc"} and out.features.shape == (4, 16)
    seen.clear()
    keep_all = VATT(**{**TINY, "drop_rate": 0.0})
    keep_all.backbone.trunk.blocks[0].register_forward_hook(
        lambda m, i, o: seen.append(tuple(i[0].shape))
    )
    keep_all.step(batch, "train")
    assert seen == [(4, 8, 16)]


def test_waveform_noise_in_training_only() -> None:
    seen: list[torch.Tensor] = []
    batch = _batch()
    clean = batch["audio"].reshape(4, 4, 128)  # the 4 patches of each waveform
    for noise, stage, noisy in ((0.01, "train", True), (0.01, "val", False), (0.0, "train", False)):
        torch.manual_seed(0)
        task = VATT(**{**TINY, "audio_noise": noise})
        task.audio_backbone.patch_embed.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
        task.train(stage == "train")
        task.step(batch, stage)
        change = (seen.pop() - clean).abs().max()
        peak = batch["audio"].abs().amax(dim=(1, 2)).max()
        assert (0 < change < 0.1 * peak) if noisy else change == 0, (noise, stage)


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    task = VATT(**TINY)
    batch = _batch(8)
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = task.step(batch, "train").loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="not a multiple of the audio backbone's patch size 128"):
        VATT(**{**TINY, "audio_seconds": 0.1})
    with pytest.raises(ValueError, match="VATT needs a video transformer backbone"):
        VATT(**{**TINY, "backbone": "tiny3d", "backbone_kwargs": {"width": 4}})
    with pytest.raises(ValueError, match="VATT needs a waveform transformer audio backbone"):
        VATT(**{**TINY, "audio_backbone": "audio_tiny", "audio_backbone_kwargs": None})
    with pytest.raises(ValueError, match="drop_rate"):
        VATT(**{**TINY, "drop_rate": 1.5})
    with pytest.raises(ValueError, match="audio_noise must be non-negative"):
        VATT(**{**TINY, "audio_noise": -1.0})


def test_paper_config_builds_on_meta() -> None:
    cfg = yaml.safe_load((CONFIGS / "vit_b_16_k400.yaml").read_text())
    assert cfg["model"]["class_path"] == "vssl.tasks.VATT"
    data = cfg["data"]["init_args"]
    with torch.device("meta"):
        task = VATT(**cfg["model"]["init_args"]).eval()
    assert task.backbone.tubelet == (4, 16, 16) and task.backbone.out_dim == 768
    assert task.audio_backbone.out_dim == 768 and task.head.video[-2].out_features == 512
    assert (task.drop_rate, task.temperature) == (0.5, 0.07)
    # the official schedule: 5k warm-up steps of 500k (1%), Adam at 1e-4 without weight decay,
    # a half cosine to 5e-5; noise of 0.01 x the peak; one DropToken subset per batch
    hp = task.hparams
    assert hp.warmup_epochs / cfg["trainer"]["max_epochs"] == 0.01
    assert (hp.optimizer, hp.lr, hp.weight_decay, hp.min_lr_ratio) == ("adam", 1e-4, 0.0, 0.5)
    assert (task.audio_noise, task.drop_per_sample) == (0.01, False)
    assert cfg["trainer"]["sync_batchnorm"] is True
    crop = data["crop_size"]
    video = torch.empty(2, 3, data["clip_len"], crop, crop, device="meta")
    audio = torch.empty(2, 1, round(task.audio_seconds * task.sample_rate), device="meta")
    assert task.backbone.embed(video).shape == (2, 1568, 768)
    assert task.audio_backbone.embed(audio).shape == (2, 1200, 768)
    features, v, a = task.embed(video, audio)
    assert features.shape == (2, 768) and v.shape == a.shape == (2, 512)
