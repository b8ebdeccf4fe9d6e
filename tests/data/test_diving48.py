"""The Diving48 layout: official JSON annotations, V1 and V2 names, errors, a prepared copy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from vssl.data.encode import write_video
from vssl.data.layouts import VideoItem, load_layout
from vssl.data.prepare import prepare
from vssl.errors import InvalidInputError, MissingInputError

VOCAB = [
    ["Back", "15som", "05Twis", "FREE"],
    ["Back", "15som", "15Twis", "FREE"],
    ["Forward", "25som", "NoTwis", "PIKE"],
]
TRAIN = [
    {"vid_name": "-mmq0PT-u8k_00155", "label": 2, "start_frame": 0, "end_frame": 60},
    {"vid_name": "_8Vy3dlHg2w_00000", "label": 0, "start_frame": 0, "end_frame": 104},
]
TEST = [{"vid_name": "zzzWx8yKD6I_00001", "label": 1, "start_frame": 0, "end_frame": 40}]


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def make_tree(root: Path, version: str = "V2", videos: str = "rgb", real: bool = False) -> Path:
    """A Diving48 tree as downloaded: ``rgb/*.mp4`` and the three JSON files in ``root``."""
    prefix = "Diving48_V2" if version == "V2" else "Diving48"
    write_json(root / f"{prefix}_train.json", TRAIN)
    write_json(root / f"{prefix}_test.json", TEST)
    write_json(root / "Diving48_vocab.json", VOCAB)
    for entry in TRAIN + TEST:
        path = root / videos / f"{entry['vid_name']}.mp4"
        if real:
            frames = np.full((6, 32, 48, 3), 40 * entry["label"], np.uint8)
            write_video(path, frames)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    return root


def pairs(items: list[VideoItem], root: Path) -> list[tuple[str, int]]:
    return [(item.path.relative_to(root).as_posix(), item.label) for item in items]


CLASSES = ["Back 15som 05Twis FREE", "Back 15som 15Twis FREE", "Forward 25som NoTwis PIKE"]


def test_v2_train_and_test(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d48")
    items, classes = load_layout("diving48", root, split="train")
    assert classes == CLASSES
    assert pairs(items, root) == [
        ("rgb/-mmq0PT-u8k_00155.mp4", 2),
        ("rgb/_8Vy3dlHg2w_00000.mp4", 0),
    ]
    for split in ("test", "val", "validation"):
        items, classes = load_layout("diving48", root, split=split)
        assert pairs(items, root) == [("rgb/zzzWx8yKD6I_00001.mp4", 1)] and classes == CLASSES


def test_v1_names_videos_folder_and_annotations_folder(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "v1", version="V1", videos="videos")
    items, _ = load_layout("diving48", root, split="test")
    assert pairs(items, root) == [("videos/zzzWx8yKD6I_00001.mp4", 1)]
    # mmaction2's arrangement: annotations/ beside videos/
    moved = tmp_path / "mm"
    make_tree(moved, videos="videos")
    (moved / "annotations").mkdir()
    for name in ("Diving48_V2_train.json", "Diving48_V2_test.json", "Diving48_vocab.json"):
        (moved / name).rename(moved / "annotations" / name)
    items, classes = load_layout("diving48", moved)
    assert len(items) == 2 and classes == CLASSES
    items, _ = load_layout("diving48", moved, annotations=moved / "annotations", split="test")
    assert pairs(items, moved) == [("videos/zzzWx8yKD6I_00001.mp4", 1)]


def test_v2_wins_over_v1(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "both")
    write_json(root / "Diving48_train.json", [{"vid_name": "_8Vy3dlHg2w_00000", "label": 1}])
    items, _ = load_layout("diving48", root)
    assert [item.label for item in items] == [2, 0]


def test_missing_videos_are_left_out_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_tree(tmp_path / "d48")
    (root / "rgb" / "-mmq0PT-u8k_00155.mp4").unlink()
    with caplog.at_level(logging.WARNING, logger="vssl"):
        items, _ = load_layout("diving48", root)
    assert pairs(items, root) == [("rgb/_8Vy3dlHg2w_00000.mp4", 0)]
    (record,) = caplog.records
    assert "diving48: 1 of 2 listed videos not found" in record.getMessage()
    assert "-mmq0PT-u8k_00155.mp4" in record.getMessage()


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d48")
    train = root / "Diving48_V2_train.json"
    with pytest.raises(InvalidInputError, match="unknown split 'dev'"):
        load_layout("diving48", root, split="dev")

    write_json(train, TRAIN + [{"vid_name": "x_00001", "label": 3}])
    with pytest.raises(
        InvalidInputError,
        match=r"Diving48_V2_train.json: entry 2 \(x_00001\): label 3 is out of range 0..2 of "
        r".*Diving48_vocab.json",
    ):
        load_layout("diving48", root)
    write_json(train, [{"vid_name": "x_00001", "label": "2"}])
    with pytest.raises(InvalidInputError, match=r"entry 0 \(x_00001\): 'label' must be an integer"):
        load_layout("diving48", root)
    write_json(train, [{"label": 1}])
    with pytest.raises(
        InvalidInputError, match=r"Diving48_V2_train.json: entry 0 has no 'vid_name'"
    ):
        load_layout("diving48", root)
    write_json(train, [{"vid_name": "../x", "label": 1}])
    with pytest.raises(InvalidInputError, match=r"entry 0: bad vid_name '../x'"):
        load_layout("diving48", root)
    write_json(train, {"vid_name": "x", "label": 1})
    with pytest.raises(InvalidInputError, match=r"Diving48_V2_train.json:1: expected a list"):
        load_layout("diving48", root)
    train.write_text('[{"vid_name": "x",\n"label": }]')
    with pytest.raises(InvalidInputError, match=r"Diving48_V2_train.json:2: invalid JSON"):
        load_layout("diving48", root)

    write_json(root / "Diving48_vocab.json", [["Back", 15]])
    with pytest.raises(InvalidInputError, match=r"Diving48_vocab.json: class 0 must be a list"):
        load_layout("diving48", root, split="test")
    (root / "Diving48_vocab.json").unlink()
    with pytest.raises(MissingInputError, match=r"Diving48_vocab.json: annotation file not found"):
        load_layout("diving48", root, split="test")

    (root / "Diving48_V2_test.json").unlink()
    with pytest.raises(
        MissingInputError,
        match=r"d48/Diving48_V2_test.json: Diving48 annotation file not found \(nor "
        r"Diving48_test.json",
    ):
        load_layout("diving48", root, split="test")


def test_prepared_tree_loads_the_same(tmp_path: Path) -> None:
    """`vssl prepare` copies the JSON files and keeps the paths: the same items and labels."""
    src = make_tree(tmp_path / "src", real=True)
    summary = prepare(src, tmp_path / "dst", short_side=16, workers=1, progress=False)
    assert summary.done == 3 and summary.annotations_copied == 3
    dst = tmp_path / "dst"
    for split in ("train", "test"):
        items, classes = load_layout("diving48", src, split=split)
        prepared, prepared_classes = load_layout("diving48", dst, split=split)
        assert prepared_classes == classes == CLASSES
        assert pairs(prepared, dst) == pairs(items, src)
