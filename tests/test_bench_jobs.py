"""``vssl bench --jobs N``: cells run N at a time, each its own process, teachers first, to the
same results as one after another; a cell's lock keeps a second process off it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_bench import write_grid
from test_bench_distillation import methods

from vssl import bench
from vssl.bench import Grid, main, run_cell


class FakeCellProcess:
    """Stands for ``python -m vssl bench GRID --cell N --no-results``: writes what the cell
    would write (unless its number is in ``fail``), then reports the exit status once polled
    ``polls`` times."""

    grid: Grid
    fail: set[int] = set()
    started: list[int] = []
    polls = 2

    def __init__(self, command: list[str], **kwargs) -> None:
        n = int(command[command.index("--cell") + 1])
        self.started.append(n)
        self.pid, self.n, self.left = n, n, self.polls
        self.returncode: int | None = None
        if n in self.fail:
            return
        cell = self.grid.cells[n]
        folder = self.grid.folder(cell)
        if self.grid.methods[cell.method]["config"]:
            self.grid.checkpoint(cell).parent.mkdir(parents=True, exist_ok=True)
            self.grid.checkpoint(cell).write_bytes(b"weights")
            (folder / "fit.done").write_text("done\n")
        for data, corruption, protocol, _ in self.grid.evaluations(cell):
            (folder / "eval").mkdir(parents=True, exist_ok=True)
            (folder / "eval" / f"{data}.{corruption}.{protocol}.json").write_text("{}")

    def poll(self) -> int | None:
        self.left -= 1
        if self.left <= 0:
            self.returncode = 1 if self.n in self.fail else 0
        return self.returncode


@pytest.fixture
def fake_cells(monkeypatch, tmp_path):
    def use(grid: Grid, fail: set[int] = frozenset()) -> type[FakeCellProcess]:
        FakeCellProcess.grid, FakeCellProcess.fail, FakeCellProcess.started = grid, fail, []
        monkeypatch.setattr(bench.subprocess, "Popen", FakeCellProcess)
        monkeypatch.setattr("time.sleep", lambda s: None)
        return FakeCellProcess

    return use


def distill_grid(tmp_path: Path) -> Grid:
    # cells: 0 supervised, 1 rotation, 2 distill (teachers 0 and 1), 3 random
    return Grid.load(
        write_grid(
            tmp_path,
            tmp_path / "data",
            methods=methods(
                teachers=["supervised", {"method": "rotation", "backbone": "tiny_r2plus1d"}]
            ),
        )
    )


def test_a_student_starts_only_after_its_teachers_finished_pretraining(tmp_path, fake_cells):
    grid = distill_grid(tmp_path)
    fake = fake_cells(grid)
    said: list[str] = []
    assert bench.run_jobs(grid, 2, say=said.append) == []
    assert fake.started == [0, 1, 2, 3]
    events = [" ".join(line.split()[:2]) for line in said]
    # two at a time; the student (2) after both teachers (0, 1), random init (3) beside it
    assert events.index("started 2") > max(events.index("finished 0"), events.index("finished 1"))
    assert events[:2] == ["started 0", "started 1"]
    assert said[-1].endswith("(4 done, 0 running, 0 left of 4)")
    # everything finished: a second run starts nothing
    fake.started.clear()
    assert bench.run_jobs(grid, 2, say=said.append) == []
    assert fake.started == []


def test_a_failed_teacher_leaves_its_student_unrun_and_the_rest_runs(tmp_path, fake_cells):
    grid = distill_grid(tmp_path)
    fake = fake_cells(grid, fail={1})
    said: list[str] = []
    failed = bench.run_jobs(grid, 2, say=said.append)
    assert failed == [grid.cells[1].name, grid.cells[2].name]
    assert fake.started == [0, 1, 3]
    assert any(line.startswith(f"not run: {grid.cells[2].name}: a teacher") for line in said)
    assert any(line.startswith(f"failed {grid.cells[1].name} after ") for line in said)


def test_jobs_give_the_results_of_one_cell_after_another(tiny_synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same torch threads for both runs' evaluations
    results = {}
    for jobs in (1, 2):
        (tmp_path / f"jobs{jobs}").mkdir()
        grid = write_grid(tmp_path / f"jobs{jobs}", tiny_synthetic)
        assert main([str(grid), "--jobs", str(jobs)]) == 0
        out = tmp_path / f"jobs{jobs}" / "out"
        results[jobs] = {
            (r["cell"], r["corruption"]): r["metrics"]
            for r in json.loads((out / "results.json").read_text())["evaluations"]
        }
        assert (out / "results.md").is_file()
    assert len(results[2]) == 4 and results[2] == results[1]
    log = (
        tmp_path / "jobs2" / "out" / "cells" / "supervised-tiny3d-motion-s0" / "logs" / "bench.log"
    )
    assert "supervised-tiny3d-motion-s0: pretraining" in log.read_text()


def test_a_cell_another_process_runs_is_left_to_it(tmp_path):
    grid = Grid.load(write_grid(tmp_path, tmp_path / "data"))
    folder = grid.folder(grid.cells[0])
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            "python",
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(folder / bench.LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        said: list[str] = []
        assert run_cell(grid, grid.cells[0], say=said.append) is False
        assert said == [
            f"{grid.cells[0].name}: not run: another process is running it "
            f"({folder / bench.LOCK_FILE})"
        ]
        assert not (folder / "grid.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


def test_jobs_below_one_are_refused(tmp_path, capsys):
    grid = write_grid(tmp_path, tmp_path / "data")
    assert main([str(grid), "--jobs", "0"]) == 2
    assert "vssl bench: error: --jobs 0: give 1 or more" in capsys.readouterr().err
