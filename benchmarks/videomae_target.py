"""How much of VideoMAE's reconstruction target could any predictor explain on a dataset?

Measured without training, on training clips drawn as `vssl.tasks.VideoMAE` draws them (the
random resized crop of the datamodule) and cut into the task's tubelets, for the per-tubelet
normalised target (the paper's) and the raw pixels (``normalize_target: false``):

- ``zero``: the loss of predicting 0, the mean square of the target (about ``(n - 1) / n`` for
  the normalised target: what a decoder that learnt nothing gets);
- ``dataset mean``: predicting every tubelet by the mean target over the data;
- ``temporal copy``: predicting a tubelet by the best multiple of the tubelet one time step
  earlier at the same position (tube masking hides it too: a bound on what motion alone gives);
- ``ridge``: a ridge regression from the raw pixels of the 4 spatial neighbours at the same
  time step (fitted on 70% of the tubelets, measured on the rest): what a linear inpainter
  gets when all four are visible;
- ``flat``: the fraction of tubelet channels whose pixel std is under 2 and under 4 grey
  levels, where the normalised target is mostly rounding and codec noise scaled to unit
  variance.

    python benchmarks/videomae_target.py --root data/synthetic
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import Tensor

from vssl.data import VideoDataModule
from vssl.tasks import VideoMAE
from vssl.tasks.videomae import patchify, reconstruction_target

#: The 4 spatial neighbours (row, column offsets) of the ridge regression.
NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def temporal_copy_loss(target: Tensor) -> float:
    """MSE of predicting each tubelet of ``target`` ``(B, T', H', W', F)`` by ``a`` times the
    one a time step earlier, with the least-squares ``a``."""
    now, before = target[:, 1:].double(), target[:, :-1].double()
    a = (now * before).sum() / (before**2).sum().clamp_min(1e-12)
    return float(((now - a * before) ** 2).mean())


def neighbour_ridge_loss(
    pixels: Tensor, target: Tensor, lam: float = 10.0, train_fraction: float = 0.7, seed: int = 0
) -> float:
    """Held-out MSE of a ridge regression predicting each tubelet's ``target`` ``(B, T', H', W',
    F)`` from the raw ``pixels`` (same shape) of its 4 spatial neighbours at the same time
    step (wrapping round at the edges), with a bias; the tubelets are split at random."""
    _, _, h, w, f = target.shape
    inputs, outputs = [], []
    for i in range(h):
        for j in range(w):
            near = [pixels[:, :, (i + di) % h, (j + dj) % w] for di, dj in NEIGHBOURS]
            inputs.append(torch.cat(near, dim=-1).reshape(-1, 4 * f))
            outputs.append(target[:, :, i, j].reshape(-1, f))
    x = torch.cat(inputs).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    y = torch.cat(outputs).double()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(train_fraction * len(x))
    fit, held = order[:cut], order[cut:]
    gram = x[fit].T @ x[fit] + lam * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x[fit].T @ y[fit])
    return float(((x[held] @ weights - y[held]) ** 2).mean())


def flat_fractions(pixels_255: Tensor, tubelet: tuple[int, int, int]) -> tuple[float, float]:
    """Fractions of tubelet channels of clips ``(B, C, T, H, W)`` in 0-255 whose pixel std is
    under 2 and under 4."""
    std = patchify(pixels_255.float(), tubelet).std(dim=2)
    return float((std < 2).float().mean()), float((std < 4).float().mean())


def main(argv: list[str] | None = None) -> int:
    """Prints the losses of the predictors above for both targets."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default="data/synthetic")
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--crop-size", type=int, default=32)
    p.add_argument("--decode-size", type=int, default=32)
    p.add_argument("--crop-scale", type=float, nargs=2, default=(0.5, 1.0))
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--tubelet-frames", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="random crops per training video")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    task = VideoMAE(
        backbone="vit_tiny_8",
        backbone_kwargs={"patch_size": args.patch_size, "tubelet_frames": args.tubelet_frames},
        decoder_dim=8,
        decoder_depth=1,
        decoder_heads=1,
        reference_batch_size=None,
    )
    dm = VideoDataModule(
        root=args.root,
        clip_len=args.clip_len,
        stride=args.stride,
        crop_size=args.crop_size,
        crop_scale=tuple(args.crop_scale),
        decode_size=args.decode_size,
        flip=False,
        num_workers=0,
    )
    dm.attach(task)
    dm.setup("fit")
    data = dm.datasets["train"]
    clips = torch.stack([data[i % len(data)]["video"] for i in range(args.repeats * len(data))])
    video = task.augment(clips)
    grid = task.backbone.grid(video.shape)
    raw = reconstruction_target(video, task.tubelet, task.augment.mean, task.augment.std, False)
    b, _, f = raw.shape
    raw = raw.reshape(b, *grid, f)
    under2, under4 = flat_fractions(clips.permute(0, 2, 1, 3, 4), task.tubelet)
    print(
        f"{args.root}: {b} clips of {args.clip_len}x{args.stride} at {args.crop_size} px, "
        f"tubelets {task.tubelet}, grid {grid}; tubelet channels with pixel std < 2: "
        f"{under2:.3f}, < 4: {under4:.3f}"
    )
    for normalize in (True, False):
        full = reconstruction_target(
            video, task.tubelet, task.augment.mean, task.augment.std, normalize
        ).reshape(b, *grid, f)
        losses = {
            "zero": float((full.double() ** 2).mean()),
            "dataset mean": float(((full - full.mean(dim=(0, 1, 2, 3))).double() ** 2).mean()),
            "temporal copy": temporal_copy_loss(full),
            "ridge on 4 neighbours": neighbour_ridge_loss(raw, full, seed=args.seed),
        }
        name = "normalised target" if normalize else "raw pixels"
        print(f"{name:18s} " + "  ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
