"""``vssl bench``: what a grid sets in its cells' pretraining (per-method trainer and checkpoint
settings, a backbone's builder arguments) and that a cell validated seldom, keeping no best
checkpoint, still resumes after a kill to the same weights and results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_bench import REPO, write_grid

from vssl import bench
from vssl.bench import Grid, main

SUPERVISED = str(REPO / "configs" / "quickstart.yaml")
#: What the CPU grid sets: validation every 2nd epoch here, no best checkpoint, last.ckpt at
#: every epoch end.
SELDOM = {
    "trainer": {"max_epochs": 2, "check_val_every_n_epoch": 2, "enable_progress_bar": False},
    "checkpoint": {"monitor": None, "save_top_k": 0, "save_on_train_epoch_end": True},
}


def test_a_methods_trainer_and_checkpoint_go_over_the_grids_and_backbone_kwargs_everywhere(
    tmp_path,
):
    grid = Grid.load(
        write_grid(
            tmp_path,
            tmp_path / "data",
            methods={
                "supervised": {
                    "config": SUPERVISED,
                    "trainer": {"max_epochs": 40},
                    "checkpoint": {"every_n_epochs": 5},
                },
                "wide": {
                    "config": SUPERVISED,
                    "model": {"backbone_kwargs": {"width": 16}},
                },
                "random": {"backbones": ["tiny3d", "vit_tiny_8_image"]},
            },
            checkpoint={"save_top_k": 0},
            backbone_kwargs={"tiny3d": {"width": 8}, "vit_tiny_8_image": {"patch_size": 4}},
        )
    )
    supervised, wide, random, random_vit = grid.cells
    override = grid.fit_override(supervised)
    assert override["trainer"]["max_epochs"] == 40
    assert override["trainer"]["enable_progress_bar"] is False  # the grid's, kept
    assert override["checkpoint"] == {"save_top_k": 0, "every_n_epochs": 5}
    assert override["model"]["init_args"] == {"backbone": "tiny3d", "backbone_kwargs": {"width": 8}}
    # a method's own backbone_kwargs win over the grid's for that backbone
    assert grid.fit_override(wide)["model"]["init_args"]["backbone_kwargs"] == {"width": 16}
    assert grid.fit_override(wide)["trainer"]["max_epochs"] == 1  # the grid's
    args = grid.evaluations(random_vit)[0][3]
    assert args[args.index("--backbone") : args.index("--backbone") + 4] == [
        "--backbone",
        "vit_tiny_8_image",
        "--backbone-kwargs",
        '{"patch_size": 4}',
    ]
    args = grid.evaluations(random)[0][3]
    assert args[args.index("--backbone-kwargs") + 1] == '{"width": 8}'


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"trainer": {"max_epoch": 3}},
            "trainer: unknown key 'max_epoch' (did you mean 'max_epochs'?)",
        ),
        ({"trainer": [3]}, "trainer: a mapping of Trainer arguments, got [3]"),
        (
            {"methods": {"x": {"config": SUPERVISED, "trainer": {"check_val_every_epoch": 2}}}},
            "methods.x.trainer: unknown key 'check_val_every_epoch' (did you mean "
            "'check_val_every_n_epoch'?)",
        ),
        (
            {"checkpoint": {"monitr": None}},
            "checkpoint: unknown key 'monitr' (did you mean 'monitor'?)",
        ),
        (
            {"methods": {"x": {"config": SUPERVISED, "checkpoint": {"save_top": 0}}}},
            "methods.x.checkpoint: unknown key 'save_top' (did you mean 'save_top_k'?)",
        ),
        ({"backbone_kwargs": {"vit": 4}}, "backbone_kwargs maps a backbone name to its builder"),
    ],
)
def test_trainer_and_checkpoint_mistakes_are_one_line_naming_the_file(
    tmp_path, capsys, change, message
):
    grid = write_grid(tmp_path, tmp_path / "data", **change)
    assert main([str(grid), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vssl bench: error: {grid}: ") and message in err
    assert err.count("\n") == 1


def grid_in(folder: Path, data: Path, epochs: int) -> Path:
    folder.mkdir(exist_ok=True)
    trainer = {**SELDOM["trainer"], "max_epochs": epochs}
    file = write_grid(
        folder,
        data,
        methods={"supervised": {"config": SUPERVISED}},
        trainer=trainer,
        checkpoint=SELDOM["checkpoint"],
    )
    spec = yaml.safe_load(file.read_text())
    spec["evaluate"]["corruptions"] = ["clean"]
    file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return file


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_a_cell_validated_seldom_resumes_after_a_kill_to_the_same_weights_and_results(
    tiny_synthetic, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(bench, "_run", bench._run_here)  # the fits in this process
    whole = grid_in(tmp_path / "whole", tiny_synthetic, epochs=2)
    assert main([str(whole)]) == 0, capsys.readouterr()
    cell = tmp_path / "whole" / "out" / "cells" / "supervised-tiny3d-motion-s0"
    # no best checkpoint, and validation only after the second epoch (index 1)
    assert sorted(p.name for p in (cell / "fit" / "checkpoints").iterdir()) == ["last.ckpt"]
    metrics = (cell / "fit" / "metrics.csv").read_text().splitlines()
    head = metrics[0].split(",")
    validated = {
        row.split(",")[head.index("epoch")]
        for row in metrics[1:]
        if row.split(",")[head.index("val/loss")]
    }
    assert validated == {"1"}
    assert torch.load(cell / "fit" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1

    # Killed after its first epoch: last.ckpt of epoch 1 (no validation yet), no fit.done.
    killed = tmp_path / "killed"
    assert main([str(grid_in(killed, tiny_synthetic, epochs=1))]) == 0
    interrupted = killed / "out" / "cells" / "supervised-tiny3d-motion-s0"
    (interrupted / "fit.done").unlink()
    for result in (interrupted / "eval").iterdir():
        result.unlink()
    capsys.readouterr()
    file = grid_in(killed, tiny_synthetic, epochs=2)
    assert main([str(file)]) == 0
    assert "pretraining (resuming from last.ckpt)" in capsys.readouterr().out
    resumed, uninterrupted = (
        weights(c / "fit" / "checkpoints" / "last.ckpt") for c in (interrupted, cell)
    )
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name
    results = [
        json.loads((c / "eval" / "motion.clean.probe.json").read_text())["results"]
        for c in (interrupted, cell)
    ]
    assert results[0] == results[1]
    first = (killed / "out" / "results.json").read_bytes()
    assert main([str(file), "--collect"]) == 0
    assert (killed / "out" / "results.json").read_bytes() == first
