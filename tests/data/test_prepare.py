"""``vssl prepare``: prepared trees load with the same items, frames and labels; outputs have the
asked size, keyframe interval and frame order; runs resume, refuse to clobber and never write
outside DST; bad sources are reported and skipped."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.frame import PictureType
from badvideos import make_corpus, moving_frames
from conftest import code_frame, read_frame_index

from vssl.data.encode import write_video
from vssl.data.index import probe_video
from vssl.data.layouts import load_layout
from vssl.data.prepare import REPORT_NAME, STATE_DIR, TMP_SUFFIX, PrepareError, prepare
from vssl.data.reader import VideoReader

REPO = Path(__file__).resolve().parents[2]


def clip(path: Path, num_frames: int = 16, size: tuple[int, int] = (48, 64), **kwargs) -> Path:
    """A clip whose frame ``i`` reads back as ``i`` with ``read_frame_index``."""
    frames = np.stack([code_frame(i, *size) for i in range(num_frames)])
    return write_video(path, frames, **kwargs)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(src: Path, dst: Path, **kwargs):
    kwargs = {"short_side": 32, "workers": 1, "progress": False, **kwargs}
    return prepare(src, dst, **kwargs)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every file under ``root`` (symlinks as their targets) with a hash of its bytes."""
    out = {}
    for folder, dirs, names in os.walk(root):
        if skip is not None and Path(folder).resolve() == skip.resolve():
            dirs[:] = []
            continue
        for name in names:
            path = Path(folder) / name
            if path.is_symlink():
                out[str(path)] = "-> " + os.readlink(path)
            elif not path.is_file():
                out[str(path)] = "not a regular file"
            else:
                out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------- layouts


def ucf101_tree(root: Path) -> dict:
    for name in (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01",
        "Archery/v_Archery_g01_c01",
        "Archery/v_Archery_g02_c01",
    ):
        clip(root / "UCF-101" / f"{name}.avi", codec="mpeg4")
    lists = root / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 Archery\r\n")
    write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\r\nArchery/v_Archery_g01_c01.avi 2\r\n",
    )
    write(lists / "testlist01.txt", "Archery/v_Archery_g02_c01.avi\r\n")
    return {"splits": ("train", "test")}


def hmdb51_tree(root: Path) -> dict:
    clip(root / "hmdb51" / "brush_hair" / "a_brush_hair_f_0.avi", codec="mpeg4")
    clip(root / "hmdb51" / "cartwheel" / "b_cartwheel_f_0.avi", codec="mpeg4")
    splits = root / "testTrainMulti_7030_splits"
    write(splits / "brush_hair_test_split1.txt", "a_brush_hair_f_0.avi 1 \n")
    write(splits / "cartwheel_test_split1.txt", "b_cartwheel_f_0.avi 2 \n")
    return {"splits": ("train", "test")}


def kinetics_tree(root: Path) -> dict:
    clip(root / "train" / "abseiling" / "aaa_000010_000020.mp4")
    clip(root / "train" / "zumba" / "bbb_000000_000010.mkv")
    write(
        root / "annotations" / "train.csv",
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaa,10,20,train\nzumba,bbb,0,10,train\n",
    )
    return {"splits": ("train",)}


def ssv2_tree(root: Path) -> dict:
    videos = root / "20bn-something-something-v2"
    clip(videos / "1.webm", codec="libvpx-vp9")
    clip(videos / "2.webm", codec="libvpx-vp9")
    write(
        root / "labels" / "labels.json", json.dumps({"Pushing something": "0", "Lifting it": "1"})
    )
    write(root / "labels" / "train.json", json.dumps([{"id": "1", "template": "Lifting [it]"}]))
    write(
        root / "labels" / "validation.json",
        json.dumps([{"id": "2", "template": "Pushing [something]"}]),
    )
    return {"splits": ("train", "validation")}


def csv_tree(root: Path) -> dict:
    clip(root / "clips" / "a.avi", codec="mpeg4")
    clip(root / "clips" / "sub" / "b.mp4")
    write(root / "list.csv", "path,label\nclips/a.avi,cat\nclips/sub/b.mp4,dog\n")
    return {"splits": ("train",), "annotations": "list.csv"}


def folder_tree(root: Path) -> dict:
    clip(root / "train" / "cat" / "a.mp4")
    clip(root / "train" / "dog" / "b.avi", codec="mpeg4")
    clip(root / "val" / "dog" / "c.mkv")
    return {"splits": ("train", "val")}


def unlabeled_tree(root: Path) -> dict:
    clip(root / "x" / "a.mov")
    clip(root / "b.mp4")
    return {"splits": ("train",)}


TREES = {
    "ucf101": ucf101_tree,
    "hmdb51": hmdb51_tree,
    "kinetics": kinetics_tree,
    "ssv2": ssv2_tree,
    "csv": csv_tree,
    "folder": folder_tree,
    "unlabeled": unlabeled_tree,
}


@pytest.mark.parametrize("layout", sorted(TREES))
def test_the_prepared_tree_loads_with_the_same_items_and_labels(tmp_path, layout):
    src, dst = tmp_path / "src", tmp_path / "dst"
    spec = TREES[layout](src)
    summary = run(src, dst)
    assert summary.failed == [] and summary.conflicts == []
    for split in spec["splits"]:
        found = {}
        for root in (src, dst):
            annotations = root / spec["annotations"] if "annotations" in spec else None
            items, classes = load_layout(layout, root, split=split, annotations=annotations)
            found[root] = (
                [(i.path.relative_to(root).with_suffix("").as_posix(), i.label) for i in items],
                classes,
            )
            if root == dst:
                assert items and all(i.path.suffix == ".mp4" and i.path.is_file() for i in items)
        assert found[dst] == found[src]
        assert found[src][0], f"{layout}/{split}: the test tree lists no videos"


def test_annotation_files_are_copied_verbatim_and_other_files_listed(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    ucf101_tree(src)
    write(src / "notes" / "README.bin", "not an annotation")
    summary = run(src, dst)
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        assert (dst / "ucfTrainTestlist" / name).read_bytes() == (
            src / "ucfTrainTestlist" / name
        ).read_bytes()
    assert summary.annotations_copied == 3
    assert summary.ignored == ["notes/README.bin"]
    assert not (dst / "notes").exists()
    assert "not copied (neither videos nor annotations): 1 (first: notes/README.bin)" in (
        summary.lines()
    )
    report = json.loads((dst / REPORT_NAME).read_text())
    assert report["not_copied"] == {"count": 1, "first": ["notes/README.bin"]}


# ---------------------------------------------------------------- the outputs


def packets(path: Path) -> list[tuple[int, bool]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]


def test_output_size_keyframe_interval_no_b_frames_and_same_frames(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    # the source: long GOP with B-frames, as raw downloads are
    source = clip(src / "v.mp4", num_frames=24, size=(48, 64))
    with av.open(str(source)) as container:
        assert container.streams.video[0].codec_context.has_b_frames
    summary = run(src, dst, gop=8, codec="h264")
    assert (summary.done, summary.skipped, summary.failed) == (1, 0, [])
    out = dst / "v.mp4"
    found = packets(out)
    assert [n for n, (_, key) in enumerate(found) if key] == [0, 8, 16]
    pts = [p for p, _ in found]
    assert pts == sorted(pts) and len(set(pts)) == 24  # decode order is display order
    with av.open(str(out)) as container:
        types = {PictureType(frame.pict_type) for frame in container.decode(video=0)}
    assert PictureType.B not in types and PictureType.I in types
    info, source_info = probe_video(out), probe_video(source)
    assert (info.height, info.width) == (32, 42)  # 64 * 32 / 48 = 42.7 -> nearest even
    assert info.num_frames == source_info.num_frames == 24
    assert info.num_frames / info.fps == source_info.num_frames / source_info.fps
    with VideoReader(out) as reader:
        frames = reader.get_frames(list(range(24)))
    assert [read_frame_index(f) for f in frames] == list(range(24))


def test_mjpeg_by_default_every_frame_a_keyframe_in_mp4(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    clip(src / "a" / "v.avi", num_frames=12, codec="mpeg4")
    summary = run(src, dst)
    assert summary.failed == []
    out = dst / "a" / "v.mp4"
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "mjpeg"
    assert all(key for _, key in packets(out)) and len(packets(out)) == 12
    with VideoReader(out) as reader:
        assert [read_frame_index(f) for f in reader.get_frames(list(range(12)))] == list(range(12))


# JPEG Annex K's example AC luminance Huffman table: code counts per length 1..16
_ANNEX_K_AC_LUMA = bytes([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D])


def jpeg_segments(image: bytes) -> dict[int, list[bytes]]:
    """The marker segments of a JPEG image up to its scan: marker -> payloads."""
    assert image[:2] == b"\xff\xd8"
    out: dict[int, list[bytes]] = {}
    at = 2
    while image[at] == 0xFF and image[at + 1] != 0xDA:  # up to start of scan
        marker, length = image[at + 1], int.from_bytes(image[at + 2 : at + 4], "big")
        out.setdefault(marker, []).append(image[at + 4 : at + 2 + length])
        at += 2 + length
    return out


def test_mjpeg_frames_decode_cheaply_420_optimal_huffman_no_restart_markers(tmp_path):
    """What decodes fastest at no cost to the pixels, by measurement: 4:2:0 chroma, each frame
    with its own optimised Huffman tables (smaller than Annex K's and decoded no slower), no
    restart markers (they only add bytes)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    clip(src / "v.mp4", num_frames=4, size=(48, 64))
    assert run(src, dst).failed == []
    with av.open(str(dst / "v.mp4")) as container:
        images = [bytes(p) for p in container.demux(video=0) if p.size]
    assert len(images) == 4
    for image in images:
        segments = jpeg_segments(image)
        assert 0xDD not in segments  # no restart interval
        (frame,) = segments[0xC0]  # baseline DCT
        assert frame[5] == 3  # Y, Cb, Cr: sampling 2x2, 1x1, 1x1
        assert [frame[6 + 3 * c + 1] for c in range(3)] == [0x22, 0x11, 0x11]
        tables = b"".join(segments[0xC4])
        assert tables and _ANNEX_K_AC_LUMA not in tables


def test_changing_the_frame_rate_keeps_the_duration_and_the_frames_on_screen(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    clip(src / "v.mp4", num_frames=24, fps=25)
    run(src, dst, fps=12.5)
    with VideoReader(dst / "v.mp4") as reader:
        assert (reader.num_frames, reader.fps) == (12, 12.5)
        shown = [read_frame_index(f) for f in reader.get_frames(list(range(12)))]
    assert shown == list(range(0, 24, 2))


def test_variable_frame_rate_sources_come_out_as_the_reader_reads_them(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_corpus(tmp_path / "corpus", large=(64, 64))
    src.mkdir()
    (tmp_path / "corpus" / "vfr.mkv").rename(src / "vfr.mkv")
    run(src, dst)
    with VideoReader(src / "vfr.mkv") as a, VideoReader(dst / "vfr.mp4") as b:
        assert a.num_frames == b.num_frames
        idx = list(range(a.num_frames))
        diff = (a.get_frames(idx).float() - b.get_frames(idx).float()).abs().mean(dim=(1, 2, 3))
    # a repeated frame where the source has a gap, not the next one
    assert diff.max() < 6


def mean_abs_diff(
    source: Path, prepared: Path, indices: list[int], size: int, shift: int = 0
) -> float:
    """Mean absolute difference (grey levels) of a clip decoded at ``size`` from both files."""
    with VideoReader(source) as a, VideoReader(prepared) as b:
        x = a.get_frames(indices, size=size).float()
        y = b.get_frames([i + shift for i in indices], size=size).float()
    assert x.shape == y.shape
    return float((x - y).abs().mean())


@pytest.mark.parametrize("codec,noise", [("mjpeg", 2.5), ("h264", 1.0)])
def test_training_clips_are_the_same_up_to_resizing(tmp_path, codec, noise):
    src = tmp_path / "src"
    # noise under a moving square: the hardest content for resizing and coding
    write_video(src / "v.mp4", moving_frames(24, 96, 128, seed=1), crf=12)
    run(src, tmp_path / "lossless", short_side=48, codec="h264", crf=0)
    run(src, tmp_path / "dst", short_side=48, codec=codec)
    clip_ = list(range(4, 20))
    # Resizing in 4:2:0 YUV before coding, not in RGB after decoding (measured 2.70), and the
    # codec's noise on top of that (measured +0.63 for H.264 at crf 18, +1.98 for MJPEG).
    resized = mean_abs_diff(src / "v.mp4", tmp_path / "lossless" / "v.mp4", clip_, 48)
    coded = mean_abs_diff(src / "v.mp4", tmp_path / "dst" / "v.mp4", clip_, 48)
    assert resized < 3.5
    assert 0 <= coded - resized < noise


def test_real_video_prepared_at_128_decodes_like_the_source(tmp_path, shared_videos):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "bikes.mp4").symlink_to(shared_videos / "bikes.mp4")
    summary = run(src, dst, short_side=128)
    assert summary.done == 1
    clip_ = list(range(100, 132, 2))  # a 16x2 clip
    same = mean_abs_diff(src / "bikes.mp4", dst / "bikes.mp4", clip_, 128)
    next_frame = mean_abs_diff(src / "bikes.mp4", dst / "bikes.mp4", clip_, 128, shift=1)
    # measured 2.68 (1.62 of it from resizing in YUV: crf 0 gives 1.62) against 7.42 for the
    # clip one frame later
    assert same < 3.5 and same < 0.5 * next_frame


def clip_with_audio(path: Path, audio_codec: str, container_format: str) -> Path:
    """One second of 25 fps video and a 16 kHz mono tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate, fps = 16000, 25
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    with av.open(str(path), "w", format=container_format) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream(audio_codec, rate=rate)
        audio.layout = "mono"
        chunk, sample_format = audio.codec_context.frame_size or 1024, audio.codec_context.format
        done = 0
        for i in range(fps):
            out.mux(video.encode(av.VideoFrame.from_ndarray(code_frame(i, 48, 64), format="rgb24")))
            while done < (i + 1) * rate / fps and done + chunk <= rate:
                samples = tone[None, done : done + chunk]
                if sample_format.name.startswith("s16"):
                    samples = (samples * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(
                    samples, format=sample_format.name, layout="mono"
                )
                frame.sample_rate, frame.pts = rate, done
                out.mux(audio.encode(frame))
                done += chunk
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


def streams(path: Path) -> list[tuple[str, str]]:
    with av.open(str(path)) as container:
        return [(s.type, s.codec_context.name) for s in container.streams]


def audio_samples(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0))


def test_audio_is_dropped_by_default_and_kept_on_request(tmp_path):
    src = tmp_path / "src"
    clip_with_audio(src / "aac.mp4", "aac", "mp4")
    clip_with_audio(src / "pcm.mkv", "pcm_s16le", "matroska")  # MP4 cannot hold PCM
    run(src, tmp_path / "silent")
    assert streams(tmp_path / "silent" / "aac.mp4") == [("video", "mjpeg")]
    run(src, tmp_path / "mp4", keep_audio=True)
    assert streams(tmp_path / "mp4" / "aac.mp4") == [("video", "mjpeg"), ("audio", "aac")]
    assert streams(tmp_path / "mp4" / "pcm.mp4") == [("video", "mjpeg"), ("audio", "aac")]
    run(src, tmp_path / "h264", keep_audio=True, codec="h264")
    assert streams(tmp_path / "h264" / "pcm.mp4") == [("video", "h264"), ("audio", "aac")]
    for out in ("mp4/aac.mp4", "mp4/pcm.mp4", "h264/pcm.mp4"):
        assert audio_samples(tmp_path / out) == audio_samples(src / "aac.mp4") == 15 * 1024
        assert probe_video(tmp_path / out).num_frames == 25


# ---------------------------------------------------------------- resuming


def test_an_interrupted_run_is_finished_and_a_finished_tree_left_alone(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("a", "b", "c"):
        clip(src / f"{name}.mp4", num_frames=10)
    first = run(src, dst, workers=2)  # in a process pool
    assert (first.done, first.skipped, first.workers) == (3, 0, 2)
    manifest = dst / STATE_DIR / "manifest.jsonl"
    # Killed mid-way: a.mp4 still a temporary file, b.mp4 renamed but never recorded (and the
    # manifest's last line cut short), c.mp4 done.
    (dst / "a.mp4").rename(dst / f"a.mp4.1234{TMP_SUFFIX}")
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    kept = [line for line in lines if line["output"] == "c.mp4"]
    manifest.write_text(json.dumps(kept[0]) + "\n" + '{"output": "b.mp4", "sour')
    c_before = (dst / "c.mp4").stat().st_mtime_ns

    second = run(src, dst)
    assert (second.done, second.skipped, second.failed) == (1, 2, [])
    assert not list(dst.glob(f"*{TMP_SUFFIX}"))
    assert (dst / "c.mp4").stat().st_mtime_ns == c_before
    assert probe_video(dst / "a.mp4").num_frames == 10

    third = run(src, dst)
    assert (third.done, third.skipped, third.failed, third.conflicts) == (0, 3, [], [])
    assert third.lines()[0].startswith("prepared: 0 done, 3 skipped")
    assert len(manifest.read_text().splitlines()) == 3


def test_a_killed_run_leaves_no_output_that_counts_as_done(tmp_path):
    import multiprocessing
    import signal
    import time

    src, dst = tmp_path / "src", tmp_path / "dst"
    for n in range(30):
        clip(src / f"v{n:02d}.mp4", num_frames=16)
    worker = multiprocessing.get_context("fork").Process(target=run, args=(src, dst))
    worker.start()
    manifest = dst / STATE_DIR / "manifest.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (manifest.is_file() and manifest.read_text()):
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    finished = {json.loads(line)["output"] for line in manifest.read_text().splitlines()}
    assert 0 < len(finished) < 30

    summary = run(src, dst)
    assert (summary.done + summary.skipped, summary.failed, summary.conflicts) == (30, [], [])
    assert summary.skipped >= len(finished)
    assert not list(dst.rglob(f"*{TMP_SUFFIX}"))
    for n in range(30):
        assert probe_video(dst / f"v{n:02d}.mp4").num_frames == 16


def test_outputs_of_other_settings_or_sources_are_not_overwritten(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    clip(src / "a.mp4", num_frames=10)
    clip(src / "b.mp4", num_frames=10)
    run(src, dst)

    def outputs() -> dict[str, str]:
        return {k: v for k, v in snapshot(dst).items() if not k.endswith(REPORT_NAME)}

    before = outputs()
    with pytest.raises(PrepareError, match=r"short_side=32 \(now 16\).*--overwrite"):
        run(src, dst, short_side=16)
    report = json.loads((dst / REPORT_NAME).read_text())
    assert [entry["path"] for entry in report["conflicts"]] == ["a.mp4", "b.mp4"]
    assert outputs() == before

    clip(src / "a.mp4", num_frames=12)  # the source changed
    with pytest.raises(PrepareError, match=r"a.mp4: made from an earlier version of a.mp4"):
        run(src, dst)
    assert outputs() == before

    summary = run(src, dst, short_side=16, overwrite=True)
    assert summary.done == 2
    assert probe_video(dst / "a.mp4").num_frames == 12
    assert probe_video(dst / "a.mp4").height == 16


def test_an_unrecorded_file_in_the_way_is_kept_and_reported(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    clip(src / "a.avi", num_frames=10, codec="mpeg4")
    clip(dst / "a.mp4", num_frames=10)  # someone's own file, full size
    before = (dst / "a.mp4").read_bytes()
    summary = run(src, dst, codec="h264")
    assert summary.done == 0
    assert summary.conflicts == [
        (
            "a.mp4",
            "exists and is not an output of these settings (size 64x48, expected "
            "42x32); pass --overwrite to replace it",
        )
    ]
    assert (dst / "a.mp4").read_bytes() == before
    write(dst / "list.txt", "mine")
    write(src / "list.txt", "theirs")
    with pytest.raises(PrepareError, match="list.txt: DST holds a different file"):
        run(src, dst)
    assert (dst / "list.txt").read_text() == "mine"


def test_a_full_disk_stops_the_run_and_leaves_nothing_that_counts_as_done(tmp_path, monkeypatch):
    module = sys.modules["vssl.data.prepare"]  # the package's ``prepare`` is the function

    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("a", "b", "c"):
        clip(src / f"{name}.mp4", num_frames=8)
    transcode = module._transcode

    def fill_the_disk(job, tmp, num_frames):
        if job.rel_source == "b.mp4":
            Path(tmp).write_bytes(b"half a video")
            raise OSError(errno.ENOSPC, "No space left on device")
        return transcode(job, tmp, num_frames)

    monkeypatch.setattr(module, "_transcode", fill_the_disk)
    summary = run(src, dst)
    assert summary.fatal == "b.mp4: No space left on device"
    assert (summary.done, summary.failed) == (1, [("b.mp4", "No space left on device")])
    assert sorted(p.name for p in dst.iterdir() if p.is_file()) == [
        "a.mp4",
        "a.mp4.jpgidx",
        REPORT_NAME,
    ]
    assert summary.lines()[-2] == "stopped: b.mp4: No space left on device"
    monkeypatch.setattr(module, "_transcode", transcode)
    assert (run(src, dst).done, run(src, dst).skipped) == (2, 3)


# ---------------------------------------------------------------- bad input


def test_bad_sources_are_reported_and_skipped(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    expect = make_corpus(src, large=(128, 192))
    os.mkfifo(src / "fifo.mp4")  # unreadable even for root: not a regular file
    (src / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    before = snapshot(src)
    summary = prepare(src, dst, short_side=32, workers=1)
    failed = dict(summary.failed)
    for name, what in expect.items():
        if what.usable:
            assert name not in failed, failed.get(name)
            out = (dst / name).with_suffix(".mp4")
            assert probe_video(out).num_frames == probe_video(src / name).num_frames
        else:
            assert what.error in failed[name]
    assert failed["fifo.mp4"] == "not a regular file"
    assert failed["gone.mp4"] == "cannot read it: No such file or directory"
    assert summary.done == sum(what.usable for what in expect.values())
    assert snapshot(src) == before  # sources untouched
    report = json.loads((dst / REPORT_NAME).read_text())
    assert {entry["path"]: entry["reason"] for entry in report["failed"]} == failed
    console = capsys.readouterr()
    assert "failed: zero_bytes.mp4: empty file (0 bytes)" in console.err
    assert "failed: gone.mp4: cannot read it: No such file or directory" in console.err
    assert f"{len(failed)} failed" in console.out


def test_overlapping_src_and_dst_are_refused(tmp_path):
    src = tmp_path / "src"
    clip(src / "a.mp4")
    for dst, message in [
        (src, "DST is SRC"),
        (src / "prepared", "DST lies inside SRC"),
        (tmp_path, "SRC lies inside DST"),
    ]:
        with pytest.raises(PrepareError, match=message):
            run(src, dst)
    assert not (src / "prepared").exists() and not (src / STATE_DIR).exists()
    with pytest.raises(PrepareError, match="source folder not found"):
        run(tmp_path / "nope", tmp_path / "dst")
    with pytest.raises(PrepareError, match="short_side must be even"):
        run(src, tmp_path / "dst", short_side=33)
    with pytest.raises(PrepareError, match="unknown codec"):
        run(src, tmp_path / "dst", codec="vp9")


def test_nothing_is_written_outside_dst(tmp_path):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    clip(outside / "elsewhere.mp4")
    write(outside / "secret.csv", "private\n")
    clip(src / "escape" / "v.mp4")
    clip(src / "ok" / "w.mp4")
    (src / "link.mp4").symlink_to(outside / "elsewhere.mp4")  # a symlinked source is read
    (src / "ann").mkdir()
    (src / "ann" / "list.csv").symlink_to(outside / "secret.csv")
    write(src / "rows.csv", "../outside/elsewhere.mp4,0\nok/w.mp4,1\n")
    dst.mkdir()
    (dst / "escape").symlink_to(outside, target_is_directory=True)  # a trap in DST
    before = snapshot(tmp_path, skip=dst)

    summary = run(src, dst)
    assert snapshot(tmp_path, skip=dst) == before
    assert dict(summary.failed) == {
        "escape/v.mp4": f"{dst / 'escape' / 'v.mp4'}: a symlink, or leads outside DST through "
        "one; not written"
    }
    assert (dst / "link.mp4").is_file() and not (dst / "link.mp4").is_symlink()
    assert (dst / "ann" / "list.csv").read_text() == "private\n"
    assert not (dst / "ann" / "list.csv").is_symlink()
    assert (dst / "rows.csv").read_text() == (src / "rows.csv").read_text()
    for path in dst.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert dst.resolve() in path.resolve().parents


# ---------------------------------------------------------------- the command line


def test_the_command_line_end_to_end(tmp_path, run_cli):
    src, dst = tmp_path / "src", tmp_path / "dst"
    clip(src / "a.mp4")
    clip(src / "b" / "c.avi", codec="mpeg4")
    args = [str(src), str(dst), "--short-side", "32", "--codec", "h264", "--gop=4"]
    out = run_cli(["prepare", *args, "--workers", "1"], cwd=REPO)
    assert "prepared: 2 done, 0 skipped (already done), 0 failed" in out
    assert "videos/s per core" in out
    assert [n for n, (_, key) in enumerate(packets(dst / "a.mp4")) if key] == [0, 4, 8, 12]


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    from vssl.cli import main

    src = tmp_path / "src"
    clip(src / "a.mp4")
    assert main(["prepare", str(src), str(src / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vssl prepare: error: {src / 'out'}: DST lies inside SRC ({src}); pick a folder "
        "outside it, or SRC's videos would include the prepared ones"
    ]
    assert not (src / "out").exists()


def test_help_shows_every_option_with_its_default(capsys):
    from vssl.data.prepare import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--short_side SHORT_SIDE", "--gop GOP", "--workers WORKERS", "--keep_audio"):
        assert option in text
    assert "(type: int, default: 128)" in text and "(type: int, default: 8)" in text


def test_options_from_a_config_file(tmp_path, run_cli):
    """``vssl prepare --config FILE``: the options (positionals too) from YAML, as every
    subcommand takes them; the command line after it wins."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    clip(src / "a.mp4")
    (tmp_path / "prepare.yaml").write_text(
        f"src: {src}\ndst: {dst}\nshort_side: 32\ncodec: h264\ngop: 8\n"
    )
    out = run_cli(["prepare", "--config", "prepare.yaml", "--gop", "4"], cwd=tmp_path)
    assert "prepared: 1 done, 0 skipped (already done), 0 failed" in out
    assert [n for n, (_, key) in enumerate(packets(dst / "a.mp4")) if key] == [0, 4, 8, 12]
