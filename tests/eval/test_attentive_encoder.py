"""Which encoder the attentive probe reads and with how many heads: V-JEPA's evaluation encoder
(``eval_encoder``: the context backbone, or the official target encoder after its final norm)
with values by hand on a constructed one-token model, and the pooler's head count taken from
the encoder (V-JEPA's ``num_heads=encoder.num_heads``) by ``vssl probe --head attentive``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

import vssl.eval.attentive as attentive
from vssl.eval import FeatureSettings
from vssl.eval.attentive import default_heads, encoder_heads
from vssl.eval.features import build_model, clip_tokens, load_task, save_task
from vssl.tasks import VJEPA
from vssl.tasks.base import VSSLTask

# A 4-d one-block ViT on 2x8x8 tubelets: a 2 x 8 x 8 clip is one token.
TINY = {
    "backbone": "vit_tiny_8",
    "backbone_kwargs": {"dim": 4, "depth": 1, "heads": 2},
    "predictor_dim": 4,
    "predictor_depth": 1,
    "online_probe": False,
}
S = math.sqrt(1 + 1e-6)  # LayerNorm's sqrt(var + eps) for tokens of variance 1


def _token_is_the_patch_bias(backbone: torch.nn.Module, bias: list[float]) -> None:
    """Zero the tubelet weights (a token is the bias plus its position) and the residual
    branches' output layers (the block is the identity)."""
    with torch.no_grad():
        backbone.trunk.patch_embed.weight.zero_()
        backbone.trunk.patch_embed.bias.copy_(torch.tensor(bias))
        for block in backbone.trunk.blocks:
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()


def _vjepa(eval_encoder: str) -> VJEPA:
    task = VJEPA(**TINY, eval_encoder=eval_encoder).eval()
    target = task.target_encoder.module
    # Position 0 of the 1-D sinusoids is [sin 0, cos 0, sin 0, cos 0] = [0, 1, 0, 1].
    _token_is_the_patch_bias(task.backbone, [1.0, 2.0, 3.0, 4.0])  # context token [1, 3, 3, 5]
    _token_is_the_patch_bias(target["backbone"], [1.0, 0.0, 3.0, 2.0])  # target token [1, 1, 3, 3]
    with torch.no_grad():
        target["norm"].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        target["norm"].bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0]))
        task.encoder_norm.weight.fill_(9.0)  # the online norm: read by neither encoder
    return task


CLIP = torch.zeros(1, 3, 2, 8, 8)
# Target: [1, 1, 3, 3] has mean 2 and variance 1, so LayerNorm gives [-1, -1, 1, 1] / S, then
# the target norm's gains [1, 2, 3, 4] and biases [0.5, 0, 0, 0].
TARGET_TOKEN = torch.tensor([[[0.5 - 1 / S, -2 / S, 3 / S, 4 / S]]])
# Context: the last block's token [1, 3, 3, 5] as it is, no norm.
CONTEXT_TOKEN = torch.tensor([[[1.0, 3.0, 3.0, 5.0]]])


def _layer_norm(x: Tensor) -> Tensor:  # fc_norm at its initial unit gains and zero biases
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-6)


def test_vjepa_target_evaluation_reads_the_target_encoder_after_its_norm():
    task = _vjepa("target")
    torch.testing.assert_close(task.evaluation_tokens(CLIP), TARGET_TOKEN)
    torch.testing.assert_close(clip_tokens(task, CLIP), TARGET_TOKEN)
    # Pooled: the target backbone's fc_norm of the mean token.
    torch.testing.assert_close(task.extract_features(CLIP), _layer_norm(TARGET_TOKEN[0, 0])[None])


def test_vjepa_context_evaluation_is_the_backbone_without_norm():
    task = _vjepa("context")
    torch.testing.assert_close(clip_tokens(task, CLIP), CONTEXT_TOKEN)
    map_tokens = task.backbone.forward_features(CLIP).flatten(2).transpose(1, 2)
    torch.testing.assert_close(clip_tokens(task, CLIP), map_tokens)
    # [1, 3, 3, 5]: mean 3, variance 2 -> [-2, 0, 0, 2] / sqrt(2 + eps).
    pooled = torch.tensor([[-2.0, 0.0, 0.0, 2.0]]) / math.sqrt(2 + 1e-6)
    torch.testing.assert_close(task.extract_features(CLIP), pooled)
    torch.testing.assert_close(task.extract_features(CLIP), task.backbone(CLIP))


def test_vjepa_eval_encoder_default_checkpoint_round_trip_and_bad_value(tmp_path):
    assert VJEPA(**TINY).eval_encoder == "context"  # the earlier behaviour stays the default
    with pytest.raises(ValueError, match="eval_encoder"):
        VJEPA(**TINY, eval_encoder="online")
    task = _vjepa("target")
    loaded = load_task(save_task(task, tmp_path / "vjepa.ckpt"))
    assert isinstance(loaded, VJEPA) and loaded.eval_encoder == "target"
    torch.testing.assert_close(clip_tokens(loaded, CLIP), TARGET_TOKEN)


def _backbone(name: str, **kwargs) -> VSSLTask:
    settings = FeatureSettings(root=".", split="train", backbone=name, backbone_kwargs=kwargs)
    return build_model(settings)


@pytest.mark.parametrize(
    ("name", "kwargs", "heads"),
    [
        ("vit_tiny_8", {"dim": 32, "depth": 1, "heads": 4}, 4),
        ("vit_tiny_8", {}, 2),  # 64-d with 2 heads: default_heads(64) would give 1
        ("vit_tiny_8_image", {"heads": 8}, 8),
        ("vit_tiny_8_convstem", {"heads": 4}, 4),
        ("swin3d_t", {}, 24),  # the last stage's heads, over its 768-d tokens
        ("tiny3d", {"width": 4}, None),  # a CNN's map: no heads of its own
    ],
)
def test_encoder_heads(name, kwargs, heads):
    assert encoder_heads(_backbone(name, **kwargs)) == heads


def _probe_args(root: Path, tmp_path: Path, *model: str) -> list[str]:
    return [
        "probe",
        *model,
        "--data.root",
        str(root),
        "--clip-len",
        "4",
        "--crop-size",
        "16",
        "--decode-size",
        "24",
        "--clips",
        "1",
        "--crops",
        "1",
        "--train-views",
        "1",
        "--head",
        "attentive",
        "--attentive-epochs",
        "1",
        "--fractions",
        "1.0",
        "--cache-dir",
        "none",
        "--out",
        "probe.json",
    ]


@pytest.mark.parametrize(
    ("model", "extra", "heads"),
    [
        (["--backbone", "vit_tiny_8", "--backbone-kwargs", '{"dim": 32, "heads": 4}'], [], 4),
        (["--backbone", "vit_tiny_8"], [], 2),
        (["--backbone", "vit_tiny_8"], ["--attentive-heads", "4"], 4),
        (["--backbone", "tiny3d", "--backbone-kwargs", '{"width": 4}'], [], default_heads(16)),
    ],
    ids=["vit-32d-4-heads", "vit-64d-2-heads", "option", "cnn"],
)
def test_probe_gives_the_pooler_the_encoders_heads(
    tiny_synthetic, tmp_path, run_cli, monkeypatch, model, extra, heads
):
    used = []
    train = attentive.train_attentive_probe

    def spy(*args, **kwargs):
        probe = train(*args, **kwargs)
        used.append(probe.pooler.cross_attention_block.xattn.heads)
        return probe

    monkeypatch.setattr(attentive, "train_attentive_probe", spy)
    run_cli(_probe_args(tiny_synthetic, tmp_path, *model) + extra, tmp_path)
    record = json.loads((tmp_path / "probe.json").read_text())
    assert used == [heads] and record["results"]["attentive_heads"] == heads
    assert record["probe"]["attentive_heads"] == (int(extra[1]) if extra else None)
