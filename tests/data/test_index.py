"""VideoIndex: frame counts agree with a full decode, bad files are reported, the cache works."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import av
import numpy as np
import pytest

import vssl.data.index as index_module
import vssl.data.reader as reader_module
from vssl.data.index import VideoIndex, VideoInfo, probe_video
from vssl.data.reader import VideoReader


def decoded_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


@pytest.mark.parametrize("mode", ["fast", "full"])
@pytest.mark.parametrize(
    "name,codec,gop",
    [("a.mp4", "libx264", 5), ("b.mkv", "libx264", None), ("c.webm", "libvpx-vp9", 7)],
)
def test_counts_match_full_decode(video_factory, mode, name, codec, gop):
    path = video_factory(name, num_frames=37, size=(32, 48), fps=30, gop=gop, codec=codec)
    info = probe_video(path, mode=mode)
    assert info == VideoInfo(str(path), 37, 30.0, 48, 32)
    assert info.ok and info.num_frames == decoded_count(path)
    with VideoReader(path, num_frames=info.num_frames) as reader:
        assert reader.get_frames([info.num_frames - 1]).shape == (1, 3, 32, 48)


def test_fast_probe_does_not_decode_everything(video_factory, monkeypatch):
    path = video_factory("long.mp4", num_frames=60, gop=10)

    def no_full_decode(*args):
        raise AssertionError("fast mode decoded the whole file")

    monkeypatch.setattr(reader_module, "_count_all", no_full_decode)
    assert probe_video(path, mode="fast").num_frames == 60


def make_bad_files(video_factory, tmp_path: Path) -> dict[str, str]:
    """Bad files by path, with the words their reason must contain."""
    empty = tmp_path / "empty.mp4"
    empty.touch()
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    half = tmp_path / "half.mp4"
    whole = video_factory("whole.mp4", num_frames=30)
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    # a valid container whose video data is all zeros: nothing decodes
    zeroed = tmp_path / "zeroed.mp4"
    data = bytearray(video_factory("zeroed_src.mp4", num_frames=10).read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4 : at], "big")
    data[at + 4 : at - 4 + size] = bytes(size - 8)
    zeroed.write_bytes(bytes(data))
    return {
        str(empty): "empty file",
        str(text): "FFmpeg cannot read it",
        str(half): "FFmpeg cannot read it",
        str(audio): "no video stream",
        str(zeroed): "no decodable video frames",
        str(tmp_path / "missing.mp4"): "file not found",
    }


def test_bad_files_are_reported_and_left_out(video_factory, tmp_path, caplog):
    good = [video_factory(f"good{i}.mp4", num_frames=10 + i) for i in range(2)]
    bad = make_bad_files(video_factory, tmp_path)
    paths = [good[0], *bad, good[1]]
    with caplog.at_level(logging.WARNING, logger="vssl"):
        index = VideoIndex.build(paths, cache_dir=tmp_path / "cache", workers=1, progress=False)

    assert len(index) == 8
    assert [info.path for info in index.infos] == [str(p) for p in paths]
    assert [(i.path, i.num_frames) for i in index.good] == [(str(good[0]), 10), (str(good[1]), 11)]
    assert {info.path for info in index.bad} == set(bad)
    for info in index.bad:
        assert not info.ok and bad[info.path] in info.error
    assert index.summary() == "index: 2 of 8 videos usable, 6 left out (see report)"
    report = index.report().splitlines()
    assert len(report) == 6
    for line in report:
        path, reason = line.split(": ", 1)
        assert bad[path] in reason
    assert index.summary() in caplog.text and index.report() in caplog.text


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file_is_reported(video_factory, tmp_path):
    path = video_factory("locked.mp4", num_frames=5)
    path.chmod(0)
    try:
        assert probe_video(path).error == "permission denied"
    finally:
        path.chmod(0o644)


def test_cache_is_reused_and_invalidated_per_file(video_factory, tmp_path, monkeypatch):
    paths = [video_factory(f"v{i}.mp4", num_frames=8 + i) for i in range(3)]
    probed = []
    real_probe = index_module.probe_video

    def counting_probe(path, mode="fast"):
        probed.append(Path(path).name)
        return real_probe(path, mode)

    monkeypatch.setattr(index_module, "probe_video", counting_probe)
    cache = tmp_path / "cache"
    first = VideoIndex.build(paths, cache_dir=cache, workers=1, progress=False)
    assert sorted(probed) == ["v0.mp4", "v1.mp4", "v2.mp4"]
    files = list((cache / "index").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # no temporary file left behind
    assert json.loads(files[0].read_text())["version"] == 1

    probed.clear()
    second = VideoIndex.build(list(reversed(paths)), cache_dir=cache, workers=1, progress=False)
    assert probed == []
    assert second.infos == list(reversed(first.infos))

    # rewrite one video with a different length: only that one is probed again
    video_factory("v1.mp4", num_frames=20)
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = VideoIndex.build(paths, cache_dir=cache, workers=1, progress=False)
    assert probed == ["v1.mp4"]
    assert [info.num_frames for info in third.infos] == [8, 20, 10]

    # a new modification time alone (same size) also counts as a change
    probed.clear()
    stat = paths[2].stat()
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    VideoIndex.build(paths, cache_dir=cache, workers=1, progress=False)
    assert probed == ["v2.mp4"]


def test_default_cache_dir_from_environment(video_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("VSSL_CACHE_DIR", str(tmp_path / "vssl-cache"))
    VideoIndex.build([video_factory("v.mp4", num_frames=4)], workers=1, progress=False)
    assert len(list((tmp_path / "vssl-cache" / "index").glob("*.json"))) == 1


def test_corrupt_cache_is_ignored(video_factory, tmp_path):
    path = video_factory("v.mp4", num_frames=6)
    cache = tmp_path / "cache"
    VideoIndex.build([path], cache_dir=cache, workers=1, progress=False)
    (cache_file,) = (cache / "index").iterdir()
    cache_file.write_text("{ not json")
    assert (
        VideoIndex.build([path], cache_dir=cache, workers=1, progress=False)[path].num_frames == 6
    )


def test_parallel_build_matches_serial(video_factory, tmp_path):
    paths = [video_factory(f"v{i}.mp4", num_frames=5 + i) for i in range(3)] + [tmp_path / "x.mp4"]
    serial = VideoIndex.build(paths, cache_dir=tmp_path / "c1", workers=1, progress=False)
    parallel = VideoIndex.build(paths, cache_dir=tmp_path / "c2", workers=2, progress=True)
    assert parallel.infos == serial.infos
    assert [info.num_frames for info in parallel.infos] == [5, 6, 7, 0]


def test_lookup_by_path(video_factory, tmp_path, monkeypatch):
    path = video_factory("v.mp4", num_frames=4)
    index = VideoIndex.build([path], cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert index[str(path)] is index[path]
    monkeypatch.chdir(tmp_path)
    assert index["v.mp4"].num_frames == 4  # the same file by a relative path
    assert Path("v.mp4") in index and "nope.mp4" not in index
    with pytest.raises(KeyError, match="nope.mp4: not in the video index"):
        index["nope.mp4"]
    assert list(index) == index.infos and index.summary() == "index: 1 of 1 videos usable"
    assert index.report() == ""


@pytest.mark.timeout(120)
def test_real_videos(shared_videos, tmp_path):
    names = ["bigbuckbunny.mp4", "bikes.mp4", "vtest.avi", "Megamind_bugy.avi"]
    paths = [shared_videos / name for name in names]
    index = VideoIndex.build(paths, cache_dir=tmp_path, workers=1, progress=False)
    assert [info.num_frames for info in index.infos] == [132, 250, 795, 270]
    assert [info.fps for info in index.infos] == [25.0, 25.0, 10.0, 30.0]
    assert probe_video(paths[3], mode="full").num_frames == 270
