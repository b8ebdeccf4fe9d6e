"""Helpers for tests that run the command line in a subprocess, as a user does."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from vssl.data.encode import write_video

TESTS = Path(__file__).resolve().parent
#: tests/ and its package folders: what a subprocess needs to import a test module's callbacks
#: (``test_cvrl.RecordFirstStep`` from tests/tasks/, ``training_helpers.KeyRecorder``) and
#: these helpers.
TEST_PATH = os.pathsep.join(
    [str(TESTS), *sorted(str(d) for d in TESTS.iterdir() if d.is_dir() and d.name[0] not in "._")]
)


def run_vssl(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs ``python -m vssl ARGS`` in ``cwd`` (tests/ and its folders on PYTHONPATH); fails
    the test if it fails."""
    env = {**os.environ, "PYTHONPATH": TEST_PATH, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "vssl", *args],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    assert out.returncode == 0, (
        f"vssl {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    )
    return out


def tiny_config(root: Path, cache: Path, **trainer) -> dict:
    """A CPU-sized config: Supervised tiny3d (width 4) on ``root``, 4-frame 24 px clips."""
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            **trainer,
        },
        "model": {
            "class_path": "vssl.tasks.Supervised",
            "init_args": {
                "backbone": "tiny3d",
                "backbone_kwargs": {"width": 4},
                "optimizer": "adamw",
                "lr": 0.003,
            },
        },
        "data": {
            "class_path": "vssl.data.VideoDataModule",
            "init_args": {
                "root": str(root),
                "clip_len": 4,
                "stride": 2,
                "crop_size": 24,
                "decode_size": 32,
                "batch_size": 3,
                "num_workers": 1,
                "cache_dir": str(cache),
                "flip": False,
            },
        },
    }


def ramp_videos(
    root: Path, slope: tuple[float, float] = (8, 11), frames: int = 16, train_videos: int = 12
) -> Path:
    """Videos under ``root/{train,test}/{a,b}/`` (``train_videos`` and 4) that brighten over time:
    a random start level, a slope (grey levels per frame) drawn from ``slope``, a fixed texture;
    two arbitrary classes.

    The synthetic motion dataset says little about time itself: its scenes are statistically
    the same in every frame and its classes come in time-reversed pairs. In these videos the
    order of clips and the stride between frames are readable from brightness, so a pipeline
    whose labels match its clips learns them in a few steps, and one whose labels do not cannot.
    """
    rng = np.random.default_rng(0)
    for split, count in (("train", train_videos), ("test", 4)):
        for i in range(count):
            level = rng.uniform(30, 60) + rng.uniform(*slope) * np.arange(frames)
            texture = rng.uniform(-15, 15, (1, 32, 32, 1))
            pixels = np.clip(level[:, None, None, None] + texture, 0, 255).repeat(3, axis=3)
            write_video(root / split / "ab"[i % 2] / f"{i}.mp4", pixels.astype(np.uint8))
    return root
