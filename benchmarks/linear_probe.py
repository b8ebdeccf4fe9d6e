"""Linear probe, kNN and retrieval of every pretext task next to random init and supervised training.

For each pretext-task config (default: the ``configs/*/synthetic_tiny.yaml`` files), the task is
pretrained through ``python -m vssl fit`` on the synthetic dataset; a `Supervised` run of the same
backbone on the same data is the upper reference and the randomly initialised backbone the lower
one. Every model is then evaluated with one shared protocol (``python -m vssl probe`` and
``python -m vssl retrieve`` settings below), and the script writes ``results.md`` (a markdown
table), ``linear_probe.png`` (a bar chart) and ``results.json`` into ``--out-dir``.

    python benchmarks/linear_probe.py --out-dir bench/linear_probe

Runs on the CPU in tens of minutes with the default configs (``--max-epochs`` shortens them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from vssl.eval.commands import probe_main, retrieve_main  # noqa: E402

DEFAULT_CONFIGS = [
    "configs/cvrl/synthetic_tiny.yaml",
    "configs/rspnet/synthetic_tiny.yaml",
    "configs/statistics/synthetic_tiny.yaml",
]


def pretrain(config: dict[str, Any], name: str, out_dir: Path, args: argparse.Namespace) -> Path:
    """Runs ``vssl fit`` on ``config`` (root, logger and epochs overridden); returns last.ckpt.

    With ``--reuse``, an existing last.ckpt of a run of that name is returned without training.
    """
    previous = sorted((out_dir / "runs" / name).glob("version_*/checkpoints/last.ckpt"),
                      key=lambda p: int(p.parent.parent.name[8:]))
    if args.reuse and previous:
        return previous[-1]
    cfg = json.loads(json.dumps(config))
    cfg["data"]["init_args"]["root"] = str(args.root)
    cfg["data"]["init_args"]["num_workers"] = args.workers
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                "init_args": {"save_dir": str(out_dir / "runs"), "name": name}}
    cfg["trainer"]["accelerator"] = args.accelerator
    cfg["trainer"]["enable_progress_bar"] = False
    if args.max_epochs is not None:
        cfg["trainer"]["max_epochs"] = args.max_epochs
    file = out_dir / "configs" / f"{name}.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "vssl", "fit", "--config", str(file)], check=True)
    versions = sorted((out_dir / "runs" / name).glob("version_*"), key=lambda p: int(p.name[8:]))
    return versions[-1] / "checkpoints" / "last.ckpt"


def supervised_config(config: dict[str, Any]) -> dict[str, Any]:
    """The same data and backbone as ``config``, trained with labels (the upper reference)."""
    cfg = json.loads(json.dumps(config))
    init = cfg["model"]["init_args"]
    cfg["model"] = {"class_path": "vssl.tasks.Supervised",
                    "init_args": {"backbone": init.get("backbone", "r3d_18"),
                                  "backbone_kwargs": init.get("backbone_kwargs") or {},
                                  "dropout": 0.2, "optimizer": "adamw", "lr": 0.003,
                                  "weight_decay": 0.01}}
    return cfg


def evaluate(model_args: list[str], name: str, out_dir: Path, args: argparse.Namespace) -> dict:
    """Probe (with kNN) and retrieval of one model with the shared protocol."""
    data = ["--root", str(args.root), "--clip-len", str(args.clip_len), "--stride", str(args.stride),
            "--crop-size", str(args.crop_size), "--decode-size", str(args.decode_size),
            "--batch-size", "16", "--workers", str(args.workers), "--device", args.device,
            "--cache-dir", str(out_dir / "features")]
    probe_json, retrieve_json = out_dir / f"{name}.probe.json", out_dir / f"{name}.retrieve.json"
    probe_main([*model_args, *data, "--clips", str(args.clips), "--crops", "3",
                "--train-views", str(args.train_views), "--crop-scale", "0.3", "1.0",
                "--out", str(probe_json)])
    retrieve_main([*model_args, *data, "--clips", str(args.clips), "--crops", "1",
                   "--out", str(retrieve_json)])
    return {"probe": json.loads(probe_json.read_text()),
            "retrieve": json.loads(retrieve_json.read_text())}


def table(rows: dict[str, dict]) -> str:
    """The markdown table of the results (percentages)."""
    head = "| model | linear 100% | linear 10% | linear 1% | kNN | R@1 | R@5 | R@10 |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    for name, r in rows.items():
        lin, rec = r["probe"]["results"]["linear"], r["retrieve"]["results"]
        vals = [lin.get("1.0"), lin.get("0.1"), lin.get("0.01"), r["probe"]["results"]["knn"],
                rec.get("R@1"), rec.get("R@5"), rec.get("R@10")]
        head += f"| {name} | " + " | ".join("-" if v is None else f"{100 * v:.1f}" for v in vals) + " |\n"
    return head


def chart(rows: dict[str, dict], file: Path) -> None:
    """Bar chart of the linear-probe top-1 (all labels) and R@1 of every model."""
    names = list(rows)
    lin = [100 * rows[n]["probe"]["results"]["linear"]["1.0"] for n in names]
    r1 = [100 * rows[n]["retrieve"]["results"]["R@1"] for n in names]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    ax.bar([x - 0.2 for x in xs], lin, width=0.4, label="linear probe top-1")
    ax.bar([x + 0.2 for x in xs], r1, width=0.4, label="retrieval R@1")
    ax.set_xticks(list(xs), names, rotation=15)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Pretrains, evaluates and tabulates the grid; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    p.add_argument("--root", type=Path, default=Path("data/synthetic"), help="synthetic dataset")
    p.add_argument("--out-dir", type=Path, default=Path("bench/linear_probe"))
    p.add_argument("--max-epochs", type=int, default=None, help="override every config's epochs")
    p.add_argument("--reuse", action="store_true",
                   help="evaluate existing checkpoints in --out-dir instead of pretraining again")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--device", default="cpu", help="device of feature extraction")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--crop-size", type=int, default=56)
    p.add_argument("--decode-size", type=int, default=64)
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--train-views", type=int, default=5, help="random training views per video")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    backbones: dict[str, dict[str, Any]] = {}
    for cfg in (yaml.safe_load(Path(c).read_text()) for c in args.configs):
        name = cfg["model"]["class_path"].rsplit(".", 1)[-1]
        init = cfg["model"]["init_args"]
        key = json.dumps([init.get("backbone", "r3d_18"), init.get("backbone_kwargs") or {}])
        backbones.setdefault(key, cfg)
        ckpt = pretrain(cfg, name, args.out_dir, args)
        rows[name] = evaluate(["--ckpt", str(ckpt)], name, args.out_dir, args)
    for key, cfg in backbones.items():
        backbone, kwargs = json.loads(key)
        suffix = "" if len(backbones) == 1 else f" {backbone}"
        rows[f"random init{suffix}"] = evaluate(
            ["--backbone", backbone, "--backbone-kwargs", json.dumps(kwargs)],
            f"random-{backbone}", args.out_dir, args)
        ckpt = pretrain(supervised_config(cfg), f"supervised-{backbone}", args.out_dir, args)
        rows[f"supervised{suffix}"] = evaluate(["--ckpt", str(ckpt)], f"supervised-{backbone}",
                                               args.out_dir, args)
    md = table(rows)
    (args.out_dir / "results.md").write_text(md)
    (args.out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    chart(rows, args.out_dir / "linear_probe.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
