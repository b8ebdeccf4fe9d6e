"""``python -m vssl probe`` and ``python -m vssl retrieve``: the frozen-feature protocols.

Both extract per-video features of a training and a test split (cached, see
`vssl.eval.features`), print a table and, with ``--out``, write JSON holding every setting that
produced the numbers next to the numbers themselves. Clip length, stride, crop, decode size
and flip default to the checkpoint's training data settings (see `resolve_data_settings`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vssl.cli_help import HelpFormatter
from vssl.data.corruptions import corruption_names
from vssl.data.index import default_cache_dir
from vssl.eval.classifiers import (
    knn_accuracy,
    label_fraction_indices,
    probe_accuracy,
    train_linear_probe,
)
from vssl.eval.features import (
    DATA_DEFAULTS,
    Features,
    FeatureSettings,
    build_model,
    describe_data_settings,
    extract_features,
    resolve_data_settings,
)
from vssl.eval.retrieval import retrieval_recall


def parse_decode_size(text: str) -> int | None:
    """A ``--decode-size`` value: a short side in pixels, or ``none`` (decode at full size)."""
    return None if text.lower() in ("none", "null") else int(text)


def add_data_options(p: argparse.ArgumentParser, flip: bool | None) -> None:
    """The data options that default to the checkpoint's training settings; ``flip``: the
    default of ``--flip`` without a checkpoint's setting (None: no ``--flip`` option)."""
    origin = "default: the checkpoint's training setting, else"
    p.add_argument(
        "--clip-len",
        type=int,
        default=argparse.SUPPRESS,
        help=f"frames per clip ({origin} {DATA_DEFAULTS['clip_len']})",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=argparse.SUPPRESS,
        help=f"step between a clip's frames ({origin} {DATA_DEFAULTS['stride']})",
    )
    p.add_argument(
        "--crop-size",
        type=int,
        default=argparse.SUPPRESS,
        help=f"side of the square crops ({origin} {DATA_DEFAULTS['crop_size']})",
    )
    p.add_argument(
        "--decode-size",
        type=parse_decode_size,
        default=argparse.SUPPRESS,
        help=f"short side frames are decoded at, or none ({origin} {DATA_DEFAULTS['decode_size']})",
    )
    if flip is not None:
        p.add_argument(
            "--flip",
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help="flip training clips at random; not for direction-dependent classes "
            f"({origin} {'on' if flip else 'off'})",
        )


def apply_data_settings(prog: str, args: argparse.Namespace, flip: bool | None) -> dict[str, str]:
    """Fill ``args``' data settings in (command line, else checkpoint, else defaults), print
    one line of what is used, and return where each setting came from."""
    defaults = dict(DATA_DEFAULTS)
    if flip is None:
        defaults.pop("flip")
    else:
        defaults["flip"] = flip
    given = {key: getattr(args, key) for key in defaults if hasattr(args, key)}
    values, sources = resolve_data_settings(given, args.ckpt, defaults, trust=args.trust_checkpoint)
    for key, value in values.items():
        setattr(args, key, value)
    print(describe_data_settings(prog, values, sources), flush=True)
    return sources


def _parser(
    prog: str, description: str, clips: int, crops: int, flip: bool | None = None
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="checkpoint of any vssl task")
    model.add_argument("--backbone", help="a backbone name, randomly initialised (a baseline)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load --ckpt with weights_only=False (runs pickled code: trusted files only)",
    )
    p.add_argument(
        "--backbone-kwargs",
        type=json.loads,
        default={},
        help="JSON keyword arguments of the backbone builder (with --backbone)",
    )
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--layout", default="folder", help="dataset layout (as VideoDataModule)")
    p.add_argument("--train-split", default="train", help="split the classifier learns from")
    p.add_argument("--test-split", default="test", help="split the results are measured on")
    p.add_argument("--fold", type=int, default=1, help="official split number (UCF101, HMDB51)")
    p.add_argument("--annotations", default=None, help="folder of the layout's split files")
    add_data_options(p, flip=flip)
    p.add_argument("--clips", type=int, default=clips, help="evenly spaced clips per test video")
    p.add_argument(
        "--crops", type=int, default=crops, choices=(1, 3), help="spatial crops per clip"
    )
    p.add_argument("--batch-size", type=int, default=4, help="videos per forward pass")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu", help="torch device of the feature extraction")
    p.add_argument("--seed", type=int, default=0, help="seed of random init and of the probe")
    p.add_argument(
        "--cache-dir",
        default=str(default_cache_dir() / "features"),
        help="where features are cached ('none': no cache)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the results and settings as JSON")
    add_corruption_options(p)
    return p


def add_corruption_options(p: argparse.ArgumentParser) -> None:
    """``--corruption NAME --severity N``: noise on the test clips (`vssl.data.corruptions`)."""
    p.add_argument(
        "--corruption",
        default=None,
        choices=corruption_names(),
        help="ImageNet-C noise added to every test clip (after cropping); training clips stay "
        "clean (default: none)",
    )
    p.add_argument(
        "--severity", type=int, default=3, choices=range(1, 6), help="corruption severity 1-5"
    )


def _settings(
    args: argparse.Namespace,
    split: str,
    clips: int,
    crops: int,
    random_views: int = 0,
    corrupted: bool = False,
) -> FeatureSettings:
    return FeatureSettings(
        root=str(args.root),
        split=split,
        layout=args.layout,
        fold=args.fold,
        annotations=args.annotations,
        ckpt=args.ckpt,
        backbone=args.backbone,
        backbone_kwargs=args.backbone_kwargs if args.backbone else {},
        clips=clips,
        crops=crops,
        clip_len=args.clip_len,
        stride=args.stride,
        crop_size=args.crop_size,
        decode_size=args.decode_size,
        seed=args.seed,
        random_views=random_views,
        crop_scale=tuple(getattr(args, "crop_scale", (0.2, 1.0))),
        flip=getattr(args, "flip", False),
        corruption=args.corruption if corrupted else None,
        severity=args.severity if corrupted and args.corruption else None,
    )


def _features(
    args: argparse.Namespace, train: tuple[int, int], test: tuple[int, int], train_views: int = 0
) -> tuple[Features, Features]:
    train_s = _settings(args, args.train_split, *train, random_views=train_views)
    test_s = _settings(args, args.test_split, *test, corrupted=True)
    if test_s.corruption is not None:
        print(
            f"test clips ({args.test_split}) with {test_s.corruption} noise at severity "
            f"{test_s.severity}; training clips clean",
            flush=True,
        )
    model = build_model(train_s, trust=args.trust_checkpoint)
    cache = None if str(args.cache_dir).lower() == "none" else args.cache_dir
    opts = {
        "model": model,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "cache_dir": cache,
        "device": args.device,
    }
    return extract_features(train_s, **opts), extract_features(test_s, **opts)


def print_and_write(
    title: str, model: str, rows: list[tuple[str, str]], record: dict[str, Any], out: Path | None
) -> None:
    """Prints ``rows`` as a table and, with ``out``, writes ``record`` there as JSON."""
    print(f"{title} of {model}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
        print(f"wrote {out}")


def probe_main(argv: list[str]) -> int:
    """Linear probe (all, 10% and 1% of the training labels) and kNN on frozen features."""
    p = _parser("vssl probe", probe_main.__doc__ or "", clips=10, crops=3, flip=False)
    p.add_argument(
        "--train-views",
        type=int,
        default=5,
        help="random clips with random resized crops per training video, each a "
        "training sample (0: use --train-clips x --train-crops, averaged)",
    )
    p.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=(0.2, 1.0),
        help="area range of the training views' random resized crops",
    )
    p.add_argument("--train-clips", type=int, default=1, help="with --train-views 0")
    p.add_argument(
        "--train-crops", type=int, default=1, choices=(1, 3), help="with --train-views 0"
    )
    p.add_argument("--steps", type=int, default=300, help="optimisation steps of the probe")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate of the probe")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of the probe")
    p.add_argument("--probe-batch-size", type=int, default=None, help="default: full batch")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[1.0, 0.1, 0.01],
        help="fractions of the training labels (per-class stratified)",
    )
    p.add_argument("--knn-k", type=int, default=20, help="neighbours that vote in the kNN")
    p.add_argument(
        "--knn-temperature",
        type=float,
        default=0.07,
        help="temperature of the kNN's vote weights exp(similarity / T)",
    )
    args = p.parse_args(argv)
    sources = apply_data_settings("vssl probe", args, flip=False)
    train, test = _features(
        args,
        (args.train_clips, args.train_crops),
        (args.clips, args.crops),
        train_views=args.train_views,
    )
    num_classes = len(train.classes)
    views = max(1, args.train_views)
    train_x = train.feats.reshape(len(train.paths), views, -1)
    results: dict[str, Any] = {"linear": {}, "train_videos": {}}
    rows = []
    for fraction in args.fractions:
        idx = label_fraction_indices(train.labels, fraction, seed=args.seed)
        probe = train_linear_probe(
            train_x[idx].flatten(0, 1),
            train.labels[idx].repeat_interleave(views),
            num_classes,
            steps=args.steps,
            lr=args.lr,
            weight_decay=args.weight_decay,
            batch_size=args.probe_batch_size,
            seed=args.seed,
        )
        acc = probe_accuracy(probe, test.feats, test.labels)
        results["linear"][str(fraction)] = acc
        results["train_videos"][str(fraction)] = int(idx.numel())
        rows.append(
            (f"linear top-1 ({fraction:.0%} labels, {idx.numel()} videos)", f"{100 * acc:.2f}")
        )
    knn = knn_accuracy(
        train_x.flatten(0, 1),
        train.labels.repeat_interleave(views),
        test.feats,
        test.labels,
        num_classes,
        k=args.knn_k,
        temperature=args.knn_temperature,
    )
    results["knn"] = knn
    rows.append((f"kNN top-1 (k={args.knn_k}, T={args.knn_temperature:g})", f"{100 * knn:.2f}"))
    record = {
        "protocol": "probe",
        "train_features": train.settings,
        "test_features": test.settings,
        "probe": {
            k: getattr(args, k)
            for k in (
                "train_views",
                "steps",
                "lr",
                "weight_decay",
                "probe_batch_size",
                "fractions",
                "knn_k",
                "knn_temperature",
                "seed",
            )
        },
        "data_settings_from": sources,
        "classes": train.classes,
        "num_train": len(train.paths),
        "num_test": len(test.paths),
        "results": results,
    }
    print_and_write("linear probe and kNN", args.ckpt or args.backbone, rows, record, args.out)
    return 0


def retrieve_main(argv: list[str]) -> int:
    """Video retrieval: each test video queries all training videos; R@k by cosine similarity."""
    p = _parser("vssl retrieve", retrieve_main.__doc__ or "", clips=10, crops=1)
    p.add_argument(
        "--ks", type=int, nargs="+", default=[1, 5, 10, 20, 50], help="the k of each R@k"
    )
    args = p.parse_args(argv)
    sources = apply_data_settings("vssl retrieve", args, flip=None)
    gallery, query = _features(args, (args.clips, args.crops), (args.clips, args.crops))
    recall = retrieval_recall(query.feats, query.labels, gallery.feats, gallery.labels, ks=args.ks)
    record = {
        "protocol": "retrieve",
        "gallery_features": gallery.settings,
        "query_features": query.settings,
        "data_settings_from": sources,
        "num_gallery": len(gallery.paths),
        "num_queries": len(query.paths),
        "results": {f"R@{k}": v for k, v in recall.items()},
    }
    rows = [(f"R@{k}", f"{100 * v:.2f}") for k, v in recall.items()]
    print_and_write("retrieval", args.ckpt or args.backbone, rows, record, args.out)
    return 0


__all__ = [
    "add_corruption_options",
    "add_data_options",
    "apply_data_settings",
    "parse_decode_size",
    "print_and_write",
    "probe_main",
    "retrieve_main",
]
