"""Rotation (3D RotNet): rotated clips are torch.rot90 of the originals with the label k, all
four rotations per clip, the sampled rotation target, errors, the loss by hand, and training
through the CLI."""

import numpy as np
import pytest
import torch
from cli_helpers import tiny_config
from torch.nn import functional as F
from training_helpers import cli_fit_rows, column

from vssl.data.sampling import ClipSpec, RandomClip, UniformClips
from vssl.tasks import Rotation
from vssl.tasks.rotation import RotationSampler, all_rotations, rotate_clips

TINY = {"backbone": "tiny3d", "backbone_kwargs": {"width": 4}}


def test_each_rotation_is_rot90_by_its_label():
    video = torch.randn(4, 3, 2, 5, 5)
    labels = torch.tensor([0, 1, 2, 3])
    rotated = rotate_clips(video, labels)
    for k in range(4):
        assert torch.equal(rotated[k], torch.rot90(video[k], k, dims=(-2, -1)))
    # by hand on one frame: a quarter turn counter-clockwise as displayed
    frame = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 1, 2, 2)
    assert rotate_clips(frame, torch.tensor([1]))[0, 0, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]
    assert rotate_clips(frame, torch.tensor([2]))[0, 0, 0].tolist() == [[4.0, 3.0], [2.0, 1.0]]


def test_all_rotations_holds_each_clip_four_times():
    video = torch.randn(3, 3, 2, 4, 4)
    clips, labels = all_rotations(video)
    assert clips.shape == (12, 3, 2, 4, 4)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for row in range(12):
        k, b = divmod(row, 3)
        assert torch.equal(clips[row], torch.rot90(video[b], k, dims=(-2, -1)))
    task = Rotation(**TINY).eval()
    seen, got = task.rotated_batch({"video": video})
    assert torch.equal(seen, clips) and torch.equal(got, labels)


def test_one_rotation_per_clip_uses_the_sampled_labels():
    task = Rotation(all_rotations=False, **TINY).eval()
    video = torch.randn(4, 3, 2, 4, 4)
    labels = torch.tensor([3, 0, 1, 2])
    clips, got = task.rotated_batch({"video": video, "rotation": labels})
    assert torch.equal(got, labels)
    for b, k in enumerate(labels.tolist()):
        assert torch.equal(clips[b], torch.rot90(video[b], k, dims=(-2, -1)))
    with pytest.raises(KeyError, match="no 'rotation' labels"):
        task.rotated_batch({"video": video})


def test_sampler_draws_a_uniform_rotation_target():
    spec = ClipSpec(clip_len=4, stride=2)
    assert isinstance(Rotation(**TINY).clip_sampler("train", spec), RandomClip)
    sampler = Rotation(all_rotations=False, **TINY).clip_sampler("train", spec)
    assert isinstance(sampler, RotationSampler)
    assert isinstance(
        Rotation(all_rotations=False, **TINY).clip_sampler("val", spec).clips, UniformClips
    )
    rng = np.random.default_rng(0)
    draws = [sampler(50, rng) for _ in range(4000)]
    assert all(d["rotation"].ndim == 0 and d["video"].shape == (4,) for d in draws)
    counts = np.bincount([int(d["rotation"]) for d in draws], minlength=4)
    assert counts.sum() == 4000 and np.all(np.abs(counts - 1000) < 110)
    # the same generator state gives the same clip and rotation (seeded by the dataset)
    a, b = sampler(50, np.random.default_rng(7)), sampler(50, np.random.default_rng(7))
    assert int(a["rotation"]) == int(b["rotation"]) and a["video"].tolist() == b["video"].tolist()


def test_non_square_clips_are_refused():
    with pytest.raises(ValueError, match="Rotation needs square clips"):
        all_rotations(torch.zeros(1, 3, 2, 4, 6))
    with pytest.raises(ValueError, match="Rotation needs square clips"):
        rotate_clips(torch.zeros(1, 3, 2, 6, 4), torch.tensor([1]))


def test_loss_and_probe_features_by_hand():
    torch.manual_seed(0)
    task = Rotation(**TINY, num_classes=3).eval()
    video = torch.randn(2, 3, 4, 8, 8)
    out = task.step({"video": video}, "val")
    clips, labels = all_rotations(video)
    features = task.backbone(clips)
    logits = task.head(features)
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert out.logs["rotation_acc"].item() == (logits.argmax(1) == labels).float().mean().item()
    assert torch.allclose(out.features, task.backbone(video), atol=1e-6)  # the unrotated clips
    single = Rotation(all_rotations=False, **TINY, num_classes=3).eval()
    out = single.step({"video": video, "rotation": torch.tensor([1, 2])}, "val")
    assert torch.allclose(out.features, single.backbone(video), atol=1e-6)


def test_cli_training_lowers_the_rotation_loss(tiny_synthetic, tmp_path, run_cli):
    # The synthetic scenes are isotropic, so this is the network learning the 12 training
    # videos' upright orientation (see configs/rotation/synthetic_tiny.yaml): the loss must fall.
    cfg = tiny_config(tiny_synthetic, tmp_path / "cache", max_epochs=20)
    cfg["model"] = {
        "class_path": "vssl.tasks.Rotation",
        "init_args": {**TINY, "optimizer": "adamw", "lr": 0.01, "lr_schedule": "constant"},
    }
    cfg["data"]["init_args"].update(clip_len=2, stride=2, batch_size=4, crop_scale=[1.0, 1.0])
    rows = cli_fit_rows(cfg, tmp_path, run_cli, validate=False)
    losses, acc = column(rows, "train/loss_epoch"), column(rows, "train/rotation_acc_epoch")
    assert len(losses) == len(acc) == 20
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    assert np.mean(acc[-3:]) > 0.35, acc
