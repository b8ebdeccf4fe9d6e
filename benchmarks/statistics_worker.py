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

``--modes``: the working tree's worker with the labels in the workers (``labels="worker"``)
against the worker that leaves them to the device (``labels="device"``: decode, crop, flip and
flow only), paired the same way (transform and worker sample rows), and the cost of the device
labels themselves per clip for batches of ``--batch`` clips on this machine's device (on a CPU:
`batch_labels`, which runs the numpy code clip by clip there, and the batched torch code
beside it); before that, the agreement of the batched torch labels with the numpy labels on
``--agreement`` clips (label by label; with float16 flow too, to see whether the worker could
send half the bytes).

    python benchmarks/statistics_worker.py                 # uncommitted changes against HEAD
    python benchmarks/statistics_worker.py --old e1dcf1c   # against the torch crop, flip, copy
    python benchmarks/statistics_worker.py --prepared DIR --rounds 9 --seconds 1
    python benchmarks/statistics_worker.py --modes --agreement 500
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


def device_batches(
    samples: list[dict], batch: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches (uint8 clips (B, T, 3, S, S), flow (B, T, 2, S, S)) on ``device`` of the
    device-mode transform's samples (random crops and flips)."""
    transform = new_module.StatisticsTransform(CROP, True, labels="device")
    torch.manual_seed(0)
    out = [transform(s) for s in samples]
    batches = []
    for start in range(0, len(out) - batch + 1, batch):
        part = out[start : start + batch]
        video = torch.stack([s["video"] for s in part]).to(device)
        flow = torch.stack([s["flow"] for s in part]).to(device)
        batches.append((video, flow))
    return batches


def label_ms_per_clip(
    fn: Callable[[torch.Tensor, torch.Tensor], object],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    passes: int,
    device: torch.device,
) -> float:
    """Milliseconds per clip of ``fn(video, flow)`` over ``batches``: the median of ``passes``
    timed passes after one untimed warm-up pass; on CUDA wall time with the device
    synchronised at the end of each pass, elsewhere this process's CPU time."""
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    clips = sum(len(video) for video, _ in batches)

    def one_pass() -> None:
        for video, flow in batches:
            fn(video, flow)
        if cuda:
            torch.cuda.synchronize(device)

    one_pass()
    times = []
    for _ in range(passes):
        start = clock()
        one_pass()
        times.append(1e3 * (clock() - start) / clips)
    return statistics.median(times)


def agreement(samples: list[dict]) -> None:
    """Prints how often the batched torch labels equal the numpy labels, and with the flow
    rounded to float16."""
    from vssl.data.statistics_labels_torch import appearance_labels, motion_labels

    transform = new_module.StatisticsTransform(CROP, True, labels="device")
    torch.manual_seed(1)
    motion_eq = appearance_eq = half_eq = 0
    for sample in samples:
        out = transform(sample)
        video, flow = out["video"], out["flow"]
        expected_m = new_module.motion_statistics(flow)
        expected_a = new_module.appearance_statistics(video)
        motion_eq += int((motion_labels(flow[None])[0].numpy() == expected_m).sum())
        appearance_eq += int((appearance_labels(video[None])[0].numpy() == expected_a).sum())
        half_eq += int((new_module.motion_statistics(flow.half().float()) == expected_m).sum())
    n = len(samples)
    print(
        f"agreement with the numpy labels on {n} clips (random crops and flips): motion "
        f"{motion_eq} of {14 * n}, appearance {appearance_eq} of {13 * n}; numpy motion labels "
        f"of float16-rounded flow equal to float32's: {half_eq} of {14 * n} "
        f"({100 * half_eq / (14 * n):.2f}%)"
    )


def modes(args: argparse.Namespace, paths: list[Path]) -> dict[str, dict[str, float]]:
    """The ``--modes`` measurement (see the module docstring)."""
    from vssl.data.statistics_labels_torch import appearance_labels, batch_labels, motion_labels

    raw = dataset(paths, None)
    rng = np.random.default_rng(0)
    if args.agreement:
        agreement([raw[int(rng.integers(len(raw)))] for _ in range(args.agreement)])
    samples = [raw[int(rng.integers(len(raw)))] for _ in range(max(args.clips, args.batch))]
    transforms = {
        place: new_module.StatisticsTransform(CROP, True, labels=place)
        for place in ("worker", "device")
    }
    rows = {"transform": {p: over(samples, lambda x, t=t: t(x)) for p, t in transforms.items()}}
    datasets = {p: dataset(paths, t) for p, t in transforms.items()}
    items = [int(i) for i in rng.integers(0, len(raw), 4096)]
    rows["worker sample"] = {p: over(items, lambda i, d=d: d[i]) for p, d in datasets.items()}
    print(
        f"\nms per clip (CPU time, one thread; {CLIP_LEN}+1 frames cropped to {CROP}; median of "
        f"{args.rounds} alternating rounds of {args.seconds:g} CPU-s per side)"
    )
    print("| row | labels in the worker | labels on the device | ratio (min-max) |")
    print("|---|---|---|---|")
    results: dict[str, dict[str, float]] = {}
    for row, sides in rows.items():
        got = paired(sides, args.rounds, args.seconds)
        ratios = [w / d for w, d in zip(got["worker"], got["device"], strict=True)]
        worker_ms, device_ms = statistics.median(got["worker"]), statistics.median(got["device"])
        print(
            f"| {row} | {worker_ms:.2f} ms ({1e3 / worker_ms:.1f} clips/s) | {device_ms:.2f} ms "
            f"({1e3 / device_ms:.1f} clips/s) | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
        results[row] = {"worker_ms": worker_ms, "device_ms": device_ms}

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = device_batches(samples, args.batch, device)

    sides = {"batch_labels": batch_labels}
    if device.type == "cpu":  # batch_labels runs the numpy code there: the torch code beside it
        sides["torch code"] = lambda v, f: (motion_labels(f), appearance_labels(v))
    per_clip = {
        name: label_ms_per_clip(fn, batches, args.rounds, device) for name, fn in sides.items()
    }
    print(
        f"\ndevice labels on {device} ({torch.get_num_threads()} thread(s)), batches of "
        f"{args.batch}, ms per clip ({'wall' if device.type == 'cuda' else 'CPU'} time, median of "
        f"{args.rounds}): " + ", ".join(f"{k} {v:.2f}" for k, v in per_clip.items())
    )
    results["device labels"] = per_clip
    return results


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
    p.add_argument("--modes", action="store_true", help="labels in the worker against device")
    p.add_argument("--batch", type=int, default=32, help="--modes: clips per device batch (32)")
    p.add_argument("--agreement", type=int, default=0, help="--modes: clips to compare labels")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.prepared:
            paths = sorted(args.prepared.glob("*.mp4"))
        else:
            paths = prepared_files(args.videos, args.work_dir or Path(tmp))
        if not paths:
            sys.exit("no prepared files: pass --prepared DIR or --videos with videos in it")
        if args.modes:
            return modes(args, paths)
        old = load_old(args.old)
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
