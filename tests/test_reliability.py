"""Reliability: damaged and unusual videos, decode time limits, atomic checkpoints, same-seed
reproducibility and kill-and-resume, through the index, the dataset and the command line."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from badvideos import make_corpus, make_unreadable, moving_frames, stated_frames
from cli_helpers import TESTS, run_vssl, tiny_config
from lightning.pytorch import Callback

from vssl.data.datamodule import EpochShuffle
from vssl.data.dataset import TooManyDecodeFailures, VideoDataset
from vssl.data.encode import write_video
from vssl.data.index import VideoIndex, probe_video
from vssl.data.layouts import VideoItem, load_layout
from vssl.data.reader import VideoDecodeError, VideoReader
from vssl.data.sampling import RandomClip

REPO = TESTS.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The bad-video corpus, written once for this module."""
    folder = tmp_path_factory.mktemp("corpus")
    return folder, make_corpus(folder)


def test_index_reports_or_handles_every_corpus_file(corpus, tmp_path, caplog):
    folder, expected = corpus
    paths = [folder / name for name in expected]
    with caplog.at_level(logging.WARNING, logger="vssl"):
        index = VideoIndex.build(paths, cache_dir=tmp_path, workers=1, progress=False)
    report = index.report()
    for name, want in expected.items():
        info = index[folder / name]
        if not want.usable:
            assert not info.ok and want.error in info.error, (name, info.error)
            assert f"{folder / name}: {info.error}" in report
            assert str(folder / name) in caplog.text  # the warning names it
            continue
        assert info.ok, (name, info.error)
        assert (info.height, info.width) == want.size, name
        if want.frames is not None:
            assert info.num_frames == want.frames, name
        # Every frame the index promises can be read, as RGB, at the decode size.
        with VideoReader(folder / name, num_frames=info.num_frames) as reader:
            frames = reader.get_frames(np.arange(info.num_frames), size=(16, 20))
        assert frames.shape == (info.num_frames, 3, 16, 20) and frames.dtype == torch.uint8
    assert index.summary() == "index: 9 of 13 videos usable, 4 left out (see report)"


def test_grayscale_video_is_converted_to_equal_rgb_channels(corpus):
    folder, _ = corpus
    with VideoReader(folder / "gray.mp4") as reader:
        frames = reader.get_frames([0, 7]).int()
    assert torch.equal(frames[:, 0], frames[:, 1]) and torch.equal(frames[:, 1], frames[:, 2])
    assert frames[0, 0, 0:6, 0:6].float().mean() > 200  # the bright square, top left at t=0


def test_wrong_container_count_is_corrected_to_the_decodable_frames(corpus):
    folder, _ = corpus
    info = probe_video(folder / "wrong_count.mp4", mode="full")
    assert stated_frames(folder / "wrong_count.mp4") == 32
    assert 0 < info.num_frames < 32
    assert probe_video(folder / "wrong_count.mp4").num_frames == info.num_frames
    with VideoReader(folder / "wrong_count.mp4") as reader:
        with pytest.raises(VideoDecodeError, match=r"wrong_count\.mp4: frame indices \[31\]"):
            reader.get_frames([31])


def test_variable_frame_rate_indices_follow_time(corpus):
    """Frames 40 ms apart get consecutive indices at 25 fps; an 80 ms gap repeats the frame
    on screen, as documented in vssl.data.reader."""
    folder, _ = corpus
    with VideoReader(folder / "vfr.mkv") as reader:
        assert reader.fps == pytest.approx(25, rel=0.3)
        frames = reader.get_frames(np.arange(reader.num_frames)).int()
    repeats = [i for i in range(1, len(frames)) if torch.equal(frames[i], frames[i - 1])]
    assert repeats, "an 80 ms gap must show the previous frame again"
    assert len(repeats) < len(frames) // 2


def test_short_and_one_frame_videos_loop(corpus):
    folder, _ = corpus
    sampler = RandomClip(4, 2)
    clip = sampler(3, np.random.default_rng(0))["video"]
    assert clip.shape == (4,) and set(clip.tolist()) <= {0, 1, 2}
    assert (np.diff(clip) % 3 == 2).all()  # stride 2, wrapping modulo 3
    assert sampler(1, np.random.default_rng(0))["video"].tolist() == [0, 0, 0, 0]
    with VideoReader(folder / "one_frame.mp4") as reader:
        assert reader.get_frames([0, 0, 0, 0], size=16).shape == (4, 3, 16, 16)


def test_large_frames_are_resized_while_decoding(corpus):
    """A 4096x2160 video read at a 32 px short side never makes a full-size RGB array."""
    folder, _ = corpus
    tracemalloc.start()
    try:
        with VideoReader(folder / "large.mp4", num_frames=3) as reader:
            frames = reader.get_frames([0, 1, 2], size=32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert frames.shape == (3, 3, 32, 60)
    assert peak < 4096 * 2160 * 3 // 4, f"peak {peak} bytes of Python/numpy memory"
    # frame 0: top half 200, bottom 0; frame 1 also has its left half at 90
    expect = {(0, 2, 2): 200, (0, 30, 2): 0, (1, 2, 2): 90, (1, 2, 57): 200, (1, 30, 57): 0}
    for (t, y, x), value in expect.items():
        assert frames[t, :, y, x].tolist() == pytest.approx([value] * 3, abs=10), (t, y, x)


def _good_dataset(paths: list[Path], **kwargs) -> VideoDataset:
    infos = [probe_video(p) for p in paths]
    items = [VideoItem(path=p, label=0) for p in paths]
    return VideoDataset(items, infos, RandomClip(4, 1), decode_size=16, **kwargs)


def test_file_removed_after_indexing_is_skipped_and_logged(tmp_path, caplog):
    good = write_video(tmp_path / "good.mp4", moving_frames(8, 32, 32))
    gone = write_video(tmp_path / "gone.mp4", moving_frames(8, 32, 32))
    dataset = _good_dataset([good, gone])
    gone.unlink()
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="vssl"):
        sample = dataset[1]
    assert sample["index"] == 0 and sample["skipped"] >= 1
    assert f"skipping a video: {gone}: file not found" in caplog.text
    assert dataset.failures[0] == f"{gone}: file not found"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_file(tmp_path, caplog):
    locked = make_unreadable(tmp_path / "locked.mp4")
    try:
        info = probe_video(locked)
        assert not info.ok and info.error == "permission denied"
    finally:
        os.chmod(locked, 0o644)


def test_permission_denied_while_training_is_a_named_skip(tmp_path, monkeypatch, caplog):
    """The same failure as root can see it: the open is refused after the index was built."""
    good = write_video(tmp_path / "good.mp4", moving_frames(8, 32, 32))
    locked = write_video(tmp_path / "locked.mp4", moving_frames(8, 32, 32))
    dataset = _good_dataset([good, locked])
    real_stat = os.stat

    def refuse(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr("vssl.data.reader.os.stat", refuse)
    assert probe_video(locked).error == "permission denied"
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="vssl"):
        sample = dataset[1]
    assert sample["index"] == 0 and sample["skipped"] >= 1
    assert f"skipping a video: {locked}: permission denied" in caplog.text


def test_decode_timeout_turns_a_slow_clip_into_a_named_failure(tmp_path):
    path = write_video(tmp_path / "slow.mp4", moving_frames(16, 32, 32), gop=4)
    with VideoReader(path, decode_timeout=30.0) as reader:
        assert reader.get_frames([0, 15], size=16).shape == (2, 3, 16, 16)
        reader.decode_timeout = 1e-9  # every clip now runs over its limit
        with pytest.raises(
            VideoDecodeError, match=rf"^{path}: decoding took longer than decode_timeout"
        ):
            reader.get_frames([3, 12])
    with pytest.raises(ValueError, match="decode_timeout must be positive"):
        VideoReader(path, decode_timeout=0)
    dataset = _good_dataset([path], decode_timeout=1e-9, min_failures=3)
    with pytest.raises(TooManyDecodeFailures, match=str(path)):
        dataset[0]
    assert len(dataset.failures) == 3


def test_checkpoint_save_interrupted_before_the_move_keeps_the_previous_file(tmp_path, monkeypatch):
    """Lightning saves through an fsspec transaction: the bytes go to a temporary file that is
    moved over the checkpoint only when complete. A kill before the move leaves the old one."""
    from lightning.fabric.utilities.cloud_io import _atomic_save

    path = tmp_path / "last.ckpt"
    _atomic_save({"step": torch.tensor(1)}, path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(shutil, "move", killed)
    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        _atomic_save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "last.ckpt") == []


# --- the command line over the whole corpus ----------------------------------------------


def _corpus_dataset(root: Path, corpus_folder: Path) -> None:
    """A folder-layout dataset: the corpus plus good videos in class ``a``, good ones in ``b``."""
    for split, count in (("train", 3), ("test", 1)):
        for label in ("a", "b"):
            for i in range(count):
                frames = moving_frames(8, 32, 32, seed=i + (10 if label == "b" else 0))
                if label == "b":
                    frames = frames[:, :, ::-1].copy()
                write_video(root / split / label / f"good{i}.mp4", frames)
    shutil.copytree(corpus_folder, root / "train" / "a", dirs_exist_ok=True)


def test_training_over_the_corpus_logs_the_skips_and_finishes(corpus, tmp_path):
    folder, expected = corpus
    root, cache = tmp_path / "data", tmp_path / "cache"
    _corpus_dataset(root, folder)
    # A file that changes after the index was built (same size and time, now garbage): the
    # index cache still calls it good, so the failure happens while training.
    items, _ = load_layout("folder", root, split="train")
    VideoIndex.build([item.path for item in items], cache_dir=cache, workers=1, progress=False)
    victim = root / "train" / "a" / "good0.mp4"
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    cfg = tiny_config(root, cache, max_epochs=1)
    cfg["data"]["init_args"].update(num_workers=0, batch_size=4)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = run_vssl(
        ["fit", "--config", str(tmp_path / "run.yaml"), "--trainer.logger.init_args.name", "c"],
        tmp_path,
    )
    text = out.stdout + out.stderr
    for name, want in expected.items():
        if not want.usable:
            assert f"{root / 'train' / 'a' / name}: " in text, name
    assert f"skipping a video: {victim}" in text
    run = tmp_path / "runs" / "c" / "version_0"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert losses and all(np.isfinite(losses))
    assert sum(float(r["data/skipped"]) for r in rows if r.get("data/skipped")) >= 1
    assert (run / "config.yaml").is_file() and json.loads((run / "versions.json").read_text())["av"]
    # The checkpoint holds only what weights_only=True loading accepts.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] >= 1


def test_nothing_usable_stops_with_one_clear_message(corpus, tmp_path):
    folder, expected = corpus
    root = tmp_path / "data"
    bad = [name for name, want in expected.items() if not want.usable]
    for split in ("train", "test"):
        for i, name in enumerate(bad):
            label = "ab"[i % 2]
            (root / split / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / name, root / split / label / name)
    cfg = tiny_config(root, tmp_path / "cache", max_epochs=1)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "vssl", "fit", "--config", str(tmp_path / "run.yaml")],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "split 'train': none of the 4 videos can be decoded" in out.stderr
    assert f"{root / 'train' / 'a' / 'zero_bytes.mp4'}: empty file (0 bytes)" in out.stderr


# --- same seed, same losses ---------------------------------------------------------------

TASK_CONFIGS = {
    "Supervised": None,
    "CVRL": "configs/cvrl/synthetic_tiny.yaml",
    "RSPNet": "configs/rspnet/synthetic_tiny.yaml",
    # after RSPNet: its run in the same process is the teacher (see _task_config)
    "Distillation": "configs/distillation/synthetic_tiny.yaml",
    "SpatioTemporalStatistics": "configs/statistics/synthetic_tiny.yaml",
    "ClipOrder": "configs/clip_order/synthetic_tiny.yaml",
    "Rotation": "configs/rotation/synthetic_tiny.yaml",
    "PlaybackRate": "configs/playback_rate/synthetic_tiny.yaml",
    "VideoMAE": "configs/videomae/synthetic_tiny.yaml",
    "VJEPA": "configs/vjepa/synthetic_tiny.yaml",
    "SiamMAE": "configs/siammae/synthetic_tiny.yaml",
    "TDL": "configs/tdl/synthetic_tiny.yaml",
    "RhoBYOL": "configs/rho_byol/synthetic_tiny.yaml",
    "RhoMoCo": "configs/rho_moco/synthetic_tiny.yaml",
    "AVID": None,  # needs videos with sound, which this corpus has not: tests/tasks/test_avid.py
    "VATT": None,  # videos with sound too: tests/tasks/test_vatt.py
    "TaskMixture": "configs/mixtures/synthetic_tiny.yaml",
}


def test_every_task_has_a_same_seed_config():
    import vssl.tasks

    tasks = {name for name in vssl.tasks.__all__ if name not in ("StepOutput", "VSSLTask")}
    assert set(TASK_CONFIGS) == tasks
    for task, path in TASK_CONFIGS.items():
        if path is not None:
            class_path = yaml.safe_load((REPO / path).read_text())["model"]["class_path"]
            assert class_path.startswith("vssl.tasks.") and class_path.endswith(f".{task}"), path


NO_NETWORK = """
import socket
_connect = socket.socket.connect
def _refuse(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise SystemExit(f"network access attempted: {address}")
    return _connect(self, address)
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
"""


def _task_config(task: str, root: Path, cache: Path) -> dict:
    """The task's synthetic_tiny config (Supervised: the tests' tiny config), shrunk to 3 steps:
    a narrow backbone (CNNs: width 4; the ViT: 32-d, one block), clips of at most 8 frames."""
    if TASK_CONFIGS[task] is None:
        cfg = tiny_config(root, cache)
    else:
        cfg = yaml.safe_load((REPO / TASK_CONFIGS[task]).read_text())
        model = cfg["model"]["init_args"]
        if model["backbone"].startswith("vit"):
            model["backbone_kwargs"] = {**model.get("backbone_kwargs", {}), "dim": 32, "depth": 1}
        else:
            model["backbone_kwargs"] = {"width": 4}
        for init in (model, *(m.get("init_args", {}) for m in model.get("tasks", {}).values())):
            if "clip_len" in init:  # the statistics task's (or a mixture member's) clip length
                init["clip_len"] = min(init["clip_len"], 8)
        if task == "Distillation":  # the RSPNet run of the same process, trained before it
            model["teachers"] = ["runs/RSPNet/version_0/checkpoints/last.ckpt"]
        data = cfg["data"]["init_args"]
        data.pop("synthetic", None)
        data.update(
            root=str(root),
            cache_dir=str(cache),
            crop_size=24,
            decode_size=32,
            num_workers=0,
            clip_len=min(data.get("clip_len", 8), 8),
        )
    cfg["data"]["init_args"]["batch_size"] = 4
    cfg["trainer"].update(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        log_every_n_steps=1,
        enable_progress_bar=False,
        logger={
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "runs", "name": "seed"},
        },
    )
    return cfg


def _train_losses(run: Path) -> list[str]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [r["train/loss_step"] for r in rows if r.get("train/loss_step")]


def test_same_seed_gives_the_same_losses_for_every_task(tiny_synthetic, tmp_path):
    """Two processes each run ``fit`` for every task (one process for all tasks: the imports
    cost more than the training), and CVRL once more with a DataLoader worker for 3 epochs;
    each run's train losses agree to the last digit. The processes refuse every internet
    connection: nothing may reach the network unasked."""
    runs = {task: _task_config(task, tiny_synthetic, tmp_path / "cache") for task in TASK_CONFIGS}
    workers = _task_config("CVRL", tiny_synthetic, tmp_path / "cache")
    workers["data"]["init_args"]["num_workers"] = 1
    workers["trainer"]["max_epochs"] = 3
    runs["CVRL-worker"] = workers
    configs = []
    for name, cfg in runs.items():
        cfg["trainer"]["logger"]["init_args"]["name"] = name
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        configs.append(str(tmp_path / f"{name}.yaml"))
    script = NO_NETWORK + (
        f"from vssl.cli import main\nfor c in {configs!r}:\n    main(['fit', '--config', c])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    procs = []
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script],
                cwd=tmp_path / folder,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    for name in runs:
        first, second = (
            _train_losses(tmp_path / f / "runs" / name / "version_0") for f in ("one", "two")
        )
        steps = 9 if name == "CVRL-worker" else 3
        assert len(first) == steps and first == second, name  # the exact strings CSVLogger wrote


def test_synthetic_dataset_written_twice_is_byte_identical(tmp_path):
    """Runs of one seed on two copies of the synthetic data (each test session writes its own)
    can only agree if the copies do: x264's macroblock-tree rate control made some of these
    32x32 clips come out different from one write to the next."""
    from vssl.data.synthetic import make_synthetic

    copies = [
        make_synthetic(tmp_path / f"s{i}", classes=4, videos_per_class=4, frames=16, size=32)
        for i in range(3)
    ]
    files = sorted(p.relative_to(copies[0]) for p in copies[0].rglob("*.mp4"))
    assert len(files) == 16
    for name in files:
        first = (copies[0] / name).read_bytes()
        assert all((c / name).read_bytes() == first for c in copies[1:]), name


def test_epoch_shuffle_order_depends_on_seed_and_epoch_only():
    a, b = EpochShuffle(10, seed=3), EpochShuffle(10, seed=3)
    first = list(a)
    assert sorted(i for i, _ in first) == list(range(10)) and {e for _, e in first} == {0}
    assert list(b) == first and list(a) == first  # a fresh sampler, a second pass: the same
    a.set_epoch(1)
    second = list(a)
    assert [i for i, _ in second] != [i for i, _ in first] and {e for _, e in second} == {1}
    b.set_epoch(1)
    b.start = 4
    assert list(b) == second[4:] and list(b) == second  # start applies to one pass only
    assert list(EpochShuffle(10, seed=4)) != first


# --- kill and resume ----------------------------------------------------------------------


class KillAtStep(Callback):
    """Test callback (loaded by the CLI through PYTHONPATH): SIGKILL this process when
    training reaches ``step``, as an out-of-memory killer or a pre-empted node would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _fit(cfg: dict, folder: Path, *extra: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vssl",
            "fit",
            "--config",
            "run.yaml",
            "--checkpoint.dirpath",
            "ckpts",
            "--checkpoint.every_n_train_steps",
            "1",
            *extra,
        ],
        cwd=folder,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_killed_run_resumes_from_last_and_ends_like_an_uninterrupted_one(tiny_synthetic, tmp_path):
    cfg = tiny_config(tiny_synthetic, tmp_path / "cache", max_epochs=2)  # 4 steps per epoch
    cfg["model"]["init_args"]["dropout"] = 0.5  # the main process's RNG matters after resume
    whole = _fit(cfg, tmp_path / "whole")
    killed_cfg = {
        **cfg,
        "trainer": {
            **cfg["trainer"],
            "callbacks": [{"class_path": "test_reliability.KillAtStep", "init_args": {"step": 6}}],
        },
    }
    killed = _fit(killed_cfg, tmp_path / "resumed")
    try:
        killed.communicate(timeout=300)
        assert killed.returncode == -signal.SIGKILL
        last = tmp_path / "resumed" / "ckpts" / "last.ckpt"
        # mid-epoch 2
        assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 5

        resumed = _fit(cfg, tmp_path / "resumed", "--ckpt_path", "last")  # while whole runs on
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err[-3000:]
    finally:
        _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-3000:]

    def final(folder: Path) -> tuple[dict, dict]:
        ckpt = torch.load(folder / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
        run = sorted((folder / "runs" / "vssl").iterdir())[-1]
        rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/loss")]
        return ckpt, rows[-1]

    (ckpt_a, metrics_a), (ckpt_b, metrics_b) = (
        final(tmp_path / "whole"),
        final(tmp_path / "resumed"),
    )
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == 8
    for key in ("val/loss", "val/acc"):
        assert float(metrics_b[key]) == pytest.approx(float(metrics_a[key]), rel=1e-5, abs=1e-6), (
            key
        )
    for name, value in ckpt_a["state_dict"].items():
        torch.testing.assert_close(
            ckpt_b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name
        )


def test_rng_state_restores_each_process_its_own_generators(monkeypatch):
    """A checkpoint of two processes gives rank 1 rank 1's states; one written by another number
    of processes restores nothing and says so."""
    from types import SimpleNamespace

    from vssl.callbacks import RNGState

    callback = RNGState()
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        np.random.seed(seed)
        states.append(callback.state_dict())
    torch.manual_seed(2)
    np.random.seed(2)
    draws = (torch.rand(3), np.random.rand(3))  # what rank 1's saved generators draw next
    callback.load_state_dict({**states[0], "ranks": states})
    torch.manual_seed(99)
    np.random.seed(99)
    callback.on_train_start(SimpleNamespace(world_size=2, global_rank=1), None)
    assert torch.equal(torch.rand(3), draws[0]) and np.array_equal(np.random.rand(3), draws[1])

    warnings = []
    monkeypatch.setattr("vssl.callbacks.rank_zero_warn", warnings.append)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    callback.load_state_dict(states[0])  # one process's checkpoint
    callback.on_train_start(SimpleNamespace(world_size=2, global_rank=1), None)
    assert torch.equal(torch.rand(3), expected)
    assert len(warnings) == 1 and "states of 1 process(es), this run has 2" in warnings[0]


class RecordBatches(Callback):
    """Test callback: appends the global step, epoch and dataset indices of every training batch
    to ``out_dir/rank<r>.jsonl`` as it is taken, so that a killed run keeps what it saw."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        row = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "indices": batch["index"].tolist(),
        }
        with (self.out_dir / f"rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")


def _batches(folder: Path) -> list[list[dict]]:
    return [
        [json.loads(line) for line in (folder / f"rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    ]


def test_ddp_run_killed_mid_epoch_resumes_with_the_same_samples(tiny_synthetic, tmp_path):
    """Two gloo processes, 3 steps an epoch (12 videos, 2 per process and step); both processes
    are killed at step 5, mid-epoch 2. The resumed run trains on the samples the uninterrupted
    run trained on at steps 4 and 5, on each process, and ends with the same weights (dropout
    0.5: each process's random generators are restored too)."""
    cfg = tiny_config(tiny_synthetic, tmp_path / "cache", strategy="ddp", devices=2, max_epochs=2)
    cfg["model"]["init_args"]["dropout"] = 0.5
    cfg["data"]["init_args"].update(batch_size=2, num_workers=0)  # see test_cli's DDP test

    def with_callbacks(*callbacks: dict) -> dict:
        return {**cfg, "trainer": {**cfg["trainer"], "callbacks": list(callbacks)}}

    def record(name: str) -> dict:
        return {
            "class_path": "test_reliability.RecordBatches",
            "init_args": {"out_dir": str(tmp_path / name)},
        }

    kill = {"class_path": "test_reliability.KillAtStep", "init_args": {"step": 5}}
    whole = _fit(with_callbacks(record("whole_seen")), tmp_path / "whole")
    killed = _fit(with_callbacks(record("killed_seen"), kill), tmp_path / "resumed")
    try:
        killed.communicate(timeout=300)
        assert killed.returncode == -signal.SIGKILL
        last = tmp_path / "resumed" / "ckpts" / "last.ckpt"
        assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4

        resumed = _fit(
            with_callbacks(record("resumed_seen")), tmp_path / "resumed", "--ckpt_path", "last"
        )  # while the uninterrupted run goes on
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err[-3000:]
    finally:
        _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-3000:]

    whole_seen, resumed_seen = (
        _batches(tmp_path / "whole_seen"),
        _batches(tmp_path / "resumed_seen"),
    )
    for rank in (0, 1):
        assert [b["step"] for b in whole_seen[rank]] == list(range(6))
        assert [(b["step"], b["epoch"]) for b in resumed_seen[rank]] == [(4, 1), (5, 1)]
        assert resumed_seen[rank] == whole_seen[rank][4:], rank
    epoch2 = [i for rank in (0, 1) for b in whole_seen[rank][3:] for i in b["indices"]]
    assert sorted(epoch2) == list(range(12))  # the two processes share the epoch out

    ckpt_a, ckpt_b = (
        torch.load(f / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
        for f in (tmp_path / "whole", tmp_path / "resumed")
    )
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == 6
    for name, value in ckpt_a["state_dict"].items():
        torch.testing.assert_close(
            ckpt_b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name
        )
