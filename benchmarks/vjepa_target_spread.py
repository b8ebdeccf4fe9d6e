"""Has a V-JEPA checkpoint's target collapsed towards one feature per clip?

V-JEPA's loss can fall without any learning of the masked regions when the EMA target's
tokens become alike within a clip: the predictor then only has to output the clip's mean
token. For the checkpoint's target encoder and for an untrained one of the same backbone, on
validation clips, this prints the std of the target tokens within a clip (averaged over
channels and clips), the std of the clip means across clips, and the L1 loss of predicting every
token by its clip's mean token (compare it with the training loss).

    python benchmarks/vjepa_target_spread.py CKPT --root data/quickstart
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import Tensor

from vssl.data import VideoDataModule
from vssl.eval.features import load_task
from vssl.tasks import VJEPA


def spread(features: Tensor) -> tuple[float, float, float]:
    """Of target features ``(B, N, D)``: the token std within a clip, the std of the clip means
    across clips (both averaged over channels), and the L1 of predicting each token by its
    clip's mean."""
    clip_mean = features.mean(dim=1, keepdim=True)
    within = features.std(dim=1).mean()
    across = clip_mean.squeeze(1).std(dim=0).mean()
    return float(within), float(across), float((features - clip_mean).abs().mean())


def main(argv: list[str] | None = None) -> int:
    """Prints the three figures for the trained and an untrained target encoder."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--root", default="data/quickstart")
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--crop-size", type=int, default=32)
    p.add_argument("--decode-size", type=int, default=32)
    p.add_argument("--clips", type=int, default=32, help="validation videos, evenly spaced")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    task = load_task(args.ckpt).eval()
    if not isinstance(task, VJEPA):
        raise SystemExit(f"{args.ckpt}: a {type(task).__name__} checkpoint, not a VJEPA one")
    fresh = VJEPA(
        backbone=task.hparams.backbone,
        backbone_kwargs=task.hparams.backbone_kwargs,
        predictor_dim=8,
        predictor_depth=1,
    ).eval()
    dm = VideoDataModule(
        root=args.root,
        clip_len=args.clip_len,
        stride=args.stride,
        crop_size=args.crop_size,
        decode_size=args.decode_size,
        flip=False,
        num_workers=0,
    )
    dm.attach(task)
    dm.setup("validate")
    data = dm.datasets["val"]
    step = max(1, len(data) // args.clips)
    clips = torch.stack([data[i]["video"] for i in range(0, len(data), step)][: args.clips])
    video = task.augment(clips)
    print(f"{args.ckpt}: {len(clips)} validation clips of {args.root}")
    for name, model in (("trained", task), ("untrained", fresh)):
        with torch.no_grad():
            within, across, l1 = spread(model.target_features(video))
        print(
            f"{name:9s} target token std within a clip {within:.3f}, std of the clip means "
            f"across clips {across:.3f}, L1 of predicting each token by its clip's mean {l1:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
