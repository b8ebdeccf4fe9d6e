"""Every shipped YAML works: run configs train a step, presets combine, sweeps' arguments parse.

Run configs train in this process through ``vssl.cli.main`` (one import of the stack for all of
them) with CPU-sized overrides after the ``--config``; the wandb runs go through the real
command line in a subprocess, as a sweep agent starts them. A run config holds only what differs
from the code's defaults, takes its dataset from a preset (``config: ../data/X.yaml``, its last
key) unless it is a synthetic one, and logs to ``runs/<its path under configs/>``.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import math
import random
from pathlib import Path
from typing import Any

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
GRIDS = sorted((CONFIGS / "bench").glob("*.yaml"))  # vssl bench grids: tests/test_bench.py


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CONFIGS)) for p in paths]


def test_every_yaml_is_a_run_config_a_preset_or_a_sweep() -> None:
    """A new kind of YAML under configs/ needs a test here before it ships."""
    loggers = sorted((CONFIGS / "loggers").glob("*.yaml"))
    assert len(RUN_CONFIGS) >= 28
    assert {p.stem for p in DATA_PRESETS} == {
        "ucf101",
        "hmdb51",
        "kinetics400",
        "ssv2",
        "synthetic",
        "moving_mnist",
        "diving48",
    }
    assert len(SWEEPS) == 3
    assert sorted(RUN_CONFIGS + DATA_PRESETS + SWEEPS + GRIDS + loggers) == ALL_YAML


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
    model = _load(config)["model"]
    model_args = model.get("init_args") or {}
    if model["class_path"].endswith("SiamMAE"):  # an image ViT (frame pairs)
        args["model.init_args.backbone"] = "vit_tiny_8_image"
        args["model.init_args.backbone_kwargs"] = "{dim: 32, depth: 1, heads: 2}"
    if model["class_path"].endswith("SpatioTemporalStatistics"):
        args["model.init_args.clip_len"] = "4"  # the statistics task: must equal the data's
    if model["class_path"].endswith(("VideoMAE", "VJEPA", "VATT")):  # these need a video ViT
        args["model.init_args.backbone"] = "vit_tiny_8"
        args["model.init_args.backbone_kwargs"] = "{dim: 32, depth: 1, heads: 2}"
    if model["class_path"].endswith("AVID"):  # and a tiny audio network
        args["model.init_args.audio_backbone"] = "audio_tiny"
        args["model.init_args.audio_backbone_kwargs"] = "{width: 4}"
    if model["class_path"].endswith("VATT"):  # a tiny waveform transformer
        args["model.init_args.audio_backbone"] = "vatt_audio_tiny"
        args["model.init_args.audio_backbone_kwargs"] = "{dim: 32, depth: 1, heads: 2}"
    if "tasks" in model_args:  # a task mixture: the same for its members
        tasks = {
            name: {**spec, "init_args": {**(spec.get("init_args") or {})}}
            for name, spec in model_args["tasks"].items()
        }
        for spec in tasks.values():
            if spec["class_path"].endswith("SpatioTemporalStatistics"):
                spec["init_args"]["clip_len"] = 4
        args["model.init_args.tasks"] = json.dumps(tasks)
    return [f"--{name}={value}" for name, value in args.items()]


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def step_settings(config: Path) -> str:
    """What one CPU step of ``config`` depends on, as canonical JSON: the file with its included
    preset merged in, the `cpu_overrides` applied and the trainer's logger left out (its name
    only says where the logs go)."""
    cfg = _load(config)
    if "config" in cfg:
        preset = _load((config.parent / cfg.pop("config")).resolve())["data"]
        own = cfg["data"]
        init_args = {**own.get("init_args", {}), **preset.get("init_args", {})}
        cfg["data"] = {**own, **preset, "init_args": init_args}
    for arg in cpu_overrides(config, Path("ROOT"), Path("CACHE")):
        name, _, value = arg[2:].partition("=")
        _set(cfg, name, value)
    cfg.get("trainer", {}).pop("logger", None)
    return json.dumps(cfg, sort_keys=True, default=str)


#: Run configs whose one CPU step is the same: equal `step_settings`. The overrides replace the
#: backbone by a tiny one (each paper backbone is built by
#: test_paper_config_builds_its_papers_backbone), the dataset, the clip geometry and the
#: hardware, so paper configs of one task that differ only in their backbone train the same
#: step; any other difference (task class or option, augmentation, head, data or trainer
#: setting, top-level key) makes a group of its own. Each group's first config (by path) trains
#: one step; the others are parsed and their task and datamodule built, with one training batch.
STEP_GROUPS: dict[str, list[Path]] = {}
for _config in RUN_CONFIGS:
    STEP_GROUPS.setdefault(step_settings(_config), []).append(_config)
TRAINED = {group[0] for group in STEP_GROUPS.values()}


def test_step_groups_join_only_configs_that_differ_in_the_backbone() -> None:
    """A shared group is one task class with the same init arguments but the backbone's."""
    for group in STEP_GROUPS.values():
        models = [_load(p)["model"] for p in group]
        assert len({m["class_path"] for m in models}) == 1, group
        rest = {
            json.dumps(
                {
                    k: v
                    for k, v in (m.get("init_args") or {}).items()
                    if k not in ("backbone", "backbone_kwargs")
                },
                sort_keys=True,
            )
            for m in models
        }
        assert len(rest) == 1, group
    groups = list(STEP_GROUPS.values())
    assert [CONFIGS / "clip_order/c3d.yaml", CONFIGS / "clip_order/r3d_10.yaml"] in groups
    # a different epoch count changes the learning-rate schedule of the step: its own group
    assert [CONFIGS / "cvrl/r3d_50_k600.yaml"] in groups
    assert CONFIGS / "quickstart.yaml" in TRAINED


def _build_only(built: list) -> Any:
    """A ``Trainer.fit`` that does everything but the step: attaches the task, prepares and
    sets up the datamodule with the task's clip pipeline and loads one training batch."""

    def fit(trainer: Any, model: Any, datamodule: Any = None, **_: Any) -> None:
        trainer.strategy.connect(model)
        datamodule.trainer = trainer
        datamodule.prepare_data()
        datamodule.setup("fit")
        built.append((model, datamodule, next(iter(datamodule.train_dataloader()))))

    return fit


@pytest.fixture(scope="session")
def tiny_synthetic_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_synthetic` with its sound track (make_synthetic(audio=True)), for AVID."""
    from vssl.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("data") / "synthetic_audio"
    return make_synthetic(root, classes=4, videos_per_class=4, frames=16, size=32, audio=True)


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=_ids(RUN_CONFIGS))
def test_run_config_trains_one_step(
    config: Path,
    tiny_synthetic: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    """One training step for each `STEP_GROUPS` group; the group's other configs are built."""
    monkeypatch.chdir(tmp_path)
    root = tiny_synthetic
    if _load(config)["model"]["class_path"].endswith(("AVID", "VATT")):  # videos with sound
        root = request.getfixturevalue("tiny_synthetic_audio")
    overrides = cpu_overrides(config, root, tmp_path / "cache")
    if _load(config)["model"]["class_path"].endswith("Distillation"):  # a real teacher file
        overrides.append(
            f"--model.init_args.teachers=[{request.getfixturevalue('fit_checkpoint')}]"
        )
    if config not in TRAINED:  # its group's first config trains the same step
        from lightning.pytorch import Trainer

        from vssl.data.datamodule import VideoDataModule

        built: list = []
        monkeypatch.setattr(Trainer, "fit", _build_only(built))
        assert main(["fit", "--config", str(config), *overrides]) == 0
        ((model, datamodule, batch),) = built
        assert type(model) is _class(_load(config)["model"]["class_path"])
        assert isinstance(datamodule, VideoDataModule) and model.num_classes == 4
        assert len(batch) > 0
        return
    assert main(["fit", "--config", str(config), *overrides]) == 0
    (metrics,) = (tmp_path / "runs").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 1 and math.isfinite(losses[0]), f"{config}: {rows}"
    assert (metrics.parent / "config.yaml").is_file()


# Paper config and backbone override (None: the config's own; README gives the overrides) ->
# the backbone (name, builder kwargs) of that paper's official code.
PAPER_BACKBONES = {
    ("clip_order/c3d.yaml", None): ("c3d", {"pool5": False}),
    ("clip_order/r3d_10.yaml", None): ("r3d_10", {}),
    ("clip_order/r3d_10.yaml", "r2plus1d_10"): ("r2plus1d_10", {}),
    ("cvrl/r3d_50_k400.yaml", None): ("r3d_50", {}),
    ("cvrl/r3d_50_k600.yaml", None): ("r3d_50", {}),
    ("playback_rate/c3d.yaml", None): ("c3d", {"pool5": False}),
    ("playback_rate/r3d_10.yaml", None): ("r3d_10", {}),
    ("playback_rate/r3d_10.yaml", "r2plus1d_10"): ("r2plus1d_10", {}),
    ("rotation/r3d_18_hara.yaml", None): ("r3d_18_hara", {}),
    ("rspnet/c3d.yaml", None): ("c3d", {"pool5": False}),
    ("rspnet/r2plus1d_10.yaml", None): ("r2plus1d_10", {}),
    ("rspnet/r3d_18_hara.yaml", None): ("r3d_18_hara", {}),
    ("statistics/sts_c3d.yaml", None): ("c3d", {"pool5": False}),
    ("statistics/sts_r3d_10.yaml", None): ("r3d_10", {}),
    ("statistics/sts_r3d_10.yaml", "r2plus1d_10"): ("r2plus1d_10", {}),
    ("tdl/c3d.yaml", None): ("c3d", {"pool5": False}),
    ("tdl/r3d_18_hara.yaml", None): ("r3d_18_hara", {}),
}


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _defaults(*functions: Any) -> dict[str, Any]:
    """Keyword defaults of ``functions`` (later ones win), tuples as lists (as YAML gives them)."""
    out: dict[str, Any] = {}
    for function in functions:
        for name, param in inspect.signature(function).parameters.items():
            if param.default is not inspect.Parameter.empty:
                default = param.default
                out[name] = list(default) if isinstance(default, tuple) else default
    return out


def _task_defaults(class_path: str) -> dict[str, Any]:
    """A task's init defaults: its own and, through ``**kwargs``, `VSSLTask`'s."""
    from vssl.tasks.base import VSSLTask

    return _defaults(VSSLTask.__init__, _class(class_path).__init__)


def _builder(name: str) -> Any:
    """The registered builder function of backbone ``name`` (for its keyword defaults)."""
    import vssl.backbones

    for module in vars(vssl.backbones).values():
        if inspect.ismodule(module) and callable(getattr(module, name, None)):
            return getattr(module, name)
    raise AssertionError(f"no builder function named {name!r} in vssl.backbones")


@pytest.mark.parametrize(
    ("config", "override"),
    sorted(PAPER_BACKBONES, key=str),
    ids=[f"{c}{'+' + o if o else ''}" for c, o in sorted(PAPER_BACKBONES, key=str)],
)
def test_paper_config_builds_its_papers_backbone(config: str, override: str | None) -> None:
    """The training test swaps the backbone for a tiny one: here each paper config's own
    backbone is built (on the meta device) from the config's name and kwargs."""
    import torch

    from vssl import backbones

    cfg = _load(CONFIGS / config)
    init = cfg["model"]["init_args"]
    name = override or init.get("backbone", _task_defaults(cfg["model"]["class_path"])["backbone"])
    kwargs = init.get("backbone_kwargs") or {}
    assert (name, kwargs) == PAPER_BACKBONES[config, override]
    with torch.device("meta"):
        model = backbones.build(name, **kwargs).eval()
    clip_len, crop = (cfg["data"]["init_args"][k] for k in ("clip_len", "crop_size"))
    x = torch.empty(1, 3, clip_len, crop, crop, device="meta")
    assert model(x).shape == (1, model.out_dim)


# ---- what a config holds ------------------------------------------------------------------

#: Values a config writes although they are the code's default: the clip geometry of every
#: config (the clip the network sees), and the statistics task's clip length, which must equal
#: the data's (a link the reader should see next to it).
KEPT_DEFAULTS = {"data": {"clip_len", "crop_size"}, "SpatioTemporalStatistics": {"clip_len"}}


def _restated(given: dict[str, Any], defaults: dict[str, Any], kept: set[str] = frozenset()):
    for key, value in given.items():
        if key in defaults and key not in kept and value == defaults[key]:
            yield key, value


def _task_restated(class_path: str, init: dict[str, Any], where: str):
    """``(where.key, value)`` of every init argument (and augment / backbone setting) of a task
    that equals the code's default."""
    from vssl.data.transforms import BatchAugment
    from vssl.tasks.cvrl import CVRL_AUGMENT, CVRL_AUGMENT2
    from vssl.tasks.rspnet import RSPNET_AUGMENT
    from vssl.tasks.tdl import TDL_AUGMENT

    name = class_path.rpartition(".")[2]
    defaults = _task_defaults(class_path)
    for key, value in _restated(init, defaults, KEPT_DEFAULTS.get(name, set())):
        yield f"{where}.{key}", value
    augment_none = {"RSPNet": RSPNET_AUGMENT, "CVRL": CVRL_AUGMENT, "TDL": TDL_AUGMENT}.get(
        name, {}
    )
    if init.get("augment") is not None:
        if init["augment"] == augment_none:
            yield f"{where}.augment", init["augment"]
        for key, value in _restated(init["augment"], _defaults(BatchAugment.__init__)):
            yield f"{where}.augment.{key}", value
    if name == "CVRL" and init.get("augment2") == CVRL_AUGMENT2:
        yield f"{where}.augment2", init["augment2"]
    backbone = init.get("backbone", defaults.get("backbone"))
    if init.get("backbone_kwargs") and backbone:
        builder = _defaults(_builder(backbone))
        for key, value in _restated(init["backbone_kwargs"], builder):
            yield f"{where}.backbone_kwargs.{key}", value
    for member, spec in (init.get("tasks") or {}).items():
        yield from _task_restated(
            spec["class_path"], spec.get("init_args") or {}, f"{where}.tasks.{member}"
        )
    for member, weight in (init.get("weights") or {}).items():
        if weight == 1.0:
            yield f"{where}.weights.{member}", weight


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=_ids(RUN_CONFIGS))
def test_run_config_holds_only_what_differs_from_the_defaults(config: Path) -> None:
    """A value equal to the code's default says nothing and goes stale when the default moves."""
    from lightning.pytorch import Trainer

    from vssl.data.datamodule import VideoDataModule
    from vssl.data.synthetic import make_synthetic

    cfg = _load(config)
    restated = [("seed_everything", 0)] if cfg.get("seed_everything") == 0 else []
    trainer = {k: v for k, v in cfg.get("trainer", {}).items() if k not in ("logger", "callbacks")}
    # the Trainer's None means 50 steps
    restated += _restated(trainer, {**_defaults(Trainer.__init__), "log_every_n_steps": 50})
    for callback in cfg.get("trainer", {}).get("callbacks") or []:
        given = callback.get("init_args") or {}
        restated += _restated(given, _defaults(_class(callback["class_path"]).__init__))
    restated += _task_restated(
        cfg["model"]["class_path"], cfg["model"].get("init_args") or {}, "model"
    )
    data = cfg["data"].get("init_args") or {}
    restated += _restated(data, _defaults(VideoDataModule.__init__), KEPT_DEFAULTS["data"])
    if data.get("synthetic"):
        restated += _restated(data["synthetic"], _defaults(make_synthetic))
    assert not restated, f"{config}: these equal the code's defaults: {restated}"


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=_ids(RUN_CONFIGS))
def test_run_config_logs_to_runs_slash_its_path(config: Path) -> None:
    """``configs/rspnet/c3d.yaml`` logs to ``runs/rspnet/c3d/version_N`` (CSVLogger with the
    CLI's default save_dir ``runs``)."""
    logger = _load(config)["trainer"]["logger"]
    assert logger == {"init_args": {"name": str(config.relative_to(CONFIGS).with_suffix(""))}}


INCLUDING = [p for p in RUN_CONFIGS if "config" in _load(p)]


def test_paper_configs_take_their_dataset_from_a_preset() -> None:
    synthetic = {p for p in RUN_CONFIGS if "synthetic" in _load(p)["data"].get("init_args", {})}
    # the synthetic configs are copied to other folders by benchmarks and tests: no include
    assert not synthetic & set(INCLUDING)
    # the one exception: CVRL's Kinetics-600 run, the Kinetics preset with another root
    rest = set(RUN_CONFIGS) - synthetic - set(INCLUDING)
    assert {str(p.relative_to(CONFIGS)) for p in rest} == {"cvrl/r3d_50_k600.yaml"}


@pytest.mark.parametrize("config", INCLUDING, ids=_ids(INCLUDING))
def test_included_preset_is_last_and_sets_nothing_the_config_sets(config: Path) -> None:
    """jsonargparse applies a ``config:`` key of a file where it stands and the preset's values
    win over the keys above it: the preset must be a dataset preset, the file's last key, and
    set none of the file's own data settings (they would silently be replaced)."""
    cfg = _load(config)
    assert list(cfg)[-1] == "config", f"{config}: the preset is not the last key"
    preset = (config.parent / cfg["config"]).resolve()
    assert preset in DATA_PRESETS, f"{config}: {cfg['config']} is not a configs/data preset"
    assert set(_load(preset)) == {"data"}
    overlap = set(_load(preset)["data"]["init_args"]) & set(cfg["data"].get("init_args", {}))
    assert not overlap, f"{config}: {sorted(overlap)} would be replaced by {cfg['config']}"


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


@pytest.mark.parametrize("config", INCLUDING, ids=_ids(INCLUDING))
def test_included_preset_gives_the_dataset_from_any_folder(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """The included preset is found next to the config (not in the working folder), gives the
    dataset, and the config's own data settings stay; a later preset replaces the dataset."""
    monkeypatch.chdir(tmp_path)
    cfg = _load(config)
    preset = _load(config.parent / cfg["config"])["data"]["init_args"]
    own = cfg["data"]["init_args"]
    data = _print_config(["--config", str(config)], capsys)["data"]["init_args"]
    assert {k: data[k] for k in preset} == preset
    assert {k: data[k] for k in own} == own
    ucf = _load(CONFIGS / "data" / "ucf101.yaml")["data"]["init_args"]
    args = ["--config", str(config), "--config", str(CONFIGS / "data" / "ucf101.yaml")]
    data = _print_config(args, capsys)["data"]["init_args"]
    assert {k: data[k] for k in ucf} == ucf
    assert {k: data[k] for k in own} == own


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
