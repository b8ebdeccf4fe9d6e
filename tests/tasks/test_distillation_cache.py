"""Distillation from cached teacher features: the views the teachers saw, read back for the student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader

from vssl.data.datamodule import VideoDataModule
from vssl.errors import UserError
from vssl.eval.features import save_task
from vssl.tasks import Distillation, Rotation
from vssl.tasks import distillation as distillation_module
from vssl.tasks.teacher_cache import (
    MANIFEST,
    CachedViews,
    StaleCacheError,
    cache_teacher_features,
    flip_views,
    train_views,
)

VIEWS = 3
SEED = 1  # train_views(3, 1, flip=True) has flipped and unflipped views (checked below)


def save_teacher(path: Path, width: int = 16, seed: int = 0) -> Path:
    """A Rotation tiny3d checkpoint as LightningCLI writes one, batch-norm statistics moved off
    their initial values."""
    torch.manual_seed(seed)
    task = Rotation(backbone="tiny3d", backbone_kwargs={"width": width}, online_probe=False)
    for module in task.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return save_task(task, path)


def datamodule(root: Path, cache: Path, crop_size: int = 24) -> VideoDataModule:
    return VideoDataModule(
        str(root),
        clip_len=4,
        stride=2,
        crop_size=crop_size,
        decode_size=32,
        batch_size=4,
        num_workers=0,
        flip=True,
        cache_dir=str(cache),
    )


def student(teacher: Path, cache: Path | None, **kwargs) -> Distillation:
    torch.manual_seed(1)
    settings = {
        "cache_views": VIEWS,
        "cache_seed": SEED,
        "backbone": "tiny3d",
        "backbone_kwargs": {"width": 8},
        "optimizer": "adamw",
        "lr": 0.01,
        "weight_decay": 0.0,
        "lr_schedule": "constant",
    }
    return Distillation(
        teachers=[str(teacher)],
        teacher_cache=None if cache is None else str(cache),
        **{**settings, **kwargs},
    )


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One video-index cache for the module's datamodules."""
    return tmp_path_factory.mktemp("index")


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    return save_teacher(tmp_path / "teacher.ckpt")


def count_forwards(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_the_student_sees_the_view_whose_teacher_features_are_cached(
    teacher: Path, tiny_synthetic: Path, index: Path, tmp_path: Path
) -> None:
    flips = [f for _, f in train_views(VIEWS, SEED, flip=True)]
    assert any(flips) and not all(flips)
    task = student(teacher, tmp_path / "cache", match="both").eval()
    dm = datamodule(tiny_synthetic, index).attach(task)
    cache = cache_teacher_features(task, dm)
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert manifest["complete"] and manifest["datasets"]["train"]["videos"] == 12
    assert manifest["teachers"][0]["heads"] == {"head": 4}  # Rotation's 4 rotations
    assert np.load(tmp_path / "cache" / "teacher0.train.npy").shape == (12 * VIEWS, 64 + 4)
    assert np.load(tmp_path / "cache" / "teacher0.val.npy").shape == (4, 68)

    train = dm.build_dataset("train")
    assert isinstance(train.sampler, CachedViews)
    every = dm.build_dataset("train", sampler=CachedViews(4, 2, train.sampler.views, every=True))
    seed_everything(0)
    batch = next(iter(DataLoader(train, batch_size=12)))
    assert set(batch["cache_view"].tolist()) == set(range(VIEWS))
    assert batch["cache_flip"].tolist() == [flips[k] for k in batch["cache_view"].tolist()]
    views = batch["video"].clone()
    batch = task.augment_batch(batch)
    pairs = zip(batch["index"].tolist(), batch["cache_view"].tolist(), strict=True)
    for row, (i, k) in enumerate(pairs):
        clip = every[i]["video"][k]  # view k of video i, as the fill decoded it
        assert torch.equal(views[row], clip)
        expected = flip_views(clip[None], torch.tensor([flips[k]]))
        assert torch.equal(expected[0], clip.flip(-1) if flips[k] else clip)
        assert torch.equal(batch["video"][row], task._normalise(expected)[0])
    # The student's inputs are the views bit for bit; the teacher's features of a batch of
    # them equal the cached rows up to the rounding of a different batch size in a convolution.
    with torch.no_grad():
        z = task.teachers[0](batch["video"])
        logits = task.teacher_heads[0]["head"](z)
    cached, soft = cache.split(0, cache.rows("train", batch["index"], batch["cache_view"])[0])
    torch.testing.assert_close(cached, z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(soft["head"], logits, rtol=1e-6, atol=1e-6)
    # the fill's own batch (one video's views): the same values exactly
    i = int(batch["index"][0])
    with torch.no_grad():
        views_i = task._normalise(flip_views(every[i]["video"], torch.tensor(flips)))
        z = task.teachers[0](views_i)
        rows = torch.cat([z, task.teacher_heads[0]["head"](z)], dim=1)
    assert torch.equal(
        torch.from_numpy(np.load(tmp_path / "cache" / "teacher0.train.npy"))[
            i * VIEWS : (i + 1) * VIEWS
        ],
        rows,
    )
    # the same loss read from the cache, by a task that loads no teacher, as computed on the fly
    again = student(teacher, tmp_path / "cache", match="both").eval()
    assert len(again.teachers) == 0 and len(again.teacher_heads) == 0
    assert again.logit_heads[0]["head"].out_features == 4
    missing, unexpected = again.load_state_dict(task.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("teacher") for k in unexpected)
    task.cache = None  # the teachers run
    with torch.no_grad():
        live, read = task.step(batch, "train"), again.step(batch, "train")
    assert float(read.loss) == pytest.approx(float(live.loss), rel=1e-6)
    assert set(read.logs) == {"teacher0_cos", "teacher0_kl"}
    # a validation sample: the centre view, never flipped
    val = next(iter(DataLoader(dm.build_dataset("val"), batch_size=4)))
    assert val["cache_view"].tolist() == [0] * 4 and not val["cache_flip"].any()
    val = task.augment_batch(val)
    with torch.no_grad():
        z = task.teachers[0](val["video"])
    cached, _ = cache.split(0, cache.rows("val", val["index"], val["cache_view"])[0])
    torch.testing.assert_close(cached, z, rtol=1e-6, atol=1e-6)


class Record(Callback):
    """The batches a run trained on (as the step saw them), its losses and the teachers'
    forward calls made while it trained."""

    def __init__(self, calls: list[int] | None = None) -> None:
        self.batches, self.losses, self.calls = [], [], calls
        self.calls_at_start = None

    def on_train_start(self, trainer, module) -> None:
        self.calls_at_start = None if self.calls is None else self.calls[0]

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append({"video": batch["video"].clone()})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(task: Distillation, data, root: Path, steps: int, record: Record) -> None:
    seed_everything(0)
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=[record],
    )
    if isinstance(data, VideoDataModule):
        trainer.fit(task, datamodule=data)
    else:
        trainer.fit(task, train_dataloaders=data)


def test_cached_training_matches_on_the_fly_and_the_teachers_stay_idle(
    teacher: Path,
    tiny_synthetic: Path,
    index: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    cached = student(teacher, cache)
    assert len(cached.teachers) == 1  # no cache yet: the teachers are loaded to fill it
    calls = count_forwards(cached.teachers[0])
    record = Record(calls)
    fit(cached, datamodule(tiny_synthetic, index).attach(cached), tmp_path, 3, record)
    assert (cache / MANIFEST).is_file() and record.calls_at_start > 0  # filled when fit began
    assert calls[0] == record.calls_at_start  # and not run while the student trained

    # the same student, its teacher run on every batch of the same views
    live = student(teacher, None)
    replay = Record()
    fit(live, DataLoader(record.batches, batch_size=None), tmp_path / "live", 3, replay)
    assert len(record.losses) == 3
    np.testing.assert_allclose(replay.losses, record.losses, rtol=1e-5)
    mine, theirs = cached.backbone.state_dict(), live.backbone.state_dict()
    assert all(torch.allclose(mine[k], theirs[k], atol=1e-5) for k in mine)

    # a complete cache: the teacher file is not even read, and training runs on the cache
    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher was loaded")

    monkeypatch.setattr(distillation_module, "_load_teacher_task", no_teacher)
    again = student(teacher, cache)
    assert len(again.teachers) == 0 and again.cache is not None
    assert isinstance(again.projections[0], nn.Module)
    record = Record()
    fit(again, datamodule(tiny_synthetic, index).attach(again), tmp_path, 1, record)
    assert len(record.losses) == 1 and all(np.isfinite(record.losses))
    path = tmp_path / "student.ckpt"
    again.trainer.save_checkpoint(path)
    loaded = Distillation.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert len(loaded.teachers) == 0
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in again.state_dict().items())


def test_a_stale_cache_is_refused_naming_its_manifest(
    teacher: Path, tiny_synthetic: Path, index: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    manifest = cache / MANIFEST
    task = student(teacher, cache)
    cache_teacher_features(task, datamodule(tiny_synthetic, index).attach(task))
    before = manifest.read_text()

    other = save_teacher(tmp_path / "other.ckpt", seed=3)
    with pytest.raises(StaleCacheError, match=rf"{manifest}: .*made for the teachers"):
        student(other, cache)
    with pytest.raises(StaleCacheError, match=rf"{manifest}: .*match: features"):
        student(teacher, cache, match="logits")
    # other data settings or other views: refused when the run's data is known
    for dm_kwargs, task_kwargs, what in (
        ({"crop_size": 16}, {}, "data crop_size=24; this run has 16"),
        ({}, {"cache_views": 2}, "views train="),
    ):
        task = student(teacher, cache, **task_kwargs)
        dm = datamodule(tiny_synthetic, index, **dm_kwargs).attach(task)
        with pytest.raises(StaleCacheError, match=rf"{manifest}: .*{what}"):
            fit(task, dm, tmp_path, 1, Record())
    # the teacher file rewritten with other weights at the same path
    save_teacher(teacher, seed=4)
    with pytest.raises(StaleCacheError, match=rf"{manifest}: .*teacher 0 \({teacher} has changed"):
        student(teacher, cache)
    assert manifest.read_text() == before  # nothing was rewritten

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(StaleCacheError, match=rf"{mine}: teacher_cache is not an empty folder"):
        student(teacher, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="augment may only normalise"):
        student(teacher, tmp_path / "new", augment={"jitter_p": 0.8, "brightness": 0.4})
    with pytest.raises(UserError, match="cache_views must be a positive integer, got 0"):
        Distillation(teachers=[str(teacher)], teacher_cache=str(cache), cache_views=0)


def test_view_positions_and_flips_by_hand() -> None:
    sampler = CachedViews(4, 2, ((0.0, False), (0.5, True), (0.99, False)))
    # 16 frames, clips spanning 7: valid starts 0..9; fractions 0, 0.5, 0.99 -> 0, 5, 9
    rng = np.random.default_rng(0)
    seen = {}
    for _ in range(30):
        out = sampler(16, rng)
        seen[int(out["cache_view"])] = (out["video"].tolist(), bool(out["cache_flip"]))
    assert seen == {
        0: ([0, 2, 4, 6], False),
        1: ([5, 7, 9, 11], True),
        2: ([9, 11, 13, 15], False),
    }
    every = CachedViews(4, 2, sampler.views, every=True)(5, rng)["video"]
    assert every.tolist() == [[0, 2, 4, 1]] * 3  # shorter than a clip: from 0, wrapped
    assert train_views(4, 0, flip=False) == train_views(4, 0, flip=False)
    starts = [u for u, f in train_views(4, 0, flip=False)]
    assert all(k / 4 <= u < (k + 1) / 4 for k, u in enumerate(starts))
    assert not any(f for _, f in train_views(4, 0, flip=False))
    video = torch.arange(2 * 3).view(2, 1, 1, 1, 3).to(torch.uint8)
    flipped = flip_views(video, torch.tensor([True, False]))
    assert flipped.flatten().tolist() == [2, 1, 0, 3, 4, 5]
