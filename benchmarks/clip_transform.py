"""The worker-side clip transform alone: torchvision on a `tv_tensors.Video` against vssl's
`ClipTransform` (the same draws and values on the plain tensor), on one core.

Random uint8 clips of 16 frames at the sizes the prepared files decode to (128x228 and
256x456), planar (contiguous ``(T, C, H, W)``, what the PyAV reader gives) and channels-last
(what the MJPEG reader gives), through the tasks' training transform (`train_clip_transform`: random resized crop
and flip) and the evaluation one (`eval_clip_transform`: resize and centre crop). The two sides
alternate repeat by repeat (the first side alternates too), each timed over the same calls from
the same seed; every printed figure is derived from the same pairs: per-call times are medians,
the speed-up is the median of the paired ratios with its min-max spread.

    python benchmarks/clip_transform.py
    python benchmarks/clip_transform.py --repeats 11 --calls 20
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torchvision import tv_tensors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vssl.data.transforms import (  # noqa: E402
    ClipTransform,
    eval_clip_transform,
    train_clip_transform,
)

CASES = (  # (frame height, width, crop)
    (128, 228, 112),
    (256, 456, 224),
)


def cpu_seconds(fn: Callable[[Tensor], Tensor], clip: Tensor, calls: int, seed: int) -> float:
    """CPU seconds per call of ``fn`` over ``calls`` calls from ``seed``."""
    torch.manual_seed(seed)
    start = time.process_time()
    for _ in range(calls):
        fn(clip)
    return (time.process_time() - start) / calls


def paired(
    old: Callable[[Tensor], Tensor],
    new: Callable[[Tensor], Tensor],
    clip: Tensor,
    repeats: int,
    calls: int,
) -> tuple[list[float], list[float]]:
    """Per-call CPU seconds of both sides, ``repeats`` pairs, alternating which runs first."""
    olds, news = [], []
    for r in range(repeats):
        if r % 2 == 0:
            olds.append(cpu_seconds(old, clip, calls, r))
            news.append(cpu_seconds(new, clip, calls, r))
        else:
            news.append(cpu_seconds(new, clip, calls, r))
            olds.append(cpu_seconds(old, clip, calls, r))
    return olds, news


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=11, help="pairs of timings per case")
    p.add_argument("--calls", type=int, default=20, help="calls per timing")
    p.add_argument("--frames", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(
        f"{args.frames}-frame uint8 clips, one core; median of {args.repeats} alternating pairs "
        f"of {args.calls} calls\n"
    )
    print("| transform | clip | frames | torchvision ms | vssl ms | speed-up (min-max) |")
    print("|---|---|---|---:|---:|---:|")
    for (h, w, crop), layout in itertools.product(CASES, ("planar", "channels-last")):
        clip = torch.randint(0, 256, (args.frames, 3, h, w), dtype=torch.uint8)
        if layout == "channels-last":
            clip = clip.contiguous(memory_format=torch.channels_last)
        for name, transform in (
            (f"train_clip_transform({crop})", train_clip_transform(crop)),
            (f"eval_clip_transform({crop})", eval_clip_transform(crop)),
        ):
            fast = ClipTransform(transform)
            assert fast.fast, name

            def old(x: Tensor, t: Callable = transform) -> Tensor:
                return t(tv_tensors.Video(x)).as_subclass(Tensor)

            torch.manual_seed(0)
            want = old(clip)
            torch.manual_seed(0)
            assert torch.equal(fast(clip), want), name
            olds, news = paired(old, fast, clip, args.repeats, args.calls)
            ratios = [o / n for o, n in zip(olds, news, strict=True)]
            row = {
                "transform": name,
                "clip": f"{args.frames}x3x{h}x{w}",
                "frames": layout,
                "torchvision_ms": statistics.median(olds) * 1e3,
                "vssl_ms": statistics.median(news) * 1e3,
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
            rows.append(row)
            print(
                f"| {name} | {row['clip']} | {layout} | {row['torchvision_ms']:.2f} | "
                f"{row['vssl_ms']:.2f} | "
                f"{row['ratio']:.2f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) |"
            )
    return rows


if __name__ == "__main__":
    main()
