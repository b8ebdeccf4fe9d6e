"""benchmarks/videomae_target.py: the predictors that bound what VideoMAE's loss can reach."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "benchmark_videomae_target", REPO / "benchmarks" / "videomae_target.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_temporal_copy_uses_the_least_squares_multiple(bench):
    # Time step 1 is twice time step 0 at every position: a = 2 explains it exactly.
    first = torch.randn(2, 1, 2, 2, 6)
    assert bench.temporal_copy_loss(torch.cat([first, 2 * first], dim=1)) == pytest.approx(0.0)
    # Orthogonal steps, [1, 0] then [0, 1]: a = 0 and the loss is the mean square, 1/2.
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 1, 2)
    assert bench.temporal_copy_loss(target) == pytest.approx(0.5)


def test_ridge_recovers_a_target_made_linearly_from_the_neighbours(bench):
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(40, 3, 4, 4, 5, generator=g)
    # The target of (i, j) is the left neighbour's pixels minus the one below, plus 1.
    target = pixels.roll(1, dims=3) - pixels.roll(-1, dims=2) + 1
    assert bench.neighbour_ridge_loss(pixels, target, lam=1e-6) < 1e-8
    # A target unrelated to the pixels keeps (nearly) all of its variance.
    noise = torch.randn(40, 3, 4, 4, 5, generator=g)
    assert bench.neighbour_ridge_loss(pixels, noise, lam=1.0) > 0.9


def test_flat_fractions_count_tubelet_channels_by_pixel_std(bench):
    clip = torch.full((1, 3, 2, 8, 16), 128.0)  # two 2x8x8 tubelets side by side
    clip[0, 0, :, :, 8:] += torch.tensor([-3.0, 3.0]).repeat(64).view(2, 8, 8)  # red: std 3.01
    clip[0, 1, :, :, 8:] += torch.linspace(-50, 50, 128).view(2, 8, 8)  # green: far from flat
    # Six tubelet channels: the 3 of tubelet 0 and the blue of tubelet 1 are constant.
    assert bench.flat_fractions(clip, (2, 8, 8)) == pytest.approx((4 / 6, 5 / 6))
