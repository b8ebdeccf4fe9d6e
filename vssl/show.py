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

``show TASK VIDEO --out FILE.png [--seed N] [--stage train|val] [--animate FILE.gif]`` draws one
sample of the other tasks (`TASKS`, named as their config folders) as the network gets it: the
task is built from ``configs/TASK/synthetic_tiny.yaml`` (tiny backbone, no weights; `TASK_DEFAULTS`
where the config is absent), and its own ``clip_sampler`` and ``clip_transform`` run in a seeded
`VideoDataset` of the one video, then its ``augment_batch`` (`sample_task`). The pictures
(`task_figure`): RSPNet's query and two keys with their speeds; CVRL's two clips on a timeline
with their start frames and gap, after each clip's augmentation; VCOP's clips in the order the
network sees them with the order label; Rotation's rotated clips (`Rotation.rotated_batch`);
the playback-rate clip with its rate; VideoMAE's frames with the tube mask of
`VideoMAE.draw_mask`, and with ``--ckpt`` the checkpoint's reconstruction of the masked
tubelets; SiamMAE's past frame and future frame (`FramePairs`, the gap in the title) with the
future frame's random patch mask of `SiamMAE.draw_mask`, and with ``--ckpt`` the reconstruction
of its masked patches (`siammae_reconstruction`); V-JEPA's frames with each mask set's target
blocks in its own colour over the context, drawn as `VJEPA.draw_masks` draws them
(`vjepa_blocks`); rho-BYOL's and rho-MoCo's rho clips (`RhoClips`) on a timeline with their
start frames, after each clip's augmentation; TDL's anchor, positive and negative segments
(`TemporalTripletSampler`) with their frame ranges; AVID's and VATT's clip (`AudioVisualClip`)
over the sound the audio network gets (AVID's log spectrogram, VATT's waveform) on one time
axis in seconds, with the time spans of both. Every frame is titled with its frame number
in the video, and one printed line says what was drawn.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from jsonargparse import Namespace
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from vssl.data.audio import probe_audio
from vssl.data.dataset import VideoDataset
from vssl.data.flow import compute_flow, flow_to_rgb
from vssl.data.index import probe_video
from vssl.data.layouts import VideoItem
from vssl.data.reader import VideoDecodeError, VideoReader
from vssl.data.sampling import ClipSampler, ClipSpec
from vssl.data.statistics_labels import (
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
from vssl.errors import InvalidInputError, UserError
from vssl.eval.features import checkpoint_data_settings, load_task
from vssl.tasks.base import VSSLTask
from vssl.tasks.clip_order import clip_orders
from vssl.tasks.rotation import Rotation
from vssl.tasks.siammae import TARGET_EPS as SIAMMAE_EPS
from vssl.tasks.siammae import SiamMAE
from vssl.tasks.videomae import TARGET_EPS, VideoMAE, patchify
from vssl.tasks.vjepa import VJEPA, mask_indices, paint_blocks, sample_blocks

FIGURE_SIZE = (15.0, 9.6)
"""Size of the `show statistics` figure in inches; at ``--dpi`` D the PNG is 15 D x 9.6 D pixels."""

STATISTICS_LEGEND = (
    "u / v: horizontal / vertical flow component; grey: motion-boundary magnitude of that "
    "component (white strongest)\nyellow arrow: its dominant direction, numbered as on the colour "
    "wheel (1 right, 3 down, 5 left, 7 up); red / green: the most diverse / most stable region"
)
"""The key line under the `show statistics` figure's title."""

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


def statistics_figure(
    frames: np.ndarray, flow_method: str = "dis", title: str = "", first: int = 0
) -> Figure:
    """The figure of `show statistics` for ``T + 1`` uint8 RGB frames ``(T+1, S, S, 3)``;
    ``first`` is the video's frame number of ``frames[0]``, for the frame titles."""
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
        3, 6, hspace=0.35, wspace=0.15, left=0.02, right=0.98, top=0.89, bottom=0.02
    )
    fig.suptitle(
        title
        or f"spatio-temporal statistics of a {t}-frame clip at {size}x{size}, frames "
        f"{first}..{first + t - 1} (+ frame {first + t} for the flow)"
    )
    fig.text(0.5, 0.94, STATISTICS_LEGEND, ha="center", va="center", fontsize=8)

    for col, k in enumerate(np.linspace(0, t - 1, 4).round().astype(int)):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(clip[k])
        ax.set_title(f"frame {first + k} (clip frame {k + 1} of {t})", fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[0, 4])
    ax.imshow(flow_to_rgb(flow.sum(axis=0)))
    ax.set_title(f"flow summed over {t} fields ({flow_method})", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, 5])
    ramp = np.linspace(-1, 1, 65, dtype=np.float32)
    ax.imshow(flow_to_rgb(np.stack(np.meshgrid(ramp, ramp))))
    for d in range(1, 9):  # the direction bins of the arrows: bin d is centred at 45 (d - 1) deg
        theta = np.radians(45 * (d - 1))
        ax.text(
            32 + 26 * np.cos(theta),
            32 + 26 * np.sin(theta),
            str(d),
            fontsize=8,
            ha="center",
            va="center",
            color="black",
        )
    ax.set_title("flow colours and direction numbers", fontsize=9)
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


def _statistics(args: Namespace) -> int:
    frames = read_clip(args.video, args.start, args.clip_len + 1, args.decode_size, args.size)
    end = args.start + args.clip_len
    title = (
        f"{Path(args.video).name}: spatio-temporal statistics of a {args.clip_len}-frame clip, "
        f"frames {args.start}..{end - 1} (+ frame {end} for the flow)"
    )
    fig = statistics_figure(frames, args.flow, title, first=args.start)
    _save(fig, args.out, args.dpi)
    return 0


def _save(fig: Figure, out: str | Path, dpi: int) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    print(f"wrote {out}")


# -------------------------------------------------------------------- the other pretext tasks
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
"""The repository's config folders; a task's picture uses its ``synthetic_tiny.yaml``."""

TASK_DEFAULTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "rspnet": ("vssl.tasks.RSPNet", {"backbone": "tiny3d", "augment": {}}, {"clip_len": 4}),
    "cvrl": ("vssl.tasks.CVRL", {"backbone": "tiny3d"}, {"clip_len": 8}),
    "videomae": (
        "vssl.tasks.VideoMAE",
        {
            "backbone": "vit_tiny_8",
            "backbone_kwargs": {"dim": 64, "depth": 2, "heads": 2, "patch_size": 8},
            "mask_ratio": 0.75,
            "decoder_dim": 64,
            "decoder_depth": 1,
            "decoder_heads": 2,
        },
        {"clip_len": 16},
    ),
    "clip_order": ("vssl.tasks.ClipOrder", {"backbone": "tiny3d", "interval": 2}, {"clip_len": 4}),
    "rotation": ("vssl.tasks.Rotation", {"backbone": "tiny3d"}, {"clip_len": 8}),
    "playback_rate": ("vssl.tasks.PlaybackRate", {"backbone": "tiny3d"}, {"clip_len": 4}),
    "siammae": (
        "vssl.tasks.SiamMAE",
        {"backbone": "vit_tiny_8_image", "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2},
        {"clip_len": 16, "stride": 2, "crop_size": 64},
    ),
    "vjepa": (
        "vssl.tasks.VJEPA",
        {"backbone": "vit_tiny_8", "predictor_dim": 32, "predictor_depth": 1},
        {"clip_len": 16, "stride": 2, "crop_size": 32},
    ),
    "rho_byol": ("vssl.tasks.RhoBYOL", {"backbone": "tiny3d"}, {"clip_len": 8, "stride": 2}),
    "rho_moco": (
        "vssl.tasks.RhoMoCo",
        {"backbone": "tiny3d", "queue_size": 128},
        {"clip_len": 8, "stride": 2},
    ),
    "tdl": (
        "vssl.tasks.TDL",
        {"backbone": "tiny3d", "proj_dim": 64, "queue_size": 64},
        {"clip_len": 4, "stride": 2},
    ),
    "avid": (
        "vssl.tasks.AVID",
        {
            "backbone": "tiny3d",
            "audio_backbone": "audio_tiny",
            "proj_dims": [64],
            "audio_seconds": 1.0,
            "sample_rate": 16000,
            "n_mels": 64,
        },
        {"clip_len": 8, "stride": 2, "crop_size": 56},
    ),
    "vatt": (
        "vssl.tasks.VATT",
        {
            "backbone": "vit_tiny_8",
            "audio_backbone": "vatt_audio_tiny",
            "proj_dim": 64,
            "proj_hidden": 64,
            "audio_seconds": 1.0,
            "sample_rate": 16000,
        },
        {"clip_len": 8, "stride": 2, "crop_size": 32},
    ),
}
"""Task name (its config folder) -> (class path, small init_args, data settings), used when the
task's ``configs/TASK/synthetic_tiny.yaml`` is not there (an installed package)."""

TASKS = ("statistics", *TASK_DEFAULTS)

_TASK_HELP = {
    "rspnet": "RSPNet: the query and two keys with their playback speeds",
    "cvrl": "CVRL: two clips on the video's timeline, their gap, each clip's augmentation",
    "videomae": "VideoMAE: the frames with the tube mask (and the reconstruction with --ckpt)",
    "clip_order": "VCOP: the shuffled clips in the order the network sees them, the order label",
    "rotation": "3D RotNet: the rotated clips and their labels",
    "playback_rate": "playback rate: a clip at the drawn rate and its label",
    "siammae": "SiamMAE: the past frame and the masked future frame (reconstruction with --ckpt)",
    "vjepa": "V-JEPA: the frames with each mask set's target blocks and the context",
    "rho_byol": "rho-BYOL: the rho clips on the video's timeline, each clip's augmentation",
    "rho_moco": "rho-MoCo: the rho clips on the video's timeline, each clip's augmentation",
    "tdl": "TDL: the anchor, positive and negative segments with their frame ranges",
    "avid": "AVID: the clip's frames and its sound's log spectrogram, with their time spans",
    "vatt": "VATT: the clip's frames and its sound's waveform, with their time spans",
}
"""Every task `show` draws, named as its config folder."""

_DATA_KEYS = ("clip_len", "stride", "crop_size", "crop_scale", "flip", "decode_size")
_MAX_COLUMNS = 8


@dataclass
class TaskSample:
    """One sample of a task as the network gets it, with what the sampler chose.

    ``views`` are the sampler's frame indices (and 0-d targets) by view name, ``sample`` the
    dataset's item after the worker transform (uint8 ``(T, C, H, W)`` views), ``batch`` the
    batch of that one sample after the task's ``augment_batch`` (float ``(1, C, T, H, W)``).
    """

    name: str
    task: VSSLTask
    spec: ClipSpec
    num_frames: int
    views: dict[str, np.ndarray]
    sample: dict[str, Tensor]
    batch: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


class _Recording(ClipSampler):
    """Calls the task's own sampler and keeps what it returned, for the picture's titles."""

    def __init__(self, sampler: ClipSampler):
        self.sampler = sampler
        self.views: dict[str, np.ndarray] = {}

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        self.views = self.sampler(num_frames, rng)
        return self.views


def task_settings(name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(class path, init_args, data settings) of task ``name``: its synthetic_tiny config's, or
    `TASK_DEFAULTS` where the config is absent."""
    if name not in TASK_DEFAULTS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    config = CONFIGS / name / "synthetic_tiny.yaml"
    if not config.is_file():
        class_path, init_args, data = TASK_DEFAULTS[name]
        return class_path, dict(init_args), dict(data)
    loaded = yaml.safe_load(config.read_text())
    model, data = loaded["model"], loaded["data"]["init_args"]
    return (
        model["class_path"],
        dict(model.get("init_args") or {}),
        {k: data[k] for k in _DATA_KEYS if k in data},
    )


def build_task(name: str) -> tuple[VSSLTask, dict[str, Any]]:
    """Task ``name`` built from `task_settings` (no weights), and its data settings."""
    class_path, init_args, data = task_settings(name)
    module, _, cls = class_path.rpartition(".")
    task = getattr(importlib.import_module(module), cls)(**init_args)
    return task, data


def sample_task(
    name: str,
    video: str | Path,
    seed: int = 0,
    stage: str = "train",
    clip_len: int | None = None,
    size: int | None = None,
    decode_size: int | None = None,
    ckpt: str | Path | None = None,
) -> TaskSample:
    """One sample of task ``name`` from ``video``, made the way training makes it.

    The task's own ``clip_sampler`` and ``clip_transform`` run in a seeded `VideoDataset` of the
    one video (item 0, epoch 0, so the draw is that of a training run with data seed ``seed``),
    then the task's ``augment_batch`` runs on a batch of that sample under ``torch`` seed
    ``seed``. Rotation's rotated clips and VideoMAE's tube mask come from the task's own
    functions too (`Rotation.rotated_batch`, `VideoMAE.draw_mask`). With ``ckpt`` the task and
    its weights come from that checkpoint, with its training data settings where it records
    them; VideoMAE then also reconstructs the masked tubelets (`videomae_reconstruction`).
    """
    torch.manual_seed(seed)
    task, data = build_task(name)
    if ckpt is not None:
        loaded = load_task(ckpt)
        if not isinstance(loaded, type(task)):
            raise InvalidInputError(
                f"{ckpt}: holds a {type(loaded).__name__} checkpoint, not one of {name} "
                f"({type(task).__name__})"
            )
        task = loaded
        data.update(checkpoint_data_settings(ckpt) or {})
    task.train(stage == "train")
    spec = ClipSpec(
        clip_len=clip_len or data.get("clip_len", 16),
        stride=data.get("stride", 1),
        crop_size=size or data.get("crop_size", 112),
        flip=bool(data.get("flip", True)),
        scale=tuple(data.get("crop_scale", ClipSpec().scale)),
    )
    info = probe_video(video)
    if not info.ok:
        raise VideoDecodeError(str(video), info.error or "no decodable video frames")
    recording = _Recording(task.clip_sampler(stage, spec))
    if recording.sampler.needs_audio and probe_audio(video) is None:
        raise InvalidInputError(f"{video}: no audio stream, and {name} needs the clip's sound")
    dataset = VideoDataset(
        [VideoItem(Path(video), -1)],
        [info],
        recording,
        task.clip_transform(stage, spec),
        decode_size=decode_size or data.get("decode_size"),
        seed=seed,
    )
    sample = dataset[0]
    if dataset.failures:
        raise VideoDecodeError(str(video), dataset.failures[-1])
    batch = {k: v.unsqueeze(0) for k, v in sample.items()}
    with torch.no_grad():
        batch = task.augment_batch(batch)
        extra: dict[str, Any] = {"fps": info.fps}
        if isinstance(task, Rotation):
            extra["clips"], extra["labels"] = task.rotated_batch(batch)
        if isinstance(task, VideoMAE):
            extra["mask"] = task.draw_mask(batch["video"])
            extra["grid"] = task.backbone.grid(batch["video"].shape)
            if ckpt is not None:
                extra["reconstruction"] = videomae_reconstruction(
                    task, batch["video"], extra["mask"]
                )
        if isinstance(task, SiamMAE):
            _, future = task.frame_pair(batch)
            extra["mask"] = task.draw_mask(future)
            extra["grid"] = task.backbone.grid(future.shape)
            if ckpt is not None:
                extra["reconstruction"] = siammae_reconstruction(
                    task, batch["video"], extra["mask"]
                )
        if isinstance(task, VJEPA):
            extra.update(vjepa_blocks(task, batch["video"]))
    return TaskSample(name, task, spec, info.num_frames, recording.views, sample, batch, extra)


def videomae_reconstruction(task: VideoMAE, video: Tensor, mask: Tensor) -> np.ndarray:
    """Pixels ``(T, H, W, 3)`` in [0, 1] of clip 0 of ``video`` with its masked tubelets replaced by
    the task's prediction (`VideoMAE.encode_visible`, `VideoMAE.decode`).

    With ``normalize_target`` the network predicts each tubelet standardised per channel
    (`reconstruction_target`), so the prediction is mapped back with the input tubelet's own mean
    and standard deviation, as the official code's visualisation does.
    """
    c = video.shape[1]
    with torch.no_grad():
        prediction = task.decode(task.encode_visible(video, mask), mask).float()
    mean, std = (
        task.augment.mean.float().view(1, c, 1, 1, 1),
        task.augment.std.float().view(1, c, 1, 1, 1),
    )
    patches = patchify(video.float() * std + mean, task.tubelet)  # (B, N, P, C)
    b, n, size, _ = patches.shape
    masked = patches[mask]
    prediction = prediction.reshape(-1, size, c)
    if task.normalize_target:
        sigma = masked.var(dim=1, unbiased=True, keepdim=True).sqrt()
        prediction = prediction * (sigma + TARGET_EPS) + masked.mean(dim=1, keepdim=True)
    patches = patches.clone()
    patches[mask] = prediction
    t, h, w = task.backbone.grid(video.shape)
    pt, ph, pw = task.tubelet
    x = patches.reshape(b, t, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    x = x.reshape(b, c, t * pt, h * ph, w * pw)
    return x[0].clamp(0, 1).permute(1, 2, 3, 0).numpy()


def siammae_reconstruction(task: SiamMAE, video: Tensor, mask: Tensor) -> np.ndarray:
    """Pixels ``(H, W, 3)`` in [0, 1] of the future frame of pair 0 of ``video`` ``(B, C, 2, H,
    W)`` with its masked patches replaced by the task's prediction (`SiamMAE.encode`,
    `SiamMAE.decode`).

    With ``normalize_target`` the network predicts each patch standardised over its values
    (`patch_target`), so the prediction is mapped back with the input patch's own mean and
    standard deviation before the batch normalisation is undone.
    """
    past, future = task.frame_pair({"video": video})
    with torch.no_grad():
        prediction = task.decode(task.encode(past), task.encode(future, mask), mask).float()
    patches = patchify(future.float(), (1, *task.patch))  # (B, N, P, C), normalised input
    b, _, size, c = patches.shape
    masked = patches[mask].reshape(-1, size * c)
    prediction = prediction.reshape(-1, size * c)
    if task.normalize_target:
        sigma = (masked.var(dim=1, keepdim=True) + SIAMMAE_EPS).sqrt()
        prediction = prediction * sigma + masked.mean(dim=1, keepdim=True)
    patches = patches.clone()
    patches[mask] = prediction.reshape(-1, size, c)
    _, h, w = task.backbone.grid(future.shape)
    ph, pw = task.patch
    x = patches.reshape(b, h, w, ph, pw, c).permute(0, 5, 1, 3, 2, 4)
    x = x.reshape(b, c, h * ph, w * pw)
    mean, std = task.augment.mean.float().view(c, 1, 1), task.augment.std.float().view(c, 1, 1)
    return (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def vjepa_blocks(task: VJEPA, video: Tensor) -> dict[str, Any]:
    """V-JEPA's masks of clip 0 of ``video``, drawn as `VJEPA.draw_masks` draws them (the
    task's ``mask_generator``, one `sample_blocks` per mask set in order), with the blocks.

    Returns ``grid`` (T', H', W'), ``blocks`` (per set: corners ``(K, 3)`` as (start, top,
    left) tokens and the block size (t, h, w)), ``masks`` (per set: the target mask ``(T', H',
    W')``) and ``indices`` (per set: the context and target token indices of `mask_indices`).
    """
    grid = task.backbone.grid(video.shape)
    blocks, masks, indices = [], [], []
    for spec in task.mask_specs:
        corners, size = sample_blocks(1, grid, spec, task.mask_generator())
        mask = paint_blocks(corners, size, grid)
        blocks.append((corners[0].numpy(), size))
        masks.append(mask[0].numpy())
        indices.append(mask_indices(mask.flatten(1)))
    return {"grid": grid, "blocks": blocks, "masks": masks, "indices": indices}


def _to_images(task: VSSLTask, clip: Tensor) -> np.ndarray:
    """Float normalised ``(C, T, H, W)`` -> displayable ``(T, H, W, 3)`` in [0, 1]."""
    mean, std = task.augment.mean.cpu(), task.augment.std.cpu()
    return (clip.cpu() * std + mean).clamp(0, 1).permute(1, 2, 3, 0).numpy()


def _columns(t: int) -> np.ndarray:
    return np.unique(np.linspace(0, t - 1, min(t, _MAX_COLUMNS)).round().astype(int))


def _frames_figure(
    s: TaskSample, rows: list[tuple[str, np.ndarray, np.ndarray]], title: str, timeline: bool
):
    """A grid: one row per clip (label, images ``(T, H, W, 3)``, frame indices ``(T,)``), frame
    numbers above each image; with ``timeline`` a first row places the clips on the video."""
    s.extra["rows"], s.extra["title"], s.extra["axes"] = rows, title, []
    cols = max(len(_columns(len(images))) for _, images, _ in rows)
    extra = 1 if timeline else 0
    fig = Figure(figsize=(1.7 * cols + 1.2, 1.9 * (len(rows) + extra) + 0.6))
    ratios = [0.8] * extra + [1.0] * len(rows)
    grid = fig.add_gridspec(
        len(rows) + extra,
        cols + 1,
        height_ratios=ratios,
        width_ratios=[0.7] + [1] * cols,
        hspace=0.55,
    )
    fig.suptitle(title, fontsize=10)
    for r, (label, images, indices) in enumerate(rows):
        ax = fig.add_subplot(grid[r + extra, 0])
        ax.text(0.5, 0.5, label, ha="center", va="center", fontsize=8, wrap=True)
        ax.axis("off")
        s.extra["axes"].append([])
        for c, k in enumerate(_columns(len(images))):
            ax = fig.add_subplot(grid[r + extra, c + 1])
            s.extra["axes"][-1].append((int(k), ax))
            ax.imshow(images[k], interpolation="nearest")
            ax.set_title(f"frame {int(indices[k])}", fontsize=8)
            ax.axis("off")
    return fig, grid


def _timeline(
    fig: Figure, grid: Any, clips: list[tuple[str, np.ndarray]], num_frames: int, note: str
) -> None:
    ax = fig.add_subplot(grid[0, :])
    for y, (label, indices) in enumerate(clips):
        ax.plot([indices.min(), indices.max()], [y, y], lw=6, solid_capstyle="butt")
        ax.plot(indices, [y] * len(indices), "k|", ms=10)
        ax.text(
            indices.max() + 0.5,
            y,
            f"{label}: frames {indices[0]}..{indices[-1]}",
            fontsize=8,
            va="center",
        )
    ax.set_xlim(-0.5, num_frames - 0.5)
    ax.set_ylim(len(clips) - 0.5, -0.5)
    ax.set_yticks([])
    ax.set_xlabel(f"frame of the video ({num_frames} frames)  {note}", fontsize=8)
    ax.tick_params(labelsize=7)


def _rspnet(s: TaskSample) -> tuple[Figure, str]:
    sampler = s.task.clip_sampler("train", s.spec)
    speeds = {
        name: int((s.views[name][1] - s.views[name][0]) % s.num_frames) // s.spec.stride
        if s.spec.clip_len > 1
        else 1
        for name in ("query", "key_same", "key_other")
    }
    labels = {"query": "query", "key_same": "key, same speed", "key_other": "key, other speed"}
    rows = [
        (f"{labels[n]}\nspeed {speeds[n]}", _to_images(s.task, s.batch[n][0]), s.views[n])
        for n in labels
    ]
    line = (
        f"rspnet: query frames {s.views['query'][0]}.. at speed {speeds['query']}, keys from frame "
        f"{s.views['key_same'][0]} at speeds {speeds['key_same']} (same) and {speeds['key_other']} "
        f"(other), window {sampler.window} frames"
    )
    fig, grid = _frames_figure(
        s, rows, "RSPNet: query and keys at their speeds (after augmentation)", True
    )
    _timeline(fig, grid, [(labels[n], s.views[n]) for n in labels], s.num_frames, "")
    return fig, line


def _cvrl(s: TaskSample) -> tuple[Figure, str]:
    first, second = int(s.views["video"][0]), int(s.views["video2"][0])
    gap = abs(second - first)
    s.extra["starts"], s.extra["gap"] = (first, second), gap
    rows = [
        (f"clip {i + 1}\nstart {int(s.views[v][0])}", _to_images(s.task, s.batch[v][0]), s.views[v])
        for i, v in enumerate(("video", "video2"))
    ]
    fig, grid = _frames_figure(
        s, rows, "CVRL: two clips of one video, each with its own augmentation", True
    )
    clips = [("clip 1", s.views["video"]), ("clip 2", s.views["video2"])]
    _timeline(fig, grid, clips, s.num_frames, f"start gap {gap} frames")
    return fig, f"cvrl: clip 1 starts at frame {first}, clip 2 at frame {second}, gap {gap}"


def _clip_order(s: TaskSample) -> tuple[Figure, str]:
    label = int(s.views["order"])
    order = clip_orders(s.task.tuple_len)[label]
    s.extra["label"], s.extra["order"] = label, order
    video = s.batch["video"][0]  # (N, C, T, H, W)
    rows = [
        (
            f"input {i + 1}:\nclip {order[i] + 1} in time",
            _to_images(s.task, video[i]),
            s.views["video"][i],
        )
        for i in range(len(order))
    ]
    shown = " ".join(str(k + 1) for k in order)
    fig, grid = _frames_figure(
        s,
        rows,
        f"VCOP: the clips in the order the network sees them; order label {label} = ({shown})",
        True,
    )
    clips = [
        (f"clip {k + 1}", np.sort(s.views["video"][order.index(k)])) for k in range(len(order))
    ]
    _timeline(fig, grid, clips, s.num_frames, "clips in time order")
    return fig, f"clip_order: order label {label}, the network sees clips ({shown}) of the tuple"


def _rotation(s: TaskSample) -> tuple[Figure, str]:
    clips, labels = s.extra["clips"], s.extra["labels"]
    indices = s.views["video"]
    rows = [
        (f"rotation {int(k) * 90} degrees\nlabel {int(k)}", _to_images(s.task, clip), indices)
        for clip, k in zip(clips, labels, strict=True)
    ]
    what = "all four rotations" if s.task.all_rotations else "the drawn rotation"
    fig, _ = _frames_figure(s, rows, f"Rotation: {what} of one clip", False)
    drawn = ", ".join(str(int(k)) for k in labels)
    return fig, f"rotation: frames {indices[0]}..{indices[-1]}, rotation labels {drawn}"


def _playback_rate(s: TaskSample) -> tuple[Figure, str]:
    label = int(s.views["rate"])
    rate = s.task.rates[label]
    indices = s.views["video"]
    rows = [(f"rate {rate}\nlabel {label}", _to_images(s.task, s.batch["video"][0]), indices)]
    fig, grid = _frames_figure(
        s,
        rows,
        f"Playback rate: a clip at rate {rate} (label {label} of rates {list(s.task.rates)})",
        True,
    )
    _timeline(fig, grid, [(f"rate {rate}", indices)], s.num_frames, "")
    return fig, f"playback_rate: rate {rate} (label {label}), frames {indices[0]}..{indices[-1]}"


def _videomae(s: TaskSample) -> tuple[Figure, str]:
    images = _to_images(s.task, s.batch["video"][0])
    t, h, w = s.extra["grid"]
    mask = s.extra["mask"][0].reshape(t, h, w).cpu().numpy()
    pt, ph, pw = images.shape[0] // t, images.shape[1] // h, images.shape[2] // w
    pixels = np.kron(mask, np.ones((pt, ph, pw), dtype=bool))
    masked = images.copy()
    masked[pixels] = masked[pixels] * 0.25 + 0.5 * 0.75
    indices = s.views["video"]
    rows = [
        ("input", images, indices),
        (f"tube mask\n{int(mask[0].sum())}/{h * w} masked", masked, indices),
    ]
    if "reconstruction" in s.extra:
        rows.append(("reconstruction\n(masked: predicted)", s.extra["reconstruction"], indices))
    ratio = s.task.mask_ratio
    fig, _ = _frames_figure(
        s, rows, f"VideoMAE: tube mask, ratio {ratio} (grey: masked tubelets)", False
    )
    line = (
        f"videomae: frames {indices[0]}..{indices[-1]}, {int(mask.sum())} of {mask.size} tokens "
        f"masked ({h}x{w} per time step, {t} steps)"
    )
    return fig, line


def _grey(images: np.ndarray, pixels: np.ndarray, keep: float = 0.25) -> np.ndarray:
    """``images`` with the pixels of boolean ``pixels`` (same leading shape) greyed out, a
    ``keep`` share of the image left showing through."""
    out = images.copy()
    out[pixels] = out[pixels] * keep + 0.5 * (1 - keep)
    return out


def _siammae(s: TaskSample) -> tuple[Figure, str]:
    past_index, future_index = (int(k) for k in s.views["video"])
    gap = future_index - past_index
    images = _to_images(s.task, s.batch["video"][0])  # (2, H, W, 3)
    _, h, w = s.extra["grid"]
    mask = s.extra["mask"][0].reshape(h, w).cpu().numpy()
    ph, pw = s.task.patch
    count = int(mask.sum())
    panels = [
        (f"past frame {past_index}\n(the encoder sees all of it)", images[0]),
        (f"future frame {future_index}\n(the target)", images[1]),
        (
            f"future frame {future_index} as the encoder\nsees it: {count}/{h * w} masked",
            _grey(images[1], np.kron(mask, np.ones((ph, pw), dtype=bool)), keep=0.1),
        ),
    ]
    if "reconstruction" in s.extra:
        panels.append(("reconstruction\n(masked patches predicted)", s.extra["reconstruction"]))
    title = (
        f"SiamMAE: predict the future frame, {gap} frames after the past one, masked at "
        f"{s.task.mask_ratio}\n(grey: masked patches, "
        "yellow: visible ones)"
    )
    s.extra["gap"], s.extra["title"] = gap, title
    s.extra["rows"] = [("past, future", images, s.views["video"])]
    fig = Figure(figsize=(2.6 * len(panels), 3.0))
    fig.subplots_adjust(left=0.02, right=0.98, top=0.76, bottom=0.02, wspace=0.1)
    fig.suptitle(title, fontsize=9)
    axes = fig.subplots(1, len(panels))
    for ax, (label, image) in zip(axes, panels, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    for top, left in zip(*np.nonzero(~mask), strict=True):  # outline the visible patches
        corner = (left * pw - 0.5, top * ph - 0.5)
        axes[2].add_patch(Rectangle(corner, pw, ph, fill=False, edgecolor="yellow", lw=1))
    line = (
        f"siammae: past frame {past_index}, future frame {future_index}, gap {gap}, {count} of "
        f"{h * w} patches masked"
    )
    return fig, line


_SET_COLOURS = ((1.0, 0.55, 0.0), (0.1, 0.45, 1.0), (0.2, 0.8, 0.2), (0.85, 0.2, 0.85))


def _set_names(task: VJEPA) -> list[str]:
    """'short-range' and 'long-range' for two sets of different scales, else 'set k'."""
    specs = task.mask_specs
    if len(specs) == 2 and specs[0].spatial_scale != specs[1].spatial_scale:
        short = 0 if specs[0].spatial_scale < specs[1].spatial_scale else 1
        return ["short-range" if k == short else "long-range" for k in range(2)]
    return [f"set {k + 1}" for k in range(len(specs))]


def _vjepa(s: TaskSample) -> tuple[Figure, str]:
    images = _to_images(s.task, s.batch["video"][0])
    indices = s.views["video"]
    t, h, w = s.extra["grid"]
    pt, ph, pw = images.shape[0] // t, images.shape[1] // h, images.shape[2] // w
    names = _set_names(s.task)
    rows = [("input", images, indices)]
    parts = []
    for k, (mask, (corners, size)) in enumerate(
        zip(s.extra["masks"], s.extra["blocks"], strict=True)
    ):
        colour = np.array(_SET_COLOURS[k % len(_SET_COLOURS)])
        pixels = np.kron(mask, np.ones((pt, ph, pw), dtype=bool))
        tinted = images.copy()
        tinted[pixels] = tinted[pixels] * 0.45 + colour * 0.55
        context, target = (len(i[0]) for i in s.extra["indices"][k])
        rows.append(
            (
                f"{names[k]}:\n{len(corners)} blocks of {size[1]}x{size[2]}\n{target} target,\n"
                f"{context} context",
                tinted,
                indices,
            )
        )
        parts.append(
            f"{names[k]} {len(corners)} blocks of {size[0]}x{size[1]}x{size[2]}, {target} "
            f"target and {context} context tokens"
        )
    fig, _ = _frames_figure(
        s,
        rows,
        "V-JEPA: each mask set's target blocks (coloured, outlined), predicted from the "
        "context (as is)",
        False,
    )
    for k, (corners, size) in enumerate(s.extra["blocks"]):
        colour = _SET_COLOURS[k % len(_SET_COLOURS)]
        for frame, ax in s.extra["axes"][k + 1]:
            for start, top, left in corners:
                if start <= frame // pt < start + size[0]:
                    ax.add_patch(
                        Rectangle(
                            (left * pw - 0.5, top * ph - 0.5),
                            size[2] * pw,
                            size[1] * ph,
                            fill=False,
                            edgecolor=colour,
                            lw=1.2,
                        )
                    )
    line = f"vjepa: frames {indices[0]}..{indices[-1]}, {t}x{h}x{w} tokens; " + "; ".join(parts)
    return fig, line


def _rho(s: TaskSample) -> tuple[Figure, str]:
    clips = s.views["clips"]  # (rho, T)
    starts = [int(c[0]) for c in clips]
    s.extra["starts"] = starts
    video = s.batch["clips"][0]  # (rho, C, T, H, W)
    rows = [
        (f"clip {i + 1}\nstart {starts[i]}", _to_images(s.task, video[i]), clips[i])
        for i in range(len(clips))
    ]
    title = {"rho_byol": "rho-BYOL", "rho_moco": "rho-MoCo"}[s.name]
    fig, grid = _frames_figure(
        s,
        rows,
        f"{title}: {len(clips)} clips of one video, starts uniform over the video,\neach with "
        "its own augmentation",
        True,
    )
    _timeline(
        fig,
        grid,
        [(f"clip {i + 1}", c) for i, c in enumerate(clips)],
        s.num_frames,
        "in time order",
    )
    shown = ", ".join(str(k) for k in starts)
    line = (
        f"{s.name}: {len(clips)} clips of {clips.shape[1]} frames (stride {s.spec.stride}) "
        f"starting at frames {shown}"
    )
    return fig, line


def _tdl(s: TaskSample) -> tuple[Figure, str]:
    anchor, negative = s.views["anchor"], s.views["negative"]
    s.extra["starts"] = (int(anchor[0]), int(negative[0]))
    labels = {
        "anchor": "anchor" + ("\n(with TCA)" if s.task.training and s.task.tca_strength else ""),
        "positive": "positive\n(anchor's frames)",
        "negative": "negative\n(other segment)",
    }
    rows = [(labels[v], _to_images(s.task, s.batch[v][0]), s.views[v]) for v in labels]
    fig, grid = _frames_figure(
        s,
        rows,
        "TDL: the anchor is pulled to its positive, pushed from its temporal negative\n"
        "(each clip with its own augmentation)",
        True,
    )
    _timeline(fig, grid, [("anchor, positive", anchor), ("negative", negative)], s.num_frames, "")
    line = (
        f"tdl: anchor and positive frames {anchor[0]}..{anchor[-1]}, negative frames "
        f"{negative[0]}..{negative[-1]} (stride {s.spec.stride})"
    )
    return fig, line


def _audio_visual(s: TaskSample) -> tuple[Figure, str]:
    indices, span = s.views["video"], s.views["audio"]
    fps = float(s.extra["fps"])
    images = _to_images(s.task, s.batch["video"][0])
    audio_start = span.start_time(fps)
    audio_stop = audio_start + span.seconds
    clip_start, clip_stop = span.start / fps, span.stop / fps
    s.extra["spans"] = ((clip_start, clip_stop), (audio_start, audio_stop))
    s.extra["rows"] = [("clip", images, indices)]
    audio = s.batch["audio"][0].float().cpu().numpy()
    columns = _columns(len(images))
    fig = Figure(figsize=(1.7 * len(columns) + 0.6, 5.2))
    grid = fig.add_gridspec(2, len(columns), height_ratios=[1.0, 1.3], hspace=0.45, top=0.8)
    for c, k in enumerate(columns):
        ax = fig.add_subplot(grid[0, c])
        ax.imshow(images[k], interpolation="nearest")
        ax.set_title(f"frame {int(indices[k])}\n{indices[k] / fps:.2f} s", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    if audio.ndim == 3:  # AVID: the log spectrogram (C, F, T) the audio network gets
        ax.imshow(
            audio[0],
            origin="lower",
            aspect="auto",
            cmap="magma",
            extent=(audio_start, audio_stop, -0.5, audio.shape[1] - 0.5),
        )
        mel = getattr(s.task.spectrogram, "mel", None) is not None
        ax.set_ylabel("mel bin" if mel else "frequency bin", fontsize=8)
        what = f"log spectrogram, {audio.shape[1]} bins x {audio.shape[2]} steps"
    else:  # VATT: the waveform (C, N) the audio network gets
        ax.plot(np.linspace(audio_start, audio_stop, audio.shape[-1]), audio[0], lw=0.5)
        ax.set_ylabel("amplitude", fontsize=8)
        what = f"waveform, {audio.shape[-1]} samples"
    ax.axvspan(clip_start, clip_stop, fill=False, edgecolor="cyan", lw=2, label="the clip's frames")
    ax.set_xlabel(f"time in the video (s); the audio at {span.sample_rate} Hz", fontsize=8)
    ax.legend(loc="upper right", fontsize=7)
    ax.tick_params(labelsize=7)
    title = {"avid": "AVID", "vatt": "VATT"}[s.name]
    fig.suptitle(
        f"{title}: a clip, frames {indices[0]}..{indices[-1]} ({clip_start:.2f}..{clip_stop:.2f}"
        f" s), and its sound's {what},\n{audio_start:.2f}..{audio_stop:.2f} s: the network "
        "tells which sound belongs to which clip",
        fontsize=9,
    )
    s.extra["title"] = f"{title}: the clip"
    line = (
        f"{s.name}: frames {indices[0]}..{indices[-1]} ({clip_start:.2f}..{clip_stop:.2f} s), "
        f"audio {audio_start:.2f}..{audio_stop:.2f} s at {span.sample_rate} Hz, {what}"
    )
    return fig, line


def animate(s: TaskSample, out: str | Path, fps: float = 4.0, dpi: int = 100) -> Path:
    """Writes the clips of a drawn `TaskSample` (after `task_figure`) as an animated GIF: one
    panel per clip, every frame in turn, its frame number in the panel's title."""
    rows = s.extra["rows"]
    fig = Figure(figsize=(2.2 * len(rows), 2.6))
    FigureCanvasAgg(fig)
    fig.suptitle(s.extra["title"], fontsize=8)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    images, titles = [], []
    for ax, (_, frames, _) in zip(axes, rows, strict=True):
        images.append(ax.imshow(frames[0], interpolation="nearest"))
        titles.append(ax.set_title("", fontsize=7))
        ax.axis("off")

    def update(k: int) -> list[Any]:
        for image, title, (label, frames, indices) in zip(images, titles, rows, strict=True):
            t = min(k, len(frames) - 1)
            image.set_data(frames[t])
            title.set_text(f"{label.replace(chr(10), ', ')}\nframe {int(indices[t])}")
        return images + titles

    frames = max(len(r[1]) for r in rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FuncAnimation(fig, update, frames=frames, blit=False).save(
        out, writer=PillowWriter(fps=fps), dpi=dpi
    )
    print(f"wrote {out}")
    return out


_FIGURES: dict[str, Callable[[TaskSample], tuple[Figure, str]]] = {
    "rspnet": _rspnet,
    "cvrl": _cvrl,
    "videomae": _videomae,
    "clip_order": _clip_order,
    "rotation": _rotation,
    "playback_rate": _playback_rate,
    "siammae": _siammae,
    "vjepa": _vjepa,
    "rho_byol": _rho,
    "rho_moco": _rho,
    "tdl": _tdl,
    "avid": _audio_visual,
    "vatt": _audio_visual,
}


def task_figure(s: TaskSample) -> tuple[Figure, str]:
    """The picture of a `TaskSample` and one line that says what the sampler drew."""
    return _FIGURES[s.name](s)


def _task(args: Namespace) -> int:
    s = sample_task(
        args.what,
        args.video,
        args.seed,
        args.stage,
        args.clip_len,
        args.size,
        args.decode_size,
        args.ckpt,
    )
    fig, line = task_figure(s)
    print(f"{Path(args.video).name}: {line}")
    _save(fig, args.out, args.dpi)
    if args.animate:
        animate(s, args.animate, args.fps, args.dpi)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vssl show``; returns the exit status. The options are
    `vssl.commands.show`'s (jsonargparse: ``--config FILE`` too)."""
    from vssl.commands.show import parse_show

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in TASKS:
        print(f"error: unknown task {argv[0]!r}; tasks: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    try:
        args = parse_show(argv)
    except UserError as err:
        print(f"vssl show: error: {err}", file=sys.stderr)
        return 2
    try:
        return _statistics(args) if args.what == "statistics" else _task(args)
    except (VideoDecodeError, UserError, ValueError, OSError) as err:
        message = str(err)
        ckpt = getattr(args, "ckpt", None)
        if args.video not in message and not (ckpt and str(ckpt) in message):
            message = f"{args.video}: {message}"
        print(f"vssl show: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
