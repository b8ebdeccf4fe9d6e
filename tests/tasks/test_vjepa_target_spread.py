"""benchmarks/vjepa_target_spread.py: how alike a V-JEPA target's tokens are within a clip."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location(
        "benchmark_vjepa_target_spread", REPO / "benchmarks" / "vjepa_target_spread.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_spread_by_hand():
    # Two clips of two 1-d tokens: [0, 2] and [4, 4]. Within-clip stds sqrt(2) and 0; clip means
    # 1 and 4 (std sqrt(4.5)); each token is 1, 1, 0, 0 from its clip's mean.
    features = torch.tensor([[[0.0], [2.0]], [[4.0], [4.0]]])
    within, across, l1 = _load().spread(features)
    assert within == pytest.approx(math.sqrt(2) / 2)
    assert across == pytest.approx(math.sqrt(4.5))
    assert l1 == pytest.approx(0.5)
