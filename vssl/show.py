"""``python -m vssl show ...``: pictures of what a pretext task asks the network to predict.

Figures are plain `matplotlib.figure.Figure` objects rendered by Agg when saved, so drawing
needs no display and touches no global pyplot state.

``show statistics VIDEO --out FILE.png [--start N]`` draws, for one clip of the video, the
motion and appearance statistics of the spatio-temporal statistics task
(`vssl.tasks.statistics`): frames of the clip, the flow as a colour image, the three partition
patterns with the chosen regions highlighted, the dominant motion-boundary direction as an
arrow, the dominant colours as swatches, and all 27 label values. The clip is read the way
validation reads it: frames resized to ``--decode-size`` on the short side and the central
``--size`` crop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vssl.data.flow import FLOW_METHODS, compute_flow, flow_to_rgb
from vssl.data.reader import VideoDecodeError, VideoReader
from vssl.tasks.statistics import (
    APPEARANCE_LABELS,
    MOTION_LABELS,
    OCTANT_COLOURS,
    PATTERNS,
    StatisticsTransform,
    appearance_regions,
    appearance_statistics,
    motion_boundaries,
    motion_statistics,
    region_masks,
)

FIGURE_SIZE = (15.0, 9.6)
"""Size of the `show statistics` figure in inches; at ``--dpi`` D the PNG is 15 D x 9.6 D pixels."""

_HIGHLIGHT = {
    "u": (1.0, 0.35, 0.1),
    "v": (0.1, 0.6, 1.0),
    "diverse": (1.0, 0.2, 0.2),
    "stable": (0.2, 0.9, 0.3),
}


def read_clip(path: str | Path, start: int, frames: int, decode_size: int, size: int) -> np.ndarray:
    """``frames`` consecutive frames from ``start``, resized and centre-cropped.

    Returns uint8 ``(frames, size, size, 3)``; the error names the file when the clip does not fit.
    """
    with VideoReader(path) as reader:
        if start < 0 or start + frames > reader.num_frames:
            raise ValueError(
                f"{path}: a clip of {frames} frames from frame {start} does not fit in the video's "
                f"{reader.num_frames} frames (use --start between 0 and "
                f"{max(reader.num_frames - frames, 0)})"
            )
        clip = reader.get_frames(np.arange(start, start + frames), size=decode_size)
    clip = StatisticsTransform(size, train=False).crop_and_flip(clip)
    return clip.permute(0, 2, 3, 1).contiguous().numpy()


def _outline(ax: Axes, pattern: str, size: int) -> None:
    """Draws the region boundaries of ``pattern`` on an image axis of a ``size`` square."""
    s = size - 0.5
    style = {"color": "white", "linewidth": 0.8, "alpha": 0.8}
    if pattern == "p1":
        for k in range(1, 4):
            ax.plot([-0.5, s], [k * size / 4 - 0.5] * 2, **style)
            ax.plot([k * size / 4 - 0.5] * 2, [-0.5, s], **style)
    elif pattern == "p2":
        for k in (1, 2, 3):
            lo, hi = (4 - k) * size / 8 - 0.5, (4 + k) * size / 8 - 0.5
            ax.plot([lo, hi, hi, lo, lo], [lo, lo, hi, hi, lo], **style)
    else:
        ax.plot([-0.5, s], [size / 2 - 0.5] * 2, **style)
        ax.plot([size / 2 - 0.5] * 2, [-0.5, s], **style)
        ax.plot([-0.5, s], [-0.5, s], **style)
        ax.plot([-0.5, s], [s, -0.5], **style)


def _highlight(ax: Axes, mask: np.ndarray, colour: tuple[float, float, float]) -> None:
    overlay = np.zeros((*mask.shape, 4))
    overlay[mask] = (*colour, 0.45)
    ax.imshow(overlay, interpolation="nearest")


def _number_regions(ax: Axes, pattern: str, size: int) -> None:
    for r, mask in enumerate(region_masks(size)[pattern]):
        ys, xs = np.nonzero(mask)
        if pattern == "p2" and r > 0:  # a ring's centroid is the centre: label its top side
            y, x = ys.min() + size / 16, size / 2
        else:
            y, x = ys.mean(), xs.mean()
        ax.text(x, y, str(r + 1), color="white", fontsize=7, ha="center", va="center", alpha=0.9)


def _swatch(ax: Axes, octant: int, x: float, y: float, side: float, text: str) -> None:
    colour = OCTANT_COLOURS[octant - 1] / 255.0
    ax.add_patch(Rectangle((x, y), side, side, facecolor=colour, edgecolor="black", lw=0.8))
    ax.text(
        x + side * 1.15,
        y + side / 2,
        text,
        fontsize=7,
        va="center",
        color="black",
        bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "edgecolor": "none"},
    )


def statistics_figure(frames: np.ndarray, flow_method: str = "dis", title: str = "") -> Figure:
    """The figure of `show statistics` for ``T + 1`` uint8 RGB frames ``(T+1, S, S, 3)``."""
    flow = compute_flow(frames, method=flow_method)
    clip = frames[:-1]
    motion = motion_statistics(flow)
    appearance = appearance_statistics(clip)
    boundaries = motion_boundaries(flow)
    regions = appearance_regions(clip)
    t, size = clip.shape[0], clip.shape[1]
    masks = region_masks(size)

    fig = Figure(figsize=FIGURE_SIZE)
    grid = fig.add_gridspec(
        3, 6, hspace=0.35, wspace=0.15, left=0.02, right=0.98, top=0.92, bottom=0.02
    )
    fig.suptitle(title or f"spatio-temporal statistics of a {t}-frame clip at {size}x{size}")

    for col, k in enumerate(np.linspace(0, t - 1, 4).round().astype(int)):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(clip[k])
        ax.set_title(f"frame {k + 1} of {t}", fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[0, 4])
    ax.imshow(flow_to_rgb(flow.sum(axis=0)))
    ax.set_title(f"flow summed over {t} fields ({flow_method})", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, 5])
    ramp = np.linspace(-1, 1, 65, dtype=np.float32)
    ax.imshow(flow_to_rgb(np.stack(np.meshgrid(ramp, ramp))))
    ax.set_title("flow colours (x right, y down)", fontsize=9)
    ax.axis("off")

    gray = boundaries.magnitude / max(float(boundaries.magnitude.max()), 1e-12)
    for k, pattern in enumerate(PATTERNS):
        for c, comp in enumerate(("u", "v")):
            loc, ori = motion[4 * k + 2 * c], motion[4 * k + 2 * c + 1]
            ax = fig.add_subplot(grid[1, 2 * k + c])
            ax.imshow(gray[c], cmap="gray", vmin=0, vmax=1)
            _outline(ax, pattern, size)
            if loc:
                mask = masks[pattern][loc - 1]
                _highlight(ax, mask, _HIGHLIGHT[comp])
                ys, xs = np.nonzero(mask)
                theta = np.radians(45 * (ori - 1))  # bin k is centred at 45 (k - 1) degrees
                length = size / 5
                ax.annotate(
                    "",
                    xy=(xs.mean() + length * np.cos(theta), ys.mean() + length * np.sin(theta)),
                    xytext=(xs.mean(), ys.mean()),
                    arrowprops={"arrowstyle": "-|>", "color": "yellow", "lw": 2},
                )
                text = f"{pattern.upper()} {comp}: region {loc}, direction {ori}"
            else:
                text = f"{pattern.upper()} {comp}: no motion boundary (0, 0)"
            ax.set_title(text, fontsize=9)
            ax.set_xlim(-0.5, size - 0.5)
            ax.set_ylim(size - 0.5, -0.5)
            ax.axis("off")

    middle = clip[t // 2]
    for k, pattern in enumerate(PATTERNS):
        div_loc, div_col, stable_loc, stable_col = appearance[4 * k : 4 * k + 4]
        ax = fig.add_subplot(grid[2, k])
        ax.imshow(middle)
        _outline(ax, pattern, size)
        _highlight(ax, masks[pattern][stable_loc - 1], _HIGHLIGHT["stable"])
        _highlight(ax, masks[pattern][div_loc - 1], _HIGHLIGHT["diverse"])
        _number_regions(ax, pattern, size)
        side = size / 9
        _swatch(ax, div_col, 1, 1, side, f"diverse {div_loc}: colour {div_col}")
        _swatch(
            ax, stable_col, 1, size - side - 2, side, f"stable {stable_loc}: colour {stable_col}"
        )
        iou = regions.iou[pattern]
        ax.set_title(
            f"{pattern.upper()}: IoU {iou.min():.2f} (red) .. {iou.max():.2f} (green)", fontsize=9
        )
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
        ax.axis("off")
    ax = fig.add_subplot(grid[2, 3])
    counts = regions.global_counts / regions.global_counts.sum()
    ax.bar(np.arange(1, 9), counts, color=OCTANT_COLOURS / 255.0, edgecolor="black")
    ax.set_xticks(np.arange(1, 9))
    ax.set_title(f"colour octants of the clip: dominant {appearance[-1]}", fontsize=9)
    ax.tick_params(labelsize=7)

    ax = fig.add_subplot(grid[2, 4:])
    ax.axis("off")
    lines = ["motion labels".ljust(30) + "appearance labels"]
    for k in range(max(len(MOTION_LABELS), len(APPEARANCE_LABELS))):
        left = f"{MOTION_LABELS[k]:<12}{motion[k]:>3}" if k < len(MOTION_LABELS) else ""
        right = (
            f"{APPEARANCE_LABELS[k]:<15}{appearance[k]:>3}" if k < len(APPEARANCE_LABELS) else ""
        )
        lines.append(f"{left:<30}{right}")
    ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=8, va="top")
    return fig


def _statistics(args: argparse.Namespace) -> int:
    frames = read_clip(args.video, args.start, args.clip_len + 1, args.decode_size, args.size)
    title = f"{Path(args.video).name}, frames {args.start}..{args.start + args.clip_len}"
    fig = statistics_figure(frames, args.flow, title)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vssl show``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m vssl show", description="Draw what a pretext task predicts for a clip."
    )
    sub = parser.add_subparsers(dest="what", required=True)
    stats = sub.add_parser(
        "statistics",
        help="motion and appearance statistics (MAS / STS) of one clip",
        description="Draw the motion and appearance statistics labels of one clip of VIDEO.",
    )
    stats.add_argument("video", metavar="VIDEO", help="a video file")
    stats.add_argument("--out", required=True, metavar="FILE.png", help="where to write the image")
    stats.add_argument("--start", type=int, default=0, help="first frame of the clip (default 0)")
    stats.add_argument("--clip-len", type=int, default=16, help="frames the network sees (16)")
    stats.add_argument("--size", type=int, default=112, help="crop side, divisible by 8 (112)")
    stats.add_argument(
        "--decode-size", type=int, default=128, help="short side after decoding (128)"
    )
    stats.add_argument("--flow", choices=FLOW_METHODS, default="dis", help="optical flow method")
    stats.add_argument("--dpi", type=int, default=100, help="pixels per inch of the PNG (100)")
    args = parser.parse_args(argv)
    try:
        return _statistics(args)
    except (VideoDecodeError, ValueError, OSError) as err:
        message = str(err)
        if args.video not in message:
            message = f"{args.video}: {message}"
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
