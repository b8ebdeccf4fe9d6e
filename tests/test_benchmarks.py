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
    assert all(r["clips"] == [4, 2] for r in rows.values())  # as asked, for every model
    md = (out / "results.md").read_text()
    gain = rows["PlaybackRate"]["probe"]["results"]["linear"]["1.0"] - rows["random init"]["probe"]["results"]["linear"]["1.0"]
    assert "| PlaybackRate | tiny3d | 4x2 | " in md and f"{100 * gain:+.1f} ± " in md
    assert "best pretext task: PlaybackRate" in md
    assert (out / "linear_probe.png").stat().st_size > 1000
    # the resolved configs of every run are kept
    cfg = (out / "configs" / "PlaybackRate.yaml").read_text()
    assert "tiny3d" in cfg and str(tiny_synthetic) in cfg


def _row(acc: float, clips: list[int], n: int = 200, **flags) -> dict:
    return {"probe": {"results": {"linear": {"1.0": acc}}, "num_test": n}, "backbone": "b",
            "clips": clips, **flags}


def test_linear_probe_gains_are_against_random_init_on_the_same_clips():
    bench = _load("linear_probe")
    rows = {"A": _row(0.50, [4, 2]), "B": _row(0.20, [16, 1]), "C": _row(0.14, [16, 1]),
            "random init 16x1": _row(0.125, [16, 1], random=True),
            "random init 4x2": _row(0.25, [4, 2], random=True)}
    assert bench.gain(rows, "A") == 0.25 and bench.gain(rows, "B") == 0.20 - 0.125
    assert bench.gain(rows, "random init 4x2") is None
    se = (0.2 * 0.8 / 200 + 0.125 * 0.875 / 200) ** 0.5
    assert abs(bench.gain_se(rows, "B") - se) < 1e-12  # 0.036: B's +7.5 is above 2 se
    verdict = bench.verdict(rows)
    assert verdict.startswith("best pretext task: A, +25.0 points")
    assert "more than 2 standard errors: A, B" in verdict and "within noise): C" in verdict
