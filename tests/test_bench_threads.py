"""``vssl bench``: a grid's ``threads`` reaches every pretraining (``OMP_NUM_THREADS`` of its
process) and not the evaluations (``_run_here`` can set ``torch.set_num_threads`` and restores
it), is shown in ``commands.sh`` before the fits, and leaves a cell's name and pretraining
settings as they were."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_bench import write_grid

from vssl import bench
from vssl.bench import Grid, main


def test_threads_reach_every_fit_not_the_evaluations_and_commands_sh(tmp_path, monkeypatch):
    fits, evaluations = [], []

    def fake_fit(args: list[str], log: Path, threads: int | None = None) -> int:
        fits.append((args[0], threads))
        return 0

    def fake_evaluation(args: list[str], log: Path, threads: int | None = None) -> int:
        evaluations.append((args[0], threads))
        out = Path(args[args.index("--out") + 1])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"results": {}}))
        return 0

    monkeypatch.setattr(bench, "_run", fake_fit)
    monkeypatch.setattr(bench, "_run_here", fake_evaluation)
    grid = Grid.load(write_grid(tmp_path, tmp_path / "data", threads=1))
    assert grid.threads == 1
    supervised, random = grid.cells
    assert bench.run_cell(grid, supervised, say=lambda m: None)
    assert bench.run_cell(grid, random, say=lambda m: None)
    assert fits == [("fit", 1)]
    # the grid's probe on its one dataset, clean and corrupted, for each cell
    assert evaluations == [("probe", None)] * 4
    for cell in (supervised, random):
        commands = (grid.folder(cell) / "commands.sh").read_text().splitlines()[2:]
        fit = [c for c in commands if " fit " in c]
        assert fit == [c for c in fit if c.startswith("OMP_NUM_THREADS=1 python -m vssl fit ")]
        assert len(fit) == (cell is supervised)
        probes = [c for c in commands if " probe " in c]
        assert len(probes) == 2 and all(c.startswith("python -m vssl probe ") for c in probes)


def test_threads_leave_the_cells_and_their_settings_unchanged(tmp_path):
    without = Grid.load(write_grid(tmp_path, tmp_path / "data"))
    with_threads = Grid.load(write_grid(tmp_path, tmp_path / "data", threads=1))
    assert without.threads is None
    assert [c.name for c in without.cells] == [c.name for c in with_threads.cells]
    for a, b in zip(without.cells, with_threads.cells, strict=True):
        assert without.evaluations(a) == with_threads.evaluations(b)
    cell = without.cells[0]
    assert without.fit_override(cell) == with_threads.fit_override(cell)
    # and without threads the commands are shown as before
    assert bench._shown(["fit"]) == "python -m vssl fit"


def test_a_fit_process_gets_omp_num_threads(tmp_path, monkeypatch):
    seen = []

    def fake_subprocess_run(command, stdout, stderr, env):
        seen.append(env)
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(bench.subprocess, "run", fake_subprocess_run)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert bench._run(["fit"], tmp_path / "fit.log", threads=1) == 0
    assert bench._run(["fit"], tmp_path / "fit.log") == 0
    assert seen[0]["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in seen[1]
    assert seen[0]["PATH"] == os.environ["PATH"]  # the rest of the environment is kept


def test_an_evaluation_runs_with_the_threads_and_they_are_restored(tmp_path, monkeypatch):
    import vssl.cli

    during = []

    def fake_main(args: list[str]) -> int:
        during.append(torch.get_num_threads())
        if args == ["fail"]:
            raise RuntimeError("broken")
        return 0

    monkeypatch.setattr(vssl.cli, "main", fake_main)
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    assert bench._run_here(["probe"], tmp_path / "a.log", threads=other) == 0
    assert bench._run_here(["fail"], tmp_path / "b.log", threads=other) == 1
    assert "RuntimeError: broken" in (tmp_path / "b.log").read_text()
    assert bench._run_here(["probe"], tmp_path / "c.log") == 0
    assert during == [other, other, before]
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads", [0, -2, "two", True, 1.5])
def test_bad_threads_are_one_line_naming_the_file(tmp_path, capsys, threads):
    grid = write_grid(tmp_path, tmp_path / "data", threads=threads)
    assert main([str(grid), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vssl bench: error: {grid}: threads is the number of torch threads")
    assert f"got {threads!r}" in err and err.count("\n") == 1
