"""The statistics task's worker, old code against new: milliseconds per clip on one core, paired.

Loads ``vssl/data/statistics_labels.py`` as it is at ``--old`` (a git revision, ``HEAD`` by
default) beside the working tree's, and times both on the same clips of prepared files (short
side 128, MJPEG: made with `vssl.data.prepare` from ``--videos``, or ``--prepared`` ones), the
two sides alternating round by round, in CPU time of this process on one thread, so that a
busy machine slows both alike. Three rows:

- labels: the 14 motion and 13 appearance labels of a cropped clip from its flow (flow computed
  once beforehand);
- transform: `StatisticsTransform` on a decoded sample (crop, flip, copies, DIS flow, labels);
- worker sample: a `VideoDataset` item of the task's training pipeline (decode + transform), as
  ``benchmarks/data_pipeline.py`` times it.

Every label of the two sides is checked equal (``np.array_equal``) on the clips of the labels
and transform rows (with the same torch seed for the random crop and flip) before timing.
The ratio column is old / new: the median of the per-round ratios, with their min-max.

    python benchmarks/statistics_worker.py                 # uncommitted changes against HEAD
    python benchmarks/statistics_worker.py --old e1dcf1c   # against the torch crop, flip, copy
    python benchmarks/statistics_worker.py --prepared DIR --rounds 9 --seconds 1
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vssl.data import statistics_labels as new_module  # noqa: E402
from vssl.data.flow import compute_flow_into, limit_threads  # noqa: E402
from vssl.data.index import probe_video  # noqa: E402

MODULE_PATH = "vssl/data/statistics_labels.py"
CLIP_LEN, CROP, DECODE_SIZE = 16, 112, 128


def load_old(revision: str) -> ModuleType:
    """The statistics labels module as it is at git ``revision``, imported under its own name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:{MODULE_PATH}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "statistics_labels_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("vssl.data._statistics_labels_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def prepared_files(videos: Path, work: Path) -> list[Path]:
    """MJPEG copies of ``videos`` at short side 128 under ``work`` (kept there between runs)."""
    from vssl.data.prepare import prepare

    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    for video in sorted(videos.glob("*")):
        if video.suffix in {".mp4", ".avi"} and "bugy" not in video.name:
            link = src / video.name
            if not link.exists():
                link.symlink_to(video.resolve())
    out = work / "prepared_128_mjpeg"
    prepare(src, out, short_side=DECODE_SIZE, codec="mjpeg", workers=1, progress=False)
    return sorted(out.glob("*.mp4"))


def dataset(paths: list[Path], transform: Callable | None):
    """The statistics task's training dataset over ``paths`` with ``transform``."""
    from vssl.data.dataset import VideoDataset
    from vssl.data.layouts import VideoItem
    from vssl.data.sampling import ClipSpec
    from vssl.tasks import SpatioTemporalStatistics

    task = SpatioTemporalStatistics(backbone="tiny3d", clip_len=CLIP_LEN)
    spec = ClipSpec(clip_len=CLIP_LEN, stride=1, crop_size=CROP, flip=True)
    return VideoDataset(
        [VideoItem(p, 0) for p in paths],
        [probe_video(p) for p in paths],
        task.clip_sampler("train", spec),
        transform=transform,
        decode_size=DECODE_SIZE,
    )


def label_inputs(module: ModuleType, samples: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frames (T+1, S, S, 3), row-padded flow) of each sample's centre crop."""
    crop = module.StatisticsTransform(CROP, train=False)
    out = []
    for sample in samples:
        frames = crop.crop_and_flip(sample["video"]).permute(0, 2, 3, 1).contiguous().numpy()
        n, s = frames.shape[:2]
        gray = cv2.cvtColor(frames.reshape(n * s, s, 3), cv2.COLOR_RGB2GRAY).reshape(n, s, s)
        flow = np.empty((n - 1, 2, s + 2, s), np.float32)
        out.append((frames, compute_flow_into(gray, flow, pad=1)))
    return out


def labels_of(module: ModuleType, frames: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The 27 labels by ``module``'s worker-path functions."""
    with limit_threads(1):
        motion = module._motion_labels(module._boundaries_padded(flow))
        appearance = module._appearance_labels(module._appearance_regions(frames[:-1]))
    return np.concatenate([motion, appearance])


def check_equal(old: ModuleType, inputs: list, samples: list[dict], seeds: int) -> int:
    """Raises unless old and new give equal labels (and videos); returns the clips compared."""
    for frames, flow in inputs:
        if not np.array_equal(labels_of(old, frames, flow), labels_of(new_module, frames, flow)):
            raise AssertionError("old and new labels differ")
    transforms = [m.StatisticsTransform(CROP, train=True) for m in (old, new_module)]
    for seed in range(seeds):
        for sample in samples:
            outs = []
            for transform in transforms:
                torch.manual_seed(seed)
                outs.append(transform(sample))
            for key in ("video", "motion", "appearance"):
                if not torch.equal(outs[0][key], outs[1][key]):
                    raise AssertionError(f"old and new transforms give different {key!r}")
    return len(inputs) + seeds * len(samples)


def cpu_ms_per_call(fn: Callable[[], object], seconds: float) -> float:
    """CPU milliseconds per call of ``fn``, called for at least ``seconds`` of CPU time."""
    fn()
    done, start = 0, time.process_time()
    while time.process_time() - start < seconds or done == 0:
        fn()
        done += 1
    return 1e3 * (time.process_time() - start) / done


def paired(
    sides: dict[str, Callable[[], object]], rounds: int, seconds: float
) -> dict[str, list[float]]:
    """ms per call of each side, the sides alternating (and their order swapping) every round."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in list(sides) if r % 2 == 0 else list(reversed(sides)):
            out[name].append(cpu_ms_per_call(sides[name], seconds))
    return out


def over(items: list, fn: Callable[[object], object]) -> Callable[[], object]:
    """A function that calls ``fn`` on the next of ``items`` on each call, cycling: each side
    of a pair gets its own, so both see the same items in the same order."""
    state = {"i": 0}

    def step() -> object:
        item = items[state["i"] % len(items)]
        state["i"] += 1
        return fn(item)

    return step


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "videos")
    p.add_argument("--prepared", type=Path, help="a folder of prepared 128 MJPEG files to use")
    p.add_argument("--work-dir", type=Path, help="where to prepare the files (default: temp)")
    p.add_argument("--old", default="HEAD", help="git revision of the old module (HEAD)")
    p.add_argument("--clips", type=int, default=24, help="decoded clips for labels/transform")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (7)")
    p.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per side per round")
    p.add_argument("--seeds", type=int, default=3, help="torch seeds of the equality check")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    old = load_old(args.old)

    with tempfile.TemporaryDirectory() as tmp:
        if args.prepared:
            paths = sorted(args.prepared.glob("*.mp4"))
        else:
            paths = prepared_files(args.videos, args.work_dir or Path(tmp))
        if not paths:
            sys.exit("no prepared files: pass --prepared DIR or --videos with videos in it")
        raw = dataset(paths, None)
        rng = np.random.default_rng(0)
        samples = [raw[int(rng.integers(len(raw)))] for _ in range(args.clips)]
        inputs = label_inputs(new_module, samples)
        compared = check_equal(old, inputs, samples, args.seeds)
        print(f"labels equal, old ({args.old}) and new, on {compared} clips")

        rows: dict[str, dict[str, Callable[[], object]]] = {}
        rows["labels"] = {
            name: over(inputs, lambda x, m=m: labels_of(m, *x))
            for name, m in (("old", old), ("new", new_module))
        }
        transforms = {
            "old": old.StatisticsTransform(CROP, True),
            "new": new_module.StatisticsTransform(CROP, True),
        }
        rows["transform"] = {
            name: over(samples, lambda x, t=t: t(x)) for name, t in transforms.items()
        }
        datasets = {name: dataset(paths, t) for name, t in transforms.items()}
        items = [int(i) for i in rng.integers(0, len(raw), 4096)]
        rows["worker sample"] = {
            name: over(items, lambda i, d=d: d[i]) for name, d in datasets.items()
        }

        results = {}
        print(
            f"\nms per clip (CPU time, one thread; {CLIP_LEN}+1 frames cropped to {CROP}; median of "
            f"{args.rounds} alternating rounds of {args.seconds:g} CPU-s per side)"
        )
        print("| row | old ms | new ms | old / new (min-max) | new clips/s/core |")
        print("|---|---|---|---|---|")
        for row, sides in rows.items():
            got = paired(sides, args.rounds, args.seconds)
            ratios = [o / n for o, n in zip(got["old"], got["new"], strict=True)]
            old_ms, new_ms = statistics.median(got["old"]), statistics.median(got["new"])
            print(
                f"| {row} | {old_ms:.2f} | {new_ms:.2f} | {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f}) | {1e3 / new_ms:.1f} |"
            )
            results[row] = {"old_ms": old_ms, "new_ms": new_ms, "ratio": statistics.median(ratios)}

        # Where the new worker's time goes: the decode alone and the flow alone, timed the same
        # way; the rest of the transform is what is neither flow nor labels.
        flow_out = [np.empty_like(flow) for _, flow in inputs]
        grays = [
            cv2.cvtColor(f.reshape(-1, f.shape[2], 3), cv2.COLOR_RGB2GRAY).reshape(f.shape[:3])
            for f, _ in inputs
        ]

        def flow_into(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            return compute_flow_into(*pair, pad=1)

        parts = paired(
            {
                "decode": over(items, lambda i: raw[i]),
                "flow": over(list(zip(grays, flow_out, strict=True)), flow_into),
            },
            args.rounds,
            args.seconds,
        )
        decode_ms, flow_ms = (statistics.median(parts[k]) for k in ("decode", "flow"))
        labels_ms = results["labels"]["new_ms"]
        other = results["transform"]["new_ms"] - flow_ms - labels_ms
        total = results["worker sample"]["new_ms"]
        print(
            f"\nnew worker sample {total:.2f} ms: decode (dataset item without the transform) "
            f"{decode_ms:.2f}, DIS flow {flow_ms:.2f}, labels {labels_ms:.2f}, crop, flip, copies "
            f"and gray {other:.2f} (transform minus flow and labels)"
        )
        results["parts"] = {"decode_ms": decode_ms, "flow_ms": flow_ms, "other_ms": other}
    return results


if __name__ == "__main__":
    main()
