"""The teacher cache under real DDP: two Lightning processes (gloo, CPU) fill it, read it, and
stop together on a stale cache, on caches that differ between ranks and on one rank's error."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.strategies import DDPStrategy
from test_distillation_cache import datamodule, save_teacher, student
from torch import multiprocessing as mp

from vssl.data.synthetic import make_synthetic
from vssl.tasks import Distillation
from vssl.tasks.teacher_cache import MANIFEST, cache_teacher_features

#: Rank 0's pause per teacher batch while it fills: without the fill's synchronisation, rank 1
#: (fewer videos) would read rank 0's rows before they are written.
SLOW = 0.2
#: What each phase of the worker does: its cache folder (per rank) and crop size.
PHASES = {
    "fill": (("cache", "cache"), 24),  # an empty folder: filled by both ranks
    "read": (("cache", "cache"), 24),  # the complete cache: read, no teacher loaded
    "stale": (("cache", "cache"), 16),  # made for 24 px crops
    "split": (("cache", "elsewhere"), 24),  # a rank-local folder on rank 1
    "fail": (("failing", "failing"), 24),  # rank 1's teacher raises while filling
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_all(task: Distillation, out: Path) -> None:
    """Every cached row of every video and view as this rank reads it, saved to
    ``rank<r>.<phase>.npz``."""
    rows = {}
    for stage, views in task.cache.views.items():
        videos = task.cache.manifest["datasets"][stage]["videos"]
        index = torch.arange(videos).repeat_interleave(views)
        view = torch.arange(views).repeat(videos)
        rows[stage] = task.cache.rows(stage, index, view)[0].numpy()
    np.savez(out / f"rank{task.global_rank}.{task.test_phase}.npz", **rows)


def _worker(rank: int, port: int, root: str, index: str, teacher: str, out: str) -> None:
    """Rank ``rank`` of 2, as a process that a cluster launcher started (LOCAL_RANK set): runs
    every phase of `PHASES` (one training step each) and writes what each raised, or None, to
    ``rank<r>.json``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        NODE_RANK="0",
        LOCAL_RANK=str(rank),
        RANK=str(rank),
    )
    torch.set_num_threads(1)
    outcome: dict[str, str | int | None] = {}
    for phase, (folders, crop) in PHASES.items():
        try:
            task = student(Path(teacher), Path(out) / folders[rank])
            task.test_phase = phase
            outcome[f"{phase}.teachers"] = len(task.teachers)
            dm = datamodule(Path(root), Path(index), crop_size=crop).attach(task)
            seed_everything(0)
            trainer = Trainer(
                accelerator="cpu",
                devices=2,
                # a deadlock fails the test after 30 s instead of hanging it
                strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=30)),
                max_steps=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                default_root_dir=out,
            )
            trainer.fit(task, datamodule=dm)
            outcome[phase] = None
        except Exception as err:
            outcome[phase] = f"{type(err).__name__}: {err}"
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(outcome))


def test_two_processes_fill_read_and_stop_together(tmp_path, monkeypatch):
    # 3 training and 3 validation videos: rank 0 fills 2 of each, rank 1 one
    root = make_synthetic(
        tmp_path / "data", classes=3, videos_per_class=2, frames=16, size=32, test_fraction=0.5
    )
    index = tmp_path / "index"
    teacher = save_teacher(tmp_path / "teacher.ckpt")
    one = student(teacher, tmp_path / "one")
    cache_teacher_features(one, datamodule(root, index).attach(one))  # one process, for reference

    rows, fit_start = Distillation.teacher_rows, Distillation.on_fit_start

    def teacher_rows(self, video):
        if self.test_phase == "fill" and self.global_rank == 0:
            time.sleep(SLOW)
        if self.test_phase == "fail" and self.global_rank == 1:
            raise OSError("rank 1's disk is full")
        return rows(self, video)

    def on_fit_start(self):
        fit_start(self)  # the fill, or the check of a complete cache
        read_all(self, tmp_path)  # at once, before any synchronisation of Lightning's own

    monkeypatch.setattr(Distillation, "teacher_rows", teacher_rows)
    monkeypatch.setattr(Distillation, "on_fit_start", on_fit_start)
    mp.start_processes(  # fork: the processes start with the modules loaded (and the patches)
        _worker,
        args=(_free_port(), str(root), str(index), str(teacher), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = {s: np.load(tmp_path / "one" / f"teacher0.{s}.npy") for s in ("train", "val")}
    assert single["train"].shape == (3 * 3, 64) and single["val"].shape == (3, 64)
    assert np.abs(single["train"]).sum(axis=1).min() > 0  # every row written
    for rank, outcome in enumerate(outcomes):
        assert outcome["fill"] is None and outcome["fill.teachers"] == 1
        assert outcome["read"] is None and outcome["read.teachers"] == 0
        for phase in ("fill", "read"):
            # each rank reads the whole cache, as one process fills it, as soon as the fill ends
            got = np.load(tmp_path / f"rank{rank}.{phase}.npz")
            for stage, expected in single.items():
                np.testing.assert_array_equal(got[stage], expected)
        manifest = tmp_path / "cache" / MANIFEST
        assert outcome["stale"] == (
            f"StaleCacheError: {manifest}: this teacher cache was made for data crop_size=24; "
            f"this run has 16; it is not used. Delete {manifest.parent} to fill it again, or "
            "choose another teacher_cache"
        )
        found = "rank 0: a complete cache; rank 1: no cache"
        assert outcome["split"].startswith("InvalidInputError: ")
        assert f"the ranks see different teacher caches there ({found})" in outcome["split"]
        assert "on a file system that every rank sees" in outcome["split"]
    assert json.loads((tmp_path / "cache" / MANIFEST).read_text()) == json.loads(
        (tmp_path / "one" / MANIFEST).read_text()
    )
    assert not (tmp_path / "elsewhere").exists()
    assert outcomes[1]["fail"] == "OSError: rank 1's disk is full"
    assert outcomes[0]["fail"] == (
        f"OtherRankError: {tmp_path / 'failing'}: the teacher cache's fill failed on rank 1 (its "
        "error is in its output); rank 0 stops too"
    )
    assert not json.loads((tmp_path / "failing" / MANIFEST).read_text())["complete"]
