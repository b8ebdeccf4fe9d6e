"""The scripts in examples/ run as a user runs them, on the tiny synthetic dataset."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(
    name: str,
    root: Path,
    steps: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> str:
    """Runs ``examples/NAME`` as ``__main__`` with tiny sizes; returns what it printed."""
    argv = [
        name,
        "--root",
        str(root),
        "--max-steps",
        str(steps),
        "--clip-len",
        "4",
        "--crop-size",
        "24",
        "--batch-size",
        "4",
        "--workers",
        "0",
    ]
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_train_from_python(
    tiny_synthetic: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
) -> None:
    out = run_example("train_from_python.py", tiny_synthetic, 2, monkeypatch, capsys)
    # The validation loss before training and after: the figure that shows learning.
    match = re.search(r"trained 2 steps, val/loss (\d+\.\d+) before -> (\d+\.\d+) after", out)
    assert match, out
    assert all(0 < float(v) < 20 for v in match.groups())
    assert "features (4, 32), finite: True" in out  # tiny3d width 8: out_dim 32, val batch 4
    assert list((tmp_path / "runs" / "cvrl_from_python").rglob("metrics.csv"))


def test_custom_backbone(
    tiny_synthetic: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from vssl import backbones

    out = run_example("custom_backbone.py", tiny_synthetic, 2, monkeypatch, capsys)
    assert "separable_tiny" in backbones.available()
    assert "source='examples/custom_backbone.py'" in out
    match = re.search(
        r"separable_tiny: out_dim 16, 2 steps, val/loss (\d+\.\d+) -> (\d+\.\d+), "
        r"val/acc (\d\.\d\d) -> (\d\.\d\d) \(chance 0\.25\)",
        out,
    )
    assert match, out
    assert all(0.0 <= float(match.group(i)) <= 1.0 for i in (3, 4))


def test_custom_task(
    tiny_synthetic: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = run_example("custom_task.py", tiny_synthetic, 2, monkeypatch, capsys)
    match = re.search(
        r"arrow of time: 2 steps, train/loss (\d+\.\d+), val/acc (\d\.\d\d), val/probe_acc (\d\.\d\d)",
        out,
    )
    assert match, out
    assert all(0.0 <= float(match.group(i)) <= 1.0 for i in (2, 3))
