"""Distillation: frozen teachers from vssl checkpoints, a student that learns their features."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vssl.errors import MissingInputError, UserError
from vssl.eval.features import load_task, save_task
from vssl.heads import DistillationProjectionHead
from vssl.tasks import Distillation, Rotation
from vssl.tasks.distillation import distillation_loss


def save_teacher(path: Path, width: int, seed: int = 0) -> Path:
    """A Rotation tiny3d task of ``width`` saved as LightningCLI saves a checkpoint (the class
    path and instantiator in the hyperparameters), with batch-norm statistics moved off their
    initial values so that a teacher put in training mode would visibly change them."""
    torch.manual_seed(seed)
    task = Rotation(backbone="tiny3d", backbone_kwargs={"width": width}, online_probe=False)
    for module in task.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return save_task(task, path)


def clips(n: int, seed: int) -> Tensor:
    """``n`` uint8 clips ``(n, 4, 3, 24, 24)``: 4 frames of 24 px, smooth random patterns."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 4, 3, 6, 6, generator=g) * 255
    big = nn.functional.interpolate(small.flatten(0, 1), size=(24, 24), mode="bilinear")
    return big.reshape(n, 4, 3, 24, 24).round().to(torch.uint8)


class Clips(torch.utils.data.Dataset):
    def __init__(self, videos: Tensor):
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"video": self.videos[i]}


def fit(task: Distillation, root: Path, steps: int, seed: int = 0) -> Trainer:
    seed_everything(seed)
    loader = DataLoader(Clips(clips(32, seed=1)), batch_size=8, shuffle=True)
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(task, train_dataloaders=loader)
    return trainer


def student(teachers: list[Path], width: int = 8, **kwargs) -> Distillation:
    torch.manual_seed(1)
    return Distillation(
        teachers=[str(t) for t in teachers],
        backbone="tiny3d",
        backbone_kwargs={"width": width},
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.0,
        lr_schedule="constant",
        **kwargs,
    )


def held_out_cosine(task: Distillation) -> float:
    """Mean cosine between the projected student and the teacher on clips not trained on."""
    task.eval()
    with torch.no_grad():
        video = task._normalise(clips(16, seed=2))
        s = task.projections[0](task.backbone(video))
        z = task.teachers[0](video)
    return float(nn.functional.cosine_similarity(s, z, dim=1).mean())


@pytest.fixture
def teacher16(tmp_path: Path) -> Path:
    return save_teacher(tmp_path / "teacher16.ckpt", width=16)


def test_student_learns_the_teachers_features_and_the_teacher_stays_as_loaded(
    teacher16: Path, tmp_path: Path
) -> None:
    task = student([teacher16])
    loaded = {
        k.removeprefix("backbone."): v.clone()
        for k, v in torch.load(teacher16, weights_only=True)["state_dict"].items()
        if k.startswith("backbone.")
    }
    before = held_out_cosine(task)
    trainer = fit(task, tmp_path, steps=40)
    after = held_out_cosine(task)
    assert after > before + 0.05, (before, after)
    assert after > 0.95, after
    # the teacher: bit for bit the checkpoint's backbone (weights and batch-norm statistics)
    state = task.teachers[0].state_dict()
    assert state.keys() == loaded.keys()
    assert all(torch.equal(state[k], loaded[k]) for k in loaded)
    # no gradients, not in the optimiser, in eval mode while the student trains
    teacher_params = list(task.teachers.parameters())
    assert teacher_params and all(not p.requires_grad and p.grad is None for p in teacher_params)
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in teacher_params}
    assert {id(p) for p in task.projections.parameters()} <= in_optimizer
    task.train()
    assert task.backbone.training and not any(m.training for m in task.teachers.modules())


def test_checkpoint_leaves_the_teacher_out_and_loads_back(
    teacher16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    task = student([Path(teacher16.name)])  # a relative path, stored as an absolute one
    trainer = fit(task, tmp_path, steps=3)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert not [k for k in saved if k.startswith("teachers.")]
    assert "projections.0.weight" in saved and "backbone.trunk.0.weight" in saved
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert hparams["teachers"] == [str(teacher16.resolve())]
    monkeypatch.chdir(tmp_path.parent)
    for loaded in (
        Distillation.load_from_checkpoint(path, map_location="cpu", weights_only=True),
        load_task(path),
    ):
        assert isinstance(loaded, Distillation)
        mine, theirs = task.state_dict(), loaded.state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_same_seed_gives_the_same_student(teacher16: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("one", "two"):
        task = student([teacher16])
        fit(task, tmp_path / name, steps=3)
        runs.append(task.backbone.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_projection_only_where_the_sizes_differ(teacher16: Path, tmp_path: Path) -> None:
    teacher8 = save_teacher(tmp_path / "teacher8.ckpt", width=8)
    task = student([teacher16, teacher8], width=8)
    wide, same = task.projections
    assert isinstance(wide, DistillationProjectionHead)
    assert (wide.in_features, wide.out_features) == (32, 64)
    assert isinstance(same, nn.Identity)
    out = task.step({"video": task._normalise(clips(2, seed=3))}, "train")
    assert math.isfinite(float(out.loss.detach())) and out.features.shape == (2, 32)
    assert set(out.logs) == {"teacher0_cos", "teacher1_cos"}


def test_loss_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines 1 and 1/sqrt(2): (0 + 2 - sqrt(2)) / 2
    assert float(distillation_loss(s, z)) == pytest.approx((2 - math.sqrt(2)) / 2)
    # raw squared errors 4, 0, 1, 1 over 4 values
    assert float(distillation_loss(s, z, "mse")) == pytest.approx(6 / 4)
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(s, z[:, :1])


class Fixed(nn.Module):
    """A stand-in backbone whose features are given."""

    def __init__(self, features: Tensor):
        super().__init__()
        self.features, self.out_dim = features, features.shape[1]

    def forward(self, video: Tensor) -> Tensor:
        return self.features


def test_two_teachers_weighted_by_hand(teacher16: Path) -> None:
    task = student([teacher16, teacher16], width=16, weights=[3.0, 1.0])
    task.backbone = Fixed(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    task.teachers = nn.ModuleList(
        [
            Fixed(torch.tensor([[1.0, 0.0], [1.0, 1.0]])),
            Fixed(torch.tensor([[-1.0, 0.0], [0.0, 5.0]])),
        ]
    )
    out = task.step({"video": torch.zeros(2, 3, 4, 24, 24)}, "train")
    # teacher 0: cosines 1, 1/sqrt(2) -> (2 - sqrt(2)) / 2; teacher 1: cosines -1, 1 -> 2
    expected = 0.75 * (2 - math.sqrt(2)) / 2 + 0.25 * 2.0
    assert float(out.loss.detach()) == pytest.approx(expected)
    assert float(out.logs["teacher1_cos"]) == pytest.approx(0.0)


def test_bad_teachers_and_settings_are_named(teacher16: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(MissingInputError, match=rf"teacher 1: {missing}: checkpoint not found"):
        student([teacher16, missing])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match=rf"teacher 0: {text}: not a PyTorch checkpoint"):
        student([text])
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, empty)
    with pytest.raises(UserError, match=rf"teacher 0: {empty}: no vssl task class could load"):
        student([empty])
    with pytest.raises(UserError, match="a list of teacher checkpoint paths"):
        student([])
    with pytest.raises(UserError, match=r"one positive number per teacher \(1\)"):
        student([teacher16], weights=[1.0, 2.0])
    with pytest.raises(UserError, match="loss must be one of"):
        student([teacher16], loss="kl")


def test_logit_loss_by_hand() -> None:
    from vssl.tasks.distillation import logit_distillation_loss

    student = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    # row 0: KL([3/4, 1/4] || [1/2, 1/2]) = 3/4 ln(3/2) + 1/4 ln(1/2); row 1: 0
    kl = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2
    assert float(logit_distillation_loss(student, teacher)) == pytest.approx(kl)
    # T = 2 on doubled teacher logits: the same softmaxes, times T^2
    assert float(logit_distillation_loss(student, 2 * teacher, 2.0)) == pytest.approx(4 * kl)
    assert float(logit_distillation_loss(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="differ in shape"):
        logit_distillation_loss(student, teacher[:, :1])


def test_logits_match_the_teachers_pretext_head(teacher16: Path, tmp_path: Path) -> None:
    task = student([teacher16], match="logits", temperature=2.0)
    head = task.logit_heads[0]["head"]  # Rotation's classifier: 4 rotations
    assert (head.in_features, head.out_features) == (32, 4)
    frozen = {k: v.clone() for k, v in task.teacher_heads.state_dict().items()}
    video = task._normalise(clips(8, seed=2))
    task.eval()  # the student's batch norm on its running statistics, as the teacher's
    with torch.no_grad():
        z_t = task.teacher_heads[0]["head"](task.teachers[0](video))
        z_s = head(task.backbone(video))
        p_t, log_p_s = (z_t / 2).softmax(1), (z_s / 2).log_softmax(1)
        by_hand = 4 * float((p_t * (p_t.log() - log_p_s)).sum(1).mean())
        first = task.step({"video": video}, "val")
    assert float(first.loss) == pytest.approx(by_hand, rel=1e-5)
    assert float(first.logs["teacher0_kl"]) == pytest.approx(by_hand, rel=1e-5)
    trainer = fit(task, tmp_path, steps=12)
    task.eval()
    with torch.no_grad():
        assert float(task.step({"video": video}, "val").loss) < 0.5 * by_hand
    state = task.teacher_heads.state_dict()
    assert all(torch.equal(state[k], frozen[k]) for k in frozen)
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in task.teacher_heads.parameters()}
    assert {id(p) for p in task.logit_heads.parameters()} <= in_optimizer
    task.train()
    assert not any(m.training for m in task.teacher_heads.modules())
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert not [k for k in saved if k.startswith(("teachers.", "teacher_heads."))]
    assert "logit_heads.0.head.weight" in saved
    loaded = load_task(path)
    assert isinstance(loaded, Distillation) and loaded.match == "logits"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in task.state_dict().items())


def test_both_adds_the_feature_and_the_logit_losses(teacher16: Path) -> None:
    from vssl.tasks.distillation import logit_distillation_loss

    task = student([teacher16], match="both", temperature=3.0).eval()
    video = task._normalise(clips(4, seed=5))
    with torch.no_grad():
        out = task.step({"video": video}, "val")
        s, z = task.backbone(video), task.teachers[0](video)
        soft = task.teacher_heads[0]["head"](z)
        features = distillation_loss(task.projections[0](s), z)
        logits = logit_distillation_loss(task.logit_heads[0]["head"](s), soft, 3.0)
    assert float(out.loss) == pytest.approx(float(features + logits), rel=1e-5)
    assert set(out.logs) == {"teacher0_cos", "teacher0_kl"}
    only_logits = student([teacher16], match="logits")
    assert isinstance(only_logits.projections[0], nn.Identity)  # nothing left untrained


def test_logit_settings_and_teachers_without_a_clip_head_are_named(teacher16: Path) -> None:
    from vssl.tasks import ClipOrder
    from vssl.tasks.distillation import pretext_heads

    with pytest.raises(UserError, match=r"match must be one of \['features', 'logits', 'both'\]"):
        student([teacher16], match="logit")
    with pytest.raises(UserError, match="temperature must be positive, got 0"):
        student([teacher16], match="logits", temperature=0)
    vcop = ClipOrder(backbone="tiny3d", backbone_kwargs={"width": 4}, online_probe=False)
    with pytest.raises(UserError, match=r"teacher 2: vcop.ckpt: a ClipOrder checkpoint has no"):
        pretext_heads(vcop, "vcop.ckpt", 2)
