"""The command line end to end.

What a command does runs in this process through ``vssl.cli.main`` (the ``run_cli`` fixture):
a fresh interpreter spends seconds importing torch and Lightning. What only a real process
shows runs ``python -m vssl`` in a subprocess: the console of a fresh interpreter (Lightning's
tips and warnings, the summary as the last lines after teardown) and DDP's two processes.
"""

import csv
import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import run_vssl, tiny_config

from vssl.cli import main
from vssl.tasks import Supervised

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when sys.argv (pytest's) has arguments besides ``args``."""
    monkeypatch.setattr("sys.argv", ["vssl"])


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "make-synthetic"):
        assert name in out


def test_unknown_subcommand(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err


def test_fit_end_to_end_then_validate_from_checkpoint(tiny_synthetic, tmp_path, run_cli, recwarn):
    # The first fit is a subprocess: its console (no tips or Lightning warnings, the summary
    # last) is that of a fresh interpreter; the second fit and validate run in this process.
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_synthetic, tmp_path / "cache")))
    out = run_vssl(["fit", "--config", str(cfg), "--trainer.logger.init_args.name", "t"], tmp_path)
    run = tmp_path / "runs" / "t" / "version_0"
    assert f"logs in {Path('runs/t/version_0')}" in out.stdout + out.stderr
    for noise in ("Tip:", "on_after_batch_transfer", "LeafSpec", "FLOPs"):
        assert noise not in out.stdout + out.stderr
    # The run ends with its summary: the last validation's metrics, then the paths.
    tail = out.stdout.strip().splitlines()[-5:]
    assert tail[0].startswith("vssl: val/acc ") and tail[1].startswith("vssl: val/loss ")
    assert tail[-3:] == [
        f"vssl: logs in {Path('runs/t/version_0')}",
        f"vssl: best checkpoint {tail[-2].split(' ', 3)[3]}",
        f"vssl: last checkpoint {Path('runs/t/version_0/checkpoints/last.ckpt')}",
    ]
    assert (
        yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["backbone"]
        == "tiny3d"
    )
    model = Supervised.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.num_classes == 4  # linked from the datamodule
    assert json.loads((run / "versions.json").read_text())["torch"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert {"train/loss_step", "val/loss", "val/acc", "lr-AdamW"} <= set(rows[0])
    assert sum(1 for r in rows if r["val/loss"]) == 2  # one validation per epoch
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)

    # A second run never overwrites the first: it gets the next version folder.
    run_cli(
        [
            "fit",
            "--config",
            str(cfg),
            "--trainer.logger.init_args.name",
            "t",
            "--trainer.max_epochs",
            "1",
        ],
        tmp_path,
    )
    assert (tmp_path / "runs" / "t" / "version_1" / "config.yaml").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2

    # validate prints its results and leaves no folder behind: the config's logger is the
    # training run's (a logger given on the command line would be used). recwarn records every
    # warning (filter "always"), so a "dirpath has changed" that a user would see shows here.
    recwarn.clear()
    out = run_cli(
        ["validate", "--config", str(cfg), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")],
        tmp_path,
    )
    assert "val/acc" in out
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    assert sorted(p.name for p in (tmp_path / "runs" / "t").iterdir()) == ["version_0", "version_1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run.yaml", "runs"]


def test_ddp_two_processes_see_disjoint_samples(tiny_synthetic, tmp_path):
    cfg = tiny_config(tiny_synthetic, tmp_path / "cache", strategy="ddp", devices=2, max_epochs=1)
    cfg["trainer"]["callbacks"] = [
        {"class_path": "recording.RecordIndices", "init_args": {"out_dir": str(tmp_path / "seen")}}
    ]
    # No DataLoader workers: with one worker per process this test hung once in a full-suite run
    # (cause not found; a worker forked after gloo started its threads is the suspect). The
    # sampler split is what is tested here.
    cfg["data"]["init_args"].update(batch_size=2, num_workers=0)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_vssl(["fit", "--config", "run.yaml"], tmp_path)
    seen = [json.loads((tmp_path / "seen" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world_size"] == 2 for s in seen)
    a, b = (set(s["indices"]) for s in seen)
    assert len(seen[0]["indices"]) == len(seen[1]["indices"]) == 6  # 12 videos, 2 processes
    assert not a & b and a | b == set(range(12))


def test_make_commands_take_a_config_file(tmp_path, run_cli):
    """``make-synthetic`` and ``make-moving-mnist`` read their options from ``--config FILE``
    (the folder too); options after it win."""
    (tmp_path / "syn.yaml").write_text("root: syn\nclasses: 3\nvideos_per_class: 2\nframes: 8\n")
    out = run_cli(
        ["make-synthetic", "--config", "syn.yaml", "--classes", "2", "--size", "32"], tmp_path
    )
    assert "syn: 2 classes, 2 train + 2 test videos of 8 frames at 32x32" in out
    (tmp_path / "mm.yaml").write_text(
        "root: mm\nvideos_per_class: 1\nframes: 4\nsize: 32\nspeed: [0.05, 0.06]\n"
    )
    out = run_cli(["make-moving-mnist", "--config", "mm.yaml", "--quiet"], tmp_path)
    assert "mm: 10 classes" in out and "of 4 frames at 32x32" in out


def test_make_synthetic_command(tmp_path, run_cli):
    out = run_cli(
        [
            "make-synthetic",
            str(tmp_path / "syn"),
            "--classes",
            "2",
            "--videos-per-class",
            "2",
            "--frames",
            "8",
            "--size",
            "32",
            "--seed",
            "3",
        ],
        tmp_path,
    )
    assert str(tmp_path / "syn") in out
    assert len(list((tmp_path / "syn").rglob("*.mp4"))) == 4


@pytest.mark.parametrize("bad", ["--model.init_args.optimizer=lbfgs"])
def test_bad_option_is_reported(tiny_synthetic, tmp_path, bad, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_synthetic, tmp_path / "cache")))
    assert main(["fit", "--config", str(cfg), bad]) == 2
    assert "optimizer must be one of" in capsys.readouterr().err


def test_last_checkpoint_is_the_last_epoch_when_later_epochs_do_not_improve(
    tiny_synthetic, tmp_path, run_cli
):
    # Monitoring the epoch number in "min" mode makes epoch 0 the best and no later epoch an
    # improvement: Lightning's own ModelCheckpoint then leaves last.ckpt at epoch 0.
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_synthetic, tmp_path / "cache", max_epochs=3)))
    run_cli(
        [
            "fit",
            "--config",
            str(cfg),
            "--trainer.logger.init_args.name",
            "t",
            "--checkpoint.monitor",
            "epoch",
            "--checkpoint.filename",
            "best-{epoch}",
        ],
        tmp_path,
    )
    ckpts = tmp_path / "runs" / "t" / "version_0" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-0.ckpt", "last.ckpt"]
    last = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    best = torch.load(ckpts / "best-0.ckpt", weights_only=True, map_location="cpu")
    steps_per_epoch = best["global_step"]
    assert (last["epoch"], last["global_step"]) == (2, 3 * steps_per_epoch)
    # The callback state is under ModelCheckpoint's key, so either class resumes it.
    assert any(k.startswith("ModelCheckpoint{") for k in last["callbacks"])


def _synthetic_roots() -> dict[str, dict[str, tuple[str, dict]]]:
    """For each dataset folder that a config writes synthetic data to: its settings per config."""
    from vssl.data.synthetic import make_synthetic

    defaults = {
        k: v.default
        for k, v in inspect.signature(make_synthetic).parameters.items()
        if v.default is not inspect.Parameter.empty and k != "progress"
    }
    roots: dict[str, dict[str, tuple[str, dict]]] = {}
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        data = (yaml.safe_load(path.read_text()) or {}).get("data")
        args = data.get("init_args", {}) if isinstance(data, dict) else {}
        if args.get("synthetic") is not None:
            settings = {**defaults, **args["synthetic"]}
            roots.setdefault(args.get("root", "data/synthetic"), {})[
                str(path.relative_to(ROOT))
            ] = settings
    return roots


def test_configs_sharing_a_synthetic_folder_ask_for_the_same_dataset():
    # Otherwise the second config run after the first (README's order: quick start, then a
    # task) stops with "data/... holds a synthetic dataset made with other settings".
    roots = _synthetic_roots()
    assert "configs/quickstart.yaml" in roots["data/quickstart"]
    assert len(roots["data/synthetic"]) >= 9  # every task's synthetic_tiny.yaml and the preset
    for root, by_config in roots.items():
        first, *rest = by_config.items()
        for name, settings in rest:
            assert settings == first[1], f"{name} and {first[0]} write different data to {root}"


def test_quick_start_then_a_task_config_in_one_folder(tmp_path, run_cli):
    # README's order with its own configs, cut to a few videos and one step each: each config
    # keeps its folder and its frame size, so the second run must not trip over the first's data.
    small = [
        "--data.init_args.synthetic.videos_per_class",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
    ]
    for config in ("configs/quickstart.yaml", "configs/rspnet/synthetic_tiny.yaml"):
        run_cli(["fit", "--config", str(ROOT / config), *small], tmp_path)
    assert (
        json.loads((tmp_path / "data/quickstart/synthetic.json").read_text())["settings"]["size"]
        == 32
    )
    assert (
        json.loads((tmp_path / "data/synthetic/synthetic.json").read_text())["settings"]["size"]
        == 64
    )


def test_a_folder_holding_another_dataset_is_one_clean_error(tmp_path, capsys, monkeypatch):
    # In this process: an exception escaping main (a traceback from a shell) fails the test;
    # the shell's view of a one-line error is tests/test_cli_errors.py's subprocess test.
    from vssl.data.synthetic import make_synthetic

    make_synthetic(
        tmp_path / "data" / "synthetic", classes=8, videos_per_class=1, frames=8, size=16
    )
    (tmp_path / "data" / "synthetic" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["fit", "--config", str(ROOT / "configs/rspnet/synthetic_tiny.yaml")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vssl fit: error: ") and "made with other settings" in last
    assert "Traceback" not in err
    assert (tmp_path / "data" / "synthetic" / "notes.txt").read_text() == "mine"


def test_fit_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m vssl [options] fit")


def test_progress_bar_has_no_version_number_and_summary_no_zero_flops(tmp_path, capsys):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities.model_summary import summarize

    from vssl.callbacks import ModelSummary, ProgressBar

    trainer = Trainer(logger=CSVLogger(tmp_path), accelerator="cpu", callbacks=[ProgressBar()])
    assert "v_num" in RichProgressBar().get_metrics(trainer, None)  # what Lightning shows
    assert "v_num" not in ProgressBar().get_metrics(trainer, None)

    model = Supervised(num_classes=3, backbone="tiny3d", backbone_kwargs={"width": 4})
    summary = summarize(model)
    assert summary.total_flops == 0  # no example_input_array: Lightning counts nothing
    ModelSummary.summarize(
        summary._get_summary_data(),
        summary.total_parameters,
        summary.trainable_parameters,
        summary.model_size,
        summary.total_training_modes,
        summary.total_flops,
    )
    out = capsys.readouterr().out
    assert "FLOPs" not in out and "backbone" in out and "Trainable params" in out
