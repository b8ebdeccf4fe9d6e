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

Without CUDA, 2 and 3 cannot be measured: the script says so and prints, labelled "estimate",
the training clips/s an H100 would reach at 35% of its ~990 TFLOP/s bf16 peak, from each
model's forward+backward FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``.

    python benchmarks/gpu_budget.py                            # the full run
    python benchmarks/gpu_budget.py --seconds 5 --models r3d_18:16:112 --backends pyav
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vssl.data.index import probe_video  # noqa: E402
from vssl.data.reader import output_size  # noqa: E402

CLIP_LEN, STRIDE = 16, 2
DEFAULT_SOURCE = ROOT.parent / "shared" / "videos" / "bigbuckbunny.mp4"
DEFAULT_MODELS = ("r3d_18:16:112", "r3d_50:16:224", "vit_b_16:16:224")
H100_BF16_TFLOPS = 990.0
UTILISATION = 0.35


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
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    raw_size = tuple(int(v) for v in args.raw_size.split("x"))
    workdir = args.workdir or Path(tempfile.gettempdir()) / "vssl_gpu_budget"
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.source.is_file():
        parser.error(f"{args.source}: source video not found (give one with --source)")
    short_sides = [int(v) for v in args.short_sides.split(",")]
    files = make_files(args.source, workdir, raw_size, short_sides)
    cuda = cuda_available()
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


if __name__ == "__main__":
    main()
