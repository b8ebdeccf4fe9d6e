"""Training-clip throughput of vssl's data pipeline against pytorchvideo's, in one run.

Both sides read the same videos with the same number of DataLoader workers and produce the same
thing: uint8 batches of random 16-frame clips (consecutive frames), resized to a short side of
128 and randomly cropped to 112x112. vssl decodes only the frames of the clip and resizes while
decoding (`VideoReader`); pytorchvideo's `LabeledVideoDataset` with its PyAV `EncodedVideo`
decodes the clip's time window to float frames at full resolution, which the transform then
resizes and crops. Each side runs in its own subprocess so that its peak memory (the process
and its workers, summed) is measured on its own.

    python benchmarks/data_pipeline.py                # real videos of ../shared/videos + synthetic
    python benchmarks/data_pipeline.py --clips 200 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP_LEN, SHORT_SIDE, CROP = 16, 128, 112


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            continue
    return total


class PeakMemory:
    """Samples the RSS of this process tree every 20 ms and keeps the maximum."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def vssl_loader(paths: list[str], workers: int, batch: int):
    import torch
    from torchvision.transforms import v2

    from vssl.data.dataset import VideoDataset
    from vssl.data.index import VideoIndex
    from vssl.data.layouts import VideoItem
    from vssl.data.sampling import RandomClip
    from vssl.data.transforms import ViewTransform

    index = VideoIndex.build(paths, progress=False)
    items = [VideoItem(Path(p), 0) for p in paths if index[p].ok]
    ds = VideoDataset(
        items,
        [index[str(i.path)] for i in items],
        sampler=RandomClip(CLIP_LEN, 1),
        transform=ViewTransform(v2.RandomCrop(CROP)),
        decode_size=SHORT_SIDE,
    )
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10**7)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers)
    return ((b["video"], b["label"]) for b in loader)


class PytorchvideoTransform:
    """Uniform 16-frame subsample, short side to 128, random 112 crop, back to uint8."""

    def __call__(self, sample: dict) -> dict:
        import torch
        from torch.nn import functional as F

        video = sample["video"]  # float (C, T, H, W), full resolution
        t = video.shape[1]
        video = video[:, torch.linspace(0, t - 1, CLIP_LEN).round().long()]
        h, w = video.shape[-2:]
        scale = SHORT_SIDE / min(h, w)
        video = F.interpolate(video.transpose(0, 1), size=(round(h * scale), round(w * scale)),
                              mode="bilinear", antialias=True, align_corners=False)
        top = int(torch.randint(0, video.shape[-2] - CROP + 1, ()))
        left = int(torch.randint(0, video.shape[-1] - CROP + 1, ()))
        video = video[..., top:top + CROP, left:left + CROP]
        return {"video": video.clamp(0, 255).to(torch.uint8), "label": sample["label"]}


def pytorchvideo_loader(paths: list[str], workers: int, batch: int, fps: dict[str, float]):
    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler

    # The time window that holds 16 frames (every video of a set has the same frame rate).
    duration = (CLIP_LEN - 0.5) / min(fps[p] for p in paths)
    ds = LabeledVideoDataset(
        [(p, {"label": 0}) for p in paths] * 1000,
        make_clip_sampler("random", duration),
        video_sampler=torch.utils.data.RandomSampler,
        transform=PytorchvideoTransform(),
        decode_audio=False,
        decoder="pyav",
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers)
    return ((b["video"], b["label"]) for b in loader)


def run_side(side: str, paths: list[str], clips: int, workers: int, batch: int) -> dict:
    """Times ``clips`` clips (after one warm-up batch) on one side; returns clips/s and memory."""
    import torch

    torch.set_num_threads(1)
    from vssl.data.index import VideoIndex

    fps = {p: VideoIndex.build(paths, progress=False)[p].fps for p in paths}
    with PeakMemory() as mem:
        it = vssl_loader(paths, workers, batch) if side == "vssl" else pytorchvideo_loader(
            paths, workers, batch, fps)
        video, _ = next(it)
        shape = tuple(video.shape)
        start, n = time.perf_counter(), 0
        while n < clips:
            video, _ = next(it)
            n += video.shape[0]
        elapsed = time.perf_counter() - start
    return {"side": side, "clips_per_s": n / elapsed, "peak_rss_mb": mem.peak / 2**20, "batch_shape": shape}


def synthetic_videos(folder: Path, count: int) -> list[str]:
    """A few longer synthetic videos (the training-size case: 256x340, 96 frames)."""
    import numpy as np

    from vssl.data.encode import write_video

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        path = folder / f"synthetic_{i}.mp4"
        if not path.exists():
            base = rng.integers(0, 256, (256, 340, 3), dtype=np.uint8)
            frames = np.stack([np.roll(base, 3 * t, axis=1) for t in range(96)])
            write_video(path, frames, fps=25, gop=12)
        out.append(str(path))
    return out


def group_by_fps(paths: list[str]) -> dict[float, list[str]]:
    """Videos grouped by frame rate, so that a time window means the same frame count."""
    import av

    groups: dict[float, list[str]] = {}
    for p in paths:
        with av.open(p) as c:
            groups.setdefault(float(c.streams.video[0].average_rate), []).append(p)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=160, help="clips timed per side")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--videos", default=str(ROOT.parent / "shared" / "videos"))
    parser.add_argument("--side", choices=["vssl", "pytorchvideo"], help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:  # the child process of one side
        result = run_side(args.side, json.loads(args.paths), args.clips, args.workers, args.batch)
        print(json.dumps(result))
        return

    real = sorted(str(p) for p in Path(args.videos).glob("*") if p.suffix in {".mp4", ".avi"}
                  and "bugy" not in p.name) if Path(args.videos).is_dir() else []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"synthetic 256x340 @25fps": synthetic_videos(Path(tmp), 4)}
        for rate, group in group_by_fps(real).items():
            names = ", ".join(Path(p).name for p in group)
            sets[f"{names} @{rate:g}fps"] = group
        rows = []
        for name, paths in sets.items():
            res = {}
            for side in ("vssl", "pytorchvideo"):
                cmd = [sys.executable, __file__, "--side", side, "--paths", json.dumps(paths),
                       "--clips", str(args.clips), "--workers", str(args.workers), "--batch", str(args.batch)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if out.returncode:
                    sys.exit(f"{side} failed on {name}:\n{out.stderr[-3000:]}")
                res[side] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((name, res))
    print(f"\nclips {CLIP_LEN}x{CROP}x{CROP} uint8, batch {args.batch}, {args.workers} workers, "
          f"{args.clips} clips per side\n")
    print("| videos | vssl clips/s | pytorchvideo clips/s | ratio | vssl peak MB | pytorchvideo peak MB |")
    print("|---|---|---|---|---|---|")
    for name, res in rows:
        v, p = res["vssl"], res["pytorchvideo"]
        print(f"| {name} | {v['clips_per_s']:.1f} | {p['clips_per_s']:.1f} | "
              f"{v['clips_per_s'] / p['clips_per_s']:.2f}x | {v['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
