"""Dataset layouts as people download them: UCF101, HMDB51, Kinetics, SSv2, Diving48 and plain
folders.

Each layout turns a root folder (and its split/annotation files) into ``VideoItem`` s with
0-based labels into a list of class names. :data:`LAYOUTS` maps a name to its loader; add an
entry to support another layout. Videos listed by an annotation file but absent on disk are
left out and reported in one warning.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vssl.errors import InvalidInputError, MissingInputError

logger = logging.getLogger("vssl")

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v"})
"""File extensions (lower case) recognised as videos by every layout."""

# Split names that may sit side by side as folders of one dataset.
_SPLIT_DIRS = ("train", "val", "validate", "validation", "test")


@dataclass(frozen=True)
class VideoItem:
    """One video of a dataset and its 0-based class label (-1: unlabeled)."""

    path: Path
    label: int


Layout = Callable[..., tuple[list[VideoItem], list[str]]]


def is_video(path: str | Path) -> bool:
    """Whether ``path`` has one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MissingInputError(f"{path}: {what} not found (no such directory)")
    return path


def _read_lines(file: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a split file with their 1-based line numbers."""
    if not file.is_file():
        raise MissingInputError(f"{file}: split file not found")
    with open(file, encoding="utf-8-sig") as handle:
        return [(n, line.strip()) for n, line in enumerate(handle, 1) if line.strip()]


def _other_extension(path: Path) -> Path | None:
    """The video with ``path``'s name but another video extension, when one exists: a copy made
    by ``vssl prepare`` holds ``x.mp4`` where the split files list ``x.avi``."""
    for suffix in sorted(VIDEO_EXTENSIONS):
        other = path.with_suffix(suffix)
        if other != path and other.is_file():
            return other
    return None


def _keep_existing(items: list[VideoItem], layout: str, root: Path) -> list[VideoItem]:
    """Leave out listed videos that are not on disk, with one warning naming the first few;
    a listed video found only under another video extension is taken from there."""
    kept, missing = [], []
    for item in items:
        if item.path.is_file():
            kept.append(item)
        elif (other := _other_extension(item.path)) is not None:
            kept.append(VideoItem(other, item.label))
        else:
            missing.append(item)
    if not missing:
        return kept
    first = ", ".join(str(item.path) for item in missing[:5])
    logger.warning(
        "%s: %d of %d listed videos not found under %s and left out (first: %s)",
        layout,
        len(missing),
        len(items),
        root,
        first,
    )
    return kept


def _check_split(split: str, allowed: Iterable[str], layout: str) -> None:
    allowed = tuple(allowed)
    if split not in allowed:
        raise InvalidInputError(f"{layout}: unknown split {split!r}; expected one of {allowed}")


def _check_fold(fold: int, layout: str) -> None:
    if fold not in (1, 2, 3):
        raise InvalidInputError(f"{layout}: fold must be 1, 2 or 3, got {fold!r}")


def ucf101(
    root: str | Path,
    split: str = "train",
    fold: int = 1,
    annotations: str | Path | None = None,
) -> tuple[list[VideoItem], list[str]]:
    """UCF101: ``root/UCF-101/<Class>/v_*.avi`` (or ``root/<Class>/``) and the official
    ``ucfTrainTestlist`` (``annotations``, default ``root/ucfTrainTestlist``)."""
    _check_split(split, ("train", "test"), "ucf101")
    _check_fold(fold, "ucf101")
    root = Path(root)
    videos = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    lists = Path(annotations) if annotations is not None else root / "ucfTrainTestlist"

    class_file = lists / "classInd.txt"
    classes: list[str] = []
    for n, line in _read_lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise InvalidInputError(f"{class_file}:{n}: expected '<id> <ClassName>', got {line!r}")
        if int(parts[0]) != len(classes) + 1:
            raise InvalidInputError(
                f"{class_file}:{n}: class ids must run 1, 2, 3, ...; expected "
                f"{len(classes) + 1}, got {parts[0]}"
            )
        classes.append(parts[1])
    by_name = {name.lower(): i for i, name in enumerate(classes)}

    list_file = lists / f"{split}list0{fold}.txt"
    items = []
    for n, line in _read_lines(list_file):
        parts = line.split()
        if len(parts) not in (1, 2) or "/" not in parts[0]:
            raise InvalidInputError(
                f"{list_file}:{n}: expected '<Class>/<video>.avi [id]', got {line!r}"
            )
        if len(parts) == 2:
            if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                raise InvalidInputError(
                    f"{list_file}:{n}: class id must be 1..{len(classes)}, got {parts[1]!r}"
                )
            label = int(parts[1]) - 1
        else:
            folder = parts[0].split("/")[0]
            if folder.lower() not in by_name:
                raise InvalidInputError(f"{list_file}:{n}: class {folder!r} is not in {class_file}")
            label = by_name[folder.lower()]
        items.append(VideoItem(videos / parts[0], label))
    return _keep_existing(items, "ucf101", videos), classes


def hmdb51(
    root: str | Path,
    split: str = "train",
    fold: int = 1,
    annotations: str | Path | None = None,
) -> tuple[list[VideoItem], list[str]]:
    """HMDB51: ``<class>/<video>.avi`` under ``root`` (or a folder inside it) and the official
    ``testTrainMulti_7030_splits`` (``annotations``, default inside ``root``)."""
    _check_split(split, ("train", "test"), "hmdb51")
    _check_fold(fold, "hmdb51")
    root = Path(root)
    splits = Path(annotations) if annotations is not None else root / "testTrainMulti_7030_splits"
    _require_dir(splits, "HMDB51 split folder (pass annotations=)")
    suffix = f"_test_split{fold}.txt"
    files = sorted(p for p in splits.iterdir() if p.name.endswith(suffix))
    if not files:
        raise MissingInputError(f"{splits / ('<class>' + suffix)}: split files not found")
    classes = [p.name[: -len(suffix)] for p in files]

    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    videos = next((d for d in candidates if (d / classes[0]).is_dir()), root)
    wanted_id = 1 if split == "train" else 2
    items = []
    for label, file in enumerate(files):
        for n, line in _read_lines(file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise InvalidInputError(f"{file}:{n}: expected '<video>.avi <0|1|2>', got {line!r}")
            if int(parts[1]) == wanted_id:
                items.append(VideoItem(videos / classes[label] / parts[0], label))
    return _keep_existing(items, "hmdb51", videos), classes


def _split_names(split: str) -> list[str]:
    """Names a split goes by on disk: Kinetics calls validation ``validate`` or ``val``."""
    if split in ("val", "validate", "validation"):
        return [split] + [s for s in ("validate", "val", "validation") if s != split]
    return [split]


def _videos_by_stem(folders: Iterable[Path]) -> dict[str, Path]:
    """Video files directly in each folder or in its sub-folders, by file name stem."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir():
                    with os.scandir(entry.path) as inner:
                        for item in inner:
                            if is_video(item.name) and item.is_file():
                                found.setdefault(Path(item.name).stem, Path(item.path))
                elif is_video(entry.name) and entry.is_file():
                    found.setdefault(Path(entry.name).stem, Path(entry.path))
    return found


def kinetics(
    root: str | Path,
    split: str = "train",
    fold: int = 1,
    annotations: str | Path | None = None,
) -> tuple[list[VideoItem], list[str]]:
    """Kinetics-400/600/700: the official CSV (``annotations``, default
    ``root/annotations/<split>.csv``) and ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` videos
    in class folders or flat, under ``root/<split>/`` or ``root/``."""
    root = Path(root)
    names = _split_names(split)
    if annotations is not None and Path(annotations).is_file():
        table = Path(annotations)
    else:
        folder = Path(annotations) if annotations is not None else root / "annotations"
        tables = [folder / f"{name}.csv" for name in names]
        table = next((t for t in tables if t.is_file()), tables[0])
    if not table.is_file():
        raise MissingInputError(f"{table}: Kinetics annotation CSV not found")

    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        needed = {"youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not needed <= set(reader.fieldnames):
            raise InvalidInputError(
                f"{table}:1: expected a header with label,youtube_id,time_start,time_end,split; "
                f"got {reader.fieldnames}"
            )
        rows = []
        for row in reader:
            if not (row.get("youtube_id") or "").strip():
                raise InvalidInputError(f"{table}:{reader.line_num}: no youtube_id in {row}")
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"{table}:{reader.line_num}: bad time_start/time_end in {row}"
                ) from None
            stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            rows.append((stem, (row.get("label") or "").strip()))
    classes = sorted({label for _, label in rows if label})
    index = {name: i for i, name in enumerate(classes)}

    found = _videos_by_stem([root / name for name in names] + [root])
    items, missing = [], []
    for stem, label in rows:
        if stem in found:
            items.append(VideoItem(found[stem], index[label] if label else -1))
        else:
            missing.append(stem)
    if missing:
        logger.warning(
            "kinetics: %d of %d videos in %s not found under %s and left out (first: %s)",
            len(missing),
            len(rows),
            table,
            root,
            ", ".join(missing[:5]),
        )
    return items, classes


def _load_json(file: Path) -> object:
    if not file.is_file():
        raise MissingInputError(f"{file}: annotation file not found")
    try:
        with open(file, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{file}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def ssv2(
    root: str | Path,
    split: str = "train",
    fold: int = 1,
    annotations: str | Path | None = None,
) -> tuple[list[VideoItem], list[str]]:
    """Something-Something v2: ``labels.json``, ``train.json`` / ``validation.json`` (in
    ``annotations``, else ``root/labels`` or ``root``) and ``<id>.webm`` videos under ``root``
    or ``root/20bn-something-something-v2``. ``val`` and ``test`` mean validation."""
    _check_split(split, ("train", "validation", "val", "test"), "ssv2")
    root = Path(root)
    if annotations is not None:
        folder = Path(annotations)
    else:
        folders = [root / "labels", root, root / "annotations"]
        folder = next((f for f in folders if (f / "labels.json").is_file()), root)
    labels_file = folder / "labels.json"
    labels = _load_json(labels_file)
    if not isinstance(labels, dict):
        raise InvalidInputError(f"{labels_file}:1: expected an object {{template: id}}")
    try:
        ids = {template: int(i) for template, i in labels.items()}
    except (TypeError, ValueError):
        raise InvalidInputError(f"{labels_file}:1: class ids must be integers") from None
    if sorted(ids.values()) != list(range(len(ids))):
        raise InvalidInputError(f"{labels_file}:1: class ids must be 0..{len(ids) - 1}, each once")
    classes = sorted(ids, key=ids.__getitem__)

    list_file = folder / ("train.json" if split == "train" else "validation.json")
    entries = _load_json(list_file)
    if not isinstance(entries, list):
        raise InvalidInputError(f"{list_file}:1: expected a list of videos")
    nested = root / "20bn-something-something-v2"
    videos = nested if nested.is_dir() else root
    found = _videos_by_stem([videos])
    items = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise InvalidInputError(f"{list_file}: entry {k} has no 'id': {entry!r}")
        label = -1
        if "template" in entry:
            template = entry["template"].replace("[", "").replace("]", "")
            if template not in ids:
                raise InvalidInputError(
                    f"{list_file}: entry {k} (id {entry['id']}): class {template!r} is not in "
                    f"{labels_file}"
                )
            label = ids[template]
        video_id = str(entry["id"])
        items.append(VideoItem(found.get(video_id, videos / f"{video_id}.webm"), label))
    return _keep_existing(items, "ssv2", videos), classes


DIVING48_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("Diving48_V2_train.json", "Diving48_train.json"),
    "test": ("Diving48_V2_test.json", "Diving48_test.json"),
}
"""Diving48's split files, V2 (the corrected labels) first, then V1's names."""

DIVING48_VOCAB = "Diving48_vocab.json"


def _diving48_classes(vocab_file: Path) -> list[str]:
    """Class names from ``Diving48_vocab.json``: one list of the dive's four parts (take-off,
    somersaults, twists, flight position) per class, joined with spaces."""
    vocab = _load_json(vocab_file)
    if not isinstance(vocab, list) or not vocab:
        raise InvalidInputError(f"{vocab_file}:1: expected a list of classes, each a list of words")
    classes = []
    for k, entry in enumerate(vocab):
        if isinstance(entry, str):
            entry = [entry]
        if not isinstance(entry, list) or not all(isinstance(w, str) for w in entry) or not entry:
            raise InvalidInputError(
                f"{vocab_file}: class {k} must be a list of words (e.g. "
                f'["Back", "15som", "05Twis", "FREE"]), got {entry!r}'
            )
        classes.append(" ".join(entry))
    return classes


def diving48(
    root: str | Path,
    split: str = "train",
    fold: int = 1,
    annotations: str | Path | None = None,
) -> tuple[list[VideoItem], list[str]]:
    """Diving48: ``rgb/<vid_name>.mp4`` videos (or ``videos/``, or directly under ``root``) and
    the official ``Diving48_V2_{train,test}.json`` (V1: ``Diving48_{train,test}.json``) lists
    of ``{"vid_name", "label", "start_frame", "end_frame"}`` with ``Diving48_vocab.json`` (in
    ``annotations``, else ``root`` or ``root/annotations``). The videos are trimmed to the dive,
    so the frame range is not used. ``val`` and ``validation`` mean test."""
    _check_split(split, ("train", "test", "val", "validation"), "diving48")
    root = Path(root)
    names = DIVING48_SPLIT_FILES["train" if split == "train" else "test"]
    if annotations is not None:
        folders = [Path(annotations)]
    else:
        folders = [root, root / "annotations"]
    candidates = [f / name for name in names for f in folders]
    list_file = next((c for c in candidates if c.is_file()), None)
    if list_file is None:
        raise MissingInputError(
            f"{folders[0] / names[0]}: Diving48 annotation file not found (nor {names[1]}, in "
            + " or ".join(str(f) for f in folders)
            + ")"
        )
    classes = _diving48_classes(list_file.parent / DIVING48_VOCAB)
    entries = _load_json(list_file)
    if not isinstance(entries, list):
        raise InvalidInputError(f"{list_file}:1: expected a list of videos")
    videos = next((d for d in (root / "rgb", root / "videos") if d.is_dir()), root)
    items = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("vid_name"), str):
            raise InvalidInputError(f"{list_file}: entry {k} has no 'vid_name' string: {entry!r}")
        name, label = entry["vid_name"], entry.get("label")
        if not name or Path(name).name != name:
            raise InvalidInputError(f"{list_file}: entry {k}: bad vid_name {name!r}")
        if isinstance(label, bool) or not isinstance(label, int):
            raise InvalidInputError(
                f"{list_file}: entry {k} ({name}): 'label' must be an integer, got {label!r}"
            )
        if not 0 <= label < len(classes):
            raise InvalidInputError(
                f"{list_file}: entry {k} ({name}): label {label} is out of range 0.."
                f"{len(classes) - 1} of {list_file.parent / DIVING48_VOCAB}"
            )
        file = videos / name if is_video(name) else videos / f"{name}.mp4"
        items.append(VideoItem(file, label))
    return _keep_existing(items, "diving48", videos), classes


def folder(
    root: str | Path,
    split: str = "train",
    fold: int = 1,
    annotations: str | Path | None = None,
) -> tuple[list[VideoItem], list[str]]:
    """Class folders: ``root/<split>/<class>/*`` when ``root/<split>`` exists, else
    ``root/<class>/*``. Classes are the sorted folder names, taken over all split folders
    side by side so that a split missing a class does not shift the labels."""
    root = _require_dir(Path(root), "dataset folder")
    base = root / split if (root / split).is_dir() else root
    if base is root:
        parents = [root]
    else:
        parents = [root / name for name in {split, *_SPLIT_DIRS} if (root / name).is_dir()]
    classes = sorted(
        {d.name for p in parents for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")}
    )
    if not classes:
        raise MissingInputError(f"{base}: no class folders found")
    items = []
    for label, name in enumerate(classes):
        class_dir = base / name
        if class_dir.is_dir():
            files = sorted(p for p in class_dir.iterdir() if is_video(p) and p.is_file())
            items.extend(VideoItem(p, label) for p in files)
    return items, classes


def _parse_label(text: str) -> int | str | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def csv_layout(
    root: str | Path,
    split: str = "train",
    fold: int = 1,
    annotations: str | Path | None = None,
) -> tuple[list[VideoItem], list[str]]:
    """A CSV of ``path,label`` rows (header optional; ``annotations``, or ``root`` when it is
    the file). Labels are all ints (class names are then ``"0"``, ``"1"``, ...) or all class
    names (sorted); an empty label is -1. Relative paths are resolved against ``root``, or the
    CSV's folder when ``root`` is the CSV."""
    root = Path(root)
    table = Path(annotations) if annotations is not None else root
    if not table.is_file():
        raise MissingInputError(f"{table}: CSV file not found")
    base = root if root.is_dir() else table.parent
    rows: list[tuple[Path, int | str | None]] = []
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if not rows and [cell.strip().lower() for cell in row] == ["path", "label"]:
                continue
            if len(row) > 2 or not row[0].strip():
                raise InvalidInputError(
                    f"{table}:{reader.line_num}: expected 'path,label', got {','.join(row)!r}"
                )
            path = Path(row[0].strip())
            label = _parse_label(row[1]) if len(row) == 2 else None
            rows.append((path if path.is_absolute() else base / path, label))
    given = [label for _, label in rows if label is not None]
    if all(isinstance(label, int) for label in given):
        bad = [label for label in given if label < -1]
        if bad:
            raise InvalidInputError(f"{table}: integer labels must be >= -1, got {bad[0]}")
        classes = [str(i) for i in range(max(given, default=-1) + 1)]
        items = [VideoItem(path, -1 if label is None else label) for path, label in rows]
    else:
        classes = sorted({str(label) for label in given})
        index = {name: i for i, name in enumerate(classes)}
        items = [VideoItem(path, -1 if lab is None else index[str(lab)]) for path, lab in rows]
    return _keep_existing(items, "csv", base), classes


def unlabeled(
    root: str | Path,
    split: str = "train",
    fold: int = 1,
    annotations: str | Path | None = None,
) -> tuple[list[VideoItem], list[str]]:
    """Every video file under ``root``, recursively, sorted, with label -1 and no classes."""
    root = _require_dir(Path(root), "video folder")
    files = []
    for folder_name, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(Path(folder_name) / name for name in names if is_video(name))
    return [VideoItem(path, -1) for path in sorted(files)], []


LAYOUTS: dict[str, Layout] = {
    "ucf101": ucf101,
    "hmdb51": hmdb51,
    "kinetics": kinetics,
    "ssv2": ssv2,
    "diving48": diving48,
    "folder": folder,
    "csv": csv_layout,
    "unlabeled": unlabeled,
}
"""Layout loaders by name, each ``(root, split, fold, annotations) -> (items, classes)``."""


def load_layout(
    name: str,
    root: str | Path,
    split: str = "train",
    fold: int = 1,
    annotations: str | Path | None = None,
) -> tuple[list[VideoItem], list[str]]:
    """The videos of one split of a dataset on disk, with 0-based labels and class names."""
    if name not in LAYOUTS:
        raise InvalidInputError(f"unknown dataset layout {name!r}; available: {', '.join(LAYOUTS)}")
    if not Path(root).expanduser().exists():
        raise MissingInputError(f"{root}: the dataset root folder does not exist (layout {name!r})")
    return LAYOUTS[name](root, split=split, fold=fold, annotations=annotations)
