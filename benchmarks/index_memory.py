"""Memory of a dataset's per-video data at Kinetics-700 scale, in the training process and in
each DataLoader worker, for the old layout and for `VideoTable`, measured in one run.

- before: what `VideoDataset` kept until it had a table, reproduced here as the reference: a
  list of `VideoItem` (a `Path` and a label) and a list of `VideoInfo`, one of each per video.
- after: `VideoDataset` as it is, whose per-video data is a `VideoTable` of numpy arrays.

Both are built from the same fake Kinetics-like entries (``/datasets/kinetics700/train/<class>/
<youtube_id>_<start>_<end>.mp4``, made the way the layouts and the index make them, no probing).
"dataset held" is what remains allocated after building, temporaries freed (tracemalloc, in a
process of its own). Then, in a fresh process, ``--workers`` forked DataLoader workers run
``--epochs`` shuffled epochs over every entry with a ``__getitem__`` that reads the path, label
and frame count as `VideoDataset.load` does, decoding nothing; the table shows each worker's
unique memory (USS: pages no other process shares) after its first batches and after the last
epoch. Reading a Python object writes its reference count, which copies its memory page into
the worker; numpy arrays hold their values outside Python objects.

``--real N`` also times `VideoIndex.build` over N small synthetic videos (no cache, then from
the cache): the index build time per 1,000 videos. Files are in the page cache, so it is the
probing's CPU cost, not the disk's.

    python benchmarks/index_memory.py                 # 650,000 entries, 8 workers, 3 epochs
    python benchmarks/index_memory.py --real 200      # and the index build time
    python benchmarks/index_memory.py --entries 5000 --workers 2 --epochs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vssl.data.dataset import VideoDataset
from vssl.data.index import VideoIndex, VideoInfo
from vssl.data.layouts import VideoItem
from vssl.data.sampling import RandomClip

MB = 1e6
LAYOUTS = ("before", "after")
_ALPHABET = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8
)


def fake_entries(
    n: int, classes: int = 700, seed: int = 0
) -> tuple[list[VideoItem], list[VideoInfo]]:
    """``n`` Kinetics-like items and their index entries, built as the kinetics layout and
    `VideoIndex.build` build them: ``class folder / file name`` paths, and infos whose path is
    ``str`` of the item's path."""
    rng = np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = set()
    while len(names) < classes:  # two or three words, like "playing bass guitar"
        words = [
            "".join(rng.choice(list(letters), rng.integers(3, 9)))
            for _ in range(rng.integers(2, 4))
        ]
        names.add(" ".join(words))
    folders = [Path("/datasets/kinetics700/train") / name for name in sorted(names)]
    ids = _ALPHABET[rng.integers(0, len(_ALPHABET), (n, 11))].view("S11").ravel()
    starts = rng.integers(0, 600, n)
    labels = rng.integers(0, classes, n)
    frames = rng.integers(240, 301, n)
    fps = rng.choice([25.0, 29.97, 30.0], n)
    items, infos = [], []
    for yid, start, label, count, rate in zip(ids, starts, labels, frames, fps, strict=True):
        path = folders[label] / f"{yid.decode()}_{start:06d}_{start + 10:06d}.mp4"
        items.append(VideoItem(path, int(label)))
        infos.append(VideoInfo(str(path), int(count), float(rate), 340, 256))
    return items, infos


class ObjectLayout(Dataset):
    """The reference: per-video data as lists of dataclasses, read the way `VideoDataset.load`
    read them."""

    def __init__(self, items: list[VideoItem], infos: list[VideoInfo]) -> None:
        self.items, self.infos = list(items), list(infos)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> int:
        item, info = self.items[index], self.infos[index]
        return len(str(item.path)) + item.label + info.num_frames


class TableLayout(Dataset):
    """A `VideoDataset`, read the way its ``load`` reads it (path, label, frame count)."""

    def __init__(self, dataset: VideoDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> int:
        table = self.dataset.table
        return len(table.path(index)) + table.label(index) + int(table.num_frames[index])


def build(layout: str, entries: int) -> tuple[Dataset, float]:
    """The dataset of ``layout`` over ``entries`` fake videos and the seconds spent turning the
    items and infos into it (making the fake entries excluded)."""
    items, infos = fake_entries(entries)
    start = time.perf_counter()
    if layout == "before":
        dataset: Dataset = ObjectLayout(items, infos)
    else:
        dataset = TableLayout(VideoDataset(items, infos, RandomClip(16, 2)))
    seconds = time.perf_counter() - start
    del items, infos
    gc.collect()
    return dataset, seconds


def _held(layout: str, entries: int) -> dict[str, Any]:
    """Bytes the built dataset keeps allocated (tracemalloc), temporaries freed."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    dataset, _ = build(layout, entries)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    result = {"held": held - before, "peak": peak - before}
    if layout == "after":
        table = dataset.dataset.table
        longest = int(np.diff(table._offsets).max()) if entries else 0
        path_bytes = table._path_bytes.nbytes + table._offsets.nbytes
        result.update(table_bytes=table.nbytes, path_bytes=path_bytes, s_bytes=longest * entries)
    return result


def _workers(layout: str, entries: int, workers: int, epochs: int, batch: int) -> dict[str, Any]:
    """Build, then run shuffled epochs in forked workers; their USS at the start and the end."""
    import psutil

    me = psutil.Process()
    # more workers than this machine's cores is the point: a GPU node's worker count
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    gc.collect()
    rss = me.memory_info().rss
    dataset, seconds = build(layout, entries)
    grown = me.memory_info().rss - rss
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=True,
        collate_fn=sum,
        multiprocessing_context="fork",
        generator=torch.Generator().manual_seed(0),
    )

    def uss() -> list[int]:
        return [child.memory_full_info().uss for child in me.children()]

    first: list[int] = []
    sums = []
    start = time.perf_counter()
    for _ in range(epochs):
        total = 0
        for batch_sum in loader:
            total += batch_sum
            if not first:
                first = uss()
        sums.append(total)
    epoch_s = (time.perf_counter() - start) / max(1, epochs)
    last = uss()
    del loader
    return {
        "build_s": seconds,
        "rss_grown": grown,
        "first_uss": first,
        "uss": last,
        "epoch_s": epoch_s,
        "sums": sums,
    }


def _child(fn: Callable[..., dict[str, Any]], conn: Any, *args: Any) -> None:
    try:
        conn.send(fn(*args))
    except BaseException as err:  # reported by the parent, which raises
        conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        conn.close()


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a forked copy of this process, so that no measurement sees another's
    memory."""
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(fn, send, *args))
    process.start()
    send.close()
    result = receive.recv()
    process.join()
    if "error" in result:
        raise RuntimeError(f"{fn.__name__} failed: {result['error']}")
    return result


def index_build_time(n: int, frames: int, workers: int, out: Path) -> dict[str, Any]:
    """Seconds of `VideoIndex.build` over ``n`` synthetic videos, without and with its cache."""
    from vssl.data.encode import write_video

    rng = np.random.default_rng(0)
    originals = []
    for k in range(min(n, 4)):  # a few distinct files, copied: every copy is probed on its own
        # a smooth random image panning sideways: compresses like camera footage, not like noise
        small = rng.integers(0, 256, (7, 10 + frames // 8, 3)).astype(np.float32)
        image = torch.nn.functional.interpolate(
            torch.from_numpy(small).permute(2, 0, 1)[None], scale_factor=16, mode="bilinear"
        )
        image = image[0].permute(1, 2, 0).clamp(0, 255).to(torch.uint8).numpy()
        video = np.stack([image[:96, t : t + 128] for t in range(frames)])
        originals.append(write_video(out / f"src{k}.mp4", video))
    paths = []
    for i in range(n):
        path = out / "videos" / f"v{i:06d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(originals[i % len(originals)], path)
        paths.append(path)
    timings = {}
    for run in ("probe", "cached"):
        start = time.perf_counter()
        index = VideoIndex.build(paths, cache_dir=out / "cache", workers=workers, progress=False)
        timings[run] = time.perf_counter() - start
    if len(index.good) != n:
        raise RuntimeError(f"index build: {len(index.good)} of {n} videos usable\n{index.report()}")
    return {"videos": n, "frames": frames, "workers": workers, **timings}


def _mb(b: float) -> str:
    return f"{b / MB:.1f}"


def _spread(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{_mb(statistics.median(values))} ({_mb(min(values))}-{_mb(max(values))})"


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table; returns a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=650_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--real", type=int, default=0, help="also time the index over N videos")
    parser.add_argument("--real-frames", type=int, default=250, help="frames per real video")
    parser.add_argument("--real-workers", type=int, default=1, help="index build workers")
    parser.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("index_memory needs psutil (pip install psutil) to read each worker's USS")
        return 2

    results: dict[str, Any] = {}
    for layout in LAYOUTS:
        results[layout] = in_fresh_process(_held, layout, args.entries)
        results[layout].update(
            in_fresh_process(_workers, layout, args.entries, args.workers, args.epochs, args.batch)
        )
    if results["before"]["sums"] != results["after"]["sums"]:
        raise RuntimeError(
            f"the layouts read different data: {results['before']['sums']} vs "
            f"{results['after']['sums']}"
        )

    print(
        f"{args.entries:,} entries, {args.workers} DataLoader workers (fork), {args.epochs} "
        f"shuffled epochs, batch {args.batch}; MB = 10^6 bytes"
    )
    head = (
        "layout",
        "dataset held MB (tracemalloc)",
        "build peak MB",
        "process RSS growth MB",
        "build s",
        "worker USS MB at first batch",
        f"worker USS MB after {args.epochs} epochs, median (min-max)",
        "s/epoch",
    )
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    names = {"before": "before: lists of VideoItem + VideoInfo", "after": "after: VideoTable"}
    for layout in LAYOUTS:
        r = results[layout]
        print(
            f"| {names[layout]} | {_mb(r['held'])} | {_mb(r['peak'])} | {_mb(r['rss_grown'])} "
            f"| {r['build_s']:.2f} | {_spread(r['first_uss'])} | {_spread(r['uss'])} "
            f"| {r['epoch_s']:.2f} |"
        )
    for layout in LAYOUTS:
        print(
            f"{layout}: USS of each worker after {args.epochs} epochs (MB): "
            f"{[round(u / MB, 1) for u in results[layout]['uss']]}"
        )
    after = results["after"]
    print(
        f"table arrays: {_mb(after['table_bytes'])} MB, of which the paths (bytes and offsets) "
        f"{_mb(after['path_bytes'])} MB; as a fixed-width numpy 'S' array they would take "
        f"{_mb(after['s_bytes'])} MB, as 'U' {_mb(4 * after['s_bytes'])} MB"
    )
    print(
        "dataset held includes the interpreter's table of interned strings, which pathlib "
        "grows by every file name while the layout's items exist, and which stays that size"
    )
    worst = max(after["uss"], default=0)
    print(
        f"targets: dataset held {_mb(after['held'])} MB <= 200: "
        f"{'met' if after['held'] <= 200 * MB else 'MISSED'}; worst worker USS {_mb(worst)} "
        f"MB <= 50: {'met' if worst <= 50 * MB else 'MISSED'}"
    )

    if args.real:
        with tempfile.TemporaryDirectory(prefix="vssl-index-") as tmp:
            real = index_build_time(args.real, args.real_frames, args.real_workers, Path(tmp))
        results["index"] = real
        per = 1000 / real["videos"]
        print(
            f"index build over {real['videos']} videos of {real['frames']} frames (128x96 H.264, "
            f"x264's default GOP), {real['workers']} worker(s): {real['probe'] * per:.1f} s per "
            f"1,000 videos probed, {real['cached'] * per:.2f} s per 1,000 from the cache"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"settings": vars(args) | {"json": str(args.json)}, **results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
