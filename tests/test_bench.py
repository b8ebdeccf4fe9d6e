"""``vssl bench``: a 2-cell grid end to end, resuming, collecting, and grid mistakes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from vssl.bench import Grid, best_gains, main, markdown, versus_random

REPO = Path(__file__).resolve().parent.parent


def write_grid(tmp_path: Path, data: Path, **changes) -> Path:
    grid = {
        "out": str(tmp_path / "out"),
        "seeds": [0],
        "methods": {
            "supervised": {"config": str(REPO / "configs" / "quickstart.yaml")},
            "random": {},
        },
        "backbones": ["tiny3d"],
        "pretrain_data": {
            "motion": {
                "root": str(data),
                "synthetic": None,
                "clip_len": 4,
                "crop_size": 16,
                "decode_size": 32,
                "num_workers": 0,
                "batch_size": 4,
            }
        },
        "trainer": {"max_epochs": 1, "enable_progress_bar": False},
        "evaluate": {
            "data": {"motion": {"root": str(data), "layout": "folder"}},
            "settings": {
                "clip_len": 4,
                "crop_size": 16,
                "decode_size": 32,
                "clips": 2,
                "crops": 1,
                "cache_dir": "none",
            },
            "protocols": {"probe": {"steps": 10, "train_views": 1, "fractions": [1.0]}},
            "corruptions": ["clean", "gaussian-5"],
        },
        **changes,
    }
    file = tmp_path / "grid.yaml"
    file.write_text(yaml.safe_dump(grid, sort_keys=False))
    return file


def test_a_two_cell_grid_end_to_end_then_skipped_and_collected(tiny_synthetic, tmp_path, capsys):
    grid = write_grid(tmp_path, tiny_synthetic)
    assert main([str(grid), "--list"]) == 0
    assert capsys.readouterr().out.split() == [
        "0",
        "supervised-tiny3d-motion-s0",
        "1",
        "random-tiny3d-s0",
    ]
    assert main([str(grid)]) == 0
    out = tmp_path / "out"
    trained = out / "cells" / "supervised-tiny3d-motion-s0"
    # an ordinary run folder: its config, its checkpoints, its metrics
    assert (trained / "fit" / "config.yaml").is_file()
    assert (trained / "fit" / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((trained / "fit" / "config.yaml").read_text())["seed_everything"] == 0
    commands = (trained / "commands.sh").read_text().splitlines()
    assert commands[2].startswith("python -m vssl fit --config ")
    assert commands[3].startswith("python -m vssl probe --ckpt ")
    probe = json.loads((trained / "eval" / "motion.clean.probe.json").read_text())
    assert probe["protocol"] == "probe" and probe["num_test"] == 4
    random = out / "cells" / "random-tiny3d-s0"
    assert not (random / "fit").exists()
    assert "--backbone tiny3d" in (random / "commands.sh").read_text()
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["cell"], r["corruption"]) for r in results["evaluations"]) == [
        ("random-tiny3d-s0", "clean"),
        ("random-tiny3d-s0", "gaussian-5"),
        ("supervised-tiny3d-motion-s0", "clean"),
        ("supervised-tiny3d-motion-s0", "gaussian-5"),
    ]
    table = (out / "results.md").read_text()
    assert "| supervised | tiny3d | motion | all | motion | clean | 1 |" in table
    assert "| random | tiny3d | - | all | motion | clean | 1 |" in table
    assert "| random | tiny3d | - | all | motion | gaussian-5 | 1 |" in table
    noisy = json.loads((random / "eval" / "motion.gaussian-5.probe.json").read_text())
    assert noisy["test_features"]["corruption"] == "gaussian"
    assert "--corruption gaussian --severity 5" in (random / "commands.sh").read_text()
    assert (out / "accuracy.png").stat().st_size > 1000
    assert (out / "corruptions.png").stat().st_size > 1000
    first = (out / "results.json").read_bytes()
    capsys.readouterr()
    # A second run finds everything done; --collect writes the same results.
    assert main([str(grid)]) == 0
    assert "pretraining" not in capsys.readouterr().out
    assert (out / "results.json").read_bytes() == first
    assert main([str(grid), "--collect"]) == 0
    assert (out / "results.json").read_bytes() == first
    # An interrupted pretraining (no fit.done yet) continues from its last.ckpt.
    (trained / "fit.done").unlink()
    (trained / "eval" / "motion.clean.probe.json").unlink()
    capsys.readouterr()
    assert main([str(grid), "--cell", "0"]) == 0
    assert "pretraining (resuming from last.ckpt)" in capsys.readouterr().out
    assert "--ckpt_path" not in (trained / "commands.sh").read_text()
    assert (trained / "fit" / "config.before_resume_1.yaml").is_file()
    assert (trained / "fit" / "config.yaml").is_file()
    assert (trained / "eval" / "motion.clean.probe.json").is_file()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"seed": [0]}, "unknown key 'seed' (did you mean 'seeds'?)"),
        ({"methods": {"x": {"config": "nope.yaml"}}}, "methods.x: config nope.yaml not found"),
        ({"methods": {"x": {"confg": "a.yaml"}}}, "unknown key 'confg' (did you mean 'config'?)"),
        (
            {"evaluate": {"data": {"m": {"root": "d"}}, "corruptions": ["gaussian-7"]}},
            "'gaussian-7' is not 'clean' or NAME-SEVERITY",
        ),
        (
            {"evaluate": {"data": {"m": {"root": "d"}}, "protocols": {"prob": {}}}},
            "unknown protocol 'prob' (did you mean 'probe'?)",
        ),
        ({"backbones": None, "methods": {"random": {}}}, "the grid must name its backbones"),
        (
            {"methods": {"random": {"evaluate": {"m4": {"clip_len": 4}}}}},
            "methods.random.evaluate.m4 needs a root",
        ),
    ],
)
def test_grid_mistakes_are_one_line_naming_the_file(tmp_path, capsys, change, message):
    grid = write_grid(tmp_path, tmp_path / "data", **change)
    assert main([str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vssl bench: error: ") and str(grid) in err and message in err
    assert "Traceback" not in err


def test_cells_vary_over_subsets_and_seeds_but_not_for_random_init(tmp_path):
    grid = Grid.load(write_grid(tmp_path, tmp_path / "data", seeds=[0, 1], subsets=[0.5, 1.0]))
    names = [c.name for c in grid.cells]
    assert names == [
        "supervised-tiny3d-motion-subset0.5-s0",
        "supervised-tiny3d-motion-subset0.5-s1",
        "supervised-tiny3d-motion-subset1.0-s0",
        "supervised-tiny3d-motion-subset1.0-s1",
        "random-tiny3d-s0",
        "random-tiny3d-s1",
    ]
    override = grid.fit_override(grid.cells[1])
    assert override["seed_everything"] == 1
    assert override["data"]["init_args"]["subset"] == 0.5
    assert override["model"]["init_args"]["backbone"] == "tiny3d"
    assert override["trainer"]["logger"]["init_args"]["version"] == "fit"


@pytest.mark.parametrize("file", sorted((REPO / "configs" / "bench").glob("*.yaml")), ids=str)
def test_shipped_grids_load(file, monkeypatch):
    monkeypatch.chdir(REPO)  # their config paths are relative to the repository
    grid = Grid.load(file)
    assert grid.cells and all(c.backbone for c in grid.cells if c.method == "random")
    assert len({c.name for c in grid.cells}) == len(grid.cells)


def test_a_method_may_name_its_own_backbones(tmp_path):
    grid = Grid.load(
        write_grid(
            tmp_path,
            tmp_path / "data",
            methods={
                "supervised": {
                    "config": str(REPO / "configs" / "quickstart.yaml"),
                    "backbones": ["tiny_r2plus1d"],
                },
                "random": {"backbones": ["tiny3d", "tiny_r2plus1d"]},
            },
        )
    )
    assert [c.name for c in grid.cells] == [
        "supervised-tiny_r2plus1d-motion-s0",
        "random-tiny3d-s0",
        "random-tiny_r2plus1d-s0",
    ]


class ClosedPipe:
    """A standard output whose reader has gone (``| head`` after its lines)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("option", ["--list", "--collect"])
def test_output_closed_early_stops_quietly_with_the_sigpipe_status(
    tmp_path, capsys, monkeypatch, option
):
    grid = write_grid(tmp_path, tmp_path / "data")
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main([str(grid), option]) == 141
    assert capsys.readouterr().err == ""


def test_list_into_a_closed_pipe_leaves_nothing_for_the_exit_flush(tmp_path, monkeypatch):
    """``python -m vssl bench GRID --list | head -1``: the standard output is a real pipe whose
    reader has gone; after main the stream must flush without error, as the interpreter flushes
    it at exit (where a BrokenPipeError printed a traceback)."""
    grid = write_grid(tmp_path, tmp_path / "data")
    read, write = os.pipe()
    os.close(read)
    stream = open(write, "w")
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        assert main([str(grid), "--list"]) == 141
        stream.write("what the interpreter may still hold\n")
        stream.flush()  # raised BrokenPipeError before the fix
    finally:
        monkeypatch.undo()
        stream.close()


def test_a_method_adds_its_own_evaluation_datasets(tmp_path):
    """The linear-probe grid evaluates each task also on its pretraining clips: a method's
    ``evaluate`` adds datasets (options over the grid's settings) to its cells only."""
    own = {"root": str(tmp_path / "data"), "layout": "folder", "clip_len": 8, "stride": 2}
    grid = Grid.load(
        write_grid(
            tmp_path,
            tmp_path / "data",
            methods={
                "supervised": {
                    "config": str(REPO / "configs" / "quickstart.yaml"),
                    "evaluate": {"motion_8x2": own},
                },
                "random": {},
            },
        )
    )
    supervised, random = grid.cells
    evaluations = grid.evaluations(supervised)
    assert [(d, c) for d, c, _, _ in evaluations] == [
        ("motion", "clean"),
        ("motion", "gaussian-5"),
        ("motion_8x2", "clean"),
        ("motion_8x2", "gaussian-5"),
    ]
    args = evaluations[2][3]
    assert args[args.index("--clip-len") + 1] == "8" and args[args.index("--stride") + 1] == "2"
    assert args.count("--clip-len") == 1
    assert {d for d, _, _, _ in grid.evaluations(random)} == {"motion"}


def entry(method: str, backbone: str, linear: tuple[float, float], **keys) -> dict:
    return {
        "method": method,
        "backbone": backbone,
        "pretrain_data": None if method == "random" else "motion",
        "subset": None,
        "eval_data": keys.get("eval_data", "motion"),
        "corruption": keys.get("corruption", "clean"),
        "seeds": [0],
        "figures": {"linear": linear},
    }


def test_gain_over_random_init_of_the_same_backbone_data_and_corruption(tmp_path):
    cvrl = entry("cvrl", "tiny3d", (0.60, 0.03))
    summary = [
        cvrl,
        entry("random", "tiny3d", (0.10, 0.01), corruption="gaussian-5"),
        entry("random", "vit", (0.50, 0.01)),
        entry("random", "tiny3d", (0.20, 0.04)),
        entry("random", "tiny3d", (0.30, 0.01), eval_data="motion_4x2"),
    ]
    gain, se = versus_random(cvrl, summary)
    assert gain == pytest.approx(0.40) and se == pytest.approx(0.05)  # sqrt(0.03^2 + 0.04^2)
    assert versus_random(summary[3], summary) is None  # random init itself
    assert versus_random(entry("cvrl", "r3d", (0.5, 0.1)), summary) is None  # no baseline
    small = entry("rotation", "tiny3d", (0.29, 0.03))
    grid = Grid.load(write_grid(tmp_path, tmp_path / "data"))
    table = markdown([cvrl, small, summary[3]], grid).splitlines()
    table = table[
        table.index(next(t for t in table if t.startswith("| method | backbone | pre"))) :
    ]
    assert table[0].startswith("| method |") and table[0].endswith(
        "| linear | vs random | linear 10% | linear 1% | kNN |"
    )
    assert table[2].endswith("| 60.0 ± 3.0 | **+40.0 ± 5.0** | - | - | - |")
    assert table[3].endswith("| 29.0 ± 3.0 | +9.0 ± 5.0 | - | - | - |")  # within 2 errors
    assert table[4].endswith("| 20.0 ± 4.0 | - | - | - | - |")


def test_options_from_a_config_file(tmp_path, capsys):
    """``vssl bench --config FILE``: the grid and the options from YAML."""
    grid = write_grid(tmp_path, tmp_path / "data")
    (tmp_path / "bench.yaml").write_text(f"grid: {grid}\nlist: true\n")
    assert main(["--config", str(tmp_path / "bench.yaml")]) == 0
    listed = capsys.readouterr().out
    assert main([str(grid), "--list"]) == 0
    assert listed == capsys.readouterr().out and listed.strip()


def test_best_gain_per_method_and_evaluation_dataset_over_its_clean_cells(tmp_path):
    def at(method, linear, pretrain="motion", subset=None, **keys):
        return {
            **entry(method, "tiny3d", linear, **keys),
            "pretrain_data": pretrain,
            "subset": subset,
        }

    summary = [
        entry("random", "tiny3d", (0.20, 0.04)),
        entry("random", "tiny3d", (0.10, 0.03), eval_data="mnist"),
        entry("random", "tiny3d", (0.05, 0.01), corruption="gaussian-3"),
        at("cvrl", (0.30, 0.03), subset=0.25),  # +10 +- 5
        at("cvrl", (0.26, 0.03)),  # +6: not the best
        at("cvrl", (0.90, 0.01), corruption="gaussian-3"),  # corrupted: not counted
        at("cvrl", (0.31, 0.04), pretrain="mnist", eval_data="mnist"),  # +21 +- 5
        at("rotation", (0.25, 0.03)),  # +5 +- 5: within 2 errors
    ]
    best = best_gains(summary)
    assert [(b["method"], b["beyond_2se"]) for b in best] == [("cvrl", True), ("rotation", False)]
    assert best[0]["gains"]["motion"] == pytest.approx((0.10, 0.05, "motion", 0.25))
    assert best[0]["gains"]["mnist"] == pytest.approx((0.21, 0.05, "mnist", None))
    assert list(best[1]["gains"]) == ["motion"]
    table = markdown(summary, Grid.load(write_grid(tmp_path, tmp_path / "data"))).splitlines()
    assert table[2:6] == [
        "| method | backbone | motion | mnist | beyond 2 SE |",
        "|---|---|---:|---:|---|",
        "| cvrl | tiny3d | +10.0 ± 5.0 (motion, 0.25) | **+21.0 ± 5.0** (mnist) | yes |",
        "| rotation | tiny3d | +5.0 ± 5.0 (motion) | - | no |",
    ]
