"""Helpers for tests that run the command line in a subprocess, as a user does."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run_vssl(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs ``python -m vssl ARGS`` in ``cwd`` (tests/ on PYTHONPATH); fails the test if it fails."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "vssl", *args], cwd=cwd, env=env, text=True,
                         capture_output=True, timeout=timeout)
    assert out.returncode == 0, f"vssl {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def tiny_config(root: Path, cache: Path, **trainer) -> dict:
    """A CPU-sized config: Supervised tiny3d (width 4) on ``root``, 4-frame 24 px clips."""
    return {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                    "enable_progress_bar": False, **trainer},
        "model": {"class_path": "vssl.tasks.Supervised",
                  "init_args": {"backbone": "tiny3d", "backbone_kwargs": {"width": 4},
                                "optimizer": "adamw", "lr": 0.003}},
        "data": {"class_path": "vssl.data.VideoDataModule",
                 "init_args": {"root": str(root), "clip_len": 4, "stride": 2, "crop_size": 24,
                               "decode_size": 32, "batch_size": 3, "num_workers": 1,
                               "cache_dir": str(cache), "flip": False}},
    }
