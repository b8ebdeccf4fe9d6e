"""How ``vssl prepare --flow`` should store optical flow: read time, bytes and label agreement.

DIS flow (`vssl.data.flow.DEFAULT_DIS_PRESET`) of every pair of consecutive frames of
``--videos`` (../shared/videos, prepared at short side 128 and decoded at 128x171) is written in
each candidate format (`vssl.data.flow.write_flow_file`: u above v, one grayscale image per
field, quantised to +-bound px) and read back. For each candidate it prints the bytes per field,
the CPU time of reading the 16 fields of a clip (`FlowFile.read`: one pread, 16 decodes, bytes to
pixels), and the share of the 14 motion labels (`vssl.data.statistics_labels.motion_statistics`)
of random 112x112 crops of 16 fields that equal the labels of the unquantised flow. The last
row is the reference for what moving flow to prepare time changes at all: labels of the flow
computed on the cropped frames (what the worker does today) against labels of the crop of the
full-frame flow.

    python benchmarks/flow_format.py
    python benchmarks/flow_format.py --clips 200 --reads 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vssl.data.flow import FlowFile, compute_flow, resize_flow, write_flow_file  # noqa: E402
from vssl.data.reader import open_reader  # noqa: E402
from vssl.data.statistics_labels import motion_statistics  # noqa: E402

FIELDS, CROP, SIZE = 16, 112, (128, 171)
# (codec, bound, JPEG quality, libjpeg-turbo's fast IDCT on reading, stored at 1 / scale)
CANDIDATES = (
    ("jpeg", 20.0, 95, False),
    ("jpeg", 20.0, 95, True),
    ("jpeg", 10.0, 90, False),
    ("jpeg", 10.0, 95, False),
    ("jpeg", 10.0, 95, True),
    ("jpeg", 10.0, 95, False, 2),
    ("jpeg", 10.0, 100, False),
    ("jpeg", 5.0, 95, False),
    ("jpeg", 5.0, 100, False),
    ("png", 20.0, 0, False),
    ("png", 10.0, 0, False),
    ("png", 5.0, 0, False),
)


def decoded_frames(video: Path) -> np.ndarray:
    """Every frame of ``video`` at 128x171, uint8 ``(N, H, W, 3)``, as the data pipeline reads it."""
    with open_reader(video, "auto") as reader:
        frames = reader.get_frames(np.arange(reader.num_frames), size=SIZE)
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "videos")
    p.add_argument("--clips", type=int, default=120, help="crops compared per candidate")
    p.add_argument("--reads", type=int, default=200, help="clips read per timing")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from vssl.data.prepare import prepare

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for video in sorted(args.videos.glob("*")):
            if video.suffix in {".mp4", ".avi"} and "bugy" not in video.name:
                (src / video.name).symlink_to(video)
        prepare(src, Path(tmp) / "p128", workers=1, progress=False)
        videos = sorted((Path(tmp) / "p128").glob("*.mp4"))
        frames = [decoded_frames(v) for v in videos]
        flows = [compute_flow(f) for f in frames]
        print(
            f"{len(videos)} videos, {sum(len(f) for f in flows)} fields at {SIZE[0]}x{SIZE[1]}; "
            f"|flow| > 10 px: {np.mean([np.mean(np.hypot(*f.transpose(1, 0, 2, 3)) > 10) for f in flows]):.4f}, "
            f"> 20 px: {np.mean([np.mean(np.hypot(*f.transpose(1, 0, 2, 3)) > 20) for f in flows]):.4f}"
        )
        clips = []
        for _ in range(args.clips):
            v = int(rng.integers(len(flows)))
            start = int(rng.integers(len(flows[v]) - FIELDS + 1))
            top = int(rng.integers(SIZE[0] - CROP + 1))
            left = int(rng.integers(SIZE[1] - CROP + 1))
            clips.append((v, start, top, left))

        def crop(flow: np.ndarray, top: int, left: int) -> np.ndarray:
            return np.ascontiguousarray(flow[:, :, top : top + CROP, left : left + CROP])

        exact = [motion_statistics(crop(flows[v][s : s + FIELDS], t, le)) for v, s, t, le in clips]
        print(
            "\n| format | bound (px) | quality | fast IDCT | stored at | bytes per field | read ms per clip "
            "of 16 fields | labels equal to the unquantised flow's |"
        )
        print("|---|---:|---:|---|---|---:|---:|---:|")
        for codec, bound, quality, fast, *rest in CANDIDATES:
            scale = rest[0] if rest else 1
            FlowFile.fast_decode = fast
            small = (SIZE[0] // scale, -(-SIZE[1] // scale))

            def load(file: FlowFile, fields: range) -> np.ndarray:
                return resize_flow(file.read(fields), *SIZE)

            files = []
            size = 0
            for n, flow in enumerate(flows):
                path = Path(tmp) / f"{n}.{codec}{bound:g}q{quality}.flow"
                size += write_flow_file(
                    path, resize_flow(flow, *small), bound, quality or 95, codec
                )
                files.append(FlowFile(path))
            per_field = size / sum(len(f) for f in flows)
            agree = np.mean(
                [
                    np.mean(
                        motion_statistics(crop(load(files[v], range(s, s + FIELDS)), t, le)) == e
                    )
                    for (v, s, t, le), e in zip(clips, exact, strict=True)
                ]
            )
            starts = [
                (int(v), int(rng.integers(files[v].fields - FIELDS + 1)))
                for v in rng.integers(len(files), size=args.reads)
            ]
            paths = [f.path for f in files]
            FlowFile(paths[0]).read(range(FIELDS))
            began = time.process_time()
            for v, s in starts:
                load(FlowFile(paths[v]), range(s, s + FIELDS))
            ms = (time.process_time() - began) / len(starts) * 1e3
            print(
                f"| {codec} | {bound:g} | {quality or '-'} | {'yes' if fast else 'no'} | "
                f"{small[0]}x{small[1]} | "
                f"{per_field:.0f} | {ms:.3f} | "
                f"{100 * agree:.1f}% |"
            )
        on_crop = [
            motion_statistics(
                compute_flow(frames[v][s : s + FIELDS + 1, t : t + CROP, le : le + CROP])
            )
            for v, s, t, le in clips
        ]
        agree = np.mean([np.mean(a == e) for a, e in zip(on_crop, exact, strict=True)])
        print(
            f"| reference: flow computed on the crop (today's worker) against the crop of the "
            f"full-frame flow | | | | | | | {100 * agree:.1f}% |"
        )
        noisy = [
            motion_statistics(
                crop(flows[v][s : s + FIELDS], t, le)
                + rng.normal(0, 0.02, (FIELDS, 2, CROP, CROP)).astype(np.float32)
            )
            for v, s, t, le in clips
        ]
        agree = np.mean([np.mean(a == e) for a, e in zip(noisy, exact, strict=True)])
        print(
            f"| reference: unquantised flow plus Gaussian noise of 0.02 px | | | | | | | "
            f"{100 * agree:.1f}% |"
        )


if __name__ == "__main__":
    main()
