"""Dataset layouts: the official split/annotation formats, written small, give exact items."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from vssl.data.layouts import LAYOUTS, VIDEO_EXTENSIONS, VideoItem, is_video, load_layout


def touch(*paths: Path) -> None:
    """Placeholder video files: layouts only look at paths."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pairs(items: list[VideoItem], root: Path) -> list[tuple[str, int]]:
    return [(item.path.relative_to(root).as_posix(), item.label) for item in items]


# ---------------------------------------------------------------- UCF101


@pytest.fixture
def ucf_root(tmp_path: Path) -> Path:
    videos = tmp_path / "UCF-101"
    touch(
        videos / "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        videos / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        videos / "Archery/v_Archery_g08_c02.avi",
        videos / "Archery/v_Archery_g01_c03.avi",
        videos / "ApplyLipstick/v_ApplyLipstick_g09_c01.avi",
    )
    lists = tmp_path / "ucfTrainTestlist"
    # the official files have Windows line endings
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n3 Archery\r\n")
    write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "ApplyLipstick/v_ApplyLipstick_g09_c01.avi 2\r\n"
        "Archery/v_Archery_g08_c02.avi 3\r\n",
    )
    write(
        lists / "testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nArchery/v_Archery_g01_c03.avi\r\n",
    )
    return tmp_path


def test_ucf101_train_and_test(ucf_root):
    items, classes = load_layout("ucf101", ucf_root, split="train", fold=1)
    assert classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    assert pairs(items, ucf_root) == [
        ("UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("UCF-101/ApplyLipstick/v_ApplyLipstick_g09_c01.avi", 1),
        ("UCF-101/Archery/v_Archery_g08_c02.avi", 2),
    ]
    items, _ = load_layout("ucf101", ucf_root, split="test")
    assert pairs(items, ucf_root) == [
        ("UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0),
        ("UCF-101/Archery/v_Archery_g01_c03.avi", 2),
    ]


def test_ucf101_class_folders_directly_under_root(ucf_root):
    (ucf_root / "UCF-101").rename(ucf_root / "videos")
    lists = ucf_root / "ucfTrainTestlist"
    items, _ = load_layout("ucf101", ucf_root / "videos", split="test", annotations=lists)
    assert pairs(items, ucf_root / "videos") == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0),
        ("Archery/v_Archery_g01_c03.avi", 2),
    ]


def test_ucf101_errors_name_the_file(ucf_root):
    lists = ucf_root / "ucfTrainTestlist"
    with pytest.raises(FileNotFoundError, match=r"trainlist02\.txt: split file not found"):
        load_layout("ucf101", ucf_root, fold=2)
    with pytest.raises(ValueError, match="fold must be 1, 2 or 3"):
        load_layout("ucf101", ucf_root, fold=4)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_layout("ucf101", ucf_root, split="val")
    write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nbroken 1 2\n")
    with pytest.raises(ValueError, match=r"trainlist01\.txt:2: expected"):
        load_layout("ucf101", ucf_root)
    write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 7\n")
    with pytest.raises(ValueError, match=r"trainlist01\.txt:1: class id must be 1\.\.3"):
        load_layout("ucf101", ucf_root)
    write(lists / "testlist01.txt", "Nope/v_Nope_g01_c01.avi\n")
    with pytest.raises(ValueError, match=r"testlist01\.txt:1: class 'Nope' is not in"):
        load_layout("ucf101", ucf_root, split="test")
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\n3 Archery\n")
    with pytest.raises(ValueError, match=r"classInd\.txt:2: class ids must run"):
        load_layout("ucf101", ucf_root)


def test_missing_listed_videos_are_left_out_with_one_warning(ucf_root, caplog):
    (ucf_root / "UCF-101/Archery/v_Archery_g08_c02.avi").unlink()
    with caplog.at_level(logging.WARNING, logger="vssl"):
        items, _ = load_layout("ucf101", ucf_root)
    assert [item.label for item in items] == [0, 1]
    assert len(caplog.records) == 1
    assert "1 of 3 listed videos not found" in caplog.text and "v_Archery_g08_c02" in caplog.text


# ---------------------------------------------------------------- HMDB51


@pytest.fixture
def hmdb_root(tmp_path: Path) -> Path:
    videos = tmp_path / "hmdb51"
    touch(
        videos / "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
        videos / "brush_hair/Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi",
        videos / "brush_hair/Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi",
        videos / "cartwheel/Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi",
        videos / "cartwheel/Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi",
    )
    splits = tmp_path / "testTrainMulti_7030_splits"
    write(
        splits / "brush_hair_test_split1.txt",
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
        "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 2 \n"
        "Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi 0 \n",
    )
    write(
        splits / "cartwheel_test_split1.txt",
        "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi 2 \n"
        "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi 1 \n",
    )
    write(
        splits / "cartwheel_test_split2.txt", "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi 2\n"
    )
    return tmp_path


def test_hmdb51_splits(hmdb_root):
    items, classes = load_layout("hmdb51", hmdb_root, split="train", fold=1)
    assert classes == ["brush_hair", "cartwheel"]
    assert pairs(items, hmdb_root) == [
        ("hmdb51/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
        ("hmdb51/cartwheel/Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi", 1),
    ]
    items, _ = load_layout("hmdb51", hmdb_root, split="test", fold=1)
    assert pairs(items, hmdb_root) == [
        ("hmdb51/brush_hair/Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi", 0),
        ("hmdb51/cartwheel/Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi", 1),
    ]
    # split 2 exists for one class only: that class alone, label 0 of its own class list
    items, classes = load_layout("hmdb51", hmdb_root, split="test", fold=2)
    assert classes == ["cartwheel"] and [item.label for item in items] == [0]


def test_hmdb51_errors_name_the_file(hmdb_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"<class>_test_split3\.txt: split files not found"):
        load_layout("hmdb51", hmdb_root, fold=3)
    with pytest.raises(FileNotFoundError, match="elsewhere: HMDB51 split folder"):
        load_layout("hmdb51", hmdb_root, annotations=tmp_path / "elsewhere")
    write(hmdb_root / "testTrainMulti_7030_splits/cartwheel_test_split1.txt", "a.avi 1\nb.avi 3\n")
    with pytest.raises(ValueError, match=r"cartwheel_test_split1\.txt:2: expected"):
        load_layout("hmdb51", hmdb_root)


# ---------------------------------------------------------------- Kinetics


KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


@pytest.fixture
def kinetics_root(tmp_path: Path) -> Path:
    write(
        tmp_path / "annotations/train.csv",
        KINETICS_HEADER + "abseiling,--07WQ2iBlw,1,11,train,0\n"
        '"passing American football (in game)",-0A8ppWy45k,24,34,train,0\n'
        "abseiling,0347ZoDXyP0,150,160,train,0\n"
        "air drumming,gone_video1,0,10,train,0\n",
    )
    write(
        tmp_path / "annotations/validate.csv",
        KINETICS_HEADER + "air drumming,val_id_0001,5,15,val,0\n",
    )
    touch(
        tmp_path / "train/abseiling/--07WQ2iBlw_000001_000011.mp4",
        tmp_path / "train/passing_American_football_(in_game)/-0A8ppWy45k_000024_000034.mkv",
        tmp_path / "train/0347ZoDXyP0_000150_000160.mp4",  # flat, not in a class folder
        tmp_path / "val_id_0001_000005_000015.mp4",  # flat under the root
    )
    return tmp_path


def test_kinetics_class_folders_flat_and_missing(kinetics_root, caplog):
    with caplog.at_level(logging.WARNING, logger="vssl"):
        items, classes = load_layout("kinetics", kinetics_root, split="train")
    assert classes == ["abseiling", "air drumming", "passing American football (in game)"]
    assert pairs(items, kinetics_root) == [
        ("train/abseiling/--07WQ2iBlw_000001_000011.mp4", 0),
        ("train/passing_American_football_(in_game)/-0A8ppWy45k_000024_000034.mkv", 2),
        ("train/0347ZoDXyP0_000150_000160.mp4", 0),
    ]
    assert len(caplog.records) == 1
    assert "1 of 4 videos" in caplog.text and "gone_video1_000000_000010" in caplog.text


def test_kinetics_validation_names_and_explicit_csv(kinetics_root):
    items, classes = load_layout("kinetics", kinetics_root, split="val")
    assert classes == ["air drumming"]
    assert pairs(items, kinetics_root) == [("val_id_0001_000005_000015.mp4", 0)]
    table = write(
        kinetics_root / "mine.csv", "youtube_id,time_start,time_end,split\nval_id_0001,5,15,test\n"
    )
    items, classes = load_layout("kinetics", kinetics_root, split="test", annotations=table)
    assert classes == [] and [item.label for item in items] == [-1]


def test_kinetics_errors_name_the_file(kinetics_root):
    with pytest.raises(FileNotFoundError, match=r"annotations/test\.csv: Kinetics annotation"):
        load_layout("kinetics", kinetics_root, split="test")
    bad = write(
        kinetics_root / "bad.csv", KINETICS_HEADER + "a,x,1,2,train,0\nb,y,soon,3,train,0\n"
    )
    with pytest.raises(ValueError, match=r"bad\.csv:3: bad time_start"):
        load_layout("kinetics", kinetics_root, annotations=bad)
    bad = write(kinetics_root / "bad.csv", "name,start\nx,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv:1: expected a header"):
        load_layout("kinetics", kinetics_root, annotations=bad)


# ---------------------------------------------------------------- Something-Something v2


@pytest.fixture
def ssv2_root(tmp_path: Path) -> Path:
    labels = tmp_path / "labels"
    write(
        labels / "labels.json",
        json.dumps(
            {
                "Approaching something with your camera": "0",
                "Pushing something from left to right": "1",
            }
        ),
    )
    write(
        labels / "train.json",
        json.dumps(
            [
                {
                    "id": "78687",
                    "label": "pushing a pen from left to right",
                    "template": "Pushing [something] from left to right",
                    "placeholders": ["a pen"],
                },
                {
                    "id": "42326",
                    "label": "approaching a cup with your camera",
                    "template": "Approaching [something] with your camera",
                    "placeholders": ["a cup"],
                },
            ]
        ),
    )
    write(
        labels / "validation.json",
        json.dumps(
            [
                {
                    "id": "100",
                    "label": "approaching a box with your camera",
                    "template": "Approaching [something] with your camera",
                    "placeholders": ["a box"],
                }
            ]
        ),
    )
    touch(*(tmp_path / f"20bn-something-something-v2/{i}.webm" for i in ("78687", "42326", "100")))
    return tmp_path


def test_ssv2_splits(ssv2_root):
    items, classes = load_layout("ssv2", ssv2_root, split="train")
    assert classes == [
        "Approaching something with your camera",
        "Pushing something from left to right",
    ]
    videos = "20bn-something-something-v2"
    assert pairs(items, ssv2_root) == [(f"{videos}/78687.webm", 1), (f"{videos}/42326.webm", 0)]
    for split in ("validation", "val", "test"):
        items, _ = load_layout("ssv2", ssv2_root, split=split)
        assert pairs(items, ssv2_root) == [(f"{videos}/100.webm", 0)]


def test_ssv2_errors_name_the_file(ssv2_root):
    write(ssv2_root / "labels/train.json", '[{"id": "1", "template": "Dancing [something]"}]')
    with pytest.raises(
        ValueError, match=r"train\.json: entry 0 \(id 1\): class 'Dancing something'"
    ):
        load_layout("ssv2", ssv2_root)
    write(ssv2_root / "labels/train.json", '[\n{"id": "1",\n}')
    with pytest.raises(ValueError, match=r"train\.json:3: invalid JSON"):
        load_layout("ssv2", ssv2_root)
    (ssv2_root / "labels/validation.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"validation\.json: annotation file not found"):
        load_layout("ssv2", ssv2_root, split="val")


# ---------------------------------------------------------------- folder, csv, unlabeled


def test_folder_with_splits(tmp_path):
    touch(
        tmp_path / "train/cat/b.mp4",
        tmp_path / "train/cat/a.mp4",
        tmp_path / "train/dog/c.avi",
        tmp_path / "train/dog/notes.txt",
        tmp_path / "train/elk/d.webm",
        tmp_path / "test/dog/e.mp4",
        tmp_path / "test/elk/f.mp4",
    )
    items, classes = load_layout("folder", tmp_path, split="train")
    assert classes == ["cat", "dog", "elk"]
    assert pairs(items, tmp_path) == [
        ("train/cat/a.mp4", 0),
        ("train/cat/b.mp4", 0),
        ("train/dog/c.avi", 1),
        ("train/elk/d.webm", 2),
    ]
    # the test split has no cat folder: labels still index the same class list
    items, classes = load_layout("folder", tmp_path, split="test")
    assert classes == ["cat", "dog", "elk"]
    assert pairs(items, tmp_path) == [("test/dog/e.mp4", 1), ("test/elk/f.mp4", 2)]


def test_folder_without_splits(tmp_path):
    touch(tmp_path / "b/x.MP4", tmp_path / "a/y.mkv")
    items, classes = load_layout("folder", tmp_path, split="train")
    assert classes == ["a", "b"] and pairs(items, tmp_path) == [("a/y.mkv", 0), ("b/x.MP4", 1)]
    with pytest.raises(FileNotFoundError, match="nowhere: the dataset root folder does not exist"):
        load_layout("folder", tmp_path / "nowhere")


def test_csv_with_names_and_header(tmp_path):
    touch(tmp_path / "data/v1.mp4", tmp_path / "data/v2.mp4", tmp_path / "abs/v3.mp4")
    table = write(
        tmp_path / "list.csv",
        f"path,label\nv1.mp4,walk\nv2.mp4,run\n{tmp_path / 'abs/v3.mp4'},walk\n",
    )
    items, classes = load_layout("csv", tmp_path / "data", annotations=table)
    assert classes == ["run", "walk"]
    assert pairs(items, tmp_path) == [("data/v1.mp4", 1), ("data/v2.mp4", 0), ("abs/v3.mp4", 1)]


def test_csv_with_int_labels_as_root(tmp_path):
    touch(tmp_path / "clips/a.mp4", tmp_path / "clips/b.mp4", tmp_path / "clips/c.mp4")
    table = write(tmp_path / "labels.csv", "clips/a.mp4,2\nclips/b.mp4,0\nclips/c.mp4,\n")
    items, classes = load_layout("csv", table)
    assert classes == ["0", "1", "2"]
    assert pairs(items, tmp_path) == [("clips/a.mp4", 2), ("clips/b.mp4", 0), ("clips/c.mp4", -1)]
    write(table, "clips/a.mp4,2\nclips/b.mp4,0,extra\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2: expected 'path,label'"):
        load_layout("csv", table)
    with pytest.raises(FileNotFoundError, match=r"none\.csv: CSV file not found"):
        load_layout("csv", tmp_path, annotations=tmp_path / "none.csv")


def test_unlabeled_recursive(tmp_path):
    touch(
        tmp_path / "z.webm",
        tmp_path / "deep/er/a.MOV",
        tmp_path / "deep/b.m4v",
        tmp_path / "deep/readme.md",
        tmp_path / ".hidden/c.mp4",
    )
    items, classes = load_layout("unlabeled", tmp_path)
    assert classes == []
    assert pairs(items, tmp_path) == [("deep/b.m4v", -1), ("deep/er/a.MOV", -1), ("z.webm", -1)]


def test_registry_and_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset layout 'ucf'; available: ucf101, hmdb51"):
        load_layout("ucf", tmp_path)

    def single(root, split="train", fold=1, annotations=None):
        return [VideoItem(Path(root) / f"{split}.mp4", 0)], ["only"]

    LAYOUTS["single"] = single
    try:
        items, classes = load_layout("single", tmp_path, split="test")
        assert items == [VideoItem(tmp_path / "test.mp4", 0)] and classes == ["only"]
    finally:
        del LAYOUTS["single"]


def test_video_extensions():
    assert VIDEO_EXTENSIONS == {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v"}
    assert is_video("A.MKV") and is_video(Path("x/y.m4v")) and not is_video("y.txt")
