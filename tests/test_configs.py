"""Every shipped YAML works: run configs train a step, presets combine, sweeps' arguments parse.

Run configs train in this process through ``vssl.cli.main`` (one import of the stack for all of
them) with CPU-sized overrides after the ``--config``; the wandb runs go through the real
command line in a subprocess, as a sweep agent starts them.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_vssl, tiny_config

from vssl.cli import main

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
RUN_CONFIGS = [p for p in ALL_YAML if {"model", "data"} <= set(_load(p))]
DATA_PRESETS = sorted((CONFIGS / "data").glob("*.yaml"))
SWEEPS = sorted((CONFIGS / "sweeps").glob("*.yaml"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CONFIGS)) for p in paths]


def test_every_yaml_is_a_run_config_a_preset_or_a_sweep() -> None:
    """A new kind of YAML under configs/ needs a test here before it ships."""
    loggers = sorted((CONFIGS / "loggers").glob("*.yaml"))
    assert len(RUN_CONFIGS) >= 19
    assert {p.stem for p in DATA_PRESETS} == {
        "ucf101",
        "hmdb51",
        "kinetics400",
        "ssv2",
        "synthetic",
    }
    assert len(SWEEPS) == 3
    assert sorted(RUN_CONFIGS + DATA_PRESETS + SWEEPS + loggers) == ALL_YAML


def cpu_overrides(config: Path, root: Path, cache: Path) -> list[str]:
    """Arguments after ``--config`` that shrink a paper config to one CPU step on ``root``."""
    args = {
        "model.init_args.backbone": "tiny3d",
        "model.init_args.backbone_kwargs": "{width: 4}",
        "data.init_args.root": str(root),
        "data.init_args.layout": "folder",
        "data.init_args.train_split": "train",
        "data.init_args.val_split": "test",
        "data.init_args.annotations": "null",
        "data.init_args.synthetic": "null",
        "data.init_args.clip_len": "4",
        "data.init_args.stride": "1",
        "data.init_args.crop_size": "24",
        "data.init_args.decode_size": "32",
        "data.init_args.batch_size": "2",
        "data.init_args.num_workers": "0",
        "data.init_args.cache_dir": str(cache),
        "data.init_args.flip": "false",
        "trainer.max_steps": "1",
        "trainer.limit_train_batches": "1",
        "trainer.limit_val_batches": "1",
        "trainer.num_sanity_val_steps": "0",
        "trainer.log_every_n_steps": "1",
        "trainer.accelerator": "cpu",
        "trainer.devices": "1",
        "trainer.num_nodes": "1",
        "trainer.strategy": "auto",
        "trainer.precision": "32-true",
        "trainer.sync_batchnorm": "false",
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
    }
    model_args = _load(config)["model"].get("init_args") or {}
    if "clip_len" in model_args:
        args["model.init_args.clip_len"] = "4"  # the statistics task: must equal the data's
    if str(model_args.get("backbone", "")).startswith("vit_"):  # VideoMAE needs a video ViT
        args["model.init_args.backbone"] = "vit_tiny_8"
        args["model.init_args.backbone_kwargs"] = "{dim: 32, depth: 1, heads: 2}"
    if "tasks" in model_args:  # a task mixture: the same for its members
        tasks = {
            name: {**spec, "init_args": {**(spec.get("init_args") or {})}}
            for name, spec in model_args["tasks"].items()
        }
        for spec in tasks.values():
            if "clip_len" in spec["init_args"]:
                spec["init_args"]["clip_len"] = 4
        args["model.init_args.tasks"] = json.dumps(tasks)
    return [f"--{name}={value}" for name, value in args.items()]


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=_ids(RUN_CONFIGS))
def test_run_config_trains_one_step(
    config: Path,
    tiny_synthetic: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = cpu_overrides(config, tiny_synthetic, tmp_path / "cache")
    assert main(["fit", "--config", str(config), *overrides]) == 0
    (metrics,) = (tmp_path / "runs").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 1 and math.isfinite(losses[0]), f"{config}: {rows}"
    assert (metrics.parent / "config.yaml").is_file()


# Paper config -> the backbone (name, builder kwargs) of that paper's official code.
PAPER_BACKBONES = {
    "clip_order/c3d.yaml": ("c3d", {"pool5": False}),
    "clip_order/r2plus1d_10.yaml": ("r2plus1d_10", {}),
    "clip_order/r3d_10.yaml": ("r3d_10", {}),
    "cvrl/r3d_50_k400.yaml": ("r3d_50", {}),
    "cvrl/r3d_50_k600.yaml": ("r3d_50", {}),
    "playback_rate/c3d.yaml": ("c3d", {"pool5": False}),
    "playback_rate/r2plus1d_10.yaml": ("r2plus1d_10", {}),
    "playback_rate/r3d_10.yaml": ("r3d_10", {}),
    "rotation/r3d_18_hara.yaml": ("r3d_18_hara", {}),
    "rspnet/c3d.yaml": ("c3d", {"pool5": False}),
    "rspnet/r2plus1d_10.yaml": ("r2plus1d_10", {}),
    "rspnet/r3d_18_hara.yaml": ("r3d_18_hara", {}),
    "statistics/sts_c3d.yaml": ("c3d", {"pool5": False}),
    "statistics/sts_r2plus1d_10.yaml": ("r2plus1d_10", {}),
    "statistics/sts_r3d_10.yaml": ("r3d_10", {}),
}


@pytest.mark.parametrize("config", sorted(PAPER_BACKBONES))
def test_paper_config_builds_its_papers_backbone(config: str) -> None:
    """The training test swaps the backbone for a tiny one: here each paper config's own
    backbone is built (on the meta device) from the config's name and kwargs."""
    import torch

    from vssl import backbones

    init = _load(CONFIGS / config)["model"]["init_args"]
    name, kwargs = init["backbone"], init.get("backbone_kwargs") or {}
    assert (name, kwargs) == PAPER_BACKBONES[config]
    with torch.device("meta"):
        model = backbones.build(name, **kwargs).eval()
    clip_len, crop = (
        _load(CONFIGS / config)["data"]["init_args"][k] for k in ("clip_len", "crop_size")
    )
    x = torch.empty(1, 3, clip_len, crop, crop, device="meta")
    assert model(x).shape == (1, model.out_dim)


@pytest.fixture(autouse=True)
def _quiet_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when sys.argv (pytest's) has arguments besides ``args``."""
    monkeypatch.setattr("sys.argv", ["vssl"])


def _print_config(args: list[str], capsys: pytest.CaptureFixture) -> dict:
    """The config the CLI resolves from ``args`` (parse only: --print_config, no training)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("preset", DATA_PRESETS, ids=_ids(DATA_PRESETS))
def test_data_preset_combines_with_a_task_config(
    preset: Path, capsys: pytest.CaptureFixture
) -> None:
    task = CONFIGS / "cvrl" / "r3d_18.yaml"
    resolved = _print_config(["--config", str(task), "--config", str(preset)], capsys)
    data = resolved["data"]["init_args"]
    for key, value in _load(preset)["data"]["init_args"].items():
        assert data[key] == value, key
    # the task's clip geometry and model stay as the task config set them
    task_data = _load(task)["data"]["init_args"]
    assert (data["clip_len"], data["crop_size"]) == (task_data["clip_len"], task_data["crop_size"])
    assert resolved["model"]["init_args"]["backbone"] == "r3d_18"


def test_synthetic_preset_trains(
    tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synthetic preset (layout, splits, generator settings) on a paper config trains."""
    monkeypatch.chdir(tmp_path)
    task = CONFIGS / "rspnet" / "r3d_18_hara.yaml"
    preset_keys = ("layout", "train_split", "val_split", "annotations", "synthetic", "flip")
    overrides = [
        a
        for a in cpu_overrides(task, tiny_synthetic, tmp_path / "cache")
        if not a.startswith(tuple(f"--data.init_args.{k}=" for k in preset_keys))
    ]
    # the fixture's generator settings, so the preset finds the dataset instead of writing one
    fixture = "{classes: 4, videos_per_class: 4, frames: 16, size: 32, seed: 0}"
    args = ["fit", "--config", str(task), "--config", str(CONFIGS / "data" / "synthetic.yaml")]
    assert main([*args, *overrides, f"--data.init_args.synthetic={fixture}"]) == 0
    (config,) = (tmp_path / "runs").rglob("config.yaml")
    data = yaml.safe_load(config.read_text())["data"]["init_args"]
    assert (data["layout"], data["val_split"], data["flip"]) == ("folder", "test", False)


# ---- sweeps ---------------------------------------------------------------------------------


def draw(spec: dict, rng: random.Random) -> object:
    """One value from a wandb sweep parameter spec (the kinds the shipped sweeps use)."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    kind = spec.get("distribution", "uniform")
    low, high = spec["min"], spec["max"]
    if kind == "uniform":
        return rng.uniform(low, high)
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if kind == "int_uniform":
        return rng.randint(low, high)
    raise AssertionError(f"the test does not know distribution {kind!r}: teach draw() about it")


def agent_command(sweep: dict, params: dict[str, object]) -> list[str]:
    """The command line the wandb agent starts for one run: ``command`` with ``${args}`` made by
    wandb's own formatter (``--name=value``, Python ``str()`` of the value)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    variables = sweep_utils.create_sweep_command_args(
        {"args": {name: {"value": value} for name, value in params.items()}}
    )
    variables["env"] = []  # /usr/bin/env: passes the environment on, adds no argument
    command = []
    for part in sweep_utils.create_sweep_command(list(sweep["command"])):
        is_macro = part.startswith("${") and part.endswith("}")
        command += variables[part[2:-1]] if is_macro else [part]
    return command


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=_ids(SWEEPS))
def test_sweep_arguments_are_accepted(
    sweep_file: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the agent runs in the repository root: config paths are relative
    sweep = _load(sweep_file)
    assert sweep["method"] in ("grid", "random", "bayes")
    assert {"name", "goal"} <= set(sweep["metric"])
    assert (REPO / sweep["program"]).is_file()
    rng = random.Random(0)
    for _ in range(3):
        params = {name: draw(spec, rng) for name, spec in sweep["parameters"].items()}
        command = agent_command(sweep, params)
        assert command[:5] == ["python", "-m", "vssl", "fit", "--config"]
        last_config = max(i for i, part in enumerate(command) if part == "--config")
        # the agent's --name=value come after every --config, so they override the files
        assert command[last_config + 2 :] == [f"--{k}={v}" for k, v in params.items()], command
        resolved = _print_config(command[4:], capsys)
        for name, value in params.items():
            node = resolved
            for key in name.split("."):
                node = node[key]
            assert node == (pytest.approx(value) if isinstance(value, float) else value), name


# ---- wandb ----------------------------------------------------------------------------------


def test_wandb_offline_runs_finish_in_their_own_folders(
    tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one sweep command in one folder: each finishes offline, writes its wandb run
    folder with the resolved config, and has its own log folder (no config.yaml collision)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(tiny_synthetic, tmp_path / "cache", max_steps=1, limit_val_batches=1)
    config["data"]["init_args"]["num_workers"] = 0
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    base = ["fit", "--config", "fit.yaml", "--config", str(CONFIGS / "loggers" / "wandb.yaml")]
    run_vssl([*base, "--model.init_args.lr=0.001"], cwd=tmp_path)
    run_vssl([*base, "--model.init_args.lr=0.01"], cwd=tmp_path)

    versions = sorted((tmp_path / "runs" / "vssl").iterdir())
    assert [v.name for v in versions] == ["version_0", "version_1"]
    wandb_runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2
    lrs = []
    for version in versions:
        saved = yaml.safe_load((version / "config.yaml").read_text())
        lrs.append(saved["model"]["init_args"]["lr"])
        assert (version / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((version / "versions.json").read_text())["vssl"]
    assert lrs == [0.001, 0.01]
    logged = sorted(
        yaml.safe_load((run / "files" / "vssl_config.yaml").read_text())["model"]["init_args"]["lr"]
        for run in wandb_runs
    )
    assert logged == [0.001, 0.01]
    for run in wandb_runs:
        assert list(run.glob("run-*.wandb")), f"{run}: no wandb run log"
