"""Cost of the spatio-temporal statistics labels: clips per second on one core, and their share
of a CPU training step.

For each clip of 16 + 1 frames at 112x112: optical flow (OpenCV DIS with the default setting
``fast_vr3``, see `vssl.data.flow`; ``--preset`` picks another, e.g. ``fast`` for comparison),
the 14 motion labels and the 13 appearance labels, all on one thread, as one DataLoader worker
does them. Clips come from the real videos of ../shared/videos (resized to a short side of 128
and centre-cropped, as the task does) when that folder exists, and from the synthetic dataset's
renderer. Times are the median over clips of the best of ``--repeats`` runs per stage (the least
disturbed by other processes); CPU time per clip is reported beside wall time.

``--agreement``: how often each DIS setting's motion labels equal those from DIS "medium" flow
(per label and on average), the check behind the default setting (`vssl.data.flow`).

The share of a training step: the labels of one batch (``--batch`` clips) against one forward
and backward pass of the backbone on that batch, both on one thread. In training on a CPU the
labels run in the DataLoader workers, in parallel with the step, so the share says how many
workers per training process keep the step fed; on a GPU they run per batch on the GPU by
default (`SpatioTemporalStatistics` ``labels``; ``benchmarks/statistics_worker.py --modes``
measures both workers).

    python benchmarks/statistics_labels.py
    python benchmarks/statistics_labels.py --clips 16 --backbones tiny3d r3d_18 --method farneback
    python benchmarks/statistics_labels.py --preset fast --backbones
    python benchmarks/statistics_labels.py --agreement --clips 40 --backbones
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from vssl import backbones
from vssl.data.flow import DEFAULT_DIS_PRESET, DIS_PRESETS, FLOW_METHODS, compute_flow
from vssl.data.reader import VideoReader
from vssl.data.statistics_labels import (
    MOTION_LABELS,
    StatisticsTransform,
    appearance_statistics,
    motion_statistics,
)
from vssl.data.synthetic import SYNTHETIC_CLASSES, clip_rng, render_clip

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "videos"


def real_clips(count: int, frames: int, size: int) -> list[np.ndarray]:
    """``count`` clips of ``frames`` frames spread over the videos of ../shared/videos."""
    paths = [
        VIDEOS / n for n in ("vtest.avi", "bikes.mp4", "bigbuckbunny.mp4") if (VIDEOS / n).is_file()
    ]
    clips = []
    crop = StatisticsTransform(size, train=False)
    for k in range(count):
        if not paths:
            break
        with VideoReader(paths[k % len(paths)]) as reader:
            starts = np.linspace(0, reader.num_frames - frames, count // len(paths) + 1).astype(int)
            start = starts[k // len(paths)]
            clip = reader.get_frames(np.arange(start, start + frames), size=128)
        clips.append(crop.crop_and_flip(clip).permute(0, 2, 3, 1).contiguous().numpy())
    return clips


def synthetic_clips(count: int, frames: int, size: int) -> list[np.ndarray]:
    """``count`` rendered clips of the synthetic motion classes."""
    return [
        render_clip(m, clip_rng(0, m.name, k), frames=frames, size=size).frames
        for k, m in zip(range(count), SYNTHETIC_CLASSES * count, strict=False)
    ]


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall, cpu) seconds of the fastest of ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def label_times(
    clips: list[np.ndarray], method: str, preset: str, repeats: int
) -> dict[str, tuple[float, float]]:
    """Median per-clip (wall, cpu) seconds of flow, motion labels, appearance labels."""
    out: dict[str, list[tuple[float, float]]] = {"flow": [], "motion": [], "appearance": []}
    for clip in clips:
        flow = compute_flow(clip, method=method, preset=preset)
        out["flow"].append(
            best_time(lambda c=clip: compute_flow(c, method=method, preset=preset), repeats)
        )
        out["motion"].append(best_time(lambda f=flow: motion_statistics(f), repeats))
        out["appearance"].append(best_time(lambda c=clip: appearance_statistics(c[:-1]), repeats))
    return {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for k, v in out.items()
    }


def label_agreement(
    clips: list[np.ndarray], presets: list[str], reference: str = "medium"
) -> dict[str, np.ndarray]:
    """Per-label rate at which each DIS preset's motion labels equal ``reference``'s: (14,)."""
    ref = np.stack([motion_statistics(compute_flow(c, preset=reference)) for c in clips])
    return {
        p: (np.stack([motion_statistics(compute_flow(c, preset=p)) for c in clips]) == ref).mean(0)
        for p in presets
    }


def step_time(name: str, batch: int, frames: int, size: int, repeats: int) -> float:
    """Seconds of one forward + backward pass of backbone ``name`` on a batch, best of repeats."""
    model = backbones.build(name)
    x = torch.randn(batch, 3, frames, size, size)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    step()
    return best_time(step, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=12, help="clips per source (12)")
    parser.add_argument("--frames", type=int, default=16, help="frames the network sees (16)")
    parser.add_argument("--size", type=int, default=112, help="crop side (112)")
    parser.add_argument("--method", choices=FLOW_METHODS, default="dis")
    parser.add_argument(
        "--preset", choices=tuple(DIS_PRESETS), default=DEFAULT_DIS_PRESET, help="DIS setting"
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs per stage and clip (5)")
    parser.add_argument("--batch", type=int, default=8, help="training batch for the share (8)")
    parser.add_argument("--backbones", nargs="*", default=["tiny3d", "r3d_18"])
    parser.add_argument(
        "--agreement", action="store_true", help="also compare DIS settings' labels with medium's"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    sources = {"synthetic": synthetic_clips(args.clips, args.frames + 1, args.size)}
    real = real_clips(args.clips, args.frames + 1, args.size)
    if real:
        sources["real videos"] = real
    print(
        f"\nlabels of {args.frames}x{args.size}x{args.size} clips ({args.frames} flow fields, "
        f"{args.method}{f' {args.preset}' if args.method == 'dis' else ''}), one thread, "
        f"median per clip over {args.clips} clips"
    )
    print(
        "| clips | flow ms | motion ms | appearance ms | total ms (wall) | total ms (cpu) "
        "| clips/s/core |"
    )
    print("|---|---|---|---|---|---|---|")
    totals = {}
    for name, clips in sources.items():
        t = label_times(clips, args.method, args.preset, args.repeats)
        wall = sum(v[0] for v in t.values())
        cpu = sum(v[1] for v in t.values())
        totals[name] = wall
        print(
            f"| {name} | {t['flow'][0] * 1e3:.2f} | {t['motion'][0] * 1e3:.2f} | "
            f"{t['appearance'][0] * 1e3:.2f} | {wall * 1e3:.2f} | {cpu * 1e3:.2f} "
            f"| {1 / wall:.0f} |"
        )

    if args.agreement:
        presets = [p for p in DIS_PRESETS if p != "medium"]
        print("\nmotion labels equal to those of DIS medium flow (rate, over the clips)")
        print("| clips | preset | mean | per label (" + ", ".join(MOTION_LABELS) + ") |")
        print("|---|---|---|---|")
        for name, clips in sources.items():
            for preset, rate in label_agreement(clips, presets).items():
                per_label = " ".join(f"{r:.2f}" for r in rate)
                print(f"| {name} | {preset} | {rate.mean():.3f} | {per_label} |")

    if args.backbones:
        per_clip = max(totals.values())
        print(
            f"\nshare of a CPU training step (batch {args.batch}, one thread): labels "
            f"{per_clip * 1e3:.2f} ms/clip ({max(totals, key=totals.get)})"
        )
        print("| backbone | forward+backward s | labels of the batch s | labels / step |")
        print("|---|---|---|---|")
        for name in args.backbones:
            step = step_time(name, args.batch, args.frames, args.size, repeats=2)
            labels = per_clip * args.batch
            print(f"| {name} | {step:.3f} | {labels:.3f} | {100 * labels / step:.1f}% |")


if __name__ == "__main__":
    main()
