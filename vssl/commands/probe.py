"""``python -m vssl probe``: a linear probe (all, 10% and 1% of the training labels) and kNN on
frozen features, or with ``--head attentive`` V-JEPA's attentive probe on frozen tokens; with
``--modality audio`` the audio probe of an audio-visual checkpoint (`vssl.eval.audio_probe`).

Features of the data block's training and test splits are extracted (cached, see
`vssl.eval.features`); the table is printed and, with ``--out``, written as JSON with every
setting that produced it. The linear probe sees the features standardised with the training
features' mean and standard deviation (MAE's linear probe, ``--linear-norm``); the kNN takes the
plain cosine (``--knn-norm``). Clip length, stride, crop, decode size and flip default to the
checkpoint's training settings (see `vssl.commands.common.clip_settings`).
"""

from __future__ import annotations

from typing import Any, Literal

from jsonargparse import ActionYesNo, ArgumentParser, Namespace

from vssl.commands.common import (
    add_clip_options,
    add_corruption_options,
    add_model_options,
    add_output_option,
    clip_settings,
    command_parser,
    data_block,
    decode_options,
    model_choice,
    parse,
    print_and_write,
    splits,
)
from vssl.data.index import default_cache_dir
from vssl.errors import UserError
from vssl.eval.attentive import attentive_probe, default_heads, encoder_heads, extract_tokens
from vssl.eval.audio_probe import probe_audio
from vssl.eval.classifiers import (
    FeatureNormName,
    knn_accuracy,
    label_fraction_indices,
    probe_accuracy,
    probe_fit,
    train_linear_probe,
)
from vssl.eval.features import (
    Features,
    FeatureSettings,
    build_model,
    extract_features,
    load_task,
)
from vssl.tasks.base import VSSLTask

PROG = "vssl probe"
DEFAULT_LINEAR_NORM: FeatureNormName = "standardize"
DEFAULT_KNN_NORM: FeatureNormName = "l2"


def add_feature_options(parser: ArgumentParser, clips: int, crops: int) -> None:
    """The test views and the feature extraction's resources (probe and retrieve)."""
    parser.add_argument("--clips", type=int, default=clips, help="evenly spaced clips per video")
    parser.add_argument("--crops", type=Literal[1, 3], default=crops, help="spatial crops per clip")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", type=str, default="cpu", help="torch device of the extraction")
    parser.add_argument("--seed", type=int, default=0, help="seed of random init and of the probe")
    parser.add_argument(
        "--cache-dir",
        type=str,
        default=str(default_cache_dir() / "features"),
        help="where features are cached ('none': no cache)",
    )


def build_parser() -> ArgumentParser:
    """``vssl probe``'s options."""
    parser = command_parser(
        PROG,
        "Linear probe (all, 10% and 1% of the labels) and kNN on frozen "
        "features of the data block's training and test splits.",
    )
    add_model_options(parser)
    parser.add_argument(
        "--modality",
        type=Literal["video", "audio"],
        default="video",
        help="video: the video backbone; audio: a linear probe on the frozen audio network of an "
        "AVID or VATT checkpoint (one window of sound per video, centred on its centre clip; "
        "needs --ckpt and a dataset with sound)",
    )
    parser.add_argument(
        "--untrained",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="with --modality audio: the checkpoint's task with fresh random weights (seeded by "
        "--seed), the baseline",
    )
    add_clip_options(parser, flip=False)
    add_feature_options(parser, clips=10, crops=3)
    parser.add_argument(
        "--train-views",
        type=int,
        default=5,
        help="random clips with random resized crops per training video, each a training "
        "sample (0: use --train-clips x --train-crops, averaged)",
    )
    parser.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=[0.2, 1.0],
        help="area range of the training views' random resized crops",
    )
    parser.add_argument("--train-clips", type=int, default=1, help="with --train-views 0")
    parser.add_argument("--train-crops", type=Literal[1, 3], default=1, help="with --train-views 0")
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps of the probe")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate of the probe")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of the probe")
    parser.add_argument(
        "--probe-batch-size", type=int | None, default=None, help="null: full batch"
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[1.0, 0.1, 0.01],
        help="fractions of the training labels (per-class stratified)",
    )
    parser.add_argument(
        "--linear-norm",
        type=FeatureNormName,
        default=DEFAULT_LINEAR_NORM,
        help="what the linear probe sees of the pooled features, with statistics of the "
        "training features: standardize (minus the training mean, over the training standard "
        "deviation per dimension: MAE's linear probe), center (minus the training mean, then "
        "each feature over its L2 norm), l2 (each feature over its L2 norm: the protocol "
        "before standardize was the default)",
    )
    parser.add_argument(
        "--knn-norm",
        type=FeatureNormName,
        default=DEFAULT_KNN_NORM,
        help="the kNN's cosine similarity is taken after this transform of the features (as "
        "--linear-norm): l2 is the plain cosine (Wu et al. 2018, DINO)",
    )
    parser.add_argument("--knn-k", type=int, default=20, help="neighbours that vote in the kNN")
    parser.add_argument(
        "--knn-temperature",
        type=float,
        default=0.07,
        help="temperature of the kNN's vote weights exp(similarity / T)",
    )
    parser.add_argument(
        "--head",
        type=Literal["linear", "attentive"],
        default="linear",
        help="linear: a linear probe on pooled features, and kNN; attentive: a cross-attention "
        "pooler with a learnt query over the frozen tokens, then a linear layer (V-JEPA's "
        "frozen evaluation; test views' probabilities averaged; no kNN)",
    )
    parser.add_argument("--attentive-epochs", type=int, default=20, help="with --head attentive")
    parser.add_argument("--attentive-lr", type=float, default=1e-3, help="with --head attentive")
    parser.add_argument(
        "--attentive-batch-size", type=int, default=32, help="with --head attentive"
    )
    parser.add_argument(
        "--attentive-depth", type=int, default=1, help="attention blocks of the attentive pooler"
    )
    parser.add_argument(
        "--attentive-heads",
        type=int | None,
        default=None,
        help="attention heads of the attentive pooler; null: the encoder's (a ViT's, a Video "
        "Swin's last stage's: V-JEPA's choice), or for a CNN's map 64 channels a head where 64 "
        "divides the channels, else one",
    )
    parser.add_argument(
        "--attend-across-clips",
        type=bool,
        default=False,
        help="with --head attentive: a crop's clips are one token sequence (V-JEPA's Kinetics "
        "setting) instead of one sequence per clip",
    )
    add_corruption_options(parser)
    add_output_option(parser)
    return parser


def feature_settings(
    args: Namespace,
    data: dict[str, Any],
    clip: dict[str, Any],
    split: str,
    clips: int,
    crops: int,
    random_views: int = 0,
    corrupted: bool = False,
) -> FeatureSettings:
    """The `FeatureSettings` of one split from a command's options, its data block and its
    resolved clip settings."""
    return FeatureSettings(
        root=str(data["root"]),
        split=split,
        layout=data["layout"],
        fold=data["fold"],
        annotations=data["annotations"],
        ckpt=args.ckpt,
        ckpt_format=args.ckpt_format,
        backbone=args.backbone,
        backbone_kwargs=args.backbone_kwargs if args.backbone else {},
        clips=clips,
        crops=crops,
        clip_len=clip["clip_len"],
        stride=clip["stride"],
        crop_size=clip["crop_size"],
        decode_size=clip["decode_size"],
        seed=args.seed,
        random_views=random_views,
        crop_scale=tuple(args.get("crop_scale") or (0.2, 1.0)),
        flip=clip.get("flip", False),
        corruption=args.corruption if corrupted else None,
        severity=args.severity if corrupted and args.corruption else None,
        data_options=decode_options(data),
    )


def train_and_test_features(
    args: Namespace,
    data: dict[str, Any],
    clip: dict[str, Any],
    train: tuple[int, int],
    test: tuple[int, int],
    train_views: int = 0,
    tokens: bool = False,
    model: VSSLTask | None = None,
) -> tuple[Features, Features]:
    """Features of the data block's training split (``train``: clips, crops) and test split
    (``test``; corrupted when ``--corruption`` is given); every view's tokens with ``tokens``
    (`vssl.eval.attentive.extract_tokens`), else pooled features averaged over the views.
    ``model``: the model the options name, when the caller has built it (`command_model`)."""
    train_split, test_split = splits(data)
    train_s = feature_settings(args, data, clip, train_split, *train, random_views=train_views)
    test_s = feature_settings(args, data, clip, test_split, *test, corrupted=True)
    if test_s.corruption is not None:
        print(
            f"test clips ({test_split}) with {test_s.corruption} noise at severity "
            f"{test_s.severity}; training clips clean",
            flush=True,
        )
    if model is None:
        model = build_model(train_s, trust=args.trust_checkpoint)
    cache = None if str(args.cache_dir).lower() == "none" else args.cache_dir
    opts = {
        "model": model,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "cache_dir": cache,
        "device": args.device,
    }
    extract = extract_tokens if tokens else extract_features
    return extract(train_s, **opts), extract(test_s, **opts)


def linear_results(
    args: Namespace, train: Features, test: Features, views: int
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The classifier on the frozen features at each label fraction: test accuracies, videos
    used, the probe's final loss and accuracy on its own training features (``linear_train_fit``:
    did the optimisation converge?) and the table's rows. Another classifier on the same
    features goes next to this one."""
    num_classes = len(train.classes)
    train_x = train.feats.reshape(len(train.paths), views, -1)
    accuracies, videos, fits, rows = {}, {}, {}, []
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
            normalize=args.linear_norm,
        )
        fit = probe_fit(
            probe, train_x[idx].flatten(0, 1), train.labels[idx].repeat_interleave(views)
        )
        acc = probe_accuracy(probe, test.feats, test.labels)
        accuracies[str(fraction)], videos[str(fraction)] = acc, int(idx.numel())
        fits[str(fraction)] = {"loss": fit.loss, "accuracy": fit.accuracy}
        rows.append(
            (f"linear top-1 ({fraction:.0%} labels, {idx.numel()} videos)", f"{100 * acc:.2f}")
        )
    return {"linear": accuracies, "train_videos": videos, "linear_train_fit": fits}, rows


def audio_main(args: Namespace, given: Namespace) -> int:
    """``vssl probe --modality audio``: `probe_audio` on the checkpoint's audio network and
    the data block; prints the accuracy and chance and, with ``--out``, writes them as JSON."""
    if args.ckpt is None or args.backbone is not None:
        raise UserError(
            "--modality audio: give --ckpt CKPT of an AVID or VATT run (the audio network and "
            "its sound window are the task's); --untrained probes the same task untrained"
        )
    unused = [
        option
        for option, wrong in (
            ("--head attentive", args.head != "linear"),
            ("--corruption", args.corruption is not None),
        )
        if wrong
    ]
    if unused:
        raise UserError(f"--modality audio: {', '.join(unused)} is for the video probe only")
    data, data_given = data_block(args, given)
    clip, sources = clip_settings(PROG, args, given, data_given, flip=False)
    train_split, test_split = splits(data)
    task = load_task(args.ckpt, trust=args.trust_checkpoint)
    if getattr(task, "audio_backbone", None) is None:
        raise UserError(
            f"{args.ckpt}: a {type(task).__name__} checkpoint has no audio network; the audio "
            "probe needs an audio-visual task (AVID, VATT)"
        )
    options = {"fold": data["fold"], "annotations": data["annotations"], **decode_options(data)}
    result = probe_audio(
        task.to(args.device),
        data["root"],
        layout=data["layout"],
        train_split=train_split,
        test_split=test_split,
        clip_len=clip["clip_len"],
        stride=clip["stride"],
        decode_size=clip["decode_size"],
        batch_size=args.batch_size,
        num_workers=args.workers,
        cache_dir=data.get("cache_dir"),
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        untrained=args.untrained,
        data_options=options,
    )
    split_sizes = f"{result.num_train} train, {result.num_test} test videos"
    rows = [
        (f"audio linear top-1 ({split_sizes})", f"{100 * result.accuracy:.2f}"),
        ("chance (the most common test class)", f"{100 * result.chance:.2f}"),
    ]
    record = {
        "protocol": "audio_probe",
        "ckpt": args.ckpt,
        "untrained": args.untrained,
        "task": type(task).__name__,
        "data": {k: data[k] for k in ("root", "layout", "fold", "annotations")},
        "splits": [train_split, test_split],
        "clip": clip,
        "data_settings_from": sources,
        "probe": {"steps": args.steps, "lr": args.lr, "seed": args.seed},
        "num_classes": result.num_classes,
        "num_train": result.num_train,
        "num_test": result.num_test,
        "results": {"accuracy": result.accuracy, "chance": result.chance},
    }
    name = f"{args.ckpt} (untrained)" if args.untrained else args.ckpt
    print_and_write("audio probe", name, rows, record, args.out)
    return 0


def command_model(args: Namespace, data: dict[str, Any], clip: dict[str, Any]) -> VSSLTask:
    """The model a parsed command line names (its checkpoint's task, or a seeded random-init
    backbone), as `train_and_test_features` builds it."""
    settings = feature_settings(args, data, clip, splits(data)[0], 1, 1)
    return build_model(settings, trust=args.trust_checkpoint)


def probe_features(
    args: Namespace, given: Namespace, tokens: bool = False
) -> tuple[Features, Features, dict[str, str]]:
    """The training and test features (tokens with ``tokens``) of a parsed ``vssl probe``
    command line, and where each clip setting came from."""
    train, test, sources, _ = probe_inputs(args, given, tokens)
    return train, test, sources


def probe_inputs(
    args: Namespace, given: Namespace, tokens: bool = False
) -> tuple[Features, Features, dict[str, str], VSSLTask]:
    """`probe_features` and the model the features came from."""
    data, data_given = data_block(args, given)
    clip, sources = clip_settings(PROG, args, given, data_given, flip=False)
    model = command_model(args, data, clip)
    train, test = train_and_test_features(
        args,
        data,
        clip,
        (args.train_clips, args.train_crops),
        (args.clips, args.crops),
        train_views=args.train_views,
        tokens=tokens,
        model=model,
    )
    return train, test, sources, model


def main(argv: list[str]) -> int:
    """Runs ``vssl probe ARGV``; 0 when done."""
    args, given = parse(build_parser(), argv)
    if args.modality == "audio":
        return audio_main(args, given)
    if args.untrained:
        raise UserError(
            "--untrained is for --modality audio; the video baseline is --backbone NAME"
        )
    name = model_choice(args)
    attentive = args.head == "attentive"
    train, test, sources, model = probe_inputs(args, given, tokens=attentive)
    if attentive:
        heads = args.attentive_heads
        results, rows = attentive_results(
            args, train, test, heads=encoder_heads(model) if heads is None else heads
        )
        title = "attentive probe"
    else:
        results, rows = linear_and_knn_results(args, train, test, max(1, args.train_views))
        title = f"linear probe ({args.linear_norm}) and kNN ({args.knn_norm})"
    probe_keys = (
        "head",
        "train_views",
        "fractions",
        "seed",
        *(ATTENTIVE_KEYS if attentive else LINEAR_KEYS),
    )
    record = {
        "protocol": "probe",
        "train_features": train.settings,
        "test_features": test.settings,
        "probe": {k: args[k] for k in probe_keys},
        "data_settings_from": sources,
        "classes": train.classes,
        "num_train": len(train.paths),
        "num_test": len(test.paths),
        "results": results,
    }
    print_and_write(title, name, rows, record, args.out)
    return 0


LINEAR_KEYS = (
    "steps",
    "lr",
    "weight_decay",
    "probe_batch_size",
    "linear_norm",
    "knn_norm",
    "knn_k",
    "knn_temperature",
)
ATTENTIVE_KEYS = (
    "attentive_epochs",
    "attentive_lr",
    "attentive_batch_size",
    "attentive_depth",
    "attentive_heads",
    "attend_across_clips",
)


def attentive_results(
    args: Namespace, train: Features, test: Features, heads: int | None = None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The attentive probe at each label fraction on token features: results and table rows.

    ``heads``: the pooler's attention heads (`vssl.eval.attentive.encoder_heads` of the model,
    or ``--attentive-heads``); None: `vssl.eval.attentive.default_heads` of the channels. The
    heads used are in the results (``attentive_heads``)."""
    if heads is None:
        heads = default_heads(train.feats.shape[-1])
    results = attentive_probe(
        train,
        test,
        fractions=args.fractions,
        epochs=args.attentive_epochs,
        batch_size=args.attentive_batch_size,
        lr=args.attentive_lr,
        depth=args.attentive_depth,
        heads=heads,
        attend_across_clips=args.attend_across_clips,
        seed=args.seed,
        device=args.device,
    )
    results["attentive_heads"] = heads
    rows = [
        (
            f"attentive top-1 ({float(f):.0%} labels, {results['train_videos'][f]} videos)",
            f"{100 * acc:.2f}",
        )
        for f, acc in results["attentive"].items()
    ]
    return results, rows


def linear_and_knn_results(
    args: Namespace, train: Features, test: Features, views: int
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The linear probe at each label fraction and the kNN classifier: results and rows."""
    results, rows = linear_results(args, train, test, views)
    knn = knn_accuracy(
        train.feats.reshape(len(train.paths) * views, -1),
        train.labels.repeat_interleave(views),
        test.feats,
        test.labels,
        len(train.classes),
        k=args.knn_k,
        temperature=args.knn_temperature,
        normalize=args.knn_norm,
    )
    results["knn"] = knn
    rows.append((f"kNN top-1 (k={args.knn_k}, T={args.knn_temperature:g})", f"{100 * knn:.2f}"))
    return results, rows


__all__ = [
    "add_feature_options",
    "attentive_results",
    "audio_main",
    "build_parser",
    "command_model",
    "feature_settings",
    "linear_and_knn_results",
    "linear_results",
    "main",
    "probe_inputs",
    "train_and_test_features",
]
