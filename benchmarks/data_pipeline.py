"""The data budget: training clips per second per core on raw and prepared files, and the CPU
cores one GPU needs, in one run.

1. Raw-like files: every video of ``--videos`` (../shared/videos) re-encoded as what raw
   Kinetics from YouTube looks like: short side 360, H.264 with a GOP of 250 and B-frames,
   played back and forth three times (longer videos, long seeks).
2. Prepared files: the raw-like tree through ``vssl prepare`` at short side 128 and at 256,
   with the default codec (MJPEG, every frame a keyframe) and with ``--codec h264`` (GOP 8, no
   B-frames); the transcode rate and the sizes are printed.
3. Training clips per second on one core (one process, one thread, no DataLoader workers: what
   one worker does), for random 16-frame clips at stride 2 randomly cropped to 112 (from the
   128 files, and from the raw ones decoded at 128) or 224 (from the 256 files, and from the raw
   ones decoded at 256): vssl's `VideoDataset` with each installed reader backend (auto, the
   default: libjpeg-turbo's fast decode for MJPEG and PyAV for the rest; jpeg, libjpeg-turbo's
   exact decode as OpenCV's; pyav; torchcodec; decord) against
   pytorchvideo's `LabeledVideoDataset` (PyAV, decoding the clip's
   time window at full resolution, then resizing). One more column, "task transform", is the
   default backend with the training transform the tasks actually build,
   ``train_clip_transform(crop)`` (random resized crop and flip) instead of the random crop: a
   real task's worker rate. The sides alternate round by round and each figure is the median of
   the rounds, so that a noisy machine slows every side alike.
4. The statistics task's worker pipeline on the 128 files, in its default mode on a GPU (17
   frames decoded, crop, flip, DIS flow; the 27 labels are left to the device), with, next to
   it, what the labels cost per clip on the device this benchmark runs on (batches of 32; on a
   CPU, `batch_labels` runs the numpy code clip by clip), and the worker that computes the
   labels itself (the default on a CPU), the two workers alternating round by round.
5. The budget: CPU cores per GPU = GPU training clips/s / training clips/s per core, for R3D-18
   at 16x112 (from the 128 files) and R3D-50 and ViT-B at 16x224 (from the 256 files). GPU
   clips/s come from ``--gpu-rates`` (measured by benchmarks/gpu_budget.py on a GPU) or else
   are estimated from each model's forward+backward FLOPs at 35% of an H100's bf16 peak, and
   labelled "estimate".

    python benchmarks/data_pipeline.py
    python benchmarks/data_pipeline.py --seconds 2 --rounds 1 --backends auto   # a quick look
    python benchmarks/data_pipeline.py --cases prepared-128-mjpeg prepared-256-mjpeg \
        --backends auto jpeg --no-pytorchvideo --no-statistics   # the vssl MJPEG rows only
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import gpu_budget  # noqa: E402

from vssl.data.index import probe_video  # noqa: E402
from vssl.data.reader import output_size  # noqa: E402

CLIP_LEN, STRIDE = 16, 2
RAW_SHORT_SIDE = 360
CODECS = ("mjpeg", "h264")  # prepare's default first
# (file set, short side the clips are decoded at, crop)
CASES = tuple(
    case
    for side, crop in ((128, 112), (256, 224))
    for case in (("raw-like", side, crop), *((f"prepared-{side} {c}", side, crop) for c in CODECS))
)
MODELS = (("r3d_18", 16, 112), ("r3d_50", 16, 224), ("vit_b_16", 16, 224))
TARGETS = {112: (300, 20), 224: (120, 8)}  # crop: (clips/s/core, times the raw-like files)
TASK_SIDE = "vssl {}, task transform"  # the default backend with train_clip_transform(crop)


def case_key(name: str, size: int) -> str:
    """The ``--cases`` name of a row: ``raw-like-128``, ``prepared-256-mjpeg``, ..."""
    return f"{name}-{size}" if name == "raw-like" else name.replace(" ", "-")


def make_raw_like(videos: list[Path], folder: Path) -> list[Path]:
    """Each video re-encoded at short side 360 with a GOP of 250 and B-frames (see the top)."""
    out = []
    for video in videos:
        info = probe_video(video)
        size = output_size(info.height, info.width, RAW_SHORT_SIDE)
        size = (size[0] // 2 * 2, size[1] // 2 * 2)
        options = {
            "preset": "veryfast",
            "crf": "23",
            "x264-params": "keyint=250:min-keyint=25:bframes=3",
        }
        out.append(
            gpu_budget.transcode(video, folder / f"{video.stem}.mp4", size, options, loops=3)
        )
    return out


def vssl_clips(
    paths: list[Path], backend: str, size: int, crop: int, task_transform: bool = False
) -> Iterator[int]:
    """Training samples of vssl's dataset (random clip, then a random crop or, with
    ``task_transform``, the tasks' training transform ``train_clip_transform(crop)``: random
    resized crop and flip), one at a time."""
    from torchvision.transforms import v2

    from vssl.data.dataset import VideoDataset
    from vssl.data.layouts import VideoItem
    from vssl.data.sampling import RandomClip
    from vssl.data.transforms import ViewTransform, train_clip_transform

    infos = [probe_video(p) for p in paths]
    ds = VideoDataset(
        [VideoItem(p, 0) for p in paths],
        infos,
        RandomClip(CLIP_LEN, STRIDE),
        transform=ViewTransform(
            train_clip_transform(crop) if task_transform else v2.RandomCrop(crop)
        ),
        decode_size=size,
        backend=backend,
    )
    rng = np.random.default_rng(0)
    while True:
        sample = ds[int(rng.integers(len(ds)))]
        assert sample["video"].shape == (CLIP_LEN, 3, crop, crop), sample["video"].shape
        yield 1


class PytorchvideoTransform:
    """16 frames at stride 2 of the decoded window, short side to ``size``, random crop, uint8."""

    def __init__(self, size: int, crop: int) -> None:
        self.size, self.crop = size, crop

    def __call__(self, sample: dict) -> dict:
        from torch.nn import functional as F

        video = sample["video"]  # float (C, T, H, W) at full resolution
        t = video.shape[1]
        video = video[:, torch.linspace(0, t - 1, CLIP_LEN).round().long()]
        h, w = video.shape[-2:]
        scale = self.size / min(h, w)
        video = F.interpolate(
            video.transpose(0, 1),
            size=(round(h * scale), round(w * scale)),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        top = int(torch.randint(0, video.shape[-2] - self.crop + 1, ()))
        left = int(torch.randint(0, video.shape[-1] - self.crop + 1, ()))
        video = video[..., top : top + self.crop, left : left + self.crop]
        return {"video": video.clamp(0, 255).to(torch.uint8), "label": sample["label"]}


def pytorchvideo_clips(paths: list[Path], size: int, crop: int) -> Iterator[int]:
    """Training samples of pytorchvideo's LabeledVideoDataset with the same clips."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler

    fps = min(probe_video(p).fps for p in paths)
    window = ((CLIP_LEN - 1) * STRIDE + 0.5) / fps  # the time that holds 31 frames
    ds = LabeledVideoDataset(
        [(str(p), {"label": 0}) for p in paths] * 100_000,
        make_clip_sampler("random", window),
        video_sampler=torch.utils.data.RandomSampler,
        transform=PytorchvideoTransform(size, crop),
        decode_audio=False,
        decoder="pyav",
    )
    for sample in ds:
        assert sample["video"].shape[-2:] == (crop, crop)
        yield 1


def statistics_dataset(paths: list[Path], labels: str):
    """The statistics task's training dataset: its own sampler and worker transform, with the
    labels computed in the worker (``labels="worker"``) or left to the device."""
    from vssl.data.dataset import VideoDataset
    from vssl.data.layouts import VideoItem
    from vssl.data.sampling import ClipSpec
    from vssl.tasks import SpatioTemporalStatistics

    task = SpatioTemporalStatistics(backbone="tiny3d", clip_len=CLIP_LEN, labels=labels)
    spec = ClipSpec(clip_len=CLIP_LEN, stride=1, crop_size=112, flip=True)
    return VideoDataset(
        [VideoItem(p, 0) for p in paths],
        [probe_video(p) for p in paths],
        task.clip_sampler("train", spec),
        transform=task.clip_transform("train", spec),
        decode_size=128,
    )


def statistics_clips(paths: list[Path], labels: str) -> Iterator[int]:
    """Training samples of the statistics task (`statistics_dataset`)."""
    ds = statistics_dataset(paths, labels)
    rng = np.random.default_rng(0)
    while True:
        ds[int(rng.integers(len(ds)))]
        yield 1


def statistics_label_ms(paths: list[Path], batch: int = 32, batches: int = 3) -> tuple[float, str]:
    """Milliseconds per clip of the device labels (`batch_labels`) of batches of ``batch``
    device-mode samples on this machine's device (a GPU when there is one; CPU time on a CPU),
    the median of five passes over ``batches`` batches; and the device's name."""
    from vssl.data.statistics_labels_torch import batch_labels

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = statistics_dataset(paths, "device")
    rng = np.random.default_rng(1)
    data = []
    for _ in range(batches):
        samples = [ds[int(rng.integers(len(ds)))] for _ in range(batch)]
        data.append([torch.stack([s[k] for s in samples]).to(device) for k in ("video", "flow")])
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for _ in range(6):  # the first pass warms up
        start = clock()
        for video, flow in data:
            batch_labels(video, flow)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (clock() - start) / (batch * batches))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "this CPU, one thread"
    return statistics.median(times[1:]), name


def rate(source: Iterator[int], seconds: float) -> float:
    """Samples per CPU-second of this process that ``source`` yields within ``seconds`` of CPU
    time (after one warm-up). Everything runs in this process on one thread, so this is the
    rate of one core, whatever else the machine is running."""
    next(source)
    done, start = 0, time.process_time()
    while time.process_time() - start < seconds or done == 0:
        done += next(source)
    return done / (time.process_time() - start)


def measure(
    sides: dict[str, Callable[[], Iterator[int]]], seconds: float, rounds: int
) -> dict[str, list[float]]:
    """Every side timed ``rounds`` times, the sides alternating within each round."""
    sources = {name: make() for name, make in sides.items()}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sources) if r % 2 == 0 else list(reversed(sources))
        for name in order:
            rates[name].append(rate(sources[name], seconds))
    return rates


def available_backends(wanted: list[str]) -> list[str]:
    """The reader backends of ``wanted`` whose packages work here."""
    return [b for b in wanted if gpu_budget.usable(b)]


def gpu_rates(spec: list[str]) -> dict[str, float]:
    """``name=clips_per_s`` pairs (from benchmarks/gpu_budget.py on a GPU)."""
    out = {}
    for item in spec:
        name, _, value = item.partition("=")
        out[name] = float(value)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "videos")
    p.add_argument("--seconds", type=float, default=6.0, help="CPU seconds per side per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--backends", nargs="+", default=["auto", "jpeg", "pyav", "torchcodec", "decord"]
    )
    keys = [case_key(name, size) for name, size, _ in CASES]
    p.add_argument(
        "--cases",
        nargs="+",
        choices=keys,
        default=keys,
        metavar="CASE",
        help=f"the rows to measure (default all): {', '.join(keys)}",
    )
    p.add_argument("--no-pytorchvideo", action="store_true")
    p.add_argument("--no-statistics", action="store_true")
    p.add_argument(
        "--gpu-rates",
        nargs="*",
        default=[],
        metavar="MODEL=CLIPS_PER_S",
        help="measured GPU training clips/s per model, e.g. r3d_18=1400",
    )
    p.add_argument("--work-dir", type=Path, help="keep the made files here (default: a temp dir)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from vssl.data.prepare import prepare

    videos = sorted(
        v for v in args.videos.glob("*") if v.suffix in {".mp4", ".avi"} and "bugy" not in v.name
    )
    if not videos:
        sys.exit(f"{args.videos}: no videos to make the files from")
    backends = available_backends(args.backends)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        raw_dir = work / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        sets = {"raw-like": make_raw_like(videos, raw_dir)}
        print(
            f"raw-like files: {len(videos)} videos, short side {RAW_SHORT_SIDE}, GOP 250, "
            f"B-frames, {sum(probe_video(v).num_frames for v in sets['raw-like'])} frames"
        )
        cases = [case for case in CASES if case_key(*case[:2]) in args.cases]
        for side in (128, 256):
            for codec in CODECS:
                if not any(name == f"prepared-{side} {codec}" for name, _, _ in cases):
                    continue
                out = work / f"prepared_{side}_{codec}"
                summary = prepare(
                    raw_dir, out, short_side=side, codec=codec, workers=1, progress=False
                )
                print(
                    f"vssl prepare --short-side {side} --codec {codec}: "
                    + "; ".join(summary.lines()[1:3])
                )
                sets[f"prepared-{side} {codec}"] = sorted(out.glob("*.mp4"))

        results: dict[tuple[str, int], dict[str, list[float]]] = {}
        for name, size, crop in cases:
            sides: dict[str, Callable[[], Iterator[int]]] = {}
            for backend in backends:
                sides[f"vssl {backend}"] = lambda b=backend, n=name, s=size, c=crop: vssl_clips(
                    sets[n], b, s, c
                )
            sides[TASK_SIDE.format(backends[0])] = lambda n=name, s=size, c=crop: vssl_clips(
                sets[n], backends[0], s, c, task_transform=True
            )
            if not args.no_pytorchvideo and importlib.util.find_spec("pytorchvideo"):
                sides["pytorchvideo"] = lambda n=name, s=size, c=crop: pytorchvideo_clips(
                    sets[n], s, c
                )
            results[(name, size)] = measure(sides, args.seconds, args.rounds)
            print(
                f"measured {name} decoded at {size}: "
                + ", ".join(
                    f"{k} {statistics.median(v):.1f}" for k, v in results[(name, size)].items()
                )
            )
        stats_rate = stats_worker_rate = label_ms = None
        if not args.no_statistics and f"prepared-128 {CODECS[0]}" in sets:
            files = sets[f"prepared-128 {CODECS[0]}"]
            got = measure(
                {p: lambda p=p: statistics_clips(files, p) for p in ("device", "worker")},
                args.seconds,
                args.rounds,
            )
            stats_rate = statistics.median(got["device"])
            stats_worker_rate = statistics.median(got["worker"])
            label_ms, label_device = statistics_label_ms(files)

    print(
        f"\nTraining clips per CPU-second (one core): random {CLIP_LEN}-frame clips at stride "
        f"{STRIDE}, random crop (task transform: train_clip_transform(crop), random resized "
        f"crop and flip); median (min-max) of {args.rounds} alternating rounds of "
        f"{args.seconds:g} CPU-s\n"
    )
    names = list(next(iter(results.values())))
    print("| files | decoded at | crop | " + " | ".join(names) + " |")
    print("|---|---:|---:|" + "---:|" * len(names))
    for (name, size), rates in results.items():
        crop = dict((s, c) for _, s, c in CASES)[size]
        cells = [f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for v in rates.values()]
        print(f"| {name} | {size} | {crop} | " + " | ".join(cells) + " |")
    default = f"vssl {backends[0]}"
    print(f"\nPrepared against raw-like ({default}, the default reader), and the targets:")
    for size in (128, 256):
        crop = 112 if size == 128 else 224
        raw_rates = results.get(("raw-like", size))
        raw = statistics.median(raw_rates[default]) if raw_rates else None
        floor, times = TARGETS[crop]
        for codec in CODECS:
            if (f"prepared-{size} {codec}", size) not in results:
                continue
            prepared = statistics.median(results[(f"prepared-{size} {codec}", size)][default])
            against = "" if raw is None else f", {prepared / raw:.1f}x the raw-like files"
            print(
                f"  short side {size} {codec}, crop {crop}: {prepared:.1f} clips/s/core"
                f"{against} (targets >= {floor} clips/s/core and >= {times}x)"
            )
    if "vssl auto" in names and "vssl jpeg" in names:
        print(
            "\nMJPEG decode: auto (jpeg_fast: libjpeg-turbo's fast IDCT and chroma upsampling) "
            "against jpeg (the exact decode), paired round by round, median (min-max):"
        )
        for (name, size), rates in results.items():
            if name.endswith(" mjpeg"):
                pairs = [f / e for f, e in zip(rates["vssl auto"], rates["vssl jpeg"], strict=True)]
                print(
                    f"  {name} at {size}: {statistics.median(pairs):.3f}x "
                    f"({min(pairs):.3f}-{max(pairs):.3f})"
                )
    if stats_rate is not None:
        print(
            f"  statistics task on the 128 files, worker with the labels on the device (the "
            f"default on a GPU: decode + crop + flow): {stats_rate:.1f} clips/s/core (target >= "
            f"120); the labels on the device ({label_device}, batches of 32): {label_ms:.2f} ms "
            f"per clip; the worker with the labels in it (the default on a CPU: decode + crop + "
            f"flow + labels): {stats_worker_rate:.1f} clips/s/core"
        )

    measured = gpu_rates(args.gpu_rates)
    print("\nCPU cores one GPU needs (GPU training clips/s / clips/s per core):\n")
    print(
        "| model | clip | GPU clips/s | per core, prepared | cores, prepared | per core, prepared, "
        "task transform | cores, prepared, task transform | per core, raw-like | cores, raw-like |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    budget = {}
    for model, frames, crop in MODELS:
        size = 128 if crop == 112 else 256
        if model in measured:
            gpu, label = measured[model], "measured"
        else:
            flops = gpu_budget.train_flops(model, frames, crop)
            gpu = gpu_budget.UTILISATION * gpu_budget.H100_BF16_TFLOPS * 1e12 / flops
            label = "estimate"
        prepared_rates = results.get((f"prepared-{size} {CODECS[0]}", size))
        if prepared_rates is None:
            continue  # that row was not measured (--cases)
        prepared = statistics.median(prepared_rates[default])
        task = statistics.median(prepared_rates[TASK_SIDE.format(backends[0])])
        raw_rates = results.get(("raw-like", size))
        raw = statistics.median(raw_rates[default]) if raw_rates else math.nan
        budget[model] = {
            "gpu": gpu,
            "prepared": gpu / prepared,
            "prepared_task": gpu / task,
            "raw": gpu / raw,
        }
        print(
            f"| {model} | {frames}x{crop} | {gpu:.0f} ({label}) | {prepared:.1f} | "
            f"{gpu / prepared:.1f} | {task:.1f} | {gpu / task:.1f} | "
            + ("- | - |" if math.isnan(raw) else f"{raw:.1f} | {gpu / raw:.1f} |")
        )
    if stats_rate is not None and "r3d_18" in budget:
        gpu = budget["r3d_18"]["gpu"]
        print(
            f"\nstatistics task, r3d_18 at 16x112 from the 128 files: {gpu / stats_rate:.1f} cores "
            f"per GPU with the labels on the GPU, {gpu / stats_worker_rate:.1f} with them in the "
            "workers"
        )
    if not measured:
        print(
            f"\nGPU clips/s estimated: forward+backward FLOPs per clip at "
            f"{gpu_budget.UTILISATION:.0%} of an H100's {gpu_budget.H100_BF16_TFLOPS:.0f} "
            f"TFLOP/s bf16 peak (no GPU measured; pass --gpu-rates from gpu_budget.py)."
        )
    return {
        "rates": {f"{n}@{s}": r for (n, s), r in results.items()},
        "statistics": stats_rate,
        "statistics_worker_labels": stats_worker_rate,
        "statistics_label_ms": label_ms,
        "budget": budget,
    }


if __name__ == "__main__":
    main()
