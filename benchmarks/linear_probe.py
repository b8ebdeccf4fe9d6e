"""Linear probe, kNN and retrieval of every pretext task next to random init and supervised training.

Every task's ``configs/<task>/synthetic_tiny.yaml`` is pretrained through ``python -m vssl fit``
on one synthetic dataset (written to ``--root`` if missing: ``--classes`` motion classes x
``--videos-per-class`` videos of ``--frames`` frames at ``--size`` px, the quick start's data),
with one backbone for all of them (``--backbone``, default the quick start's tiny R(2+1)D; a task
that needs a video ViT, VideoMAE, keeps its own) for ``--max-epochs`` epochs (40: the
statistics task's features only take off after about 20). The task configs keep their own clip
sampling and optimisation; data root, crop and decode sizes, the crop area range (0.7-1 by
default: stronger zooms blur the motion of 32 px clips), flips (off: the classes are
directions) and workers are the benchmark's. The quick start's supervised training of each
backbone on the same data, for as many epochs, is the upper reference.

Every model is then evaluated with one shared protocol (``python -m vssl probe`` and ``python -m
vssl retrieve``, settings below) on the shared clips (``--clip-len`` 16 frames at ``--stride``
1, the setting of the supervised reference and the papers' clip length), and also on the clip
length and stride it was pretrained on when they differ, unless ``--no-own-clips``: a network
trained on 4-frame clips at stride 2 reads 16 consecutive frames as a much slower video than
any it saw. The lower reference is the randomly initialised backbone on the same clips; each
gain over it comes with its standard error over the test videos, and the verdict names, for
each of the two clip settings, the tasks whose gain exceeds two of them. The script writes
``results.md`` (a markdown table), ``linear_probe.png`` (a bar chart), ``results.json`` (with
every probe's and retrieval's settings) and the resolved ``configs/`` into ``--out-dir``.

    python benchmarks/linear_probe.py --out-dir bench/linear_probe

About 30 minutes on two CPU cores with the defaults; ``--configs`` picks tasks, ``--reuse``
evaluates the checkpoints of an earlier run again.
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

from vssl.commands.probe import main as probe_main  # noqa: E402
from vssl.commands.retrieve import main as retrieve_main  # noqa: E402
from vssl.data.synthetic import make_synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = [
    str(ROOT / "configs" / task / "synthetic_tiny.yaml")
    for task in (
        "statistics",
        "rspnet",
        "cvrl",
        "playback_rate",
        "clip_order",
        "rotation",
        "videomae",
    )
]


def pretrain(config: dict[str, Any], name: str, out_dir: Path, args: argparse.Namespace) -> Path:
    """Runs ``vssl fit`` on ``config`` (root, logger and epochs overridden); returns last.ckpt.

    With ``--reuse``, an existing last.ckpt of a run of that name is returned without training.
    """
    previous = sorted(
        (out_dir / "runs" / name).glob("version_*/checkpoints/last.ckpt"),
        key=lambda p: int(p.parent.parent.name[8:]),
    )
    if args.reuse and previous:
        return previous[-1]
    cfg = json.loads(json.dumps(config))
    cfg["data"]["init_args"].update(
        root=str(args.root),
        synthetic=None,
        crop_size=args.crop_size,
        decode_size=args.decode_size,
        crop_scale=list(args.crop_scale),
        flip=False,
        num_workers=args.workers,
    )
    cfg["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(out_dir / "runs"), "name": name},
    }
    cfg["trainer"]["accelerator"] = args.accelerator
    cfg["trainer"]["enable_progress_bar"] = sys.stderr.isatty()  # epochs in a terminal, no log spam
    if args.max_epochs is not None:
        cfg["trainer"]["max_epochs"] = args.max_epochs
    file = out_dir / "configs" / f"{name}.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "vssl", "fit", "--config", str(file)], check=True)
    versions = sorted((out_dir / "runs" / name).glob("version_*"), key=lambda p: int(p.name[8:]))
    return versions[-1] / "checkpoints" / "last.ckpt"


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``config`` with each ``dotted.key=value`` of ``overrides`` set (values parsed as YAML),
    for example ``model.init_args.head=regression`` or ``seed_everything=1``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return config


def supervised_config(backbone: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The quick start's supervised training (its data and schedule) of ``backbone``: the upper
    reference."""
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["model"]["init_args"].update(backbone=backbone, backbone_kwargs=kwargs)
    return cfg


def evaluate(
    model_args: list[str],
    name: str,
    out_dir: Path,
    args: argparse.Namespace,
    clips: tuple[int, int],
) -> dict:
    """Probe (with kNN) and retrieval of one model with the shared protocol, on clips of
    ``clips`` = (frames, stride)."""
    data = [
        "--data.root",
        str(args.root),
        "--clip-len",
        str(clips[0]),
        "--stride",
        str(clips[1]),
        "--crop-size",
        str(args.crop_size),
        "--decode-size",
        str(args.decode_size),
        "--batch-size",
        "16",
        "--workers",
        str(args.workers),
        "--device",
        args.device,
        "--cache-dir",
        str(out_dir / "features"),
    ]
    stem = f"{name}.{clips[0]}x{clips[1]}"
    probe_json, retrieve_json = out_dir / f"{stem}.probe.json", out_dir / f"{stem}.retrieve.json"
    probe_main(
        [
            *model_args,
            *data,
            "--clips",
            str(args.clips),
            "--crops",
            str(args.crops),
            "--train-views",
            str(args.train_views),
            "--crop-scale",
            "0.3",
            "1.0",
            "--out",
            str(probe_json),
        ]
    )
    retrieve_main(
        [
            *model_args,
            *data,
            "--clips",
            str(args.clips),
            "--crops",
            "1",
            "--out",
            str(retrieve_json),
        ]
    )
    return {
        "probe": json.loads(probe_json.read_text()),
        "retrieve": json.loads(retrieve_json.read_text()),
    }


def clip_key(clips: tuple[int, int] | list[int]) -> str:
    """``16x1``: 16 frames at stride 1."""
    return f"{clips[0]}x{clips[1]}"


def linear(row: dict, key: str) -> float | None:
    """Linear-probe top-1 (all labels) of a row on clips ``key``, if it was evaluated there."""
    result = row["results"].get(key)
    return None if result is None else result["probe"]["results"]["linear"]["1.0"]


def reference(rows: dict[str, dict], name: str) -> dict | None:
    """The random-init row of ``name``'s backbone (None for a random-init row itself)."""
    if rows[name].get("random"):
        return None
    return next(
        (r for r in rows.values() if r.get("random") and r["backbone"] == rows[name]["backbone"]),
        None,
    )


def gain(rows: dict[str, dict], name: str, key: str) -> float | None:
    """Linear-probe top-1 of ``name`` minus that of its `reference`, both on clips ``key``."""
    random = reference(rows, name)
    if random is None or linear(rows[name], key) is None or linear(random, key) is None:
        return None
    return linear(rows[name], key) - linear(random, key)


def gain_se(rows: dict[str, dict], name: str, key: str) -> float | None:
    """Standard error of `gain` (two independent binomial proportions over the test videos)."""
    if gain(rows, name, key) is None:
        return None
    var = 0.0
    for r in (rows[name], reference(rows, name)):
        p, n = linear(r, key), r["results"][key]["probe"]["num_test"]
        var += p * (1 - p) / n
    return var**0.5


def _gain_cell(rows: dict[str, dict], name: str, key: str) -> str:
    g = gain(rows, name, key)
    return "-" if g is None else f"{100 * g:+.1f} ± {100 * gain_se(rows, name, key):.1f}"


def table(rows: dict[str, dict], shared: str) -> str:
    """The markdown table of the results in percent: every metric on the shared clips, then
    the linear probe on each model's own pretraining clips. Gains are over the random
    initialisation of the same backbone on the same clips, ± their standard error."""
    out = (
        "| model | backbone | pretrained on | linear 100% | vs random | linear 10% | linear 1% "
        "| kNN | R@1 | R@5 | R@10 | linear, own clips | vs random, own clips |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for name, r in rows.items():
        res = r["results"][shared]
        lin, rec = res["probe"]["results"]["linear"], res["retrieve"]["results"]
        vals = [
            lin.get("1.0"),
            lin.get("0.1"),
            lin.get("0.01"),
            res["probe"]["results"]["knn"],
            rec.get("R@1"),
            rec.get("R@5"),
            rec.get("R@10"),
        ]
        cells = ["-" if v is None else f"{100 * v:.1f}" for v in vals]
        cells.insert(1, _gain_cell(rows, name, shared))
        own = clip_key(r["clips"]) if r.get("clips") else None
        if own == shared:
            cells += ["same", "same"]
        elif own is None or linear(r, own) is None:
            cells += ["-", "-"]
        else:
            cells += [f"{100 * linear(r, own):.1f}", _gain_cell(rows, name, own)]
        out += f"| {name} | {r['backbone']} | {own or '-'} | " + " | ".join(cells) + " |\n"
    return out


def verdict(rows: dict[str, dict], shared: str) -> str:
    """Which pretext tasks beat random initialisation by more than two standard errors, on the
    shared clips and on their own, which are within noise of it, and the best one's margin."""
    pretext = [n for n, r in rows.items() if not r.get("random") and not r.get("supervised")]
    if not pretext:
        return "no pretext task evaluated"
    lines = []
    for label, key_of in (
        (f"on {shared} clips", lambda n: shared),
        ("on each model's pretraining clips", lambda n: clip_key(rows[n]["clips"])),
    ):
        gains = {n: gain(rows, n, key_of(n)) for n in pretext}
        gains = {n: g for n, g in gains.items() if g is not None}
        if not gains:
            continue
        best = max(gains, key=gains.get)
        above = [n for n, g in gains.items() if g > 2 * gain_se(rows, n, key_of(n))]
        noise = [n for n, g in gains.items() if n not in above and g > 0]
        below = [n for n, g in gains.items() if g <= 0]
        parts = [
            f"{label}: best pretext task {best}, {100 * gains[best]:+.1f} points over random init"
        ]
        if len(above) == len(gains):
            parts.append("every pretext task beats random init by more than 2 standard errors")
        else:
            parts.append(
                "above random init by more than 2 standard errors: " + (", ".join(above) or "none")
            )
            if noise:
                parts.append("above by less (within noise): " + ", ".join(noise))
            if below:
                parts.append("not above random init: " + ", ".join(below))
        lines.append("; ".join(parts))
    return "\n\n".join(lines)


def chart(rows: dict[str, dict], shared: str, file: Path) -> None:
    """Bar chart of every model's linear-probe top-1 (all labels) on the shared clips and on its
    own pretraining clips, and its R@1 on the shared clips."""
    names = list(rows)
    own = [
        linear(rows[n], clip_key(rows[n]["clips"])) if rows[n].get("clips") else None for n in names
    ]  # None: not evaluated there (random init, --no-own-clips)
    bars = {
        f"linear probe top-1, {shared} clips": [100 * linear(rows[n], shared) for n in names],
        "linear probe top-1, own pretraining clips": [0 if v is None else 100 * v for v in own],
        f"retrieval R@1, {shared} clips": [
            100 * rows[n]["results"][shared]["retrieve"]["results"]["R@1"] for n in names
        ],
    }
    xs = range(len(names))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 4))
    for i, (label, values) in enumerate(bars.items()):
        ax.bar([x + (i - 1) * width for x in xs], values, width=width, label=label)
    ax.set_xticks(list(xs), [n.replace(" ", "\n", 2) for n in names], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Pretrains, evaluates and tabulates the grid; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of every task config (not of the references), e.g. "
        "model.init_args.head=regression seed_everything=1",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("bench/data/synthetic"),
        help="the synthetic dataset (written there if missing)",
    )
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--videos-per-class", type=int, default=96)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--backbone", default="tiny_r2plus1d", help="backbone of every non-ViT task")
    p.add_argument("--out-dir", type=Path, default=Path("bench/linear_probe"))
    p.add_argument("--max-epochs", type=int, default=40, help="pretraining epochs of every run")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="evaluate existing checkpoints in --out-dir instead of pretraining again",
    )
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--device", default="cpu", help="device of feature extraction")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clip-len", type=int, default=16, help="clip length of the shared evaluation")
    p.add_argument("--stride", type=int, default=1, help="frame stride of the shared evaluation")
    p.add_argument(
        "--own-clips",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also evaluate each model on its pretraining clip length and stride",
    )
    p.add_argument("--crop-size", type=int, default=32)
    p.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=(0.7, 1.0),
        help="area range of the pretraining crops (larger zooms blur 32 px motion)",
    )
    p.add_argument("--decode-size", type=int, default=32)
    p.add_argument("--clips", type=int, default=5, help="evenly spaced clips per test video")
    p.add_argument(
        "--crops",
        type=int,
        default=1,
        choices=(1, 3),
        help="crops per test clip (1: the frames are the crop's size)",
    )
    p.add_argument("--train-views", type=int, default=3, help="random training views per video")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if not (args.root / "synthetic.json").is_file():
        make_synthetic(
            args.root,
            classes=args.classes,
            videos_per_class=args.videos_per_class,
            frames=args.frames,
            size=args.size,
            seed=0,
        )
    shared = (args.clip_len, args.stride)

    def pretrained_on(cfg: dict[str, Any]) -> tuple[int, int]:
        data = cfg["data"]["init_args"]
        return data.get("clip_len", 16), data.get("stride", 1)

    def clip_settings(cfg: dict[str, Any]) -> list[tuple[int, int]]:
        own = pretrained_on(cfg)
        return [shared] + ([own] if args.own_clips and own != shared else [])

    def evaluated(model_args: list[str], name: str, settings: list[tuple[int, int]]) -> dict:
        return {clip_key(c): evaluate(model_args, name, args.out_dir, args, c) for c in settings}

    rows: dict[str, dict] = {}
    baselines: dict[str, set[tuple[int, int]]] = {}  # backbone (JSON) -> clips to evaluate on
    for cfg in (
        apply_overrides(yaml.safe_load(Path(c).read_text()), args.set) for c in args.configs
    ):
        name = cfg["model"]["class_path"].rsplit(".", 1)[-1]
        init = cfg["model"]["init_args"]
        if not str(init.get("backbone", "")).startswith("vit_"):
            init["backbone"], init["backbone_kwargs"] = args.backbone, {}
        key = json.dumps([init.get("backbone", "r3d_18"), init.get("backbone_kwargs") or {}])
        settings = clip_settings(cfg)
        baselines.setdefault(key, set()).update(settings)
        ckpt = pretrain(cfg, name, args.out_dir, args)
        rows[name] = {
            "backbone": init["backbone"],
            "clips": list(pretrained_on(cfg)),
            "results": evaluated(["--ckpt", str(ckpt)], name, settings),
        }
    for key in baselines:
        backbone, kwargs = json.loads(key)
        suffix = "" if len(baselines) == 1 else f" {backbone}"
        sup_cfg = supervised_config(backbone, kwargs)
        settings = clip_settings(sup_cfg)
        baselines[key].update(settings)
        rows[f"random init{suffix}"] = {
            "backbone": backbone,
            "random": True,
            "results": evaluated(
                ["--backbone", backbone, "--backbone-kwargs", json.dumps(kwargs)],
                f"random-{backbone}",
                sorted(baselines[key], reverse=True),
            ),
        }
        ckpt = pretrain(sup_cfg, f"supervised-{backbone}", args.out_dir, args)
        rows[f"supervised{suffix}"] = {
            "backbone": backbone,
            "supervised": True,
            "clips": list(pretrained_on(sup_cfg)),
            "results": evaluated(["--ckpt", str(ckpt)], f"supervised-{backbone}", settings),
        }
    shared_key = clip_key(shared)
    md = table(rows, shared_key) + "\n" + verdict(rows, shared_key) + "\n"
    (args.out_dir / "results.md").write_text(md)
    (args.out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    chart(rows, shared_key, args.out_dir / "linear_probe.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
