"""The cores-per-GPU budget of issue 14: decode speed per core, GPU decode and training speed.

One run prints every figure the budget needs:

1. CPU decode, clips/s per core, for each installed reader backend (pyav, torchcodec, decord):
   random 16-frame clips at stride 2, decoded at short side 128, one thread, on a raw-like file
   (640x360 H.264, GOP 250, B-frames: what raw Kinetics from YouTube looks like) and on a
   prepared-like one (short side 128, GOP 8, no B-frames, x264 ``tune=fastdecode``), both made
   from ``--source``. Two ways: a reader opened per clip (what ``VideoDataset`` does) and one
   reader kept open per file; interleaved rounds, median of them.
2. GPU decode (torchcodec's NVDEC decoder, ``device="cuda"``), clips/s on the same two files.
3. Training clips/s in bf16 (``torch.autocast``) of vssl's backbones: R3D-18 at 16x112,
   R3D-50 and ViT-B at 16x224 (forward, backward and an AdamW step on random clips).
4. The budget: CPU cores one GPU needs = GPU training clips/s / CPU decode clips/s per core.

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


def make_files(source: Path, folder: Path, raw_size: tuple[int, int], short_side: int) -> dict:
    """The raw-like and the prepared-like file made from ``source``."""
    raw = transcode(
        source,
        folder / f"raw_{raw_size[1]}x{raw_size[0]}_gop250.mp4",
        raw_size,
        {"preset": "veryfast", "crf": "23", "x264-params": "keyint=250:min-keyint=25:bframes=3"},
        loops=3,
    )
    prepared_size = output_size(*raw_size, short_side)
    prepared = transcode(
        raw,
        folder / f"prepared_{short_side}_gop8.mp4",
        prepared_size,
        {
            "preset": "veryfast",
            "crf": "23",
            "tune": "fastdecode",
            "x264-params": "keyint=8:min-keyint=8:scenecut=0:bframes=0",
        },
        bframes=0,
    )
    return {"raw-like": raw, "prepared": prepared}


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
    """Clips per second of one thread (one core) decoding random clips of ``path``."""
    from vssl.data.reader import open_reader

    count = probe_video(path).num_frames
    starts = clip_starts(count, 100_000)
    offsets = np.arange(CLIP_LEN) * STRIDE
    reader = open_reader(path, backend, num_frames=count, device=device) if reuse else None
    if reader is not None:
        reader.get_frames(starts[0] + offsets, size=size)  # warm-up
    done, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds or done == 0:
        indices = starts[done] + offsets
        if reader is None:
            with open_reader(path, backend, num_frames=count, device=device) as fresh:
                frames = fresh.get_frames(indices, size=size)
        else:
            frames = reader.get_frames(indices, size=size)
        if frames.is_cuda:
            torch.cuda.synchronize()
        done += 1
    elapsed = time.perf_counter() - begin
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


def interleaved_rates(
    jobs: dict[tuple, dict], size: int, seconds: float, rounds: int
) -> dict[tuple, float]:
    """Median clips/s of each decode job (keyword arguments of :func:`decode_rate`), measured
    in ``rounds`` interleaved rounds so that a busy machine slows every job alike."""
    rates: dict[tuple, list[float]] = {key: [] for key in jobs}
    for _ in range(rounds):
        for key, job in jobs.items():
            rates[key].append(decode_rate(size=size, seconds=seconds / rounds, **job))
    return {key: float(np.median(values)) for key, values in rates.items()}


def row(cells: Sequence[object], widths: Sequence[int]) -> str:
    return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="video to transcode")
    parser.add_argument("--workdir", type=Path, default=None, help="where the test files go")
    parser.add_argument("--raw-size", default="360x640", help="raw-like file's HxW")
    parser.add_argument("--short-side", type=int, default=128, help="prepared and decode size")
    parser.add_argument("--seconds", type=float, default=12.0, help="per decode measurement")
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
    files = make_files(args.source, workdir, raw_size, args.short_side)
    cuda = torch.cuda.is_available()
    results: dict = {"cpu": {}, "gpu_decode": {}, "train": {}, "budget": {}}

    print(
        f"CPU decode: random {CLIP_LEN}-frame clips at stride {STRIDE}, short side "
        f"{args.short_side}, 1 thread; clips/s per core"
    )
    widths = (10, 10, 16, 14)
    print(row(("backend", "file", "opened per clip", "reader reused"), widths))
    backends = []
    for backend in args.backends.split(","):
        if backend != "pyav" and importlib.util.find_spec(backend) is None:
            print(row((backend, "-", "not installed", "-"), widths))
        else:
            backends.append(backend)
    jobs = {
        (backend, kind, reuse): {"path": path, "backend": backend, "reuse": reuse}
        for backend in backends
        for kind, path in files.items()
        for reuse in (False, True)
    }
    rates = interleaved_rates(jobs, args.short_side, args.seconds, args.rounds)
    for backend in backends:
        for kind in files:
            pair = [rates[backend, kind, False], rates[backend, kind, True]]
            results["cpu"][backend, kind] = pair
            print(row((backend, kind, f"{pair[0]:.1f}", f"{pair[1]:.1f}"), widths))

    if cuda:
        print(f"\nGPU: {torch.cuda.get_device_name()}")
        if importlib.util.find_spec("torchcodec") is not None:
            print("GPU decode (torchcodec, NVDEC), clips/s")
            for kind, path in files.items():
                pair = [
                    decode_rate(path, "torchcodec", args.short_side, args.seconds, reuse, "cuda")
                    for reuse in (False, True)
                ]
                results["gpu_decode"][kind] = pair
                print(f"  {kind}: opened per clip {pair[0]:.1f}, reader reused {pair[1]:.1f}")
        else:
            print("GPU decode: torchcodec is not installed, not measured")
    else:
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
        "\nCPU cores one GPU needs = GPU training clips/s / CPU clips/s per core "
        "(readers opened per clip, as VideoDataset does)"
    )
    widths = (16, 10, 10, 16, 12)
    print(row(("model", "backend", "file", "GPU clips/s", "cores/GPU"), widths))
    for spec, train in results["train"].items():
        gpu = train["measured"] if train["measured"] is not None else train["estimate"]
        label = "measured" if train["measured"] is not None else "estimate"
        for (backend, kind), rates in results["cpu"].items():
            cores = gpu / rates[0]
            results["budget"][spec, backend, kind] = cores
            shown = f"{gpu:.0f} ({label})"
            print(row((spec, backend, kind, shown, f"{math.ceil(cores)}"), widths))
    return results


if __name__ == "__main__":
    main()
