"""``python -m vssl retrieve``: video retrieval, each test video querying every training video;
R@k by cosine similarity of frozen features.

The features and their settings are the probe's (`vssl.commands.probe`): the data block gives
the dataset, the clip settings default to the checkpoint's training settings.
"""

from __future__ import annotations

from jsonargparse import ArgumentParser

from vssl.commands.common import (
    add_clip_options,
    add_corruption_options,
    add_model_options,
    add_output_option,
    clip_settings,
    command_parser,
    data_block,
    model_choice,
    parse,
    print_and_write,
)
from vssl.commands.probe import add_feature_options, train_and_test_features
from vssl.eval.retrieval import retrieval_recall

PROG = "vssl retrieve"


def build_parser() -> ArgumentParser:
    """``vssl retrieve``'s options."""
    parser = command_parser(
        PROG,
        "Video retrieval: each test video queries all training videos; R@k by cosine similarity.",
    )
    add_model_options(parser)
    add_clip_options(parser, flip=None)
    add_feature_options(parser, clips=10, crops=1)
    parser.add_argument(
        "--ks", type=int, nargs="+", default=[1, 5, 10, 20, 50], help="the k of each R@k"
    )
    add_corruption_options(parser)
    add_output_option(parser)
    return parser


def main(argv: list[str]) -> int:
    """Runs ``vssl retrieve ARGV``; 0 when done."""
    args, given = parse(build_parser(), argv)
    name = model_choice(args)
    data, data_given = data_block(args, given)
    clip, sources = clip_settings(PROG, args, given, data_given, flip=None)
    views = (args.clips, args.crops)
    gallery, query = train_and_test_features(args, data, clip, views, views)
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
    print_and_write("retrieval", name, rows, record, args.out)
    return 0


__all__ = ["build_parser", "main"]
