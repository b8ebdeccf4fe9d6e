import numpy as np
import pytest
import torch
from cli_helpers import tiny_config
from training_helpers import cli_fit_rows, column, quiet_trainer

from vssl.data import ClipSpec, VideoDataset, VideoIndex, VideoItem
from vssl.tasks import CVRL, RSPNet, TaskMixture

BACKBONE = {"backbone": "tiny3d", "backbone_kwargs": {"width": 4}}
STATS = {"class_path": "vssl.tasks.SpatioTemporalStatistics", "init_args": {"clip_len": 4}}
CVRL_ = {"class_path": "vssl.tasks.CVRL", "init_args": {"hidden_dim": 16, "projection_dim": 8}}
SPEC = ClipSpec(clip_len=4, stride=2, crop_size=24, flip=False)


def _mixture(**kwargs):
    return TaskMixture(tasks={"statistics": STATS, "cvrl": CVRL_}, **BACKBONE, **kwargs)


def _batch(task, video_factory, stage="train", n=3):
    """A real batch: n samples of a self-made clip through the task's sampler and transform."""
    path = video_factory("a.mp4", num_frames=24)
    index = VideoIndex.build([path], progress=False, cache_dir=path.parent / "cache")
    ds = VideoDataset(
        [VideoItem(path, 0)],
        [index[path]],
        task.clip_sampler(stage, SPEC),
        transform=task.clip_transform(stage, SPEC),
        seed=0,
    )
    samples = [ds[(0, i)] for i in range(n)]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def test_views_are_prefixed_and_each_member_transforms_its_own(video_factory):
    task = _mixture()
    batch = _batch(task, video_factory)
    assert set(batch) == {
        "statistics/video",
        "statistics/motion",
        "statistics/appearance",
        "cvrl/video",
        "cvrl/video2",
        "label",
        "index",
        "skipped",
    }
    assert batch["statistics/video"].shape == (3, 4, 3, 24, 24)  # T frames shown (T+1 decoded)
    assert batch["statistics/motion"].shape == (3, 14) and batch["statistics/appearance"].shape == (
        3,
        13,
    )
    assert batch["cvrl/video"].shape == batch["cvrl/video2"].shape == (3, 4, 3, 24, 24)
    assert task.video_keys == ("statistics/video", "cvrl/video", "cvrl/video2")


def test_loss_is_the_weighted_sum_of_the_members_losses_on_the_same_batch(video_factory):
    task = _mixture(weights={"statistics": 0.25, "cvrl": 2.0})
    batch = task.augment_batch(_batch(task, video_factory))
    task.eval()
    out = task.step(dict(batch), "val")
    stats = (
        task.tasks["statistics"]
        .step(
            {
                "video": batch["statistics/video"],
                "motion": batch["statistics/motion"],
                "appearance": batch["statistics/appearance"],
                "label": batch["label"],
            },
            "val",
        )
        .loss
    )
    cvrl = (
        task.tasks["cvrl"]
        .step({"video": batch["cvrl/video"], "video2": batch["cvrl/video2"]}, "val")
        .loss
    )
    assert out.loss.item() == pytest.approx(0.25 * stats.item() + 2.0 * cvrl.item(), rel=1e-6)
    assert out.logs["statistics/loss"].item() == pytest.approx(stats.item(), rel=1e-6)
    assert out.logs["cvrl/loss"].item() == pytest.approx(cvrl.item(), rel=1e-6)
    assert "cvrl/contrast_acc" in out.logs and "statistics/loss_motion" in out.logs
    assert out.features.shape == (3, task.backbone.out_dim)


def test_members_share_one_backbone_and_derived_copies_start_from_it():
    task = TaskMixture(
        tasks={"cvrl": CVRL_, "rsp": {"class_path": "RSPNet", "init_args": {"queue_size": 8}}},
        **BACKBONE,
    )
    assert (
        task.tasks["cvrl"].backbone is task.backbone and task.tasks["rsp"].backbone is task.backbone
    )
    assert isinstance(task.tasks["rsp"], RSPNet) and isinstance(task.tasks["cvrl"], CVRL)
    key_backbone = task.tasks["rsp"].momentum_encoder.module["backbone"]
    for p, k in zip(task.backbone.parameters(), key_backbone.parameters(), strict=True):
        assert torch.equal(p, k)
    # One copy of each shared parameter in the optimiser.
    params = [p for g in task.parameter_groups() for p in g["params"]]
    assert len(params) == len({id(p) for p in params})
    # After an optimiser step, the members' hooks run: the momentum encoder moves towards the
    # shared backbone by 1 - m.
    with torch.no_grad():
        for p in task.backbone.parameters():
            p.add_(1.0)
    before = [k.clone() for k in key_backbone.parameters()]
    task.after_optimizer_step()
    m = 0.999
    for b, k, p in zip(before, key_backbone.parameters(), task.backbone.parameters(), strict=True):
        torch.testing.assert_close(k, m * b + (1 - m) * p)


def test_every_run_attaches_its_trainer_to_the_members_and_shows_their_progress_bar_values():
    from lightning.pytorch import Callback
    from torch.utils.data import DataLoader

    task = TaskMixture(
        tasks={"cvrl": CVRL_, "rsp": {"class_path": "RSPNet", "init_args": {"queue_size": 8}}},
        **BACKBONE,
        lr_schedule="constant",
    )
    assert task.progress_bar_logs == ("rsp/rsp_acc",)
    assert all(m.attached_trainer() is None for m in task.tasks.values())
    g = torch.Generator().manual_seed(0)
    views = ["cvrl/video", "cvrl/video2", "rsp/query", "rsp/key_same", "rsp/key_other"]
    data = [
        {k: torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g) for k in views}
        for _ in range(4)
    ]
    seen = []

    class MembersTrainer(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append([m.trainer is trainer for m in pl_module.tasks.values()])

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.append([m.trainer is trainer for m in pl_module.tasks.values()])

    def trainer():
        return quiet_trainer(
            max_steps=2,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            callbacks=[MembersTrainer()],
        )

    fit = trainer()
    fit.fit(task, DataLoader(data, batch_size=2))
    assert seen == [[True, True]] * 2
    assert "train/rsp/rsp_acc_step" in fit.progress_bar_metrics
    assert "train/cvrl/contrast_acc_step" not in fit.progress_bar_metrics
    # a second run with another trainer hands its own trainer to the members
    validate = trainer()
    validate.validate(task, DataLoader(data, batch_size=2), verbose=False)
    assert seen[2:] == [[True, True]] * 2
    assert all(m.trainer is validate for m in task.tasks.values())
    assert "val/rsp/rsp_acc" in validate.progress_bar_metrics


def test_same_seed_builds_the_same_mixture():
    torch.manual_seed(3)
    a = _mixture()
    torch.manual_seed(3)
    b = _mixture()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": {}}, "at least one task"),
        ({"tasks": {"cvrl": CVRL_}, "weights": {"cvlr": 1.0}}, "unknown tasks ['cvlr']"),
        (
            {
                "tasks": {
                    "cvrl": {"class_path": "vssl.tasks.CVRL", "init_args": {"backbone": "r3d_18"}}
                }
            },
            "sets ['backbone']",
        ),
        (
            {"tasks": {"x": {"class_path": "vssl.tasks.Nope"}}},
            "cannot import the task class 'vssl.tasks.Nope'",
        ),
        ({"tasks": {"x": {"class_path": "torch.nn.Linear"}}}, "is not a vssl task"),
        ({"tasks": {"x": {"init_args": {}}}}, "needs a class_path"),
        ({"tasks": {"a/b": CVRL_}}, "cannot name a task"),
    ],
)
def test_bad_mixtures_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(
        ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
    ):
        TaskMixture(**BACKBONE, **kwargs)


def test_cli_trains_a_mixture_and_logs_each_task(tiny_synthetic, tmp_path, run_cli):
    cfg = tiny_config(tiny_synthetic, tmp_path / "cache", max_epochs=8)
    cfg["model"] = {
        "class_path": "vssl.tasks.TaskMixture",
        "init_args": {
            **BACKBONE,
            "optimizer": "adamw",
            "lr": 0.01,
            "weight_decay": 0.0,
            "lr_schedule": "constant",
            "tasks": {"statistics": STATS, "cvrl": CVRL_},
            "weights": {"statistics": 1.0, "cvrl": 0.5},
        },
    }
    cfg["data"]["init_args"].update(batch_size=4, num_workers=0)
    rows = cli_fit_rows(cfg, tmp_path, run_cli, validate=True)
    stats, cvrl, total = (
        column(rows, "train/statistics/loss_epoch"),
        column(rows, "train/cvrl/loss_epoch"),
        column(rows, "train/loss_epoch"),
    )
    assert len(stats) == len(cvrl) == len(total) == 8
    np.testing.assert_allclose(total, np.array(stats) + 0.5 * np.array(cvrl), rtol=1e-4)
    # Mostly CVRL's fall (about 7.8 to 3.9 in a trial run); the statistics loss of a 4-channel CNN
    # on random clips falls slowly (2.21 to about 2.13).
    assert np.mean(total[-3:]) < 0.8 * total[0]
    assert np.mean(stats[-3:]) < stats[0]
    assert column(rows, "val/cvrl/loss") and column(rows, "val/statistics/loss")
