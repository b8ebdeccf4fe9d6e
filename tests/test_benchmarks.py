"""The accuracy benchmark runs end to end on a tiny dataset (its figures need the full run)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_linear_probe_benchmark_writes_table_chart_and_verdict(
    tiny_synthetic, tmp_path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bench = _load("linear_probe")
    out = tmp_path / "out"
    assert (
        bench.main(
            [
                "--configs",
                str(REPO / "configs/playback_rate/synthetic_tiny.yaml"),
                "--root",
                str(tiny_synthetic),
                "--out-dir",
                str(out),
                "--max-epochs",
                "1",
                "--backbone",
                "tiny3d",
                "--workers",
                "0",
                "--accelerator",
                "cpu",
                "--clip-len",
                "4",
                "--stride",
                "2",
                "--crop-size",
                "24",
                "--decode-size",
                "32",
                "--clips",
                "2",
                "--train-views",
                "1",
            ]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())
    assert list(rows) == ["PlaybackRate", "random init", "supervised"]
    assert {r["backbone"] for r in rows.values()} == {"tiny3d"}
    # the shared clips (4x2, as asked) for every model, and the pretraining clips where they
    # differ: PlaybackRate's config pretrains on 4x1, the supervised reference on 16x1
    assert rows["PlaybackRate"]["clips"] == [4, 1] and rows["supervised"]["clips"] == [16, 1]
    assert set(rows["PlaybackRate"]["results"]) == {"4x2", "4x1"}
    assert set(rows["random init"]["results"]) == {"4x2", "4x1", "16x1"}
    assert set(rows["supervised"]["results"]) == {"4x2", "16x1"}
    assert rows["PlaybackRate"]["results"]["4x1"]["probe"]["test_features"]["stride"] == 1
    md = (out / "results.md").read_text()
    lin = {
        k: v["probe"]["results"]["linear"]["1.0"]
        for k, v in rows["PlaybackRate"]["results"].items()
    }
    base = {
        k: v["probe"]["results"]["linear"]["1.0"] for k, v in rows["random init"]["results"].items()
    }
    assert (
        f"| PlaybackRate | tiny3d | 4x1 | {100 * lin['4x2']:.1f} | {100 * (lin['4x2'] - base['4x2']):+.1f} ± "
        in md
    )
    assert f"| {100 * lin['4x1']:.1f} | {100 * (lin['4x1'] - base['4x1']):+.1f} ± " in md
    assert "on 4x2 clips: best pretext task PlaybackRate" in md
    assert "on each model's pretraining clips: best pretext task PlaybackRate" in md
    assert (out / "linear_probe.png").stat().st_size > 1000
    # the resolved configs of every run are kept
    cfg = (out / "configs" / "PlaybackRate.yaml").read_text()
    assert "tiny3d" in cfg and str(tiny_synthetic) in cfg


def _row(accs: dict[str, float], clips: list[int] | None = None, n: int = 200, **flags) -> dict:
    return {
        "results": {
            k: {"probe": {"results": {"linear": {"1.0": a}}, "num_test": n}}
            for k, a in accs.items()
        },
        "backbone": "b",
        "clips": clips,
        **flags,
    }


def test_linear_probe_gains_are_against_random_init_on_the_same_clips():
    bench = _load("linear_probe")
    rows = {
        "A": _row({"16x1": 0.13, "4x2": 0.50}, [4, 2]),
        "B": _row({"16x1": 0.20}, [16, 1]),
        "C": _row({"16x1": 0.14}, [16, 1]),
        "random init": _row({"16x1": 0.125, "4x2": 0.25}, random=True),
    }
    assert bench.gain(rows, "A", "4x2") == 0.25 and bench.gain(rows, "B", "16x1") == 0.20 - 0.125
    assert bench.gain(rows, "B", "4x2") is None and bench.gain(rows, "random init", "16x1") is None
    se = (0.2 * 0.8 / 200 + 0.125 * 0.875 / 200) ** 0.5
    assert abs(bench.gain_se(rows, "B", "16x1") - se) < 1e-12  # 0.036: B's +7.5 is above 2 se
    shared, own = bench.verdict(rows, "16x1").split("\n\n")
    assert shared.startswith("on 16x1 clips: best pretext task B, +7.5 points")
    assert "more than 2 standard errors: B;" in shared and "within noise): A, C" in shared
    assert own.startswith("on each model's pretraining clips: best pretext task A, +25.0 points")
    assert own.endswith(
        "above random init by more than 2 standard errors: A, B; above by less (within noise): C"
    )


def test_linear_probe_overrides_set_dotted_keys_as_yaml():
    bench = _load("linear_probe")
    cfg = {"model": {"init_args": {"head": "classification"}}, "seed_everything": 0}
    bench.apply_overrides(
        cfg,
        [
            "model.init_args.head=regression",
            "seed_everything=1",
            "data.init_args.crop_scale=[0.5, 1.0]",
        ],
    )
    assert cfg == {
        "model": {"init_args": {"head": "regression"}},
        "seed_everything": 1,
        "data": {"init_args": {"crop_scale": [0.5, 1.0]}},
    }
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        bench.apply_overrides(cfg, ["seed_everything"])


def test_train_step_median_pair_gives_one_repeats_times_and_the_spread():
    bench = _load("train_step")
    pair = bench.median_pair([0.11, 0.20, 0.13], [0.10, 0.10, 0.10])
    assert pair.repeat == 2 and (pair.vssl_s, pair.plain_s) == (0.13, 0.10)
    assert pair.ratio == 0.13 / 0.10 and (pair.ratio_min, pair.ratio_max) == (0.11 / 0.10, 2.0)
    assert abs(pair.extra_s - 0.03) < 1e-12
    # an even count takes the lower median, a ratio that one repeat really had
    even = bench.median_pair([0.22, 0.20, 0.26, 0.12], [0.20, 0.10, 0.20, 0.10])
    assert even.repeat == 3 and even.ratio == 0.12 / 0.10
    assert (even.ratio_min, even.ratio_max) == (0.22 / 0.20, 2.0)
    with pytest.raises(ValueError, match="need one plain time per vssl time"):
        bench.median_pair([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="times must be positive"):
        bench.median_pair([0.1], [0.0])
    assert [bench.side_order(r) for r in range(3)] == [
        ("vssl", "plain"),
        ("plain", "vssl"),
        ("vssl", "plain"),
    ]


def test_train_step_columns_agree_with_each_other(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bench = _load("train_step")
    assert (
        bench.main(
            [
                "--tasks",
                "Rotation",
                "--backbone",
                "tiny3d",
                "--width",
                "4",
                "--frames",
                "4",
                "--size",
                "32",
                "--batch",
                "2",
                "--batches",
                "1",
                "--warmup",
                "1",
                "--steps",
                "2",
                "--repeats",
                "2",
                "--data",
                str(tmp_path / "synthetic"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| Rotation |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    vssl, plain, extra = float(cells[5]), float(cells[6]), float(cells[8])
    ratio, spread = cells[7].split(" ")
    low, high = (float(x) for x in spread.strip("[]").split("-"))
    assert low <= float(ratio) <= high
    assert abs(float(ratio) - plain / vssl) < 2e-3 * float(ratio) + 1e-3
    clips = 2 * int(cells[4])
    # clips/s are printed to 0.05 and extra ms to 0.05: what that rounding can move the difference
    rounding = 0.05 + 1e3 * clips * 0.05 * (1 / vssl**2 + 1 / plain**2)
    assert abs(extra - 1e3 * (clips / vssl - clips / plain)) <= rounding * 1.01


def test_index_memory_measures_both_layouts_on_the_same_data(tmp_path, capsys):
    pytest.importorskip("psutil")
    bench = _load("index_memory")
    out = tmp_path / "memory.json"
    assert (
        bench.main(
            [
                "--entries",
                "3000",
                "--workers",
                "2",
                "--epochs",
                "2",
                "--batch",
                "128",
                "--real",
                "2",
                "--real-frames",
                "12",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    before, after = result["before"], result["after"]
    assert len(before["uss"]) == len(after["uss"]) == 2 and min(after["uss"]) > 0
    assert before["sums"] == after["sums"] and len(after["sums"]) == 2
    assert before["sums"][0] == before["sums"][1]  # every epoch reads every entry once
    # Arrays, not objects: about 120 bytes an entry against about 740 (interned-string table
    # resizes add megabytes to either "held" figure at this size, so compare per entry).
    assert 0 < after["table_bytes"] / 3000 < 200 and before["held"] / 3000 > 500
    assert result["index"]["videos"] == 2 and result["index"]["probe"] > 0
    printed = capsys.readouterr().out
    assert "3,000 entries, 2 DataLoader workers" in printed
    assert "| after: VideoTable |" in printed and "per 1,000 videos probed" in printed
