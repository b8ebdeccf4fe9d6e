"""How fast a benchmark grid's cell runs under different machine settings: torch threads,
DataLoader workers, and any other option of the cell's commands, measured by paired alternation.

Two parts of a cell, each run in this one process, exactly as the grid builds them:

- ``fit``: the pretraining of one grid cell (``vssl bench``'s ``fit_override``: the method's
  configs, then the grid's settings) for ``--epochs`` epochs of ``--batches`` training batches
  each (no validation unless ``--val-batches``); the time of ``Trainer.fit`` from the start of
  its second epoch (steady state: the workers' start-up, once per cell, left out; with one
  epoch, all of it; the CLI's parsing and instantiation are printed apart, once).
- ``eval``: the grid's evaluations of one cell (``Grid.evaluations``: probe and retrieve on
  one evaluation dataset, every corruption), in the order the grid runs them, with a fresh
  feature cache per run (so that probe and retrieve share test features as in a cell).

A setting is ``NAME:KEY=VALUE,KEY=VALUE`` where KEY is ``threads`` (``torch.set_num_threads``
for the run), ``workers`` (the fit's ``data.init_args.num_workers``, the evaluations'
``--workers``), ``batch`` (the evaluations' ``--batch-size``) or, for ``fit``, a dotted option of
the fit command (``model.init_args.channels_last=true``). The first setting is the reference.
Each round runs every setting once, in an order that rotates round by round (so that no setting
is always first or always after the same one); the table gives each setting's median time, and
its median ratio to the reference over the rounds (each ratio from the same round), with their
min-max. Ratios survive a loaded machine (other work takes time from both sides alike); the
machine's load average is printed before and after.

    python benchmarks/cell_speed.py fit --method statistics --data motion --subset 0.25 \\
        --setting base:threads=2,workers=2 --setting t1:threads=1,workers=2 --rounds 5
    python benchmarks/cell_speed.py fit --method vjepa --backbone vit_tiny_8 --batches 6
    python benchmarks/cell_speed.py eval --method statistics --data motion --subset 0.25 \\
        --eval-data mnist --setting base:threads=2,workers=2,batch=16 --setting t1:threads=1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from vssl.bench import Cell, Grid

FIT_KEYS = {"threads", "workers"}
EVAL_KEYS = {"threads", "workers", "batch"}


def parse_setting(text: str, part: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE,...`` as (name, {key: value}); a bare ``KEY=VALUE,...`` is its own name."""
    name, _, body = text.rpartition(":") if ":" in text else (text, "", text)
    values = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--setting {text!r}: {item!r} is not KEY=VALUE")
        if part == "eval" and key not in EVAL_KEYS:
            raise SystemExit(f"--setting {text!r}: eval keys are {', '.join(sorted(EVAL_KEYS))}")
        values[key] = value
    return name or body, values


def cell_of(grid: Grid, args: argparse.Namespace) -> Cell:
    """The grid's cell named by the options."""
    backbone = args.backbone or (grid.methods[args.method].get("backbones") or grid.backbones)[0]
    pretrains = bool(grid.methods[args.method]["config"])
    cell = Cell(
        args.method,
        backbone,
        args.data if pretrains else None,
        args.subset if pretrains else None,
        0,
    )
    if cell not in grid.cells:
        raise SystemExit(f"{cell.name} is not a cell of {grid.file}")
    return cell


def fit_once(
    grid: Grid, cell: Cell, values: dict[str, str], args: argparse.Namespace, work: Path
) -> tuple[float, float]:
    """One pretraining run of ``cell`` with the setting ``values``: (setup s, Trainer.fit s)."""
    from vssl.cli import TRAINER_DEFAULTS, _quiet_lightning
    from vssl.data.datamodule import VideoDataModule
    from vssl.tasks.base import VSSLTask

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    override = grid.fit_override(cell)
    trainer = override["trainer"]
    trainer["logger"]["init_args"]["save_dir"] = str(work)
    trainer.update(
        max_epochs=args.epochs,
        limit_train_batches=args.batches,
        limit_val_batches=args.val_batches,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
    )
    data = override.setdefault("data", {}).setdefault("init_args", {})
    if "workers" in values:
        data["num_workers"] = int(values["workers"])
    extra = []
    for key, value in values.items():
        if key not in FIT_KEYS:
            extra += [f"--{key}", value]
    (work / "grid.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    argv = []
    for config in grid.methods[cell.method]["config"]:
        argv += ["--config", str(config)]
    argv += ["--config", str(work / "grid.yaml"), *extra]
    _quiet_lightning()
    _FitCLI = _fit_cli()
    with _threads(values), _quiet():
        start = time.perf_counter()
        cli = _FitCLI(
            VSSLTask,
            VideoDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"allow_abbrev": False, "exit_on_error": False},
            args=["fit", *argv],
        )
        setup = cli.fit_start - start
        starts = cli.epochs.starts
        # From the second epoch's start: steady state, without the workers' start-up.
        took = cli.fit_end - (starts[1] if len(starts) > 1 else cli.fit_start)
    return setup, took


def eval_once(
    grid: Grid, cell: Cell, values: dict[str, str], args: argparse.Namespace, work: Path
) -> tuple[float, float]:
    """The grid's evaluations of ``cell`` on ``--eval-data`` with the setting ``values``, a fresh
    feature cache: (0, seconds)."""
    from vssl.cli import main as vssl_main

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    extra = ["--cache-dir", str(work / "cache")]
    if "workers" in values:
        extra += ["--workers", values["workers"]]
    if "batch" in values:
        extra += ["--batch-size", values["batch"]]
    commands = [c for d, _, _, c in grid.evaluations(cell) if d == args.eval_data]
    with _threads(values), _quiet():
        start = time.perf_counter()
        for n, command in enumerate(commands):
            status = vssl_main([*command, *extra, "--out", str(work / f"{n}.json")])
            if status != 0:
                raise SystemExit(f"evaluation failed ({status}): {' '.join(command)}")
        took = time.perf_counter() - start
    return 0.0, took


def _fit_cli() -> type:
    from lightning.pytorch import Callback

    from vssl.cli import VSSLCLI

    class EpochTimes(Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.starts.append(time.perf_counter())

    class FitCLI(VSSLCLI):
        """VSSLCLI that times its subcommand (``Trainer.fit``) apart from the parsing and
        instantiation before it, and the start of every training epoch."""

        def _run_subcommand(self, subcommand: str) -> None:
            self.epochs = EpochTimes()
            self.trainer.callbacks.append(self.epochs)
            self.fit_start = time.perf_counter()
            super()._run_subcommand(subcommand)
            self.fit_end = time.perf_counter()

    return FitCLI


@contextlib.contextmanager
def _threads(values: dict[str, str]) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(int(values.get("threads", before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet() -> Any:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            yield
    except BaseException:
        sys.stderr.write(out.getvalue()[-4000:])
        raise


def _silence_lightning() -> None:
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["fit", "eval"])
    parser.add_argument("--grid", default="configs/bench/cpu.yaml")
    parser.add_argument("--method", default="statistics")
    parser.add_argument("--backbone", default=None, help="default: the method's first")
    parser.add_argument("--data", default="motion", help="the cell's pretraining data")
    parser.add_argument(
        "--subset",
        type=lambda text: None if text.lower() == "none" else float(text),
        default=0.25,
        help="the cell's subset (none: a grid without subsets)",
    )
    parser.add_argument("--eval-data", default="mnist", help="eval: the evaluation dataset")
    parser.add_argument("--batches", type=int, default=9, help="fit: training batches an epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-batches", type=int, default=0, help="fit: validation batches")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--setting",
        action="append",
        default=None,
        help="NAME:KEY=VALUE,... (repeat; the first is the reference)",
    )
    args = parser.parse_args(argv)
    _silence_lightning()
    settings = [
        parse_setting(s, args.part)
        for s in args.setting or ["threads2-workers2:threads=2,workers=2", "t1:threads=1"]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        # fit writes its runs under tmp; eval reads the finished cell's checkpoint and writes
        # its results and feature cache under tmp.
        grid = Grid.load(args.grid, out=Path(tmp) / "grid" if args.part == "fit" else None)
        cell = cell_of(grid, args)
        if args.part == "fit" and not grid.methods[cell.method]["config"]:
            raise SystemExit(f"{cell.method} has no config: its cells have no pretraining")
        if args.part == "eval" and grid.methods[cell.method]["config"]:
            if not grid.checkpoint(cell).is_file():
                raise SystemExit(f"eval needs the cell's checkpoint {grid.checkpoint(cell)}")
        once = fit_once if args.part == "fit" else eval_once
        print(f"{args.part} of {cell.name}; load average before: {_load()}", flush=True)
        name, values = settings[0]
        setup, warm = once(grid, cell, values, args, Path(tmp) / "run")
        print(f"warm-up ({name}): setup {setup:.1f} s, run {warm:.1f} s", flush=True)
        times: dict[str, list[float]] = {n: [] for n, _ in settings}
        for r in range(args.rounds):
            order = settings[r % len(settings) :] + settings[: r % len(settings)]
            if r % 2:
                order = order[::-1]
            for name, values in order:
                _, took = once(grid, cell, values, args, Path(tmp) / "run")
                times[name].append(took)
            print(
                f"round {r + 1}: "
                + ", ".join(f"{n} {times[n][-1]:.1f} s" for n, _ in settings)
                + f"  (load {_load()})",
                flush=True,
            )
    ref = settings[0][0]
    print(f"\n| setting | median s | ratio to {ref} (median, min-max over rounds) |")
    print("|---|---:|---|")
    for name, values in settings:
        ratios = [t / b for t, b in zip(times[name], times[ref], strict=True)]
        spec = ",".join(f"{k}={v}" for k, v in values.items())
        print(
            f"| {name} ({spec}) | {statistics.median(times[name]):.1f} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
        )
    print(f"load average after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
