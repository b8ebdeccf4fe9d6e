"""The shared task base: schedule, lr scaling, online probe, feature extraction; Supervised."""

import math

import pytest
import torch
from torch import nn

from vssl.tasks import StepOutput, Supervised, VSSLTask


def tiny(**kwargs) -> Supervised:
    return Supervised(num_classes=3, backbone="tiny3d", backbone_kwargs={"width": 4}, **kwargs)


def test_lr_factor_warmup_then_cosine():
    task = tiny(warmup_epochs=1, lr_schedule="cosine", min_lr_ratio=0.1)
    total, per_epoch = 110, 10.0
    assert task.lr_factor(0, total, per_epoch) == pytest.approx(0.1)
    assert task.lr_factor(9, total, per_epoch) == pytest.approx(1.0)
    assert task.lr_factor(10, total, per_epoch) == pytest.approx(1.0)
    assert task.lr_factor(60, total, per_epoch) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
    )
    assert task.lr_factor(110, total, per_epoch) == pytest.approx(0.1)


def test_lr_factor_step_schedule():
    task = tiny(lr_schedule="step", lr_milestones=[2, 4], lr_gamma=0.1)
    assert task.lr_factor(19, 100, 10.0) == 1.0
    assert task.lr_factor(20, 100, 10.0) == pytest.approx(0.1)
    assert task.lr_factor(45, 100, 10.0) == pytest.approx(0.01)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        tiny(optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        tiny(lr_schedule="exp")
    with pytest.raises(ValueError, match="Supervised needs num_classes"):
        Supervised(backbone="tiny3d")


def test_supervised_loss_is_cross_entropy_of_the_head():
    torch.manual_seed(0)
    task = tiny(dropout=0.0).eval()
    video = torch.randn(4, 3, 4, 16, 16)
    labels = torch.tensor([0, 1, 2, 1])
    out = task.step({"video": video, "label": labels}, "val")
    logits = task.head(task.backbone(video))
    expected = -torch.log_softmax(logits, 1)[torch.arange(4), labels].mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.features, task.backbone(video))


class Dummy(VSSLTask):
    """A pretext task whose loss only needs the features."""

    def step(self, batch, stage):
        features = self.backbone(batch["video"])
        return StepOutput(features.pow(2).mean(), {}, features)


def test_online_probe_learns_from_labelled_samples_on_detached_features():
    torch.manual_seed(0)
    task = Dummy(num_classes=3, backbone="tiny3d", backbone_kwargs={"width": 4}).eval()
    task.log = lambda *a, **k: None
    batch = {"video": torch.randn(4, 3, 4, 16, 16), "label": torch.tensor([0, -1, 2, -1])}
    task._shared_step(batch, "train").backward()
    got_probe = task.probe.weight.grad.clone()
    got_backbone = [p.grad.clone() for p in task.backbone.parameters()]

    task.zero_grad()
    features = task.backbone(batch["video"])
    features.pow(2).mean().backward()  # the pretext loss alone drives the backbone
    nn.functional.cross_entropy(
        task.probe(features.detach()[[0, 2]]), torch.tensor([0, 2])
    ).backward()
    torch.testing.assert_close(got_probe, task.probe.weight.grad)
    for got, want in zip(got_backbone, (p.grad for p in task.backbone.parameters()), strict=True):
        torch.testing.assert_close(got, want)


def test_probe_has_its_own_optimiser_group():
    task = Dummy(
        num_classes=3,
        backbone="tiny3d",
        backbone_kwargs={"width": 4},
        lr=0.2,
        probe_lr=0.05,
        weight_decay=1e-3,
    )
    main, probe = task.parameter_groups()
    assert (main["lr"], main["weight_decay"]) == (0.2, 1e-3)
    assert (probe["lr"], probe["weight_decay"]) == (0.05, 0.0)
    assert {id(p) for p in probe["params"]} == {id(p) for p in task.probe.parameters()}
    assert len(main["params"]) + len(probe["params"]) == len(list(task.parameters()))


def test_extract_features_normalises_uint8_clips():
    task = tiny().eval()
    clips = torch.randint(0, 256, (2, 4, 3, 16, 16), dtype=torch.uint8)  # (B, T, C, H, W)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
    floats = (clips.permute(0, 2, 1, 3, 4).float() / 255 - mean) / std
    torch.testing.assert_close(task.extract_features(clips), task.backbone(floats))
    assert task.augment.training is False


def test_channels_last_keeps_the_outputs_and_converts_weights_and_inputs():
    torch.manual_seed(0)
    plain = Supervised(backbone="tiny3d", backbone_kwargs={"width": 4}, num_classes=3)
    fast = Supervised(
        backbone="tiny3d", backbone_kwargs={"width": 4}, num_classes=3, channels_last=True
    )
    fast.load_state_dict(plain.state_dict())
    fast.configure_model()
    fast.configure_model()  # idempotent: one hook, one conversion
    conv = [m.weight for m in fast.backbone.modules() if isinstance(m, nn.Conv3d)]
    assert conv and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in conv)
    seen = []
    fast.backbone.trunk[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = torch.randn(2, 3, 4, 16, 16)
    plain.eval(), fast.eval()
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-6)
    assert len(seen) == 1 and seen[0].is_contiguous(memory_format=torch.channels_last_3d)
    assert len(fast.backbone._forward_pre_hooks) == 1


def test_compile_option_compiles_the_backbone_and_keeps_checkpoint_keys():
    task = Supervised(
        backbone="tiny3d",
        backbone_kwargs={"width": 4},
        num_classes=3,
        compile_backbone={"dynamic": False},
    )
    keys = list(task.state_dict())
    assert task.backbone._compiled_call_impl is None
    task.configure_model()
    assert task.backbone._compiled_call_impl is not None
    assert list(task.state_dict()) == keys


class Counting(VSSLTask):
    """Logs each batch's mean ``value`` the vssl way and, as a reference, Lightning's way."""

    def step(self, batch, stage):
        features = self.backbone(batch["video"])
        seen = batch["value"].float().mean()
        if stage == "train":
            self.log("ref/seen", seen, on_step=True, on_epoch=True, batch_size=len(batch["value"]))
        return StepOutput(features.pow(2).mean(), {"seen": seen}, features)


def test_training_values_are_logged_as_lightning_would_log_them(tmp_path):
    import csv

    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    items = [
        {
            "video": torch.randn(3, 4, 16, 16),
            "value": torch.tensor(float(i)),
            "label": torch.tensor(i % 3),
        }
        for i in range(7)
    ]  # batches of 3, 3 and 1: the epoch mean is weighted by samples
    task = Counting(
        num_classes=3, backbone="tiny3d", backbone_kwargs={"width": 2}, optimizer="sgd", lr=0.01
    )
    trainer = Trainer(
        max_epochs=2,
        log_every_n_steps=2,
        logger=CSVLogger(tmp_path, name="t"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, DataLoader(items, batch_size=3, shuffle=True))
    rows = list(csv.DictReader((tmp_path / "t" / "version_0" / "metrics.csv").open()))
    steps = [(r["step"], r["train/seen_step"]) for r in rows if r.get("train/seen_step")]
    assert steps == [(r["step"], r["ref/seen_step"]) for r in rows if r.get("ref/seen_step")]
    assert [s for s, _ in steps] == ["1", "3", "5"]  # every 2nd of the 6 steps
    epochs = [float(r["train/seen_epoch"]) for r in rows if r.get("train/seen_epoch")]
    assert epochs == pytest.approx(
        [float(r["ref/seen_epoch"]) for r in rows if r.get("ref/seen_epoch")]
    )
    assert epochs == pytest.approx([3.0, 3.0])  # the mean of 0..6 over the samples
    probe = [float(r["train/probe_acc_epoch"]) for r in rows if r.get("train/probe_acc_epoch")]
    assert len(probe) == 2 and all(round(7 * p) == pytest.approx(7 * p) for p in probe)  # hits / 7


def test_running_training_sums_survive_a_checkpoint():
    task = Dummy(backbone="tiny3d", backbone_kwargs={"width": 2})
    task._log_train_values({"x": (torch.tensor(0.5), 4), "y": (torch.tensor(2.0), 1)})
    task._log_train_values({"x": (torch.tensor(1.0), 2)})
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    assert checkpoint["vssl_train_sums"] == {"x": (4.0, 6), "y": (2.0, 1)}
    again = Dummy(backbone="tiny3d", backbone_kwargs={"width": 2})
    again.on_load_checkpoint(checkpoint)
    assert again._train_sums == {"x": (4.0, 6), "y": (2.0, 1)}


def test_adam_betas_reach_every_group_and_bad_betas_are_refused():
    task = tiny(optimizer="adamw", betas=(0.8, 0.95), lr=1e-3)
    task.effective_lr = lambda: 1e-3
    groups = task.parameter_groups()
    assert groups and all(g["betas"] == (0.8, 0.95) for g in groups)
    assert torch.optim.AdamW(groups).param_groups[0]["betas"] == (0.8, 0.95)
    assert all(g["betas"] == (0.9, 0.999) for g in tiny(optimizer="adam").parameter_groups())
    assert all("betas" not in g for g in tiny(optimizer="sgd").parameter_groups())
    with pytest.raises(
        ValueError, match=r"betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)"
    ):
        tiny(optimizer="adamw", betas=(0.9, 1.0))
