"""Shared fixtures: tiny self-written clips whose frames say their own index, the real videos
in ``../shared/videos`` (tests that need them skip when the folder is absent), a tiny synthetic
dataset and one checkpoint trained on it, and the command line run in the test's own process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vssl.data.encode import write_video

SHARED_VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "videos"

# Frame i shows the bits of i (mod 2**16) as a 4 x 4 grid of dark (0) and light (1) blocks,
# bit 0 at the top left, row by row: easy to read back after lossy coding and resizing.
_GRID = 4
_DARK, _LIGHT = 40, 215


def code_frame(index: int, height: int, width: int) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 image of frame ``index``."""
    bits = (index >> np.arange(_GRID * _GRID)) & 1
    levels = np.where(bits, _LIGHT, _DARK).astype(np.uint8).reshape(_GRID, _GRID)
    rows = np.arange(height) * _GRID // height
    cols = np.arange(width) * _GRID // width
    return np.repeat(levels[rows][:, cols][..., None], 3, axis=2)


def read_frame_index(frame: torch.Tensor | np.ndarray) -> int:
    """The index a frame written by ``code_frame`` shows; ``frame`` is ``(3, H, W)`` or
    ``(H, W, 3)`` uint8."""
    image = np.asarray(frame, dtype=np.float32)
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    height, width = image.shape[:2]
    index = 0
    for bit in range(_GRID * _GRID):
        r, c = divmod(bit, _GRID)
        # The middle half of each block, away from edges blurred by coding or resizing.
        top, bottom = (4 * r + 1) * height // (4 * _GRID), (4 * r + 3) * height // (4 * _GRID)
        left, right = (4 * c + 1) * width // (4 * _GRID), (4 * c + 3) * width // (4 * _GRID)
        block = image[top : max(bottom, top + 1), left : max(right, left + 1)]
        index |= int(block.mean() > (_DARK + _LIGHT) / 2) << bit
    return index


@pytest.fixture
def video_factory(tmp_path: Path) -> Callable[..., Path]:
    """``make(name, num_frames=16, size=(32, 32), fps=25, gop=None, codec="libx264")`` writes
    ``tmp_path/name`` whose frame ``i`` reads back as ``i`` with ``read_frame_index``."""

    def make(
        name: str,
        num_frames: int = 16,
        size: tuple[int, int] = (32, 32),
        fps: int = 25,
        gop: int | None = None,
        codec: str = "libx264",
    ) -> Path:
        height, width = size
        frames = np.stack([code_frame(i, height, width) for i in range(num_frames)])
        return write_video(tmp_path / name, frames, fps=fps, codec=codec, gop=gop)

    return make


@pytest.fixture
def frame_index() -> Callable[[torch.Tensor | np.ndarray], int]:
    """The function that reads a ``video_factory`` frame's index back."""
    return read_frame_index


@pytest.fixture
def shared_videos() -> Path:
    """The folder of real videos next to the repository; skips the test when it is absent."""
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"real test videos not found at {SHARED_VIDEOS}")
    return SHARED_VIDEOS


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset (4 classes, 3 train + 1 test videos each, 16 frames of 32x32),
    written once per test session."""
    from vssl.data.synthetic import make_synthetic

    return make_synthetic(
        tmp_path_factory.mktemp("data") / "synthetic",
        classes=4,
        videos_per_class=4,
        frames=16,
        size=32,
    )


@pytest.fixture(scope="session")
def fit_checkpoint(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of one epoch of ``python -m vssl fit`` (Supervised tiny3d, width 4) on
    ``tiny_synthetic``: 4-frame clips at stride 2, 24 px crops of 32 px decodes, flipped, so
    that every data setting differs from the evaluation defaults.

    Trained once per session for the tests that load, probe, fine-tune and export a
    checkpoint (a training process costs more than all of them); they read it, never write it.
    """
    from cli_helpers import run_vssl, tiny_config

    tmp = tmp_path_factory.mktemp("fit")
    cfg = tiny_config(tiny_synthetic, tmp / "cache", max_epochs=1)
    cfg["data"]["init_args"]["flip"] = True
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_vssl(["fit", "--config", "run.yaml", "--trainer.logger.init_args.name", "t"], tmp)
    return tmp / "runs" / "t" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable:
    """``run_cli(args, cwd)`` runs ``vssl ARGS`` from ``cwd`` in this process, through
    ``vssl.cli.main`` (what ``python -m vssl`` calls), and returns what it printed on stdout;
    the test fails unless it returns 0.

    For tests about what a command does: a fresh interpreter spends seconds importing torch
    and Lightning before it starts. Tests of the process itself (exit codes, kills, several
    processes) run ``python -m vssl`` with ``cli_helpers.run_vssl``.
    """
    from vssl.cli import main

    def run(args: list[str], cwd: Path) -> str:
        monkeypatch.chdir(cwd)
        code = main(list(args))
        out = capsys.readouterr()
        assert code == 0, (
            f"vssl {' '.join(args)} returned {code}:\n{out.out[-3000:]}\n{out.err[-5000:]}"
        )
        return out.out

    return run
