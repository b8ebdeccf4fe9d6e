"""benchmarks/cell_speed.py: its settings, and one paired round on a tiny grid cell."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import yaml
from test_bench import REPO, write_grid


def _load():
    spec = importlib.util.spec_from_file_location(
        "benchmark_cell_speed", REPO / "benchmarks" / "cell_speed.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_settings_are_named_key_values_and_mistakes_stop_it():
    speed = _load()
    assert speed.parse_setting("t1:threads=1,workers=0", "fit") == (
        "t1",
        {"threads": "1", "workers": "0"},
    )
    assert speed.parse_setting("threads=1", "eval") == ("threads=1", {"threads": "1"})
    with pytest.raises(SystemExit, match="'threads' is not KEY=VALUE"):
        speed.parse_setting("a:threads", "fit")
    with pytest.raises(SystemExit, match="eval keys are batch, threads, workers"):
        speed.parse_setting("a:model.init_args.lr=1", "eval")


def test_one_round_of_two_fit_settings_of_a_grid_cell(
    tiny_synthetic, tmp_path, capsys, monkeypatch
):
    speed = _load()
    grid = write_grid(tmp_path, tiny_synthetic)
    runs = []
    fit_once = speed.fit_once

    def recorded(grid, cell, values, args, work):
        result = fit_once(grid, cell, values, args, work)
        runs.append(yaml.safe_load((work / "grid.yaml").read_text()))
        return result

    monkeypatch.setattr(speed, "fit_once", recorded)
    argv = [
        "fit",
        "--grid",
        str(grid),
        "--method",
        "supervised",
        "--data",
        "motion",
        "--subset",
        "none",
    ]
    argv += ["--batches", "1", "--epochs", "1", "--rounds", "1"]
    argv += ["--setting", "w0:threads=1,workers=0", "--setting", "w1:workers=1"]
    assert speed.main(argv) == 0
    out = capsys.readouterr().out
    assert "fit of supervised-tiny3d-motion-s0" in out
    assert "| w0 (threads=1,workers=0) |" in out and "| 1.000 (1.000-1.000) |" in out
    assert "| w1 (workers=1) |" in out
    # the warm-up and one round: each run is the grid's cell with the setting's workers
    assert [r["data"]["init_args"]["num_workers"] for r in runs] == [0, 0, 1]
    assert {r["trainer"]["limit_train_batches"] for r in runs} == {1}
    assert {r["model"]["init_args"]["backbone"] for r in runs} == {"tiny3d"}
    assert not (tmp_path / "out").exists()  # nothing written in the grid's own folder
