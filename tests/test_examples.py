"""The scripts in examples/ run as a user runs them, on the tiny synthetic dataset."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from vssl.backbones import registry as registry_module

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
        "--max_steps",
        str(steps),
        "--clip_len",
        "4",
        "--crop_size",
        "24",
        "--batch_size",
        "4",
        "--workers",
        "0",
    ]
    monkeypatch.setattr("sys.argv", argv)
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as `python examples/NAME` puts it first
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the backbone registry: custom_backbone.py registers its backbone once per run."""
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))


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


@pytest.mark.parametrize("name", ["train_from_python.py", "custom_backbone.py", "custom_task.py"])
def test_help_lists_the_settings_with_their_defaults(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr("sys.argv", [name, "--help"])
    monkeypatch.syspath_prepend(str(EXAMPLES))
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    first_line = (EXAMPLES / name).read_text().split("\n")[0].strip('"')
    assert re.sub(r"\s", "", first_line) in re.sub(r"\s", "", out)  # help wraps "built-in"
    for option, default in [("--max_steps", "200"), ("--clip_len", "8"), ("--workers", "2")]:
        assert re.search(rf"{option} .*\s+.*default: {default}\)", out), (option, out)
    assert not (tmp_path / "data").exists()  # --help writes no dataset


def test_bad_settings_are_refused_naming_the_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from _common import run_settings

    with pytest.raises(SystemExit):
        run_settings("An example.", ["--max_steps", "many"])
    assert 'Parser key "max_steps"' in capsys.readouterr().err
