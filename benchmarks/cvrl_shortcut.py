"""Does a CVRL checkpoint tell its positive pairs apart by motion or by appearance?

CVRL's held-out contrastive accuracy (the positive clip ranked first among the batch's 2N - 1
candidates) is measured three ways on the same validation pairs: clips in order, the same
clips with their frames shuffled in time (one permutation per batch), and every clip reduced
to its first frame repeated. If the accuracy hardly moves, the features identify a video by
what one frame shows, and say nothing about its motion: this is why CVRL does not beat random
initialisation on the synthetic motion classes (README, benchmarks).

    python benchmarks/cvrl_shortcut.py CKPT --root bench/data/synthetic --clip-len 8 --stride 2
"""

from __future__ import annotations

import argparse
import sys

import torch

from vssl.data import VideoDataModule
from vssl.eval.features import load_task


def main(argv: list[str] | None = None) -> int:
    """Prints the contrastive accuracy of the three variants."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--root", default="bench/data/synthetic")
    p.add_argument("--layout", default="folder")
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--crop-size", type=int, default=32)
    p.add_argument("--decode-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    task = load_task(args.ckpt).eval()
    dm = VideoDataModule(
        root=args.root,
        layout=args.layout,
        clip_len=args.clip_len,
        stride=args.stride,
        crop_size=args.crop_size,
        decode_size=args.decode_size,
        flip=False,
        batch_size=args.batch_size,
        num_workers=0,
    )
    spec = dm.clip_spec
    dataset = dm.build_dataset(
        "val", task.clip_sampler("val", spec), task.clip_transform("val", spec)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size)
    generator = torch.Generator().manual_seed(0)
    variants = {
        "in order": lambda v, perm: v,
        "frames shuffled": lambda v, perm: v[:, :, perm],
        "first frame only": lambda v, perm: v[:, :, :1].expand_as(v).contiguous(),
    }
    accuracy: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for batch in loader:
            batch = task.augment_batch(batch)
            perm = torch.randperm(batch["video"].shape[2], generator=generator)
            for name, change in variants.items():
                out = task.step(
                    {
                        "video": change(batch["video"], perm),
                        "video2": change(batch["video2"], perm),
                    },
                    "val",
                )
                accuracy[name].append(float(out.logs["contrast_acc"]))
    for name, values in accuracy.items():
        print(
            f"{name:>16}: contrastive accuracy {sum(values) / len(values):.3f} "
            f"({len(values)} batches of up to {args.batch_size} pairs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
