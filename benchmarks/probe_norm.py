"""Which feature normalisation should ``vssl probe`` use: the linear probe and kNN of every
finished CPU-grid cell, of random inits and of supervised checkpoints, under each
``--features-norm``, on the same (cached) features.

The probe commands are the clean-test ``vssl probe`` lines of each finished cell's
``commands.sh`` (``runs/bench/cpu/cells``); ``--model NAME=OPTIONS`` adds a model probed with the
same data and clip options as those lines, its ``--ckpt`` replaced by OPTIONS (``--backbone
tiny_r2plus1d`` for a random init). Per model, data and normalisation: linear top-1 with all and
10% of the labels, kNN top-1, the probe's training loss and accuracy after ``--steps`` and
after ``--long-steps`` (is 300 converged?), and linear top-1 at each ``--weight-decays`` value.

    python benchmarks/probe_norm.py --out /tmp/probe_c/norm.json \\
        --model "random r2plus1d=--backbone tiny_r2plus1d"
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from vssl.commands.common import parse
from vssl.commands.probe import build_parser, probe_features
from vssl.eval.classifiers import (
    FEATURE_NORMS,
    knn_accuracy,
    label_fraction_indices,
    probe_accuracy,
    probe_fit,
    train_linear_probe,
)

CELLS = Path("runs/bench/cpu/cells")


def cell_commands(cells: Path) -> list[tuple[str, list[str]]]:
    """(name, probe argv) of the clean-test probe lines of every finished cell."""
    out = []
    for cell in sorted(cells.iterdir()):
        if not (cell / "fit.done").is_file():
            continue
        for line in (cell / "commands.sh").read_text().splitlines():
            argv = shlex.split(line)
            if argv[:4] != ["python", "-m", "vssl", "probe"] or "--corruption" in argv:
                continue
            out.append((cell.name, strip_out(argv[4:])))
    return out


def strip_out(argv: list[str]) -> list[str]:
    """``argv`` without ``--out PATH``."""
    i = argv.index("--out") if "--out" in argv else None
    return argv if i is None else argv[:i] + argv[i + 2 :]


def with_model(argv: list[str], options: list[str]) -> list[str]:
    """``argv`` with its ``--ckpt PATH`` replaced by ``options``."""
    i = argv.index("--ckpt")
    return argv[:i] + options + argv[i + 2 :]


def data_name(argv: list[str]) -> str:
    """The dataset folder's name of a probe command."""
    return Path(argv[argv.index("--data.init_args.root") + 1]).name


def measure(argv: list[str], wds: list[float], steps: int, long_steps: int) -> dict[str, Any]:
    """Every normalisation's results on the features of one probe command."""
    args, given = parse(build_parser(), argv)
    views = max(1, args.train_views)
    train, test, _ = probe_features(args, given)
    num_classes = len(train.classes)
    x_all = train.feats.reshape(len(train.paths), views, -1)
    result: dict[str, Any] = {"num_train": len(train.paths), "num_test": len(test.paths)}
    for norm in FEATURE_NORMS:
        row: dict[str, Any] = {}
        for fraction in (1.0, 0.1):
            idx = label_fraction_indices(train.labels, fraction, seed=args.seed)
            x, y = x_all[idx].flatten(0, 1), train.labels[idx].repeat_interleave(views)
            for n_steps in (steps, long_steps) if fraction == 1.0 else (steps,):
                probe = train_linear_probe(x, y, num_classes, steps=n_steps, normalize=norm)
                fit = probe_fit(probe, x, y)
                row[f"linear {fraction:g} {n_steps}"] = probe_accuracy(
                    probe, test.feats, test.labels
                )
                row[f"train {fraction:g} {n_steps}"] = [fit.loss, fit.accuracy]
            if fraction == 1.0:
                for wd in wds:
                    probe = train_linear_probe(
                        x, y, num_classes, steps=steps, weight_decay=wd, normalize=norm
                    )
                    row[f"wd {wd:g}"] = probe_accuracy(probe, test.feats, test.labels)
        row["knn"] = knn_accuracy(
            x_all.flatten(0, 1),
            train.labels.repeat_interleave(views),
            test.feats,
            test.labels,
            num_classes,
            normalize=norm,
        )
        result[norm] = row
    return result


def table(results: dict[str, Any], wds: list[float], steps: int, long_steps: int) -> str:
    """A markdown table of `measure`'s results: one row per model, data and normalisation."""
    head = [
        "model",
        "data",
        "norm",
        "linear",
        "linear 10%",
        "kNN",
        f"train loss / acc ({steps})",
        f"train loss / acc ({long_steps})",
        f"linear ({long_steps})",
        *(f"wd {wd:g}" for wd in wds),
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for key, result in results.items():
        model, data = key.split(" | ")
        for norm in FEATURE_NORMS:
            r = result[norm]
            fits = [r[f"train 1 {n}"] for n in (steps, long_steps)]
            cells = [
                model,
                data,
                norm,
                *(f"{100 * r[k]:.1f}" for k in (f"linear 1 {steps}", f"linear 0.1 {steps}", "knn")),
                *(f"{loss:.2f} / {100 * acc:.1f}" for loss, acc in fits),
                f"{100 * r[f'linear 1 {long_steps}']:.1f}",
                *(f"{100 * r[f'wd {wd:g}']:.1f}" for wd in wds),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON of every result")
    parser.add_argument("--cells", type=Path, default=CELLS, help="the grid's cells folder")
    parser.add_argument("--model", action="append", default=[], help="NAME=OPTIONS")
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[1e-4, 1e-2, 1e-1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--long-steps", type=int, default=2000)
    opts = parser.parse_args(argv)
    commands = cell_commands(opts.cells)
    template = {data_name(a): a for _, a in commands}
    for spec in opts.model:
        name, _, options = spec.partition("=")
        commands += [(name, with_model(a, shlex.split(options))) for a in template.values()]
    results = json.loads(opts.out.read_text()) if opts.out.is_file() else {}
    for name, command in commands:
        key = f"{name} | {data_name(command)}"
        if key in results:
            continue
        start = time.perf_counter()
        results[key] = measure(command, opts.weight_decays, opts.steps, opts.long_steps)
        results[key]["command"] = shlex.join(["python", "-m", "vssl", "probe", *command])
        opts.out.write_text(json.dumps(results, indent=1))
        summary = {n: round(100 * results[key][n]["linear 1 300"], 1) for n in FEATURE_NORMS}
        print(f"{key}: {summary} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(table(results, opts.weight_decays, opts.steps, opts.long_steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
