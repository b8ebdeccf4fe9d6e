"""``python -m vssl bench GRID.yaml``: a benchmark grid in which every cell is an ordinary run.

The grid follows the axes of "A Large-Scale Analysis on Contextual Self-Supervised Video
Representation Learning" (Kumar et al., 2025): methods x backbones x pretraining data x
pretraining subset sizes x seeds, each pretrained model evaluated by frozen-feature protocols on
evaluation datasets, clean and corrupted. A grid file::

    out: runs/bench/cpu                  # every cell is a folder under out/cells
    seeds: [0, 1, 2]
    methods:                             # name -> fit config file(s), composed in order
      rspnet: {config: configs/rspnet/synthetic_tiny.yaml}
      videomae: {config: configs/videomae/synthetic_tiny.yaml, backbones: [vit_tiny]}
      supervised: {config: configs/quickstart.yaml}
      random: {}                         # no config: the randomly initialised backbone
                                         # (named random: results.md adds "vs random")
      distill:                           # a method whose teachers are other cells' checkpoints
        config: configs/distillation/synthetic_tiny.yaml
        teachers: [rspnet, {method: videomae, backbone: vit_tiny}]
      # a method's own evaluation datasets, besides evaluate.data (its pretraining clips, say):
      # cvrl: {config: ..., evaluate: {motion_8x2: {root: data/synthetic, clip_len: 8, stride: 2}}}
      # a method's own trainer / checkpoint / model / data settings, over the grid's:
      # statistics: {config: ..., trainer: {max_epochs: 40}}
    backbones: [tiny_r2plus1d]           # model.init_args.backbone of every method (optional;
                                         # a method's own ``backbones`` replace them)
    pretrain_data:                       # name -> data.init_args of the pretraining runs
      motion: {root: data/synthetic}
    subsets: [0.25, 1.0]                 # data.init_args.subset (optional; null: all videos)
    trainer: {max_epochs: 10}            # trainer settings of every pretraining run
    checkpoint: {save_top_k: 0}          # the fit's checkpoint callback (ModelCheckpoint)
    backbone_kwargs:                     # a backbone's builder arguments wherever it is used
      vit_tiny_8_image: {patch_size: 4}  # (a pretraining cell's model and random init alike)
    threads: 1                           # torch's intra-op threads of every pretraining fit
                                         # (optional; default: torch's own, one per core)
    evaluate:
      data:                              # name -> options of probe / retrieve
        motion: {root: data/synthetic, layout: folder}
      settings: {clip_len: 16, crop_size: 32, decode_size: 32}   # every evaluation's options
      protocols: {probe: {steps: 100}, retrieve: {}}
      corruptions: [clean, gaussian-3]   # name-severity (vssl.data.corruptions)

``trainer`` and ``checkpoint`` (the grid's, then a method's own over them) are checked against
the arguments of Lightning's ``Trainer`` and ``ModelCheckpoint``. A grid that only compares
last checkpoints can validate seldom (``trainer: {check_val_every_n_epoch: 10}``) and keep no
best checkpoint (``checkpoint: {monitor: null, save_top_k: 0, save_on_train_epoch_end: true}``):
``last.ckpt`` is then still written at every epoch end, so an interrupted cell resumes from its
last finished epoch.

``threads`` reaches each pretraining as ``OMP_NUM_THREADS`` (its DataLoader workers keep torch's
one thread each); ``commands.sh`` shows it before each fit command. Evaluations (run in the
bench process) keep torch's default: on the idle 2-core machine one thread made them slower. It is not part of a cell's identity or settings:
it changes how fast a cell runs, not what it computes (beyond the order of floating-point
sums), so cells finished before it was set are kept. On a small machine with tiny models one
thread beside the workers avoids oversubscribing the cores (docs/benchmarks.md).

A cell is one (method, backbone, pretraining data, subset, seed); the random baseline has no
pretraining, so its cells do not vary with the pretraining data or subset. Each cell runs
``python -m vssl fit`` (its run folder ``cells/<cell>/fit``, with ``config.yaml`` and
``checkpoints/``) and then ``python -m vssl probe`` / ``retrieve`` for every evaluation dataset
and corruption (``cells/<cell>/eval/*.json``), each command written to ``cells/<cell>/commands.sh``
and its output to ``cells/<cell>/logs/``, so any cell can be re-run or inspected alone. Finished
steps are skipped on the next run; an interrupted pretraining continues from its ``last.ckpt``;
``--list`` numbers the cells and ``--cell N`` runs one (a SLURM array task, a sweep agent;
``--no-results`` leaves the results to one ``--collect`` at the end); ``--jobs N`` runs N cells
at a time on this machine, each in its own process (a cell's lock keeps a second process off
it, and a distilled cell waits for its teachers);
``--collect`` only gathers what the cells wrote into ``results.json`` (every setting of every
evaluation), ``results.md`` (mean and standard error over seeds, or over the test videos with
one seed) and charts.

A method with ``teachers`` (a `vssl.tasks.Distillation` config) is distilled from the
checkpoints of other methods' cells: for its cell (backbone B, data D, subset S, seed s) each
teacher is the cell of that method with backbone B (or the teacher's own ``backbone``), data D,
subset S and seed s, whose ``last.ckpt`` becomes ``model.init_args.teachers``. A teacher method
must come before the method in ``methods``, so that in the grid's order (and ``--list``'s
numbers) every teacher cell runs before the cells it teaches; ``--list`` shows each cell's
teacher cells, and ``--cell N`` of a cell whose teachers have not finished pretraining stops,
naming the cells to run first. The cell's ``teachers.json`` records the teacher checkpoints it
was trained from (path, size, SHA-256); a cell resumed after a teacher changed is refused.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vssl.data.corruptions import SEVERITIES
from vssl.errors import InvalidInputError, MissingInputError, UserError

GRID_KEYS = {
    "out",
    "seeds",
    "methods",
    "backbones",
    "pretrain_data",
    "subsets",
    "trainer",
    "checkpoint",
    "backbone_kwargs",
    "evaluate",
    "threads",
}
EVAL_KEYS = {"data", "settings", "protocols", "corruptions"}
METHOD_KEYS = {
    "config",
    "backbones",
    "model",
    "data",
    "trainer",
    "checkpoint",
    "evaluate",
    "teachers",
}
TEACHER_KEYS = {"method", "backbone"}
PROTOCOLS = ("probe", "retrieve")
# The figure of each protocol that results.md and the charts report: (label, path in the JSON).
HEADLINES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "probe": [
        ("linear", ("linear", "1.0")),
        ("linear 10%", ("linear", "0.1")),
        ("linear 1%", ("linear", "0.01")),
        ("kNN", ("knn",)),
    ],
    "retrieve": [("R@1", ("R@1",)), ("R@5", ("R@5",)), ("R@10", ("R@10",))],
}
#: The baseline method of the "vs random" column: its cells have no pretraining.
RANDOM = "random"


def _close(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _check_keys(where: str, given: dict[str, Any], allowed: set[str]) -> None:
    for key in given:
        if key not in allowed:
            raise InvalidInputError(
                f"{where}: unknown key {key!r}{_close(key, allowed)}; "
                f"expected {', '.join(sorted(allowed))}"
            )


def _check_arguments(where: str, given: Any, target: Any) -> dict[str, Any]:
    """``given`` as a mapping of keyword arguments of ``target`` (a class), each one it takes."""
    import inspect

    if given is None:
        return {}
    if not isinstance(given, dict):
        raise InvalidInputError(f"{where}: a mapping of {target.__name__} arguments, got {given!r}")
    allowed = set(inspect.signature(target.__init__).parameters) - {"self", "args", "kwargs"}
    _check_keys(where, given, allowed)
    return given


def _trainer_and_checkpoint(where: str, spec: dict[str, Any]) -> None:
    """Checks ``spec``'s ``trainer`` and ``checkpoint`` (a grid's or a method's) in place."""
    if spec.get("trainer") is None and spec.get("checkpoint") is None:
        return
    from lightning.pytorch import Trainer

    from vssl.callbacks import Checkpoint

    spec["trainer"] = _check_arguments(f"{where}trainer", spec.get("trainer"), Trainer)
    spec["checkpoint"] = _check_arguments(f"{where}checkpoint", spec.get("checkpoint"), Checkpoint)


def _teachers(
    file: Path, name: str, spec: dict[str, Any], methods: dict[str, Any]
) -> list[tuple[str, str | None]]:
    """``methods.NAME.teachers`` as ``(method, backbone or None)``: each a pretraining method
    listed before ``name`` (so that its cells run first)."""
    given = spec.get("teachers") or []
    where = f"{file}: methods.{name}.teachers"
    if not isinstance(given, list):
        raise InvalidInputError(
            f"{where}: a list of methods (or {{method: M, backbone: B}}), got {given!r}"
        )
    if given and not spec["config"]:
        raise InvalidInputError(f"{where}: a method with teachers needs a (distillation) config")
    order = list(methods)
    out = []
    for teacher in given:
        if isinstance(teacher, dict):
            _check_keys(f"{where}: {teacher}", teacher, TEACHER_KEYS)
            method, backbone = teacher.get("method"), teacher.get("backbone")
        else:
            method, backbone = teacher, None
        if method not in methods:
            raise InvalidInputError(
                f"{where}: unknown method {method!r}{_close(str(method), order)}; the grid's "
                f"methods are {', '.join(order)}"
            )
        if order.index(method) >= order.index(name):
            raise InvalidInputError(
                f"{where}: {method} must come before {name} in methods, so that its cells run first"
            )
        if not (methods[method].get("config") or []):
            raise InvalidInputError(
                f"{where}: {method} has no config, so its cells have no checkpoint to teach with"
            )
        out.append((str(method), None if backbone is None else str(backbone)))
    return out


def _name(text: str) -> str:
    """A file-name-safe spelling of a grid value."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(text)).strip("_") or "none"


@dataclass(frozen=True)
class Cell:
    """One pretrained model of the grid and its evaluations."""

    method: str
    backbone: str | None
    data: str | None
    subset: float | int | None
    seed: int

    @property
    def name(self) -> str:
        """``method-backbone[-data][-subsetS]-sSEED``, e.g. ``rspnet-tiny3d-motion-subset0.25-s0``."""
        parts = [self.method, self.backbone or "own"]
        if self.data is not None:
            parts.append(self.data)
        if self.subset is not None:
            parts.append(f"subset{self.subset}")
        return "-".join(_name(p) for p in parts) + f"-s{self.seed}"


@dataclass
class Grid:
    """A parsed grid file (see the module notes)."""

    file: Path
    out: Path
    seeds: list[int]
    methods: dict[str, dict[str, Any]]
    backbones: list[str | None]
    pretrain_data: dict[str, dict[str, Any]]
    subsets: list[float | int | None]
    trainer: dict[str, Any]
    eval_data: dict[str, dict[str, Any]]
    eval_settings: dict[str, Any]
    protocols: dict[str, dict[str, Any]]
    corruptions: list[str]
    checkpoint_settings: dict[str, Any] = field(default_factory=dict)
    backbone_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: int | None = None
    cells: list[Cell] = field(default_factory=list)

    @classmethod
    def load(cls, file: str | Path, out: str | Path | None = None) -> Grid:
        """Read and check ``file``; relative config paths are taken from the working folder."""
        path = Path(file)
        if not path.is_file():
            raise MissingInputError(f"{path}: grid file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise InvalidInputError(
                f"{path}: a grid is a mapping of {', '.join(sorted(GRID_KEYS))}"
            )
        _check_keys(str(path), raw, GRID_KEYS)
        _trainer_and_checkpoint(f"{path}: ", raw)
        backbone_kwargs = raw.get("backbone_kwargs") or {}
        if not isinstance(backbone_kwargs, dict) or not all(
            isinstance(v, dict) for v in backbone_kwargs.values()
        ):
            raise InvalidInputError(
                f"{path}: backbone_kwargs maps a backbone name to its builder's arguments "
                f"(vit_tiny_8_image: {{patch_size: 4}}), got {backbone_kwargs!r}"
            )
        threads = raw.get("threads")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise InvalidInputError(
                f"{path}: threads is the number of torch threads of every fit and evaluation, "
                f"a whole number >= 1 (or null: torch's default), got {threads!r}"
            )
        evaluate = raw.get("evaluate") or {}
        _check_keys(f"{path}: evaluate", evaluate, EVAL_KEYS)
        methods = raw.get("methods") or {}
        if not methods:
            raise InvalidInputError(f"{path}: no methods")
        for name, spec in methods.items():
            spec = methods[name] = spec or {}
            _check_keys(f"{path}: methods.{name}", spec, METHOD_KEYS)
            _trainer_and_checkpoint(f"{path}: methods.{name}.", spec)
            extra = spec.get("evaluate") or {}
            if not isinstance(extra, dict):
                raise InvalidInputError(
                    f"{path}: methods.{name}.evaluate is a mapping of evaluation datasets "
                    "(name -> options, as evaluate.data), got {extra!r}"
                )
            for data, options in extra.items():
                if not isinstance(options, dict) or "root" not in options:
                    raise InvalidInputError(f"{path}: methods.{name}.evaluate.{data} needs a root")
            spec["evaluate"] = extra
            configs = spec.get("config") or []
            spec["config"] = [configs] if isinstance(configs, str) else list(configs)
            for config in spec["config"]:
                if not Path(config).is_file():
                    raise MissingInputError(f"{path}: methods.{name}: config {config} not found")
            spec["teachers"] = _teachers(path, name, spec, methods)
        protocols = evaluate.get("protocols") or {"probe": {}}
        for name in protocols:
            if name not in PROTOCOLS:
                raise InvalidInputError(
                    f"{path}: evaluate.protocols: unknown protocol {name!r}{_close(name, PROTOCOLS)}"
                    f"; expected {', '.join(PROTOCOLS)}"
                )
        corruptions = [str(c) for c in evaluate.get("corruptions") or ["clean"]]
        for corruption in corruptions:
            _corruption_args(corruption, path)
        eval_data = evaluate.get("data") or {}
        if not eval_data:
            raise InvalidInputError(f"{path}: evaluate.data names no evaluation dataset")
        for name, spec in eval_data.items():
            if not isinstance(spec, dict) or "root" not in spec:
                raise InvalidInputError(f"{path}: evaluate.data.{name} needs a root")
        grid = cls(
            file=path,
            out=Path(out or raw.get("out") or Path("runs") / "bench" / path.stem),
            seeds=[int(s) for s in raw.get("seeds") or [0]],
            methods=methods,
            backbones=list(raw.get("backbones") or [None]),
            pretrain_data=raw.get("pretrain_data") or {},
            subsets=list(raw.get("subsets") or [None]),
            trainer=raw.get("trainer") or {},
            eval_data=eval_data,
            eval_settings=evaluate.get("settings") or {},
            protocols={k: v or {} for k, v in protocols.items()},
            corruptions=corruptions,
            checkpoint_settings=raw.get("checkpoint") or {},
            backbone_kwargs=backbone_kwargs,
            threads=threads,
        )
        if not grid.pretrain_data and any(m["config"] for m in methods.values()):
            grid.pretrain_data = {"config": {}}  # the configs' own data
        grid.cells = grid._cells()
        names = {cell.name for cell in grid.cells}
        for cell in grid.cells:
            for teacher in grid.teacher_cells(cell):
                if teacher.name not in names:
                    method = teacher.method
                    own = grid.methods[method].get("backbones") or grid.backbones
                    raise InvalidInputError(
                        f"{path}: methods.{cell.method}.teachers: {method} has no cell "
                        f"{teacher.name} to teach {cell.name} (its backbones: "
                        f"{', '.join(map(str, own))}); name one as {{method: {method}, "
                        "backbone: NAME}"
                    )
        return grid

    def _cells(self) -> list[Cell]:
        cells = []
        for method, spec in self.methods.items():
            trains = bool(spec["config"])
            datas = list(self.pretrain_data) if trains else [None]
            subsets = self.subsets if trains else [None]
            backbones = list(spec.get("backbones") or self.backbones)
            for backbone, data, subset, seed in itertools.product(
                backbones, datas, subsets, self.seeds
            ):
                cells.append(Cell(method, backbone, data, subset, seed))
        for cell in cells:
            if cell.backbone is None and not self.methods[cell.method]["config"]:
                raise InvalidInputError(
                    f"{self.file}: methods.{cell.method} has no config, so it is a random "
                    "initialisation: the grid must name its backbones"
                )
        return cells

    def folder(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.name

    def checkpoint(self, cell: Cell) -> Path:
        """The pretrained checkpoint of ``cell`` (there once ``fit.done`` is)."""
        return self.folder(cell) / "fit" / "checkpoints" / "last.ckpt"

    def teacher_cells(self, cell: Cell) -> list[Cell]:
        """The cells whose checkpoints teach ``cell`` (none for a method without teachers):
        the same data, subset and seed, and the same backbone unless a teacher names one."""
        return [
            Cell(method, backbone or cell.backbone, cell.data, cell.subset, cell.seed)
            for method, backbone in self.methods[cell.method]["teachers"]
        ]

    def missing_teachers(self, cell: Cell) -> list[Cell]:
        """The teacher cells of ``cell`` that have not finished pretraining."""
        return [
            t
            for t in self.teacher_cells(cell)
            if not ((self.folder(t) / "fit.done").is_file() and self.checkpoint(t).is_file())
        ]

    def number(self, cell: Cell) -> int:
        """``cell``'s number in ``--list``."""
        return self.cells.index(cell)

    def fit_override(self, cell: Cell) -> dict[str, Any]:
        """The settings the grid lays over a method's configs for ``cell``."""
        spec = self.methods[cell.method]
        trainer = {**self.trainer, **(spec.get("trainer") or {})}
        trainer["logger"] = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(self.folder(cell)), "name": "", "version": "fit"},
        }
        data = {**(self.pretrain_data.get(cell.data) or {}), **(spec.get("data") or {})}
        if cell.subset is not None:
            data["subset"] = cell.subset
        override: dict[str, Any] = {"seed_everything": cell.seed, "trainer": trainer}
        checkpoint = {**self.checkpoint_settings, **(spec.get("checkpoint") or {})}
        if checkpoint:
            override["checkpoint"] = checkpoint
        if data:
            override["data"] = {"init_args": data}
        model = dict(spec.get("model") or {})
        if cell.backbone is not None:
            model["backbone"] = cell.backbone
            kwargs = {
                **self.backbone_kwargs.get(cell.backbone, {}),
                **(model.get("backbone_kwargs") or {}),
            }
            if kwargs:
                model["backbone_kwargs"] = kwargs
        if spec["teachers"]:
            model["teachers"] = [str(self.checkpoint(t)) for t in self.teacher_cells(cell)]
        if model:
            override["model"] = {"init_args": model}
        return override

    def evaluations(self, cell: Cell) -> list[tuple[str, str, str, list[str]]]:
        """(evaluation dataset, corruption, protocol, arguments of ``python -m vssl``) of every
        evaluation of ``cell``."""
        folder = self.folder(cell)
        if self.methods[cell.method]["config"]:
            model = ["--ckpt", str(folder / "fit" / "checkpoints" / "last.ckpt")]
        else:
            model = ["--backbone", str(cell.backbone)]
            kwargs = {
                **self.backbone_kwargs.get(str(cell.backbone), {}),
                **(self.methods[cell.method].get("model") or {}).get("backbone_kwargs", {}),
            }
            if kwargs:
                model += ["--backbone-kwargs", json.dumps(kwargs, sort_keys=True)]
        out = []
        datasets = {**self.eval_data, **self.methods[cell.method].get("evaluate", {})}
        for (data, spec), corruption, (protocol, options) in itertools.product(
            datasets.items(), self.corruptions, self.protocols.items()
        ):
            args = [protocol, *model, "--seed", str(cell.seed)]
            args += _options({**self.eval_settings, **spec, **options})
            args += _corruption_args(corruption, self.file)
            out.append((data, corruption, protocol, args))
        return out


#: Keys of an evaluation dataset that go to the evaluation's data block (``--data.init_args.KEY``,
#: as in a fit config); the other keys are the protocol's own options.
DATA_BLOCK_KEYS = (
    "root",
    "layout",
    "fold",
    "annotations",
    "train_split",
    "val_split",
    "test_split",
    "backend",
    "index_mode",
    "decode_timeout",
    "max_decode_failures",
)


def _options(options: dict[str, Any]) -> list[str]:
    """``{"root": "data/x", "clip_len": 16, "flip": False}`` as ``--data.init_args.root data/x
    --clip-len 16 --no-flip``."""
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key in DATA_BLOCK_KEYS:
            args += [
                f"--data.init_args.{key}",
                value if isinstance(value, str) else json.dumps(value),
            ]
        elif isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        elif value is not None:
            args += [flag, str(value)]
    return args


def _corruption_args(corruption: str, file: Path) -> list[str]:
    """``gaussian-3`` as ``--corruption gaussian --severity 3``; ``clean`` as nothing."""
    if corruption == "clean":
        return []
    kind, _, severity = corruption.rpartition("-")
    if kind.removesuffix("_noise") not in SEVERITIES or severity not in list("12345"):
        raise InvalidInputError(
            f"{file}: evaluate.corruptions: {corruption!r} is not 'clean' or NAME-SEVERITY with "
            f"NAME one of {', '.join(sorted(SEVERITIES))} and SEVERITY 1-5 (e.g. gaussian-3)"
        )
    return ["--corruption", kind, "--severity", severity]


def _run(args: list[str], log: Path, threads: int | None = None) -> int:
    """``python -m vssl ARGS`` in a fresh process (with ``threads`` torch threads, by
    ``OMP_NUM_THREADS``), its output in ``log``; the exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with log.open("w") as out:
        return subprocess.run(
            [sys.executable, "-m", "vssl", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        ).returncode


def _run_here(args: list[str], log: Path, threads: int | None = None) -> int:
    """``python -m vssl ARGS`` in this process (an evaluation: no trainer, so nothing lingers
    between cells, and no interpreter start per evaluation), with ``threads`` torch threads
    (restored after), its output in ``log``."""
    import torch

    from vssl.cli import main as vssl_main

    log.parent.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    with log.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            return vssl_main(args)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except Exception:
            traceback.print_exc()
            return 1
        finally:
            torch.set_num_threads(before)


def _shown(args: list[str], threads: int | None = None) -> str:
    """The command line a user types for ``python -m vssl ARGS`` (with ``threads``, after
    ``OMP_NUM_THREADS=N``)."""
    env = [] if threads is None else [f"OMP_NUM_THREADS={threads}"]
    return shlex.join([*env, "python", "-m", "vssl", *args])


def _tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return " | ".join(text[-lines:])


def fit_command(grid: Grid, cell: Cell, resume: bool = False) -> list[str]:
    """The ``python -m vssl fit`` command of ``cell`` (its configs, then the grid's settings
    in ``grid.yaml``); with ``resume``, continuing from its ``last.ckpt`` if there is one."""
    folder = grid.folder(cell)
    command = ["fit"]
    for config in grid.methods[cell.method]["config"]:
        command += ["--config", str(config)]
    command += ["--config", str(folder / "grid.yaml")]
    last = folder / "fit" / "checkpoints" / "last.ckpt"
    if resume and last.is_file():
        command += ["--ckpt_path", str(last)]
    return command


def waiting_for(grid: Grid, missing: list[Cell]) -> str:
    """What a cell whose teacher cells ``missing`` have not finished pretraining waits for."""
    cells = ", ".join(f"{grid.number(t)} ({t.name})" for t in missing)
    return f"its teachers have not finished pretraining: run cell{'s' * (len(missing) > 1)} {cells} first"


TEACHERS_FILE = "teachers.json"


def record_teachers(grid: Grid, cell: Cell) -> str | None:
    """Writes ``teachers.json`` in ``cell``'s folder: its teacher cells' checkpoints (path,
    size, mtime, SHA-256). A pretraining to be resumed whose teachers are no longer those it
    began with is not written over: the reason is returned (None when all is well)."""
    from vssl.tasks.teacher_cache import file_fingerprint

    folder = grid.folder(cell)
    records = [
        {"cell": t.name, "method": t.method, **file_fingerprint(grid.checkpoint(t))}
        for t in grid.teacher_cells(cell)
    ]
    file = folder / TEACHERS_FILE
    if file.is_file() and grid.checkpoint(cell).is_file():
        before = json.loads(file.read_text())
        if [(r["cell"], r["sha256"]) for r in before] != [
            (r["cell"], r["sha256"]) for r in records
        ]:
            return (
                f"its teachers' checkpoints have changed since its pretraining began ({file}); "
                f"delete {folder} to pretrain it again from the teachers as they are"
            )
    file.write_text(json.dumps(records, indent=1) + "\n")
    return None


#: The file a process running a cell holds a lock on (``flock``: released when the process
#: ends, however it ends), so that one cell is never run by two processes at once.
LOCK_FILE = ".lock"


@contextlib.contextmanager
def _cell_lock(folder: Path) -> Iterator[bool]:
    """Holds the lock of the cell in ``folder`` while the block runs; yields False (and holds
    nothing) when another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): nothing to hold
        yield True
        return
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cell_complete(grid: Grid, cell: Cell) -> bool:
    """Whether ``cell`` has everything it should write: its pretraining (if it has one) and
    every evaluation's result."""
    folder = grid.folder(cell)
    if grid.methods[cell.method]["config"] and not (folder / "fit.done").is_file():
        return False
    return all(
        (folder / "eval" / f"{data}.{corruption}.{protocol}.json").is_file()
        for data, corruption, protocol, _ in grid.evaluations(cell)
    )


def run_cell(grid: Grid, cell: Cell, say: Any = print) -> bool:
    """Run what ``cell`` still lacks; True when everything it should write is there. A cell
    that another process is running (its lock is held) is left to it: False."""
    folder = grid.folder(cell)
    with _cell_lock(folder) as mine:
        if not mine:
            say(f"{cell.name}: not run: another process is running it ({folder / LOCK_FILE})")
            return False
        return _run_cell(grid, cell, say)


def _run_cell(grid: Grid, cell: Cell, say: Any) -> bool:
    folder = grid.folder(cell)
    folder.mkdir(parents=True, exist_ok=True)
    commands = folder / "commands.sh"
    lines = [f"# cell {cell.name} of {grid.file}", "set -e"]
    pretrains = bool(grid.methods[cell.method]["config"])
    if pretrains:
        lines.append(_shown(fit_command(grid, cell), grid.threads))
    if pretrains and not (folder / "fit.done").is_file() and grid.teacher_cells(cell):
        missing = grid.missing_teachers(cell)
        if missing:
            say(f"{cell.name}: not run: {waiting_for(grid, missing)}")
            return False
        changed = record_teachers(grid, cell)
        if changed:
            say(f"{cell.name}: not resumed: {changed}")
            return False
    if pretrains and not (folder / "fit.done").is_file():
        (folder / "grid.yaml").write_text(yaml.safe_dump(grid.fit_override(cell), sort_keys=False))
        command = fit_command(grid, cell, resume=True)
        commands.write_text("\n".join(lines) + "\n")
        config = folder / "fit" / "config.yaml"
        if "--ckpt_path" in command and config.is_file():
            # Lightning refuses to write over a run's config: keep the interrupted run's aside.
            k = 1
            while (kept := config.with_name(f"config.before_resume_{k}.yaml")).exists():
                k += 1
            config.rename(kept)
        resumed = " (resuming from last.ckpt)" if "--ckpt_path" in command else ""
        say(f"{cell.name}: pretraining{resumed}")
        if _run(command, folder / "logs" / "fit.log", grid.threads) != 0:
            say(f"{cell.name}: pretraining failed: {_tail(folder / 'logs' / 'fit.log')}")
            return False
        (folder / "fit.done").write_text(str(folder / "fit" / "checkpoints" / "last.ckpt") + "\n")
    ok = True
    for data, corruption, protocol, command in grid.evaluations(cell):
        stem = f"{data}.{corruption}.{protocol}"
        result = folder / "eval" / f"{stem}.json"
        partial = result.with_suffix(".json.partial")
        command = [*command, "--out", str(partial)]
        lines.append(_shown([*command[:-1], str(result)]))
        if result.is_file():
            continue
        say(f"{cell.name}: {protocol} on {data}, {corruption}")
        log = folder / "logs" / f"{stem}.log"
        if _run_here(command, log) != 0 or not partial.is_file():
            say(
                f"{cell.name}: {protocol} on {data} ({corruption}) failed: "
                f"{_tail(folder / 'logs' / f'{stem}.log')}"
            )
            ok = False
            continue
        partial.replace(result)
    commands.write_text("\n".join(lines) + "\n")
    return ok


@dataclass
class _Job:
    cell: Cell
    process: subprocess.Popen
    log: Path
    started: float


def _job_threads(jobs: int) -> str:
    """Torch threads of each job's evaluations: the machine's cores shared among the jobs
    (``OMP_NUM_THREADS`` if the user set it)."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _no_update(done: int, running: list[str], left: int) -> None:
    pass


@contextlib.contextmanager
def _display(total: int) -> Iterator[tuple[Any, Any]]:
    """Where a run's messages and its counts of cells done / running / left go: ``(say,
    update)``, a rich progress bar under the messages on a terminal, plain lines elsewhere (a
    log file, a SLURM job's output)."""
    if not sys.stdout.isatty():
        yield (lambda message: print(message, flush=True)), _no_update
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, TextColumn("{task.fields[state]}")) as bar:
        task = bar.add_task("cells", total=total, state="")

        def update(done: int, running: list[str], left: int) -> None:
            names = f" ({', '.join(running)})" if running else ""
            bar.update(task, completed=done, state=f"{len(running)} running{names}, {left} left")

        yield (lambda message: bar.console.print(message, markup=False, highlight=False)), update


def run_jobs(grid: Grid, jobs: int, say: Any = print, update: Any = _no_update) -> list[str]:
    """Runs the grid's unfinished cells ``jobs`` at a time on this machine, each as its own
    ``python -m vssl bench GRID --cell N --no-results`` process (its output in the cell's
    ``logs/bench.log``), in the grid's order; a cell starts once its teacher cells have
    finished pretraining. The names of the cells that failed or could not run are returned.
    Interrupted (Ctrl-C, SIGTERM), it stops the running cells, which resume on the next run."""
    import signal
    import time

    pending = [c for c in grid.cells if not cell_complete(grid, c)]
    total, finished = len(grid.cells), len(grid.cells) - len(pending)
    running: list[_Job] = []
    failed: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": _job_threads(jobs)}

    def state() -> str:
        update(finished, [j.cell.name for j in running], len(pending))
        return f"{finished} done, {len(running)} running, {len(pending)} left of {total}"

    def start(cell: Cell) -> None:
        log = grid.folder(cell) / "logs" / "bench.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "vssl", "bench", str(grid.file), "--out", str(grid.out)]
        command += ["--cell", str(grid.number(cell)), "--no-results"]
        with log.open("w") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        running.append(_Job(cell, process, log, time.monotonic()))
        say(f"started {grid.number(cell)} {cell.name} ({state()})")

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            blocked = {c.name for c in pending} | {j.cell.name for j in running}
            for cell in list(pending):
                if len(running) >= jobs:
                    break
                missing = grid.missing_teachers(cell)
                if any(t.name in failed for t in missing):
                    pending.remove(cell)
                    failed.append(cell.name)
                    say(f"not run: {cell.name}: a teacher cell failed")
                elif not any(t.name in blocked for t in missing):
                    pending.remove(cell)
                    start(cell)
            if not running:
                for cell in pending:  # waiting for teachers that will never finish
                    failed.append(cell.name)
                    say(f"not run: {cell.name}: {waiting_for(grid, grid.missing_teachers(cell))}")
                break
            time.sleep(0.5)
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                took = _minutes(time.monotonic() - job.started)
                if job.process.returncode == 0 and cell_complete(grid, job.cell):
                    finished += 1
                    say(f"finished {grid.number(job.cell)} {job.cell.name} in {took} ({state()})")
                else:
                    failed.append(job.cell.name)
                    say(f"failed {job.cell.name} after {took}: {_tail(job.log, 3)} ({job.log})")
    except KeyboardInterrupt:
        say(f"interrupted: stopping {len(running)} running cells (they resume on the next run)")
        for job in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.process.pid, signal.SIGTERM)
        for job in running:
            try:
                job.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.process.pid, signal.SIGKILL)
                job.process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, before)
    return failed


def _dig(record: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = record
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


def collect(grid: Grid) -> list[dict[str, Any]]:
    """Every evaluation the cells wrote, one record each, with the cell's settings."""
    rows = []
    for cell in grid.cells:
        for data, corruption, protocol, _ in grid.evaluations(cell):
            file = grid.folder(cell) / "eval" / f"{data}.{corruption}.{protocol}.json"
            if not file.is_file():
                continue
            record = json.loads(file.read_text())
            results = record.get("results", {})
            teachers = {}
            if grid.methods[cell.method]["teachers"]:
                used = grid.folder(cell) / TEACHERS_FILE
                teachers["teachers"] = json.loads(used.read_text()) if used.is_file() else None
            rows.append(
                {
                    **teachers,
                    "cell": cell.name,
                    "method": cell.method,
                    "backbone": cell.backbone,
                    "pretrain_data": cell.data,
                    "subset": cell.subset,
                    "seed": cell.seed,
                    "eval_data": data,
                    "corruption": corruption,
                    "protocol": protocol,
                    "num_test": record.get("num_test", record.get("num_queries")),
                    "metrics": {label: _dig(results, path) for label, path in HEADLINES[protocol]},
                    "file": str(file),
                    "record": record,
                }
            )
    return rows


def _mean_se(values: list[float], num_test: int | None) -> tuple[float, float]:
    """Mean and standard error: over seeds when there are several, else the binomial error of
    one accuracy over ``num_test`` test videos."""
    mean = sum(values) / len(values)
    if len(values) > 1:
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return mean, math.sqrt(var / len(values))
    n = max(1, num_test or 1)
    return mean, math.sqrt(max(mean * (1 - mean), 0.0) / n)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped over seeds: mean and standard error of every headline figure."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(
            row[k]
            for k in ("method", "backbone", "pretrain_data", "subset", "eval_data", "corruption")
        )
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        entry = dict(
            zip(
                ("method", "backbone", "pretrain_data", "subset", "eval_data", "corruption"),
                key,
                strict=True,
            )
        )
        entry["seeds"] = sorted({m["seed"] for m in members})
        figures = {}
        for protocol, headlines in HEADLINES.items():
            of = [m for m in members if m["protocol"] == protocol]
            for label, _ in headlines:
                values = [m["metrics"][label] for m in of if m["metrics"].get(label) is not None]
                if values:
                    figures[label] = _mean_se(values, of[0]["num_test"])
        entry["figures"] = figures
        out.append(entry)
    return out


def versus_random(
    entry: dict[str, Any], summary: list[dict[str, Any]], label: str = "linear"
) -> tuple[float, float] | None:
    """``entry``'s ``label`` figure minus that of the random initialisation of the same backbone
    on the same evaluation data and corruption, and the standard error of the difference
    (``sqrt(se^2 + se_random^2)``, independent errors); None where there is no such baseline."""
    if entry["method"] == RANDOM or label not in entry["figures"]:
        return None
    for base in summary:
        same = all(base[k] == entry[k] for k in ("backbone", "eval_data", "corruption"))
        if base["method"] == RANDOM and same and label in base["figures"]:
            (mean, se), (base_mean, base_se) = entry["figures"][label], base["figures"][label]
            return mean - base_mean, math.sqrt(se**2 + base_se**2)
    return None


def best_gains(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and backbone (random init aside) and evaluation dataset, its cell with the
    largest linear gain over random init on clean test clips (every pretraining dataset and
    subset considered): ``method``, ``backbone``, ``gains`` (evaluation dataset -> (gain, se,
    pretraining data, subset)) and ``beyond_2se`` (on any evaluation dataset)."""
    best: dict[tuple[str, str | None], dict[str, tuple]] = {}
    for entry in summary:
        gain = versus_random(entry, summary) if entry["corruption"] == "clean" else None
        if gain is None:
            continue
        gains = best.setdefault((entry["method"], entry["backbone"]), {})
        if entry["eval_data"] not in gains or gain[0] > gains[entry["eval_data"]][0]:
            gains[entry["eval_data"]] = (*gain, entry["pretrain_data"], entry["subset"])
    return [
        {
            "method": method,
            "backbone": backbone,
            "gains": gains,
            "beyond_2se": any(g > 2 * se for g, se, *_ in gains.values()),
        }
        for (method, backbone), gains in best.items()
    ]


def _best_gains_markdown(summary: list[dict[str, Any]]) -> str:
    """The table of `best_gains` (empty without a random init or clean test clips)."""
    rows = best_gains(summary)
    if not rows:
        return ""
    datasets = list(dict.fromkeys(d for r in rows for d in r["gains"]))
    lines = [
        "Best linear gain over random init per evaluation dataset (clean test clips; the best of "
        "a method's pretraining datasets and subsets, so a little optimistic):",
        "",
        "| method | backbone | " + " | ".join(datasets) + " | beyond 2 SE |",
        "|---|---|" + "---:|" * len(datasets) + "---|",
    ]
    for r in rows:
        cells = [r["method"], r["backbone"] or "(config's)"]
        for data in datasets:
            if data not in r["gains"]:
                cells.append("-")
                continue
            gain, se, pretrain, subset = r["gains"][data]
            text = f"{100 * gain:+.1f} ± {100 * se:.1f}"
            where = ", ".join(x for x in (pretrain, None if subset is None else str(subset)) if x)
            cells.append(
                (f"**{text}**" if gain > 2 * se else text) + (f" ({where})" if where else "")
            )
        cells.append("yes" if r["beyond_2se"] else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n"


def markdown(summary: list[dict[str, Any]], grid: Grid) -> str:
    """The results table, in percent, mean ± standard error; with a ``random`` method, the
    linear probe's gain over it ("vs random", bold beyond two standard errors), and first the
    best gain of each method (`best_gains`)."""
    labels = [label for p in grid.protocols for label, _ in HEADLINES[p]]
    gains = RANDOM in grid.methods and "linear" in labels
    if gains:
        labels.insert(labels.index("linear") + 1, "vs random")
    head = [
        "method",
        "backbone",
        "pretrained on",
        "subset",
        "evaluated on",
        "corruption",
        "seeds",
        *labels,
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 6 + "---:|" * (len(labels) + 1)]
    for e in summary:
        cells = [
            e["method"],
            e["backbone"] or "(config's)",
            e["pretrain_data"] or "-",
            "all" if e["subset"] is None else str(e["subset"]),
            e["eval_data"],
            e["corruption"],
            str(len(e["seeds"])),
        ]
        for label in labels:
            if label == "vs random":
                gain = versus_random(e, summary)
                text = "-" if gain is None else f"{100 * gain[0]:+.1f} ± {100 * gain[1]:.1f}"
                cells.append(f"**{text}**" if gain and gain[0] > 2 * gain[1] else text)
            elif label in e["figures"]:
                mean, se = e["figures"][label]
                cells.append(f"{100 * mean:.1f} ± {100 * se:.1f}")
            else:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    best = _best_gains_markdown(summary) if gains else ""
    return best + "\n".join(lines) + "\n"


def charts(summary: list[dict[str, Any]], grid: Grid) -> list[Path]:
    """accuracy.png (headline figure per method and backbone), and where the grid has those
    axes subsets.png (against the pretraining subset) and corruptions.png (against severity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = HEADLINES[next(iter(grid.protocols))][0][0]
    written = []
    clean = [e for e in summary if e["corruption"] == "clean" and label in e["figures"]]
    if clean:
        largest = [
            e
            for e in clean
            if e["subset"] in (None, max((s for s in grid.subsets if s is not None), default=None))
        ]
        names = [f"{e['method']}\n{e['backbone'] or ''}\n{e['eval_data']}" for e in largest]
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
        ax.bar(
            range(len(names)),
            [100 * e["figures"][label][0] for e in largest],
            yerr=[100 * e["figures"][label][1] for e in largest],
            capsize=3,
        )
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_ylabel(f"{label} top-1 (%)")
        fig.tight_layout()
        written.append(_save(fig, grid.out / "accuracy.png", plt))
    subsets = sorted({e["subset"] for e in clean if e["subset"] is not None})
    if len(subsets) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in sorted({(e["method"], e["backbone"] or "", e["eval_data"]) for e in clean}):
            points = sorted(
                (e["subset"], e["figures"][label])
                for e in clean
                if (e["method"], e["backbone"] or "", e["eval_data"]) == key
                and e["subset"] is not None
            )
            if points:
                ax.errorbar(
                    [p[0] for p in points],
                    [100 * p[1][0] for p in points],
                    yerr=[100 * p[1][1] for p in points],
                    marker="o",
                    label=" ".join(key),
                )
        ax.set_xlabel("pretraining subset")
        ax.set_ylabel(f"{label} top-1 (%)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, grid.out / "subsets.png", plt))
    kinds = sorted({c.rpartition("-")[0] for c in grid.corruptions if c != "clean"})
    if kinds:
        fig, ax = plt.subplots(figsize=(6, 4))
        for e_key in sorted(
            {(e["method"], e["backbone"] or "", e["eval_data"], e["subset"]) for e in summary},
            key=str,
        ):
            for kind in kinds:
                points = []
                for e in summary:
                    if (e["method"], e["backbone"] or "", e["eval_data"], e["subset"]) != e_key:
                        continue
                    if label not in e["figures"]:
                        continue
                    if e["corruption"] == "clean":
                        points.append((0, e["figures"][label][0]))
                    elif e["corruption"].rpartition("-")[0] == kind:
                        points.append(
                            (int(e["corruption"].rpartition("-")[2]), e["figures"][label][0])
                        )
                if points:
                    points.sort()
                    ax.plot(
                        [p[0] for p in points],
                        [100 * p[1] for p in points],
                        marker="o",
                        label=f"{' '.join(str(k) for k in e_key[:3])} {kind}",
                    )
        ax.set_xlabel("noise severity (0: clean)")
        ax.set_ylabel(f"{label} top-1 (%)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, grid.out / "corruptions.png", plt))
    return written


def _save(fig: Any, file: Path, plt: Any) -> Path:
    tmp = file.with_name(f".{file.stem}.{os.getpid()}{file.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(file)
    return file


def _write_text(file: Path, text: str) -> None:
    """Writes ``file`` whole or not at all (another process collecting the same grid at the
    same time, a SLURM array's tasks say, never leaves a mixture)."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(file)


def write_results(grid: Grid) -> tuple[list[dict[str, Any]], list[Path]]:
    """results.json, results.md and the charts from what the cells wrote."""
    grid.out.mkdir(parents=True, exist_ok=True)
    rows = collect(grid)
    summary = summarise(rows)
    done = {r["cell"] for r in rows}
    payload = {
        "grid": str(grid.file),
        "cells": [c.name for c in grid.cells],
        "cells_with_results": sorted(done),
        "evaluations": rows,
        "summary": [
            {**e, "figures": {k: {"mean": m, "se": s} for k, (m, s) in e["figures"].items()}}
            for e in summary
        ],
        "best_gains": [
            {
                **b,
                "gains": {
                    d: {"gain": g, "se": se, "pretrain_data": p, "subset": s}
                    for d, (g, se, p, s) in b["gains"].items()
                },
            }
            for b in best_gains(summary)
        ],
    }
    files = [grid.out / "results.json", grid.out / "results.md"]
    _write_text(files[0], json.dumps(payload, indent=1, sort_keys=True) + "\n")
    _write_text(
        files[1],
        f"# {grid.file.name}: {len(done)} of {len(grid.cells)} cells with results\n\n"
        + markdown(summary, grid),
    )
    return rows, files + charts(summary, grid)


#: The exit status of a command whose output was closed early, as a shell reports a process
#: ended by SIGPIPE (128 + 13).
BROKEN_PIPE_STATUS = 141


def _silence_stdout() -> None:
    """Points the standard output at /dev/null, so that the interpreter's last flush at exit
    does not fail again on the closed pipe (the recipe of Python's ``signal`` documentation)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (a test's capture, say): nothing is flushed to a pipe at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vssl bench``.

    Output closed early (``--list | head``) stops the command quietly with status 141, as the
    shell's own tools stop; cells are only started after their line is printed, so an interrupted
    run resumes as after any other stop.
    """
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at the interpreter's exit, where a closed pipe is an error
        return status
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS


def _main(argv: list[str] | None) -> int:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="python -m vssl bench",
        description="Run a benchmark grid (every cell an ordinary run folder), then write "
        "results.json, results.md and charts. See vssl/bench.py for the grid file.",
    )
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML file of these options"
    )
    parser.add_argument("grid", help="the grid file (YAML), e.g. configs/bench/cpu.yaml")
    parser.add_argument(
        "--out",
        default=None,
        help="where the cells and results go "
        "(default: the grid's 'out', else runs/bench/<grid name>)",
    )
    parser.add_argument("--list", action="store_true", help="number the cells and stop")
    parser.add_argument(
        "--cell", type=int, default=None, help="run only cell N of --list (a SLURM array task, say)"
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: gather what the cells wrote into the results",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="cells run at once on this machine, each its own process (default 1: one after "
        "another in this process)",
    )
    parser.add_argument(
        "--no-results",
        action="store_true",
        help="run the cells but write no results (array tasks of one grid; --collect gathers)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        grid = Grid.load(args.grid, args.out)
        if args.list:
            for n, cell in enumerate(grid.cells):
                done = "  (has results)" if (grid.folder(cell) / "eval").is_dir() else ""
                teachers = ", ".join(str(grid.number(t)) for t in grid.teacher_cells(cell))
                teachers = f"  (teachers: cells {teachers})" if teachers else ""
                print(f"{n:4d}  {cell.name}{teachers}{done}")
            return 0
        if args.jobs < 1:
            raise InvalidInputError(f"--jobs {args.jobs}: give 1 or more")
        if args.cell is not None and not 0 <= args.cell < len(grid.cells):
            raise InvalidInputError(
                f"--cell {args.cell}: the grid has cells 0 to {len(grid.cells) - 1}"
            )
        if args.cell is not None and not args.collect:
            cell = grid.cells[args.cell]
            missing = grid.missing_teachers(cell)
            if missing and not (grid.folder(cell) / "fit.done").is_file():
                raise MissingInputError(
                    f"--cell {args.cell} ({cell.name}): {waiting_for(grid, missing)}"
                )
    except UserError as exc:
        print(f"vssl bench: error: {exc}", file=sys.stderr)
        return 2
    failed = []
    cells = grid.cells if args.cell is None else [grid.cells[args.cell]]
    if args.collect:
        pass
    elif args.jobs > 1 and args.cell is None:
        try:
            with _display(len(cells)) as (say, update):
                failed = run_jobs(grid, args.jobs, say=say, update=update)
        except KeyboardInterrupt:
            print("vssl bench: interrupted; run it again to resume", file=sys.stderr)
            return 130
    else:
        with _display(len(cells)) as (say, update):
            for n, cell in enumerate(cells, 1):
                update(n - 1, [cell.name], len(cells) - n)
                say(f"[{n}/{len(cells)}] {cell.name}")
                if not run_cell(grid, cell, say=lambda m: say("  " + m)):
                    failed.append(cell.name)
            update(len(cells), [], 0)
    if args.no_results:
        if failed:
            print(f"vssl bench: failed: {', '.join(failed)} (see their logs/)", file=sys.stderr)
        return 1 if failed else 0
    rows, files = write_results(grid)
    print(
        f"{len({r['cell'] for r in rows})} of {len(grid.cells)} cells have results; wrote "
        + ", ".join(str(f) for f in files)
    )
    if failed:
        print(
            f"vssl bench: {len(failed)} cells failed: {', '.join(failed)} (see their logs/)",
            file=sys.stderr,
        )
        return 1
    return 0


__all__ = [
    "Cell",
    "Grid",
    "collect",
    "main",
    "run_cell",
    "summarise",
    "versus_random",
    "write_results",
]
