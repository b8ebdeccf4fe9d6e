"""The attentive probe: the pooler against a hand computation, V-JEPA's initialisation, token
features of CNN and ViT backbones (and their cache), the multi-view average, and a probe that
finds the class in which token is active where a linear probe on mean-pooled features cannot."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from vssl.eval import Features, FeatureSettings, extract_features
from vssl.eval.attentive import (
    AttentiveClassifier,
    AttentivePooler,
    CrossAttention,
    attentive_probe,
    clip_tokens,
    default_heads,
    extract_tokens,
    multiview_scores,
    train_attentive_probe,
)
from vssl.eval.classifiers import probe_accuracy, train_linear_probe
from vssl.tasks.base import VSSLTask


def _identity_projections(attn: CrossAttention) -> None:
    d = attn.proj.weight.shape[0]
    with torch.no_grad():
        for lin in (attn.q, attn.kv, attn.proj):
            lin.bias.zero_()
        attn.q.weight.copy_(torch.eye(d))
        attn.kv.weight.copy_(torch.cat([torch.eye(d), torch.eye(d)]))
        attn.proj.weight.copy_(torch.eye(d))


def test_cross_attention_is_softmax_of_scaled_dot_products_times_values():
    attn = CrossAttention(dim=2, heads=1)
    _identity_projections(attn)
    q = torch.tensor([[[1.0, 2.0]]])
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    # q.k / sqrt(2) = 1/sqrt2, 2/sqrt2, 3/sqrt2; weights their softmax; output sum w_i v_i.
    e = [math.exp(s / math.sqrt(2)) for s in (1.0, 2.0, 3.0)]
    w = [v / sum(e) for v in e]
    expected = torch.tensor([[[w[0] + w[2], w[1] + w[2]]]])
    torch.testing.assert_close(attn(q, x), expected)


def test_pooler_block_norms_the_tokens_not_the_query_then_adds_the_mlp():
    clf = AttentiveClassifier(dim=2, num_classes=2, heads=1)
    pooler = clf.pooler
    block = pooler.cross_attention_block
    _identity_projections(block.xattn)
    with torch.no_grad():
        pooler.query_tokens.copy_(torch.tensor([[[3.0, 0.0]]]))
        block.mlp.fc1.weight.zero_()
        block.mlp.fc1.bias.zero_()
        block.mlp.fc1.weight[0, 0] = 1.0  # hidden 0 = normed channel 0
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
        block.mlp.fc2.weight[1, 0] = 1.0  # channel 1 += GELU(hidden 0)
        clf.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        clf.linear.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[[3.0, 1.0], [0.0, 2.0]]])
    # LayerNorm of a 2-vector [a, b]: +-(a - b) / 2 / sqrt(((a - b) / 2)^2 + eps).
    eps = 1e-5
    c = 1 / math.sqrt(1 + eps)
    k1, k2 = [c, -c], [-c, c]  # the tokens, normed (keys and values alike)
    s1, s2 = 3 * c / math.sqrt(2), -3 * c / math.sqrt(2)  # the query [3, 0] is not normed
    w1 = math.exp(s1) / (math.exp(s1) + math.exp(s2))
    w2 = 1 - w1
    q = [3 + w1 * k1[0] + w2 * k2[0], w1 * k1[1] + w2 * k2[1]]
    half = (q[0] - q[1]) / 2
    n0 = half / math.sqrt(half**2 + eps)
    gelu = 0.5 * n0 * (1 + math.erf(n0 / math.sqrt(2)))
    expected = torch.tensor([[[q[0], q[1] + gelu]]])
    torch.testing.assert_close(pooler(x), expected)
    torch.testing.assert_close(
        clf(x), torch.tensor([[q[0] + 0.5, q[1] + gelu - 0.5]]), rtol=1e-5, atol=1e-6
    )


def test_initialisation_and_rescaled_output_projections():
    torch.manual_seed(0)
    pooler = AttentivePooler(dim=256, heads=4, depth=3, queries=64)
    block = pooler.cross_attention_block

    def close(weight: Tensor, std: float) -> bool:
        return abs(float(weight.detach().std()) - std) < 0.03 * std

    assert close(pooler.query_tokens, 0.02) and pooler.query_tokens.shape == (1, 64, 256)
    assert close(block.xattn.q.weight, 0.02) and close(block.mlp.fc1.weight, 0.02)
    assert close(block.xattn.proj.weight, 0.02 / math.sqrt(2))
    assert close(block.mlp.fc2.weight, 0.02 / math.sqrt(2))
    for layer, extra in enumerate(pooler.blocks, start=2):
        assert close(extra.attn.proj.weight, 0.02 / math.sqrt(2 * layer))
        assert close(extra.mlp.fc2.weight, 0.02 / math.sqrt(2 * layer))
        assert extra.norm1.eps == 1e-5
    assert all(not b.any() for n, b in pooler.named_parameters() if "bias" in n)
    assert pooler(torch.randn(3, 7, 256)).shape == (3, 64, 256)
    assert [default_heads(d) for d in (384, 768, 1024, 64, 16, 100)] == [6, 12, 16, 1, 1, 1]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="divisible by the heads 3"):
        AttentivePooler(dim=16, heads=3)
    with pytest.raises(ValueError, match=r"expected tokens \(B, N, 16\), got \(2, 16\)"):
        AttentivePooler(dim=16)(torch.zeros(2, 16))


def _task(backbone: str, **kwargs) -> VSSLTask:
    torch.manual_seed(0)
    return VSSLTask(backbone=backbone, backbone_kwargs=kwargs, online_probe=False).eval()


@pytest.mark.parametrize(
    ("name", "kwargs", "grid", "channels"),
    [
        ("tiny3d", {"width": 4}, (2, 4, 4), 16),
        ("vit_tiny_8", {"dim": 32, "depth": 1}, (4, 4, 4), 32),
    ],
)
def test_tokens_of_cnn_and_vit_backbones(name, kwargs, grid, channels):
    task = _task(name, **kwargs)
    video = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8)
    tokens = clip_tokens(task, video)
    fmap = task.backbone.forward_features(task.augment(video))
    t, h, w = fmap.shape[2:]
    assert (t, h, w) == grid  # 8 frames x 32 px: tiny3d's strides, the ViT's 2 x 8 x 8 tubelets
    assert tokens.shape == (2, t * h * w, channels)
    torch.testing.assert_close(tokens[:, h * w + 2], fmap[:, :, 1, 0, 2])  # raster (t, h, w)
    pooled = task.extract_features(video)
    if name == "vit_tiny_8":  # the ViT's pooled features: fc_norm of the mean token
        torch.testing.assert_close(task.backbone.fc_norm(tokens.mean(dim=1)), pooled)
    else:
        torch.testing.assert_close(tokens.mean(dim=1), pooled)
    clf = AttentiveClassifier(channels, num_classes=5)
    assert clf(tokens).shape == (2, 5)


def _dataset(root: Path, video_factory) -> Path:
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        os.replace(video_factory(f"{cls}.mp4", num_frames=24), root / "train" / cls / "v.mp4")
    return root


def test_extract_tokens_keeps_the_views_of_extract_features_and_caches(tmp_path, video_factory):
    root = _dataset(tmp_path / "data", video_factory)
    common = {
        "root": str(root),
        "split": "train",
        "backbone": "tiny3d",
        "backbone_kwargs": {"width": 4},
        "clip_len": 4,
        "stride": 2,
        "crop_size": 24,
        "decode_size": 32,
    }
    test_s = FeatureSettings(**common, clips=2, crops=3)
    tokens = extract_tokens(test_s)
    assert tokens.feats.shape[:2] == (2, 6) and tokens.feats.shape[-1] == 16
    assert tokens.labels.tolist() == [0, 1] and tokens.classes == ["a", "b"]
    pooled = extract_features(test_s)
    torch.testing.assert_close(tokens.feats.mean(dim=2).mean(dim=1), pooled.feats)
    train_s = FeatureSettings(**common, random_views=3)
    views = extract_tokens(train_s)
    torch.testing.assert_close(views.feats.mean(dim=2), extract_features(train_s).feats)

    cache = tmp_path / "cache"
    cached = extract_tokens(test_s, cache_dir=cache)
    torch.testing.assert_close(cached.feats, tokens.feats, rtol=0, atol=0)
    files = list(cache.glob("tokens-*.pt"))
    assert [f.name for f in files] == [f"tokens-{test_s.key()}.pt"]
    stored = torch.load(files[0], weights_only=False)
    stored["features"]["feats"] = torch.full_like(stored["features"]["feats"], 7.0)
    torch.save(stored, files[0])
    assert extract_tokens(test_s, cache_dir=cache).feats.eq(7.0).all()  # read back, not redone
    half = extract_tokens(test_s, cache_dir=cache, dtype=torch.float16)  # another dtype: redone
    assert half.feats.dtype == torch.float16 and not half.feats.eq(7.0).any()
    torch.testing.assert_close(half.feats.float(), tokens.feats, rtol=1e-2, atol=1e-2)


class MeanLinear(nn.Module):
    """A stand-in probe: a fixed linear map of the mean token."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.mean(dim=1))


def test_multiview_scores_average_the_views():
    torch.manual_seed(0)
    probe = MeanLinear(4, 3)
    feats = torch.randn(2, 6, 5, 4)  # 2 videos, 3 clips x 2 crops, 5 tokens of 4 channels
    per_view = torch.stack([probe(feats[:, i]) for i in range(6)], dim=1)
    torch.testing.assert_close(
        multiview_scores(probe, feats, crops=2, average="logits"), per_view.mean(dim=1)
    )
    torch.testing.assert_close(
        multiview_scores(probe, feats, crops=2), per_view.softmax(dim=-1).mean(dim=1)
    )
    # Across clips: per crop, the tokens of clips 0, 1, 2 (views crop, crop + 2, crop + 4)
    # in one sequence; the probabilities averaged over the two crops.
    crops = [torch.cat([feats[:, 2 * k + j] for k in range(3)], dim=1) for j in range(2)]
    expected = torch.stack([probe(seq).softmax(dim=-1) for seq in crops], dim=1).mean(dim=1)
    across = multiview_scores(probe, feats, crops=2, attend_across_clips=True)
    torch.testing.assert_close(across, expected)
    with pytest.raises(ValueError, match="average must be one of"):
        multiview_scores(probe, feats, average="max")
    with pytest.raises(ValueError, match="whole number of clips x 4 crops"):
        multiview_scores(probe, feats, crops=4, attend_across_clips=True)


def _which_token(per_class: int, views: int, seed: int) -> Features:
    """4 classes; every token carries its position's code, and the class's token also an
    'active' code: the mean of the tokens is the same for every class, up to noise."""
    classes, tokens, channels = 4, 4, 16
    fixed = torch.Generator().manual_seed(123)
    position = torch.randn(tokens, channels, generator=fixed)
    active = torch.randn(channels, generator=fixed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = position.expand(len(labels), views, tokens, channels).clone()
    x[torch.arange(len(labels)), :, labels] += active
    x += 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    paths = [f"v{i}.mp4" for i in range(len(labels))]
    return Features(x, labels, paths, list("abcd"), {"crops": 1})


def test_attentive_probe_finds_the_active_token_where_mean_pooling_cannot():
    train, test = _which_token(25, 2, seed=0), _which_token(10, 2, seed=1)
    results = attentive_probe(train, test, fractions=[1.0, 0.2], epochs=10, lr=1e-2)
    assert results["train_videos"] == {"1.0": 100, "0.2": 20}
    assert results["attentive"]["1.0"] >= 0.95
    # A video's two views in one sequence: one training sample a video, one test sequence.
    across = attentive_probe(
        train, test, epochs=10, lr=1e-2, batch_size=16, attend_across_clips=True
    )
    assert across == {"attentive": {"1.0": pytest.approx(1.0)}, "train_videos": {"1.0": 100}}
    linear = train_linear_probe(
        train.feats.mean(dim=2).flatten(0, 1), train.labels.repeat_interleave(2), 4
    )
    assert probe_accuracy(linear, test.feats.mean(dim=(1, 2)), test.labels) <= 0.5


def test_attentive_probe_refuses_pooled_or_mismatched_features():
    train, test = _which_token(2, 1, 0), _which_token(2, 1, 1)
    pooled = Features(train.feats.mean(dim=2), train.labels, train.paths, train.classes, {})
    with pytest.raises(ValueError, match=r"training features must be tokens .* \(8, 1, 16\)"):
        attentive_probe(pooled, test)
    other = Features(test.feats, test.labels, test.paths, list("wxyz"), {})
    with pytest.raises(ValueError, match="different classes"):
        attentive_probe(train, other)
    with pytest.raises(ValueError, match=r"expected tokens \(S, N, C\) and labels \(S,\)"):
        train_attentive_probe(train.feats, train.labels, 4)


def test_training_recipe_schedules_and_decay_groups(monkeypatch):
    seen: list[list[tuple[float, float, int]]] = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append([(g["lr"], g["weight_decay"], len(g["params"])) for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    train = _which_token(2, 1, 0)  # 8 samples: 2 batches of 5 and 3 per epoch, 2 epochs
    probe = train_attentive_probe(
        train.feats.flatten(0, 1), train.labels, 4, epochs=2, batch_size=5, lr=0.1
    )
    # Stepped before each update (as V-JEPA's schedulers): step i of 4 at cos progress i / 4.
    for i, groups in enumerate(seen, start=1):
        cos = 0.5 * (1 + math.cos(math.pi * i / 4))
        assert groups[0][:2] == pytest.approx((0.1 * cos, 1e-6 + (0.01 - 1e-6) * cos))
        assert groups[1][:2] == pytest.approx((0.1 * cos, 0.0))
    assert len(seen) == 4
    # No decay on biases and norm gains (1-d), decay on weights and the query token (3-d).
    one_d = [n for n, p in probe.named_parameters() if p.ndim == 1]
    assert seen[0][1][2] == len(one_d) and seen[0][0][2] == len(list(probe.parameters())) - len(
        one_d
    )
    assert (
        "pooler.query_tokens" not in one_d and "pooler.cross_attention_block.norm1.weight" in one_d
    )
