"""``vssl bench`` with a distillation method: teachers that are other cells' checkpoints, the
cells' order and dependencies, and what a distilled cell records of its teachers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_bench import REPO, write_grid

from vssl import bench
from vssl.bench import Grid, main

DISTILL = str(REPO / "configs" / "distillation" / "synthetic_tiny.yaml")
SUPERVISED = str(REPO / "configs" / "quickstart.yaml")
ROTATION = str(REPO / "configs" / "rotation" / "synthetic_tiny.yaml")


def methods(**distill) -> dict:
    return {
        "supervised": {"config": SUPERVISED},
        "rotation": {"config": ROTATION, "backbones": ["tiny_r2plus1d"]},
        "distill": {"config": DISTILL, **distill},
        "random": {},
    }


def test_teachers_are_the_cells_with_the_same_backbone_data_subset_and_seed(tmp_path, capsys):
    grid_file = write_grid(
        tmp_path,
        tmp_path / "data",
        methods=methods(
            teachers=["supervised", {"method": "rotation", "backbone": "tiny_r2plus1d"}]
        ),
        subsets=[0.5, 1.0],
    )
    grid = Grid.load(grid_file)
    assert main([str(grid_file), "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "   0  supervised-tiny3d-motion-subset0.5-s0",
        "   1  supervised-tiny3d-motion-subset1.0-s0",
        "   2  rotation-tiny_r2plus1d-motion-subset0.5-s0",
        "   3  rotation-tiny_r2plus1d-motion-subset1.0-s0",
        "   4  distill-tiny3d-motion-subset0.5-s0  (teachers: cells 0, 2)",
        "   5  distill-tiny3d-motion-subset1.0-s0  (teachers: cells 1, 3)",
        "   6  random-tiny3d-s0",
    ]
    override = grid.fit_override(grid.cells[5])
    cells = tmp_path / "out" / "cells"
    assert override["model"]["init_args"] == {
        "backbone": "tiny3d",
        "teachers": [
            str(cells / name / "fit" / "checkpoints" / "last.ckpt")
            for name in (
                "supervised-tiny3d-motion-subset1.0-s0",
                "rotation-tiny_r2plus1d-motion-subset1.0-s0",
            )
        ],
    }
    assert "teachers" not in grid.fit_override(grid.cells[1])["model"]["init_args"]

    # --cell of a distilled cell before its teachers: one line naming the cells to run first
    assert main([str(grid_file), "--cell", "5"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "vssl bench: error: --cell 5 (distill-tiny3d-motion-subset1.0-s0): its teachers have not "
        "finished pretraining: run cells 1 (supervised-tiny3d-motion-subset1.0-s0), "
        "3 (rotation-tiny_r2plus1d-motion-subset1.0-s0) first\n"
    )
    assert not (cells / "distill-tiny3d-motion-subset1.0-s0").exists()
    # a teacher with a checkpoint but no fit.done (an interrupted pretraining) is not ready
    for name in (
        "supervised-tiny3d-motion-subset1.0-s0",
        "rotation-tiny_r2plus1d-motion-subset1.0-s0",
    ):
        (cells / name / "fit" / "checkpoints").mkdir(parents=True)
        (cells / name / "fit" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (cells / "supervised-tiny3d-motion-subset1.0-s0" / "fit.done").write_text("done\n")
    assert main([str(grid_file), "--cell", "5"]) == 2
    assert capsys.readouterr().err.endswith(
        "run cell 3 (rotation-tiny_r2plus1d-motion-subset1.0-s0) first\n"
    )


@pytest.mark.parametrize(
    "teachers,message",
    [
        (["supervisd"], "unknown method 'supervisd' (did you mean 'supervised'?)"),
        (["random"], "random must come before distill in methods"),
        ("supervised", "a list of methods (or {method: M, backbone: B}), got 'supervised'"),
        ([{"method": "supervised", "backbones": "x"}], "unknown key 'backbones'"),
        (
            ["rotation"],
            "rotation has no cell rotation-tiny3d-motion-s0 to teach distill-tiny3d-motion-s0 "
            "(its backbones: tiny_r2plus1d); name one as {method: rotation, backbone: NAME}",
        ),
    ],
)
def test_teacher_mistakes_are_one_line_naming_the_file(tmp_path, capsys, teachers, message):
    grid = write_grid(tmp_path, tmp_path / "data", methods=methods(teachers=teachers))
    assert main([str(grid), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vssl bench: error: {grid}: methods.distill.teachers: ")
    assert message in err and err.count("\n") == 1


def test_a_teacher_without_pretraining_is_refused(tmp_path, capsys):
    grid = write_grid(
        tmp_path,
        tmp_path / "data",
        methods={"random": {}, "distill": {"config": DISTILL, "teachers": ["random"]}},
    )
    assert main([str(grid), "--list"]) == 2
    assert "random has no config, so its cells have no checkpoint to teach with" in (
        capsys.readouterr().err
    )


def sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def test_a_distilled_cell_trains_from_its_teachers_checkpoint_and_records_it(
    tiny_synthetic, fit_checkpoint, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(bench, "_run", bench._run_here)  # the fit in this process: no start-up
    grid_file = write_grid(
        tmp_path,
        tiny_synthetic,
        methods={
            "supervised": {"config": SUPERVISED},
            "distill": {
                "config": DISTILL,
                "teachers": ["supervised"],
                "model": {"backbone_kwargs": {"width": 4}},
                "trainer": {"max_steps": 1, "limit_val_batches": 0},
            },
        },
    )
    spec = yaml.safe_load(grid_file.read_text())
    spec["evaluate"]["corruptions"] = ["clean"]
    grid_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    # the teacher cell as its pretraining leaves it (a tiny Supervised run's checkpoint)
    cells = tmp_path / "out" / "cells"
    teacher = cells / "supervised-tiny3d-motion-s0" / "fit" / "checkpoints" / "last.ckpt"
    teacher.parent.mkdir(parents=True)
    shutil.copy(fit_checkpoint, teacher)
    (cells / "supervised-tiny3d-motion-s0" / "fit.done").write_text(f"{teacher}\n")
    assert main([str(grid_file), "--cell", "1"]) == 0, capsys.readouterr()
    assert "distill-tiny3d-motion-s0: pretraining" in capsys.readouterr().out
    student = cells / "distill-tiny3d-motion-s0"
    config = yaml.safe_load((student / "fit" / "config.yaml").read_text())
    assert config["model"]["class_path"] == "vssl.tasks.Distillation"
    assert config["model"]["init_args"]["teachers"] == [str(teacher)]
    used = json.loads((student / "teachers.json").read_text())
    assert [(u["cell"], u["checkpoint"], u["sha256"]) for u in used] == [
        ("supervised-tiny3d-motion-s0", str(teacher.resolve()), sha256(teacher))
    ]
    assert (student / "eval" / "motion.clean.probe.json").is_file()
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["evaluations"]
    assert [r["teachers"] for r in rows] == [used]

    # the teacher pretrained again: the interrupted student is not resumed from other teachers
    (student / "fit.done").unlink()
    teacher.write_bytes(teacher.read_bytes() + b"\0")
    assert main([str(grid_file), "--cell", "1"]) == 1
    assert (
        f"distill-tiny3d-motion-s0: not resumed: its teachers' checkpoints have changed since its "
        f"pretraining began ({student / 'teachers.json'}); delete {student} to pretrain it again"
    ) in capsys.readouterr().out
    assert json.loads((student / "teachers.json").read_text()) == used
