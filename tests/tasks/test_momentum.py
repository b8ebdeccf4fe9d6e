"""The momentum (EMA) encoder: its update rule, its schedules and its checkpointed state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vssl.tasks.momentum import MomentumEncoder, momentum_at


def _online() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_update_moves_each_parameter_by_one_minus_m_and_copies_buffers():
    online = _online()
    target = MomentumEncoder(online, momentum=0.9)
    start = {n: p.clone() for n, p in target.module.named_parameters()}
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online.train()(torch.randn(4, 3))  # changes the batch-norm running statistics
    target.update(online)
    for name, p in target.module.named_parameters():
        expected = 0.9 * start[name] + 0.1 * dict(online.named_parameters())[name]
        torch.testing.assert_close(p, expected)
    torch.testing.assert_close(target.module[1].running_mean, online[1].running_mean)
    assert not any(p.requires_grad for p in target.parameters())


def test_first_update_averages_rather_than_copying():
    online = _online()
    target = MomentumEncoder(online, momentum=0.5)
    with torch.no_grad():
        online[0].bias.fill_(2.0)
    before = target.module[0].bias.clone()
    target.update(online)
    torch.testing.assert_close(target.module[0].bias, 0.5 * before + 1.0)


@pytest.mark.parametrize(
    ("schedule", "progress", "expected"),
    [
        ("constant", 0.7, 0.99),
        ("cosine", 0.0, 0.99),
        ("cosine", 0.5, 0.995),
        ("cosine", 1.0, 1.0),
        ("cosine", 0.25, 1.0 - 0.01 * (math.cos(math.pi / 4) + 1) / 2),
        ("linear", 0.25, 0.9925),
        ("linear", 2.0, 1.0),
    ],
)
def test_schedules(schedule, progress, expected):
    final = None if schedule == "constant" else 1.0
    assert momentum_at(progress, 0.99, final, schedule) == pytest.approx(expected)


def test_update_uses_the_scheduled_momentum():
    online = _online()
    target = MomentumEncoder(online, momentum=0.5, final_momentum=1.0, schedule="linear")
    with torch.no_grad():
        online[0].bias.add_(4.0)
    before = target.module[0].bias.clone()
    target.update(online, progress=0.5)  # m = 0.75
    assert target.momentum == pytest.approx(0.75)
    torch.testing.assert_close(target.module[0].bias, 0.75 * before + 0.25 * online[0].bias)
    target.update(online, progress=1.0)  # m = 1: the target stands still
    torch.testing.assert_close(target.module[0].bias, 0.75 * before + 0.25 * online[0].bias)


def test_state_dict_keys_are_the_averaged_models_and_round_trip():
    online = _online()
    target = MomentumEncoder(online, momentum=0.9)
    keys = set(target.state_dict())
    assert keys == {f"module.{k}" for k in online.state_dict()} | {"n_averaged"}
    with torch.no_grad():
        target.module[0].weight.fill_(3.0)
    again = MomentumEncoder(_online(), momentum=0.9)
    again.load_state_dict(target.state_dict())
    torch.testing.assert_close(again.module[0].weight, torch.full((2, 3), 3.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"momentum": 1.5}, "momentum must be in"),
        ({"schedule": "cosine"}, "needs final_momentum"),
        ({"schedule": "step"}, "schedule must be one of"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MomentumEncoder(_online(), **kwargs)
