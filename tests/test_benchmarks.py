"""The accuracy benchmark runs end to end on a tiny dataset (its figures need the full run)."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_probe_benchmark_writes_table_chart_and_verdict(tiny_synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bench = _load("linear_probe")
    out = tmp_path / "out"
    assert bench.main([
        "--configs", str(REPO / "configs/playback_rate/synthetic_tiny.yaml"),
        "--root", str(tiny_synthetic), "--out-dir", str(out), "--max-epochs", "1",
        "--backbone", "tiny3d", "--workers", "0", "--accelerator", "cpu", "--clip-len", "4",
        "--stride", "2", "--crop-size", "24", "--decode-size", "32", "--clips", "2",
        "--train-views", "1",
    ]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert list(rows) == ["PlaybackRate", "random init", "supervised"]
    assert {r["backbone"] for r in rows.values()} == {"tiny3d"}
    md = (out / "results.md").read_text()
    gain = rows["PlaybackRate"]["probe"]["results"]["linear"]["1.0"] - rows["random init"]["probe"]["results"]["linear"]["1.0"]
    assert "| PlaybackRate | tiny3d | " in md and f"{100 * gain:+.1f}" in md
    assert "best pretext task: PlaybackRate" in md
    assert (out / "linear_probe.png").stat().st_size > 1000
    # the resolved configs of every run are kept
    cfg = (out / "configs" / "PlaybackRate.yaml").read_text()
    assert "tiny3d" in cfg and str(tiny_synthetic) in cfg
