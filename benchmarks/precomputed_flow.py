"""The statistics task's worker sample with optical flow computed in the worker against flow
read from ``vssl prepare --flow``'s flow files, paired, on one core.

The videos of ``--videos`` (../shared/videos) are prepared at short side 128 (MJPEG, the
default) with ``flow=True``. Each round times, alternating the order:

- ``computed``: today's worker sample: 17 frames decoded, the task's `StatisticsTransform`
  (crop, flip, DIS flow of the cropped frames, 27 labels);
- ``read``: the same sample with the flow read from the flow files (`WithFlow` sampler,
  ``flow=PreparedFlow()``); `StatisticsTransform` then crops and flips the sample's flow with
  the frames (u negated when flipped) instead of computing it, and computes the same labels;
- both again with ``labels="device"`` (`StatisticsTransform` leaves the 27 labels to the
  task's device and sends the cropped flow): the worker's share when training on a GPU;
- the two parts that differ, alone: DIS flow of a 17-frame 112x112 crop, and reading a clip's
  16 fields from a flow file (`PreparedFlow.clip`).

Figures are per CPU-second of this process (one thread): ms per clip, the median over the
rounds, and the median (min-max) of the paired ratios computed / read.

    python benchmarks/precomputed_flow.py
    python benchmarks/precomputed_flow.py --seconds 2 --rounds 3   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vssl.data.dataset import VideoDataset  # noqa: E402
from vssl.data.flow import PreparedFlow, compute_flow_into  # noqa: E402
from vssl.data.index import probe_video  # noqa: E402
from vssl.data.layouts import VideoItem  # noqa: E402
from vssl.data.sampling import RandomClip, WithFlow  # noqa: E402
from vssl.data.statistics_labels import StatisticsTransform  # noqa: E402

CLIP_LEN, CROP = 16, 112


def samples(paths: list[Path], read: bool, labels: str = "worker") -> Callable[[], None]:
    """One training sample of the statistics task per call, flow computed or read, labels
    computed in the worker or (``labels="device"``) left to the task's device."""
    sampler = RandomClip(CLIP_LEN, 1, extra_frames=1)
    ds = VideoDataset(
        [VideoItem(p, 0) for p in paths],
        [probe_video(p) for p in paths],
        WithFlow(sampler) if read else sampler,
        transform=StatisticsTransform(CROP, True, labels=labels),
        decode_size=128,
        flow=PreparedFlow() if read else None,
    )
    rng = np.random.default_rng(0)

    def one() -> None:
        sample = ds[int(rng.integers(len(ds)))]
        assert sample["video"].shape == (CLIP_LEN, 3, CROP, CROP)
        if labels == "worker":
            assert sample["motion"].shape == (14,) and "flow" not in sample
        else:
            assert sample["flow"].shape == (CLIP_LEN, 2, CROP, CROP) and "motion" not in sample

    return one


def dis_alone(paths: list[Path]) -> Callable[[], None]:
    """DIS flow of a random 17-frame 112x112 gray crop (what `computed` spends on flow)."""
    from vssl.data.reader import open_reader

    clips = []
    rng = np.random.default_rng(1)
    for p in paths:
        with open_reader(p, "auto") as reader:
            start = int(rng.integers(reader.num_frames - CLIP_LEN))
            frames = reader.get_frames(np.arange(start, start + CLIP_LEN + 1), size=128)
        gray = frames.float().mean(1)[:, :CROP, :CROP].to(torch.uint8).numpy()
        clips.append(np.ascontiguousarray(gray))
    out = np.empty((CLIP_LEN, 2, CROP + 2, CROP), dtype=np.float32)
    state = {"n": 0}

    def one() -> None:
        state["n"] += 1
        compute_flow_into(clips[state["n"] % len(clips)], out, pad=1)

    return one


def read_alone(paths: list[Path]) -> Callable[[], None]:
    """A random clip's 16 fields from its flow file, at the stored size."""
    source = PreparedFlow()
    counts = [source.fields(str(p)) for p in paths]
    sizes = [(info.height, info.width) for info in map(probe_video, paths)]
    rng = np.random.default_rng(2)

    def one() -> None:
        v = int(rng.integers(len(paths)))
        start = int(rng.integers(counts[v] - CLIP_LEN + 1))
        source.clip(str(paths[v]), np.arange(start, start + CLIP_LEN + 1), *sizes[v])

    return one


def ms_per_call(one: Callable[[], None], seconds: float) -> float:
    """CPU milliseconds per call over ``seconds`` of CPU time (after one warm-up)."""
    one()
    done, start = 0, time.process_time()
    while time.process_time() - start < seconds or done == 0:
        one()
        done += 1
    return (time.process_time() - start) / done * 1e3


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "videos")
    p.add_argument("--seconds", type=float, default=4.0, help="CPU seconds per side per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from vssl.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for video in sorted(args.videos.glob("*")):
            if video.suffix in {".mp4", ".avi"} and "bugy" not in video.name:
                (src / video.name).symlink_to(video)
        summary = prepare(src, Path(tmp) / "p128", workers=1, progress=False, flow=True)
        print("vssl prepare --flow: " + "; ".join(summary.lines()[1:4]))
        paths = sorted((Path(tmp) / "p128").glob("*.mp4"))
        sides = {
            "computed": samples(paths, read=False),
            "read": samples(paths, read=True),
            "computed, labels on the device": samples(paths, read=False, labels="device"),
            "read, labels on the device": samples(paths, read=True, labels="device"),
            "DIS flow alone": dis_alone(paths),
            "flow read alone": read_alone(paths),
        }
        ms: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                ms[name].append(ms_per_call(sides[name], args.seconds))
    print(
        f"\nStatistics task worker, ms per clip on one core ({CLIP_LEN} + 1 frames decoded at "
        f"short side 128, crop {CROP}); median (min-max) of {args.rounds} alternating rounds "
        f"of {args.seconds:g} CPU-s\n"
    )
    print("| part | ms per clip | clips/s/core |")
    print("|---|---:|---:|")
    for name, values in ms.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} ({min(values):.2f}-{max(values):.2f}) | {1e3 / med:.1f} |")
    for where in ("", ", labels on the device"):
        ratios = [c / r for c, r in zip(ms[f"computed{where}"], ms[f"read{where}"], strict=True)]
        print(
            f"\nwhole sample{where}, computed / read, paired: {statistics.median(ratios):.3f}x "
            f"({min(ratios):.3f}-{max(ratios):.3f})"
        )
    return ms


if __name__ == "__main__":
    main()
