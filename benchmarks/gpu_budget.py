"""The cores-per-GPU budget of issue 14: decode speed per core, GPU decode and training speed.

One run prints every figure the budget needs:

1. CPU decode, clips/s per core, for each installed reader backend (pyav, torchcodec, decord):
   random 16-frame clips at stride 2, one thread, on a raw-like file (640x360 H.264, GOP 250,
   B-frames: what raw Kinetics from YouTube looks like) decoded at short side 128 and 256, and
   on prepared-like ones (short side 128 and 256, GOP 8, no B-frames, x264 ``tune=fastdecode``)
   decoded at their size, all made from ``--source``. Two ways: a reader opened per clip (what
   ``VideoDataset`` does) and one reader kept open per file; clips per second of the process's
   CPU time, in interleaved rounds, median of them.
2. GPU decode (torchcodec's NVDEC decoder, ``device="cuda"``), clips/s on the same files; and
   MJPEG copies of the prepared-like files (what ``vssl prepare`` writes by default) decoded by
   the ``jpeg`` backend with nvJPEG (``device="cuda"``, the packets of a clip in one batch),
   next to the same backend on one CPU core (libjpeg-turbo).
3. Training clips/s in bf16 (``torch.autocast``) of vssl's backbones: R3D-18 at 16x112,
   R3D-50 and ViT-B at 16x224 (forward, backward and an AdamW step on random clips).
4. The budget: CPU cores one GPU needs = GPU training clips/s / CPU decode clips/s per core,
   with clips decoded at the short side the model's crops are cut from (128 for 112, 256 for
   224).

5. The statistics task (``--parts statistics``), on ``vssl prepare``'s short side 128 MJPEG copy
   of the raw-like file with its flow file (``flow=True``):
   - its batched torch labels (`vssl.data.statistics_labels_torch`: ``motion_labels`` and
     ``appearance_labels``) on the GPU: ms per clip for batches of 32 clips of 16 (+1) frames
     cropped to 112 (synchronised, after a warm-up pass), and how many labels equal the numpy
     labels of `vssl.data.statistics_labels` on 64 clips, also under
     ``torch.use_deterministic_algorithms(True)`` (or the error it raises);
   - the worker sample on one CPU core in the modes that matter on a GPU (flow computed or read
     from the flow file, labels left to the device) and with everything in the worker, paired
     as ``benchmarks/precomputed_flow.py`` times them, clips per CPU-second;
   - the cores one GPU needs for a statistics run on R3D-18 at 16x112: the GPU's training rate
     (with the labels' GPU time added when measured) / the worker's rate.

Without CUDA, 2, 3 and the GPU labels cannot be measured: the script says so and prints,
labelled "estimate", the training clips/s an H100 would reach at 35% of its ~990 TFLOP/s bf16
peak, from each model's forward+backward FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode``, and the torch labels' figures on the CPU,
labelled as such.

    python benchmarks/gpu_budget.py                            # the full run
    python benchmarks/gpu_budget.py --seconds 5 --models r3d_18:16:112 --backends pyav
    python benchmarks/gpu_budget.py --parts budget             # parts 1-4 alone
    python benchmarks/gpu_budget.py --parts statistics         # part 5 alone
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))  # precomputed_flow, statistics_worker
sys.path.insert(0, str(ROOT))

import precomputed_flow  # noqa: E402
import statistics_worker  # noqa: E402

from vssl.data.index import probe_video  # noqa: E402
from vssl.data.reader import output_size  # noqa: E402
from vssl.data.statistics_labels import appearance_statistics, motion_statistics  # noqa: E402
from vssl.data.statistics_labels_torch import appearance_labels, motion_labels  # noqa: E402

CLIP_LEN, STRIDE = 16, 2
DEFAULT_SOURCE = ROOT.parent / "shared" / "videos" / "bigbuckbunny.mp4"
DEFAULT_MODELS = ("r3d_18:16:112", "r3d_50:16:224", "vit_b_16:16:224")
H100_BF16_TFLOPS = 990.0
UTILISATION = 0.35
PARTS = ("budget", "statistics")
STATISTICS_SIDE = 128


def transcode(
    src: Path,
    dst: Path,
    size: tuple[int, int],
    options: dict[str, str],
    loops: int = 1,
    bframes: int | None = None,
) -> Path:
    """Re-encode ``src`` to H.264 at ``size`` (H, W), its frames repeated ``loops`` times."""
    if dst.exists():
        return dst
    height, width = size
    tmp = dst.with_name(dst.stem + ".tmp" + dst.suffix)
    with av.open(str(src)) as source, av.open(str(tmp), "w") as out:
        rate = round(source.streams.video[0].average_rate or 25)
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        frames = [
            f.reformat(width=width, height=height, format="yuv420p") for f in source.decode(video=0)
        ]
        count = 0
        for i in range(loops):
            for frame in frames[:: 1 if i % 2 == 0 else -1]:  # back and forth: no jump
                frame.pts, frame.time_base = count, Fraction(1, rate)
                out.mux(stream.encode(frame))
                count += 1
        out.mux(stream.encode())
    tmp.replace(dst)
    return dst


def make_files(
    source: Path, folder: Path, raw_size: tuple[int, int], short_sides: Sequence[int]
) -> dict[str, Path]:
    """The raw-like file and a prepared-like file per short side, made from ``source``."""
    raw = transcode(
        source,
        folder / f"raw_{raw_size[1]}x{raw_size[0]}_gop250.mp4",
        raw_size,
        {"preset": "veryfast", "crf": "23", "x264-params": "keyint=250:min-keyint=25:bframes=3"},
        loops=3,
    )
    files = {"raw-like": raw}
    for side in short_sides:
        files[f"prepared-{side}"] = transcode(
            raw,
            folder / f"prepared_{side}_gop8.mp4",
            output_size(*raw_size, side),
            {
                "preset": "veryfast",
                "crf": "23",
                "tune": "fastdecode",
                "x264-params": "keyint=8:min-keyint=8:scenecut=0:bframes=0",
            },
            bframes=0,
        )
    return files


def mjpeg_copy(src: Path, dst: Path) -> Path:
    """``src`` re-encoded as MJPEG at its size, with `vssl prepare`'s pixel format and quality."""
    if dst.exists():
        return dst
    tmp = dst.with_name(dst.stem + ".tmp" + dst.suffix)
    with av.open(str(src)) as source, av.open(str(tmp), "w") as out:
        video = source.streams.video[0]
        stream = out.add_stream("mjpeg", rate=round(video.average_rate or 25))
        stream.width, stream.height = video.codec_context.width, video.codec_context.height
        stream.pix_fmt = "yuvj420p"
        stream.codec_context.qmin, stream.codec_context.qmax = 2, 4
        for frame in source.decode(video):
            image = frame.reformat(format="yuvj420p")
            image.pts, image.time_base = frame.pts, frame.time_base
            out.mux(stream.encode(image))
        out.mux(stream.encode())
    tmp.replace(dst)
    return dst


def usable(backend: str) -> bool:
    """Whether ``backend``'s package imports here (torchcodec also needs FFmpeg's libraries);
    vssl's own (pyav, jpeg, auto) always do."""
    if backend in ("pyav", "jpeg", "auto"):
        return True
    try:
        importlib.import_module({"torchcodec": "torchcodec.decoders"}.get(backend, backend))
    except Exception:
        return False
    return True


def cuda_available() -> bool:
    """Whether the GPU figures can be measured here."""
    return torch.cuda.is_available()


def device_name() -> str:
    """The GPU's name, for the report."""
    return torch.cuda.get_device_name()


def decode_side(crop: int, short_sides: Sequence[int]) -> int:
    """The short side a model's crops are cut from: the smallest one at least the crop."""
    fitting = [side for side in short_sides if side >= crop]
    return min(fitting) if fitting else max(short_sides)


def clip_starts(num_frames: int, count: int, seed: int = 0) -> np.ndarray:
    """Random first frames of 16-frame clips at stride 2."""
    span = (CLIP_LEN - 1) * STRIDE + 1
    if num_frames < span:
        raise ValueError(f"a clip of {span} frames does not fit in {num_frames} frames")
    return np.random.default_rng(seed).integers(0, num_frames - span + 1, count)


def decode_rate(
    path: Path,
    backend: str,
    size: int,
    seconds: float,
    reuse: bool,
    device: str = "cpu",
) -> float:
    """Clips per second of one thread decoding random clips of ``path``: per second of this
    process's CPU time on the CPU (so per core, and other processes on a busy machine do not
    count), per second of wall time on a GPU."""
    from vssl.data.reader import open_reader

    count = probe_video(path).num_frames
    starts = clip_starts(count, 100_000)
    offsets = np.arange(CLIP_LEN) * STRIDE
    reader = open_reader(path, backend, num_frames=count, device=device) if reuse else None
    if reader is not None:
        reader.get_frames(starts[0] + offsets, size=size)  # warm-up
    clock = time.process_time if device == "cpu" else time.perf_counter
    done, begin = 0, clock()
    while clock() - begin < seconds or done == 0:
        indices = starts[done] + offsets
        if reader is None:
            with open_reader(path, backend, num_frames=count, device=device) as fresh:
                frames = fresh.get_frames(indices, size=size)
        else:
            frames = reader.get_frames(indices, size=size)
        if frames.is_cuda:
            torch.cuda.synchronize()
        done += 1
    elapsed = clock() - begin
    if reader is not None:
        reader.close()
    return done / elapsed


def parse_model(spec: str) -> tuple[str, int, int]:
    """``name:frames:size`` as (name, frames, size)."""
    name, frames, size = spec.split(":")
    return name, int(frames), int(size)


def train_flops(name: str, frames: int, size: int) -> int:
    """Forward+backward FLOPs of one clip, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vssl.backbones import build

    with torch.device("meta"):
        model = build(name)
        clip = torch.empty(1, 3, frames, size, size)
    with FlopCounterMode(display=False) as counter:
        model(clip).float().square().mean().backward()
    return counter.get_total_flops()


def train_rate(
    name: str, frames: int, size: int, batch: int, steps: int, warmup: int, device: str = "cuda"
) -> float:
    """Measured bf16 training clips/s of backbone ``name`` on ``device`` (random clips)."""
    from vssl.backbones import build

    model = build(name).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clips = torch.randn(batch, 3, frames, size, size, device=device)
    kind = torch.device(device).type

    def step() -> None:
        with torch.autocast(kind, dtype=torch.bfloat16):
            loss = model(clips).float().square().mean()
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    def sync() -> None:
        if kind == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - begin)


def interleaved_rates(jobs: dict[tuple, dict], seconds: float, rounds: int) -> dict[tuple, float]:
    """Median clips/s of each decode job (keyword arguments of :func:`decode_rate`), measured
    in ``rounds`` interleaved rounds so that a busy machine slows every job alike."""
    rates: dict[tuple, list[float]] = {key: [] for key in jobs}
    for _ in range(rounds):
        for key, job in jobs.items():
            rates[key].append(decode_rate(seconds=seconds / rounds, **job))
    return {key: float(np.median(values)) for key, values in rates.items()}


def decode_jobs(files: dict[str, Path], backends: Sequence[str], device: str) -> dict:
    """Every (backend, file, decode short side, reuse) to measure: the raw-like file at each
    short side, each prepared file at its own."""
    sides = sorted(int(kind.split("-")[1]) for kind in files if kind != "raw-like")
    targets = [("raw-like", side) for side in sides] + [(f"prepared-{s}", s) for s in sides]
    return {
        (backend, kind, side, reuse): {
            "path": files[kind],
            "backend": backend,
            "size": side,
            "reuse": reuse,
            "device": device,
        }
        for backend in backends
        for kind, side in targets
        for reuse in (False, True)
    }


def print_rates(rates: dict[tuple, float], widths: Sequence[int]) -> dict[tuple, list[float]]:
    """One row per (backend, file, short side): opened per clip, reader reused."""
    print(row(("backend", "file", "decoded at", "opened per clip", "reader reused"), widths))
    pairs: dict[tuple, list[float]] = {}
    for backend, kind, side, reuse in rates:
        pairs.setdefault((backend, kind, side), [0.0, 0.0])[reuse] = rates[
            backend, kind, side, reuse
        ]
    for (backend, kind, side), pair in pairs.items():
        print(row((backend, kind, side, f"{pair[0]:.1f}", f"{pair[1]:.1f}"), widths))
    return pairs


def row(cells: Sequence[object], widths: Sequence[int]) -> str:
    return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))


def budget_part(
    args: argparse.Namespace, files: dict[str, Path], short_sides: list[int], cuda: bool
) -> dict:
    """Parts 1-4 of the module docstring: decode, GPU decode, MJPEG, training, cores per GPU."""
    mjpeg = {
        f"{kind} mjpeg": mjpeg_copy(path, path.with_name(path.stem + "_mjpeg.mp4"))
        for kind, path in files.items()
        if kind != "raw-like"
    }
    results: dict = {"cpu": {}, "gpu_decode": {}, "mjpeg": {}, "train": {}, "budget": {}}

    print(
        f"CPU decode: random {CLIP_LEN}-frame clips at stride {STRIDE}, 1 thread, "
        f"{args.rounds} interleaved rounds (median); clips per CPU-second (per core)"
    )
    widths = (10, 12, 10, 16, 14)
    backends = [b for b in args.backends.split(",") if usable(b)]
    for backend in sorted(set(args.backends.split(",")) - set(backends)):
        print(f"  {backend}: not installed (or not loadable), not measured")
    jobs = decode_jobs(files, backends, "cpu")
    results["cpu"] = print_rates(interleaved_rates(jobs, args.seconds, args.rounds), widths)

    if cuda:
        print(f"\nGPU: {device_name()}")
        if usable("torchcodec"):
            print("GPU decode (torchcodec, NVDEC), clips/s of one process")
            jobs = decode_jobs(files, ["torchcodec"], "cuda")
            rates = interleaved_rates(jobs, args.seconds, args.rounds)
            results["gpu_decode"] = print_rates(rates, widths)
        else:
            print("GPU decode: torchcodec is not installed (or not loadable), not measured")
    print(
        "\nPrepared MJPEG (vssl prepare's default codec), backend 'jpeg': libjpeg-turbo on one "
        "CPU core (clips per CPU-second)"
        + (", nvJPEG on the GPU (clips per second of one process)" if cuda else "")
    )
    jobs = {
        (name, kind, int(kind.split()[0].split("-")[1]), reuse): {
            "path": path,
            "backend": "jpeg",
            "size": int(kind.split()[0].split("-")[1]),
            "reuse": reuse,
            "device": device,
        }
        for name, device in [("jpeg", "cpu")] + ([("jpeg cuda", "cuda")] if cuda else [])
        for kind, path in mjpeg.items()
        for reuse in (False, True)
    }
    results["mjpeg"] = print_rates(interleaved_rates(jobs, args.seconds, args.rounds), widths)
    if not cuda:
        print(
            "\nNo CUDA device: GPU decode and training speed cannot be measured here; the "
            "training figures below are FLOPs-based estimates, not measurements."
        )

    peak = H100_BF16_TFLOPS * 1e12 * UTILISATION
    print(
        f"\nTraining, bf16 clips/s (estimate: H100 at {UTILISATION:.0%} of "
        f"{H100_BF16_TFLOPS:g} TFLOP/s bf16)"
    )
    widths = (16, 22, 18, 18)
    print(row(("model", "GFLOPs/clip fwd+bwd", "estimate clips/s", "measured clips/s"), widths))
    for spec in args.models:
        name, frames, size = parse_model(spec)
        flops = train_flops(name, frames, size)
        estimate = peak / flops
        measured = (
            train_rate(name, frames, size, args.batch, args.steps, args.warmup) if cuda else None
        )
        results["train"][spec] = {"flops": flops, "estimate": estimate, "measured": measured}
        shown = f"{measured:.0f}" if measured is not None else "no GPU"
        print(row((spec, f"{flops / 1e9:.1f}", f"{estimate:.0f}", shown), widths))

    print(
        "\nCPU cores one GPU needs = GPU training clips/s / CPU clips/s per core (readers "
        "opened per clip, as VideoDataset does; decoded at the short side the crops need)"
    )
    widths = (16, 10, 12, 10, 16, 10)
    print(row(("model", "backend", "file", "decoded at", "GPU clips/s", "cores/GPU"), widths))
    for spec, train in results["train"].items():
        gpu = train["measured"] if train["measured"] is not None else train["estimate"]
        label = "measured" if train["measured"] is not None else "estimate"
        side = decode_side(parse_model(spec)[2], short_sides)
        for (backend, kind, decoded), pair in results["cpu"].items():
            if decoded != side:
                continue
            cores = gpu / pair[0]
            results["budget"][spec, backend, kind] = cores
            shown = f"{gpu:.0f} ({label})"
            print(row((spec, backend, kind, side, shown, f"{math.ceil(cores)}"), widths))
        gpu_decoded = list(results["gpu_decode"].items()) + [
            (key, pair) for key, pair in results["mjpeg"].items() if key[0] == "jpeg cuda"
        ]
        for (_, kind, decoded), pair in gpu_decoded:
            if decoded == side:
                share = gpu / max(pair)
                print(
                    f"  GPU decode of {kind} at {side}: {max(pair):.0f} clips/s, so decoding "
                    f"on the GPU would take {share:.0%} of the time training takes"
                )
    return results


def label_device() -> torch.device:
    """Where the statistics part computes the torch labels: the GPU when there is one."""
    return torch.device("cuda" if cuda_available() else "cpu")


def statistics_files(raw: Path, folder: Path) -> list[Path]:
    """``vssl prepare``'s short side 128 MJPEG copy of the raw-like file with its flow file
    (``flow=True``), under ``folder`` (kept, so a second run finds them done)."""
    from vssl.data.prepare import prepare

    src = folder / f"statistics_{raw.stem}" / "src"
    src.mkdir(parents=True, exist_ok=True)
    link = src / raw.name
    if not link.exists():
        link.symlink_to(raw.resolve())
    dst = src.parent / f"prepared_{STATISTICS_SIDE}_mjpeg"
    prepare(
        src, dst, short_side=STATISTICS_SIDE, codec="mjpeg", workers=1, progress=False, flow=True
    )
    paths = sorted(dst.glob("*.mp4"))
    if not paths:
        raise RuntimeError(f"{dst}: vssl prepare wrote no video (see {dst} for its report)")
    return paths


def torch_labels(video: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched torch labels (`motion_labels`, `appearance_labels`) of a device batch."""
    return motion_labels(flow), appearance_labels(video)


def numpy_labels(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[np.ndarray]:
    """Per batch, the numpy labels (`vssl.data.statistics_labels`) of its clips: (B, 27)."""
    return [
        np.stack(
            [
                np.concatenate([motion_statistics(f), appearance_statistics(v)])
                for v, f in zip(video.cpu(), flow.cpu(), strict=True)
            ]
        )
        for video, flow in batches
    ]


def label_agreement(
    batches: list[tuple[torch.Tensor, torch.Tensor]], expected: list[np.ndarray]
) -> dict[str, int]:
    """How many torch labels of ``batches`` equal the numpy labels ``expected``: motion (14 a
    clip) and appearance (13 a clip) labels, and clips with all 27 equal."""
    counts = {"clips": 0, "motion": 0, "appearance": 0, "clips_equal": 0}
    for (video, flow), want in zip(batches, expected, strict=True):
        motion, appearance = torch_labels(video, flow)
        got = torch.cat([motion, appearance], 1).cpu().numpy()
        equal = got == want
        counts["clips"] += len(got)
        counts["motion"] += int(equal[:, :14].sum())
        counts["appearance"] += int(equal[:, 14:].sum())
        counts["clips_equal"] += int(equal.all(1).sum())
    return counts


def agreement_line(counts: dict[str, int]) -> str:
    n = counts["clips"]
    return (
        f"motion {counts['motion']} of {14 * n}, appearance {counts['appearance']} of {13 * n} "
        f"labels equal; {counts['clips_equal']} of {n} clips with all 27 equal"
    )


def deterministic_agreement(
    batches: list[tuple[torch.Tensor, torch.Tensor]], expected: list[np.ndarray]
) -> tuple[dict[str, int] | None, str]:
    """`label_agreement` under ``torch.use_deterministic_algorithms(True)`` (the previous
    setting restored after): the counts, or None and the first line of the error when an
    operation refuses to run deterministically."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return label_agreement(batches, expected), ""
    except RuntimeError as error:
        return None, str(error).strip().splitlines()[0]
    finally:
        torch.use_deterministic_algorithms(before)


def label_figures(
    args: argparse.Namespace,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    where: str,
    out: dict,
) -> float | None:
    """Prints the torch labels' ms per clip on ``device`` and their agreement with the numpy
    labels (also deterministic), adding the counts to ``out``; returns the ms per clip, or None
    (and prints the error) when the torch labels fail there."""
    clips = sum(len(video) for video, _ in batches)
    _, frames, _, _, crop = batches[0][0].shape
    try:
        ms = statistics_worker.label_ms_per_clip(torch_labels, batches, args.label_passes, device)
    except Exception as error:  # the one GPU run still prints the worker and cores rows
        print(f"  labels on {where}: failed: {type(error).__name__}: {error}")
        traceback.print_exc(file=sys.stdout)
        return None
    clock = "wall time, synchronised" if device.type == "cuda" else "CPU time"
    print(
        f"  labels on {where}: motion_labels + appearance_labels, batches of "
        f"{args.statistics_batch} clips of {frames} (+1) frames at {crop}: {ms:.3f} ms per clip "
        f"({clock}; median of {args.label_passes} passes over {len(batches)} batch(es) after "
        "a warm-up pass)"
    )
    expected = numpy_labels(batches)
    counts = label_agreement(batches, expected)
    print(f"  agreement with the numpy labels on {clips} clips ({where}): {agreement_line(counts)}")
    strict, error = deterministic_agreement(batches, expected)
    if strict is None:
        print(f"  under torch.use_deterministic_algorithms(True): does not run: {error}")
    else:
        print(f"  under torch.use_deterministic_algorithms(True): runs; {agreement_line(strict)}")
    if device.type == "cuda":
        print(f"  (CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')})")
    out["agreement"], out["deterministic"], out["deterministic_error"] = counts, strict, error
    return ms


def statistics_part(
    args: argparse.Namespace, raw: Path, workdir: Path, cuda: bool, trained: dict
) -> dict:
    """Part 5 of the module docstring: the statistics task's device labels and worker."""
    paths = statistics_files(raw, workdir)
    device = label_device()
    where = f"CUDA ({device_name()})" if cuda else "this CPU, one thread (CPU figure)"
    out: dict = {"device": str(device), "cuda": cuda}
    print(
        f"\nStatistics task (spatio-temporal statistics), on vssl prepare's short side "
        f"{STATISTICS_SIDE} MJPEG copy of the raw-like file with its --flow file"
    )
    if not cuda:
        print(
            "  No CUDA device: the torch labels' CUDA path is not run here; the torch code is "
            "measured on the CPU instead, labelled 'CPU'"
        )
    raw_samples = statistics_worker.dataset(paths, None)
    rng = np.random.default_rng(0)
    samples = [
        raw_samples[int(rng.integers(len(raw_samples)))] for _ in range(args.statistics_clips)
    ]
    batches = statistics_worker.device_batches(samples, args.statistics_batch, device)
    _, frames, _, _, crop = batches[0][0].shape

    out["label_ms"] = ms = label_figures(args, batches, device, where, out)
    sides = {
        "flow computed, labels on the device": precomputed_flow.samples(paths, False, "device"),
        "flow read (prepare --flow), labels on the device": precomputed_flow.samples(
            paths, True, "device"
        ),
        "flow computed, labels in the worker (reference)": precomputed_flow.samples(
            paths, False, "worker"
        ),
    }
    got = statistics_worker.paired(sides, args.rounds, args.statistics_seconds)
    rates = {name: 1e3 / statistics.median(values) for name, values in got.items()}
    print(
        f"\n  Statistics worker sample on one CPU core (decode {frames}+1 frames at short side "
        f"{STATISTICS_SIDE}, crop {crop}, flip, flow, labels where said), clips per CPU-second, "
        f"median of {args.rounds} alternating rounds of {args.statistics_seconds:g} CPU-s; "
        "issue 14's target: >= 120 clips/s/core"
    )
    widths = (50, 14)
    print("  " + row(("worker mode", "clips/s/core"), widths))
    for name, value in rates.items():
        print("  " + row((name, f"{value:.1f}"), widths))
    names = list(sides)
    ratios = [c / r for c, r in zip(got[names[0]], got[names[1]], strict=True)]
    print(
        f"  flow computed / flow read, labels on the device, paired: "
        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
    )
    out["worker"] = rates

    spec = args.statistics_model
    name, model_frames, size = parse_model(spec)
    train = trained.get(spec)
    if train is not None and train["measured"] is not None:
        gpu, label = train["measured"], "measured"
    elif cuda:
        gpu = train_rate(name, model_frames, size, args.batch, args.steps, args.warmup)
        label = "measured"
    else:
        peak = H100_BF16_TFLOPS * 1e12 * UTILISATION
        gpu, label = peak / train_flops(name, model_frames, size), "estimate"
    # On the GPU the device labels take their time beside the training step.
    if cuda and ms is not None:
        with_labels = 1.0 / (1.0 / gpu + ms / 1e3)
        note = f"{with_labels:.0f} clips/s with the labels' {ms:.3f} ms per clip on the GPU"
    else:
        with_labels = gpu
        why = "they failed on the GPU" if cuda else "not measured without CUDA"
        note = f"the labels' GPU time not included: {why}"
    print(
        f"\n  CPU cores one GPU needs for a statistics run on {spec} (the backbone's bf16 "
        f"training clips/s, {gpu:.0f} ({label}); {note})"
    )
    widths = (50, 14, 10)
    print("  " + row(("worker mode", "GPU clips/s", "cores/GPU"), widths))
    out["cores"] = {}
    for mode, rate in rates.items():
        target = with_labels if "on the device" in mode else gpu
        out["cores"][mode] = target / rate
        cells = (mode, f"{target:.0f}", f"{math.ceil(target / rate)}")
        print("  " + row(cells, widths))
    out["gpu"] = {"rate": gpu, "label": label, "with_labels": with_labels}
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="video to transcode")
    parser.add_argument("--workdir", type=Path, default=None, help="where the test files go")
    parser.add_argument("--raw-size", default="360x640", help="raw-like file's HxW")
    parser.add_argument(
        "--short-sides", default="128,256", help="prepared files' and decoded short sides"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per decode measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of them")
    parser.add_argument("--backends", default="pyav,torchcodec,decord")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="name:T:S")
    parser.add_argument("--batch", type=int, default=32, help="training batch on the GPU")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated parts to run: budget (decode, training, cores), statistics",
    )
    parser.add_argument(
        "--statistics-clips", type=int, default=64, help="clips of the label agreement"
    )
    parser.add_argument("--statistics-batch", type=int, default=32, help="clips per label batch")
    parser.add_argument("--label-passes", type=int, default=10, help="timed label passes")
    parser.add_argument(
        "--statistics-seconds", type=float, default=2.0, help="CPU-s per worker mode per round"
    )
    parser.add_argument(
        "--statistics-model", default="r3d_18:16:112", help="name:T:S of the statistics run"
    )
    args = parser.parse_args(argv)
    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts {args.parts!r}: choose from {', '.join(PARTS)} (got {unknown})")
    if args.statistics_clips < args.statistics_batch:
        parser.error(
            f"--statistics-clips ({args.statistics_clips}) must be at least --statistics-batch "
            f"({args.statistics_batch})"
        )
    if "statistics" in parts:  # before CUDA starts: cuBLAS's deterministic workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(1)
    raw_size = tuple(int(v) for v in args.raw_size.split("x"))
    workdir = args.workdir or Path(tempfile.gettempdir()) / "vssl_gpu_budget"
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.source.is_file():
        parser.error(f"{args.source}: source video not found (give one with --source)")
    short_sides = [int(v) for v in args.short_sides.split(",")]
    budget = "budget" in parts
    files = make_files(args.source, workdir, raw_size, short_sides if budget else [])
    cuda = cuda_available()
    results: dict = {"cpu": {}, "gpu_decode": {}, "mjpeg": {}, "train": {}, "budget": {}}
    failed = []
    # One run must print every figure it can: a part that fails is reported, the next one runs.
    if budget:
        try:
            results.update(budget_part(args, files, short_sides, cuda))
        except Exception:
            failed.append("budget")
            traceback.print_exc(file=sys.stdout)
    if "statistics" in parts:
        try:
            results["statistics"] = statistics_part(
                args, files["raw-like"], workdir, cuda, results["train"]
            )
        except Exception:
            failed.append("statistics")
            traceback.print_exc(file=sys.stdout)
    if failed:
        raise RuntimeError(f"gpu_budget.py: part(s) {', '.join(failed)} failed (tracebacks above)")
    return results


if __name__ == "__main__":
    main()
