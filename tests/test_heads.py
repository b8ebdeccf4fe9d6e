"""vssl.heads: output shapes, values by hand on tiny heads with set weights, checkpoint keys, errors."""

import math

import pytest
import torch
from torch import nn

from vssl.heads import (
    ClassifierHead,
    PixelHead,
    PlaybackRateHead,
    ProjectionHead,
    RotationHead,
    RSPNetProjectionHead,
    StatisticsHead,
    VCOPHead,
)
from vssl.tasks import (
    CVRL,
    ClipOrder,
    PlaybackRate,
    Rotation,
    RSPNet,
    SpatioTemporalStatistics,
    Supervised,
    VideoMAE,
)

TINY = {"backbone": "tiny3d", "backbone_kwargs": {"width": 4}}
T = torch.tensor


def set_linear(layer: nn.Linear, weight: list, bias: list) -> None:
    with torch.no_grad():
        layer.weight.copy_(T(weight, dtype=torch.float32))
        layer.bias.copy_(T(bias, dtype=torch.float32))


# ------------------------------------------------------------------------------ projection (CVRL)
def test_projection_head_shapes_and_layers():
    head = ProjectionHead(5, hidden_dim=7, hidden_layers=2, out_dim=3)
    assert head(torch.randn(4, 5)).shape == (4, 3)
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == [
        (5, 7),
        (7, 7),
        (7, 3),
    ]
    assert [type(m) for m in ProjectionHead(5, hidden_layers=0, out_dim=3)] == [nn.Linear]
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert list(ProjectionHead(2, 2, 1, 1).state_dict()) == [
        "0.weight",
        "0.bias",
        *(f"1.{k}" for k in bn),
        "3.weight",
        "3.bias",
    ]


def test_projection_head_by_hand():
    # eval: batch norm uses its initial running statistics (mean 0, var 1, eps 1e-5)
    head = ProjectionHead(2, hidden_dim=2, hidden_layers=1, out_dim=1).eval()
    set_linear(head[0], [[1, -1], [2, 0]], [0, -1])
    set_linear(head[3], [[1, -2]], [0.5])
    # W1 x + b1 = [3 - 1, 6 - 1] = [2, 5]; BN divides by sqrt(1 + 1e-5); ReLU keeps both
    expected = (1 * 2 - 2 * 5) / math.sqrt(1 + 1e-5) + 0.5
    assert head(T([[3.0, 1.0]])).item() == pytest.approx(expected, rel=1e-6)
    # a negative pre-activation is cut by the ReLU: [-2, -1] -> 0, the output is the bias
    assert head(T([[-1.0, 1.0]])).item() == pytest.approx(0.5, rel=1e-6)


def test_projection_head_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"sizes must be positive .*hidden_layers >= 0 \(got -1\)"):
        ProjectionHead(4, hidden_layers=-1)
    with pytest.raises(ValueError, match="projection head sizes must be positive"):
        ProjectionHead(4, hidden_dim=0)


# ------------------------------------------------------------------------------ VCOP
@pytest.mark.parametrize(("tuple_len", "orders", "pairs"), [(2, 2, 1), (3, 6, 3), (4, 24, 6)])
def test_vcop_head_shapes(tuple_len, orders, pairs):
    head = VCOPHead(in_dim=5, tuple_len=tuple_len, hidden_dim=4)
    assert head(torch.randn(2, tuple_len, 5)).shape == (2, orders)
    assert len(head.pairs) == pairs and head.classifier.in_features == 4 * pairs
    assert list(head.state_dict()) == [
        "pair.weight",
        "pair.bias",
        "classifier.weight",
        "classifier.bias",
    ]


def test_vcop_head_by_hand():
    # two clips, 1-d features: one pair (0, 1), hidden ReLU(f0 - f1), logits [h, -h] + [0, 1]
    head = VCOPHead(in_dim=1, tuple_len=2, hidden_dim=1).eval()
    set_linear(head.pair, [[1, -1]], [0])
    set_linear(head.classifier, [[1], [-1]], [0, 1])
    assert head(T([[[5.0], [2.0]]])).tolist() == [[3.0, -2.0]]
    assert head(T([[[2.0], [5.0]]])).tolist() == [[0.0, 1.0]]  # ReLU(-3) = 0


def test_vcop_head_rejects_one_clip():
    with pytest.raises(ValueError, match=r"at least 2 clips per tuple \(got 1\)"):
        VCOPHead(4, tuple_len=1)


# ------------------------------------------------------------------------------ RSPNet
def test_rspnet_projection_is_linear_then_unit_length():
    head = RSPNetProjectionHead(2, 2)
    set_linear(head, [[3, 0], [0, 4]], [0, 0])
    out = head(T([[1.0, 1.0], [0.0, -2.0]]))
    torch.testing.assert_close(out, T([[0.6, 0.8], [0.0, -1.0]]))
    assert RSPNetProjectionHead(6, 8)(torch.randn(3, 6)).norm(dim=1).tolist() == pytest.approx(
        [1.0] * 3
    )
    assert isinstance(head, nn.Linear) and list(head.state_dict()) == ["weight", "bias"]


# ------------------------------------------------------------------------------ classifiers
def test_rate_and_rotation_heads_are_one_linear_per_class():
    rate = PlaybackRateHead(5, num_rates=4)
    set_linear(
        rate, [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0]], [0, 0, 0, 1]
    )
    assert rate(T([[1.0, 2.0, 3.0, 4.0, 5.0]])).tolist() == [[1.0, 2.0, 3.0, 5.0]]
    assert RotationHead(5)(torch.randn(7, 5)).shape == (7, 4)
    with pytest.raises(ValueError, match="at least 2 rates"):
        PlaybackRateHead(5, num_rates=1)
    with pytest.raises(ValueError, match="at least 2 rotations"):
        RotationHead(5, num_rotations=1)


def test_classifier_head_is_dropout_then_linear():
    head = ClassifierHead(3, num_classes=2, dropout=0.5).eval()
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear]
    set_linear(head[1], [[1, 1, 1], [1, -1, 0]], [0, 0.5])
    assert head(T([[1.0, 2.0, 3.0]])).tolist() == [[6.0, -0.5]]  # eval: dropout is the identity
    assert list(head.state_dict()) == ["1.weight", "1.bias"]


# ------------------------------------------------------------------------------ statistics
def test_statistics_classification_head_chunks_and_predictions():
    head = StatisticsHead(4, classes=(3, 2), kind="classification")
    assert head.out_features == 5 and head(torch.randn(6, 4)).shape == (6, 5)
    out = T([[0.5, 1.5, 0.25, 1.0, -1.0], [5.0, 0.0, 0.0, -1.0, 2.0]])
    assert [c.tolist() for c in head.chunks(out)] == [
        [[0.5, 1.5, 0.25], [5.0, 0.0, 0.0]],
        [[1.0, -1.0], [-1.0, 2.0]],
    ]
    assert head.predict(out).tolist() == [[2, 1], [1, 2]]  # 1-based labels
    assert list(head.state_dict()) == ["weight", "bias"]  # the classes buffer is not saved


def test_statistics_regression_head_by_hand():
    head = StatisticsHead(1, classes=(4, 8), kind="regression")
    assert head.out_features == 2
    set_linear(head, [[2], [-1]], [0.4, 10])
    out = head(T([[3.0], [0.0]]))
    torch.testing.assert_close(out, T([[6.4, 7.0], [0.4, 10.0]]))
    # rounded, then clamped into 1..classes: 6 -> 4, 7 stays; 0 -> 1, 10 -> 8
    assert head.predict(out).tolist() == [[4, 7], [1, 8]]
    with pytest.raises(ValueError, match="this one regresses"):
        head.chunks(out)


def test_statistics_head_rejects_bad_settings():
    with pytest.raises(
        ValueError, match="head must be 'classification' or 'regression', got 'mse'"
    ):
        StatisticsHead(4, (3,), kind="mse")
    with pytest.raises(ValueError, match="at least one label"):
        StatisticsHead(4, ())


# ------------------------------------------------------------------------------ VideoMAE
def test_pixel_head_predicts_every_value_of_a_tubelet():
    assert PixelHead(8, (2, 16, 16)).out_features == 3 * 2 * 16 * 16
    assert PixelHead(8, (1, 4, 4), channels=1)(torch.randn(2, 5, 8)).shape == (2, 5, 16)
    with pytest.raises(ValueError, match="pixel head sizes must be positive"):
        PixelHead(8, (0, 16, 16))


# ------------------------------------------------------------------------------ tasks
def test_tasks_use_the_heads_under_their_checkpoint_names():
    """The module names of the heads are checkpoint keys: these must not change."""
    cases = [
        (
            CVRL(**TINY, hidden_dim=8, projection_dim=4),
            ProjectionHead,
            ["head.0.weight", "head.9.bias"],
        ),
        (ClipOrder(**TINY, hidden_dim=8), VCOPHead, ["head.pair.weight", "head.classifier.bias"]),
        (PlaybackRate(**TINY), PlaybackRateHead, ["head.weight", "head.bias"]),
        (Rotation(**TINY), RotationHead, ["head.weight", "head.bias"]),
        (Supervised(**TINY, num_classes=3), ClassifierHead, ["head.1.weight", "head.1.bias"]),
    ]
    for task, cls, keys in cases:
        assert isinstance(task.head, cls)
        assert set(keys) <= set(task.state_dict()), type(task).__name__
    rsp = RSPNet(**TINY, proj_dim=8, queue_size=6)
    assert isinstance(rsp.speed_head, RSPNetProjectionHead)
    assert isinstance(rsp.momentum_encoder.module["appearance"], RSPNetProjectionHead)
    assert {
        "speed_head.weight",
        "appearance_head.bias",
        "momentum_encoder.module.speed.weight",
        "momentum_encoder.module.appearance.bias",
    } <= set(rsp.state_dict())
    stats = SpatioTemporalStatistics(**TINY, clip_len=4)
    assert all(isinstance(h, StatisticsHead) for h in stats.heads.values())
    assert {"heads.motion.weight", "heads.appearance.bias"} <= set(stats.state_dict())
    mae = VideoMAE(
        backbone="vit_tiny_8",
        backbone_kwargs={"dim": 32, "depth": 1, "heads": 2},
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
    )
    assert isinstance(mae.head, PixelHead) and {"head.weight", "head.bias"} <= set(mae.state_dict())


def test_old_import_paths_still_give_the_heads():
    from vssl.tasks.clip_order import VCOPHead as OldVCOP
    from vssl.tasks.cvrl import ProjectionHead as OldProjection

    assert OldProjection is ProjectionHead and OldVCOP is VCOPHead
