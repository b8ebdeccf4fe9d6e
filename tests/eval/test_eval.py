"""Evaluation protocols: retrieval recall, linear probe, kNN, feature extraction and its cache,
and the ``probe`` / ``retrieve`` commands end to end."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import read_frame_index
from torch import Tensor, nn

from vssl.data import VideoDataModule
from vssl.eval import (
    FeatureSettings,
    MultiCrop,
    crop_offsets,
    extract_features,
    knn_accuracy,
    knn_scores,
    label_fraction_indices,
    load_task,
    probe_accuracy,
    retrieval_recall,
    save_task,
    train_linear_probe,
)
from vssl.eval.finetune import build_finetune_model, multi_clip_accuracy
from vssl.tasks import Rotation, Supervised

T = torch.tensor


# ------------------------------------------------------------------------ retrieval
def test_retrieval_recall_hand_made():
    gallery = T([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    gallery_labels = T([0, 1, 2, 1])  # class 2 has a single member
    queries = T([[1.0, 0.1], [0.0, 3.0], [-2.0, 0.0], [0.2, 1.0]])
    query_labels = T([1, 2, 1, 3])  # class 3 is not in the gallery at all
    # Rank of the first same-class item: q0 -> g0 g2 g1 (3), q1 -> g1 g2 (2), q2 -> g3 (1), q3 never.
    recall = retrieval_recall(queries, query_labels, gallery, gallery_labels, ks=(1, 2, 3, 4, 50))
    assert recall == {1: 0.25, 2: 0.5, 3: 0.75, 4: 0.75, 50: 0.75}


def test_retrieval_ties_ranked_in_gallery_order():
    gallery = T([[0.0, 1.0], [0.0, -1.0], [2.0, 0.0], [1.0, 0.0]])
    # Query [1, 0]: g2 and g3 tie at cosine 1 (g2 first), then g0 and g1 tie at 0 (g0 first).
    q = T([[1.0, 0.0]])
    assert retrieval_recall(q, T([7]), gallery, T([0, 1, 5, 7]), ks=(1, 2)) == {1: 0.0, 2: 1.0}
    assert retrieval_recall(q, T([5]), gallery, T([0, 1, 5, 7]), ks=(1,)) == {1: 1.0}
    assert retrieval_recall(q, T([1]), gallery, T([0, 1, 5, 7]), ks=(3, 4)) == {3: 0.0, 4: 1.0}


def test_retrieval_rejects_bad_input():
    with pytest.raises(ValueError, match="query features have 3 dims but gallery features have 2"):
        retrieval_recall(torch.ones(1, 3), T([0]), torch.ones(2, 2), T([0, 1]))
    with pytest.raises(ValueError, match="gallery labels must be"):
        retrieval_recall(torch.ones(1, 2), T([0]), torch.ones(2, 2), T([0]))
    with pytest.raises(ValueError, match="every k must be >= 1"):
        retrieval_recall(torch.ones(1, 2), T([0]), torch.ones(2, 2), T([0, 1]), ks=(0,))


# ------------------------------------------------------------------------ classifiers
def test_label_fractions_are_stratified_with_one_per_class_at_least():
    labels = torch.cat([torch.zeros(100), torch.ones(50), torch.full((3,), 2)]).long()
    idx = label_fraction_indices(labels, 0.1, seed=1)
    assert torch.bincount(labels[idx]).tolist() == [10, 5, 1]
    assert torch.bincount(labels[label_fraction_indices(labels, 0.01)]).tolist() == [1, 1, 1]
    assert torch.equal(idx, label_fraction_indices(labels, 0.1, seed=1))
    assert idx.unique().numel() == idx.numel()
    with pytest.raises(ValueError, match="label fraction must be in"):
        label_fraction_indices(labels, 0.0)


def _blobs(n: int, classes: int, dim: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.eye(dim)[:classes] * 3
    return centres[labels] + 0.5 * torch.randn(n, dim, generator=gen), labels


def test_linear_probe_separable_features_reach_high_accuracy():
    x, y = _blobs(200, 4, 16, seed=0)
    xt, yt = _blobs(200, 4, 16, seed=1)
    probe = train_linear_probe(x, y, 4, steps=200, lr=0.1, weight_decay=1e-4)
    assert probe_accuracy(probe, xt, yt) >= 0.95
    probe_mb = train_linear_probe(x, y, 4, steps=200, batch_size=32)
    assert probe_accuracy(probe_mb, xt, yt) >= 0.95


def test_linear_probe_random_features_stay_at_chance():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 32, generator=gen), torch.randint(0, 4, (400,), generator=gen)
    xt, yt = torch.randn(2000, 32, generator=gen), torch.randint(0, 4, (2000,), generator=gen)
    probe = train_linear_probe(x, y, 4, steps=200)
    assert probe_accuracy(probe, x, y) > 0.4  # it does fit its training set...
    assert abs(probe_accuracy(probe, xt, yt) - 0.25) < 0.05  # ...but cannot generalise


def test_knn_temperature_weighted_votes():
    train = T([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    labels = T([1, 0, 0])
    test = T([[1.0, 0.0]])  # cosines 1.0, 0.8, 0.6
    scores = knn_scores(train, labels, test, num_classes=2, k=3, temperature=0.1)
    expected = T([[math.exp(8.0) + math.exp(6.0), math.exp(10.0)]])
    torch.testing.assert_close(scores, expected)
    assert knn_accuracy(train, labels, test, T([1]), 2, k=3, temperature=0.1) == 1.0
    # With a high temperature the votes are almost equal and the two class-0 items win.
    assert knn_accuracy(train, labels, test, T([0]), 2, k=3, temperature=100.0) == 1.0
    assert knn_accuracy(train, labels, test, T([1]), 2, k=50, temperature=0.1) == 1.0  # k > train
    x, y = _blobs(200, 4, 16, seed=0)
    xt, yt = _blobs(100, 4, 16, seed=1)
    assert knn_accuracy(x, y, xt, yt, 4, k=10) >= 0.95


# ------------------------------------------------------------------------ feature extraction
def test_crop_offsets_and_three_crops_along_the_long_side():
    assert crop_offsets(40, 24, 1) == [8]
    assert crop_offsets(40, 24, 3) == [0, 8, 16]
    with pytest.raises(ValueError, match="crop size 48 is larger than the frame side 40"):
        crop_offsets(40, 48, 1)
    cols = torch.arange(40, dtype=torch.uint8).expand(24, 40)
    clip = cols.expand(2, 5, 3, 24, 40).contiguous()  # (N=2 clips, T=5, C, H=24, W=40)
    out = MultiCrop(24, crops=3)({"video": clip, "label": T(1)})["video"]
    assert out.shape == (6, 5, 3, 24, 24)
    assert [int(c[0, 0, 0, 0]) for c in out] == [0, 8, 16, 0, 8, 16]
    tall = clip.transpose(-1, -2).contiguous()  # portrait: crops go top, centre, bottom
    out = MultiCrop(24, crops=3)({"video": tall})["video"]
    assert [int(c[0, 0, 0, 0]) for c in out[:3]] == [0, 8, 16]


class FrameReader(nn.Module):
    """A stand-in model whose 'feature' of a clip is the index its first frame shows."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def extract_features(self, video: Tensor) -> Tensor:
        starts = [read_frame_index(clip[0]) for clip in video]
        self.seen += starts
        return torch.tensor(starts, dtype=torch.float32)[:, None]


def _dataset(root: Path, video_factory, frames: int = 40) -> Path:
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        src = video_factory(f"{cls}.mp4", num_frames=frames)
        os.replace(src, root / "train" / cls / "v.mp4")
    return root


def test_clips_are_evenly_spaced_and_averaged(tmp_path, video_factory):
    root = _dataset(tmp_path / "data", video_factory)
    settings = FeatureSettings(
        root=str(root),
        split="train",
        backbone="tiny3d",
        clips=4,
        clip_len=4,
        stride=2,
        crop_size=32,
        decode_size=32,
    )
    reader = FrameReader()
    out = extract_features(settings, model=reader, batch_size=2)
    # 40 frames, a clip spans 7: starts linspace(0, 33, 4) = 0, 11, 22, 33 in both videos.
    assert reader.seen == [0, 11, 22, 33] * 2
    assert out.feats.tolist() == [[16.5], [16.5]]
    assert out.labels.tolist() == [0, 1] and out.classes == ["a", "b"]
    assert [Path(p).parent.name for p in out.paths] == ["a", "b"]


def test_same_video_same_features_and_cache_reuse(tmp_path, video_factory):
    root = _dataset(tmp_path / "data", video_factory, frames=12)
    cache = tmp_path / "cache"
    settings = FeatureSettings(
        root=str(root),
        split="train",
        backbone="tiny3d",
        backbone_kwargs={"width": 4},
        clips=2,
        crops=3,
        clip_len=4,
        stride=1,
        crop_size=24,
        decode_size=32,
    )
    first = extract_features(settings)
    second = extract_features(settings)
    assert first.feats.shape == (2, 16)  # tiny3d width 4: 16 pooled features per video
    torch.testing.assert_close(first.feats, second.feats, rtol=0, atol=0)

    cached = extract_features(settings, cache_dir=cache)
    torch.testing.assert_close(cached.feats, first.feats, rtol=0, atol=0)
    files = list(cache.glob("features-*.pt"))
    assert [f.name for f in files] == [f"features-{settings.key()}.pt"]
    # Mark the cached file: the same settings read it back instead of recomputing.
    stored = torch.load(files[0], weights_only=False)
    stored["feats"] = torch.full_like(stored["feats"], 7.0)
    torch.save(stored, files[0])
    assert extract_features(settings, cache_dir=cache).feats.eq(7.0).all()
    # Other settings get another file and fresh features.
    other = FeatureSettings(**{**settings.__dict__, "clips": 3})
    assert other.key() != settings.key()
    assert not extract_features(other, cache_dir=cache).feats.eq(7.0).any()
    assert len(list(cache.glob("features-*.pt"))) == 2
    # A file under the right name whose stored settings differ is not trusted.
    stored["settings"] = {**stored["settings"], "seed": 99}
    torch.save(stored, files[0])
    assert not extract_features(settings, cache_dir=cache).feats.eq(7.0).any()


def test_random_training_views_are_kept_apart_and_reproducible(tmp_path, video_factory):
    root = _dataset(tmp_path / "data", video_factory, frames=40)
    settings = FeatureSettings(
        root=str(root),
        split="train",
        backbone="tiny3d",
        random_views=6,
        clip_len=4,
        stride=2,
        crop_size=32,
        decode_size=32,
        crop_scale=(0.9, 1.0),
    )
    reader = FrameReader()
    out = extract_features(settings, model=reader)
    assert out.feats.shape == (2, 6, 1)
    assert len(set(reader.seen)) > 1 and all(0 <= s <= 33 for s in reader.seen)
    again = FrameReader()
    torch.testing.assert_close(extract_features(settings, model=again).feats, out.feats)
    assert again.seen == reader.seen  # the seed fixes the random views
    other = FrameReader()
    extract_features(FeatureSettings(**{**settings.__dict__, "seed": 1}), model=other)
    assert other.seen != reader.seen


def test_settings_key_follows_checkpoint_modification(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"x")
    settings = FeatureSettings(root="r", split="train", ckpt=str(ckpt))
    before = settings.key()
    assert FeatureSettings(root="r", split="train", ckpt=str(ckpt)).key() == before
    os.utime(ckpt, ns=(1, 1))
    assert settings.key() != before
    with pytest.raises(ValueError, match="exactly one of a checkpoint"):
        FeatureSettings(root="r", split="train")
    with pytest.raises(ValueError, match="crops must be 1"):
        FeatureSettings(root="r", split="train", backbone="tiny3d", crops=2)


def test_settings_key_ignores_crop_scale_without_random_views():
    common = {"root": "r", "split": "test", "backbone": "tiny3d"}
    plain = FeatureSettings(**common).key()
    # the probe's test clips (crop scale given for its training views) and retrieval's queries
    assert FeatureSettings(**common, crop_scale=(0.3, 1.0)).key() == plain
    views = {**common, "random_views": 3}
    assert FeatureSettings(**views, crop_scale=(0.3, 1.0)).key() != FeatureSettings(**views).key()


def test_load_task_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt: checkpoint not found"):
        load_task(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError, match="bad.ckpt: not a Lightning checkpoint"):
        load_task(bad)


# ------------------------------------------------------------------------ commands
@pytest.fixture(scope="module")
def tiny_ckpt(fit_checkpoint) -> Path:
    """A Supervised tiny3d checkpoint trained for one epoch through the CLI (conftest's)."""
    return fit_checkpoint


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_task_with_and_without_recorded_class(tiny_ckpt, tmp_path):
    task = load_task(tiny_ckpt)
    assert type(task).__name__ == "Supervised" and not task.training
    data = torch.load(tiny_ckpt, weights_only=False)
    data["hyper_parameters"].pop("_class_path", None)
    bare = tmp_path / "bare.ckpt"
    torch.save(data, bare)
    again = load_task(bare)  # found by trying the classes of vssl.tasks
    assert _same_weights(task.backbone, again.backbone)
    tuned = build_finetune_model(4, ckpt=str(tiny_ckpt), lr=0.01)
    assert tuned.hparams.backbone == "tiny3d" and tuned.hparams.backbone_kwargs == {"width": 4}
    assert _same_weights(task.backbone, tuned.backbone)
    assert not _same_weights(
        task.backbone,
        build_finetune_model(4, backbone="tiny3d", backbone_kwargs={"width": 4}).backbone,
    )


def test_save_task_writes_what_load_task_reads_back(tmp_path):
    torch.manual_seed(0)
    task = Rotation(backbone="tiny3d", backbone_kwargs={"width": 4}, online_probe=False)
    path = save_task(task, tmp_path / "rotation.ckpt")
    data = torch.load(path, weights_only=True)
    assert data["hyper_parameters"]["_class_path"] == "vssl.tasks.rotation.Rotation"
    loaded = load_task(path)
    assert type(loaded) is Rotation and not loaded.training
    assert loaded.hparams.backbone_kwargs == {"width": 4}
    assert loaded.state_dict().keys() == task.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in task.state_dict().items())


def test_load_task_refuses_pickled_objects_unless_trusted(tiny_ckpt, tmp_path):
    data = torch.load(tiny_ckpt, weights_only=False)
    data["extra"] = argparse.Namespace(note="any pickled object can run code when loaded")
    pickled = tmp_path / "pickled.ckpt"
    torch.save(data, pickled)
    with pytest.raises(
        ValueError,
        match="pickled.ckpt: cannot be loaded with weights_only=True.*--trust-checkpoint",
    ):
        load_task(pickled)
    assert _same_weights(load_task(pickled, trust=True).backbone, load_task(tiny_ckpt).backbone)


def test_probe_and_retrieve_end_to_end(tiny_synthetic, tiny_ckpt, tmp_path, run_cli):
    ckpt = tiny_ckpt
    data = [
        "--data.root",
        str(tiny_synthetic),
        "--clip-len",
        "4",
        "--stride",
        "2",
        "--crop-size",
        "24",
        "--decode-size",
        "32",
        "--clips",
        "2",
        "--cache-dir",
        str(tmp_path / "feats"),
    ]
    out = run_cli(
        [
            "probe",
            "--ckpt",
            str(ckpt),
            *data,
            "--crops",
            "3",
            "--steps",
            "50",
            "--train-views",
            "2",
            "--out",
            "probe.json",
        ],
        tmp_path,
    )
    assert "linear top-1 (100% labels, 12 videos)" in out
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["protocol"] == "probe" and record["num_train"] == 12 and record["num_test"] == 4
    assert record["test_features"]["ckpt"] == str(ckpt)
    assert record["test_features"]["clips"] == 2 and record["test_features"]["crops"] == 3
    assert record["train_features"]["random_views"] == 2 and record["probe"]["train_views"] == 2
    assert (
        record["train_features"]["split"] == "train" and record["test_features"]["split"] == "test"
    )
    assert record["results"]["train_videos"] == {"1.0": 12, "0.1": 4, "0.01": 4}
    accs = [*record["results"]["linear"].values(), record["results"]["knn"]]
    assert all(a in np.arange(5) / 4 for a in accs)  # 4 test videos

    # A task's whole fit config gives the dataset: its other keys are read and left unused.
    fit_config = tmp_path / "fit.yaml"
    fit_config.write_text(
        "trainer: {max_epochs: 1}\n"
        "model: {class_path: vssl.tasks.Supervised, init_args: {backbone: tiny3d}}\n"
        f"data: {{init_args: {{root: {tiny_synthetic}, batch_size: 2}}}}\n"
    )
    out = run_cli(
        [
            "retrieve",
            "--backbone",
            "tiny3d",
            "--backbone-kwargs",
            '{"width": 4}',
            "--config",
            str(fit_config),
            *data[2:],
            "--ks",
            "1",
            "5",
            "50",
            "--out",
            "r.json",
        ],
        tmp_path,
    )
    assert "R@50" in out
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["num_gallery"] == 12 and record["num_queries"] == 4
    assert record["query_features"]["backbone"] == "tiny3d"
    assert record["query_features"]["root"] == str(tiny_synthetic)
    assert record["results"]["R@50"] == 1.0  # the whole gallery holds every class
    assert 0.0 <= record["results"]["R@1"] <= record["results"]["R@5"] <= 1.0


def test_finetune_end_to_end(tiny_synthetic, tiny_ckpt, tmp_path, run_cli):
    out = run_cli(
        [
            "finetune",
            "--ckpt",
            str(tiny_ckpt),
            "--data.init_args.root",
            str(tiny_synthetic),
            "--clip-len",
            "4",
            "--stride",
            "2",
            "--crop-size",
            "24",
            "--decode-size",
            "32",
            "--no-flip",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--optimizer",
            "adamw",
            "--lr",
            "0.003",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--out",
            "ft.json",
        ],
        tmp_path,
    )
    assert "video top-1" in out
    record = json.loads((tmp_path / "ft.json").read_text())
    assert record["settings"]["ckpt"] == str(tiny_ckpt) and record["settings"]["clips"] == 10
    clip, video = record["results"]["clip_top1"], record["results"]["video_top1"]
    assert clip in np.arange(41) / 40  # 4 test videos x 10 clips
    assert video in np.arange(5) / 4
    assert (tmp_path / "runs" / "finetune" / "version_0" / "metrics.csv").is_file()


def test_multi_clip_accuracy_clip_and_video_top1(tmp_path, video_factory):
    for cls, frames in (("a", 40), ("b", 80)):
        (tmp_path / "data" / "test" / cls).mkdir(parents=True)
        src = video_factory(f"{cls}.mp4", num_frames=frames)
        os.replace(src, tmp_path / "data" / "test" / cls / "v.mp4")
    dm = VideoDataModule(
        root=str(tmp_path / "data"),
        train_split=None,
        val_split="test",
        clip_len=4,
        stride=2,
        crop_size=32,
        decode_size=32,
        cache_dir=str(tmp_path / "cache"),
    )
    model = Supervised(num_classes=2, backbone="tiny3d", backbone_kwargs={"width": 4})
    model.extract_features = FrameReader().extract_features  # feature = first frame's index
    model.head = nn.Linear(1, 2)
    with torch.no_grad():  # class 0 for clips starting before frame 25, class 1 after
        model.head.weight.copy_(T([[-1.0], [1.0]]))
        model.head.bias.copy_(T([25.0, -25.0]))
    # a (class 0, 40 frames): starts 0, 11, 22, 33 -> 3 of 4 clips right; mean probs say class 0.
    # b (class 1, 80 frames): starts 0, 24, 49, 73 -> 2 of 4 right; p(0) = (1 + 0.88 + 0 + 0) / 4.
    acc = multi_clip_accuracy(model, dm, "test", clips=4)
    assert acc == {"clip_top1": 5 / 8, "video_top1": 1.0}


def test_probe_with_the_attentive_head(tiny_synthetic, tiny_ckpt, tmp_path, run_cli):
    """``--head attentive``: token features, V-JEPA's attentive probe per label fraction, its
    settings in the JSON record, and no kNN (it needs pooled features)."""
    out = run_cli(
        [
            "probe",
            "--ckpt",
            str(tiny_ckpt),
            "--data.root",
            str(tiny_synthetic),
            "--clip-len",
            "4",
            "--crop-size",
            "24",
            "--decode-size",
            "32",
            "--clips",
            "2",
            "--crops",
            "1",
            "--train-views",
            "2",
            "--head",
            "attentive",
            "--attentive-epochs",
            "2",
            "--fractions",
            "1.0",
            "0.1",
            "--cache-dir",
            str(tmp_path / "feats"),
            "--out",
            "probe.json",
        ],
        tmp_path,
    )
    assert "attentive top-1 (100% labels, 12 videos)" in out and "kNN" not in out
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["probe"]["head"] == "attentive" and record["probe"]["attentive_epochs"] == 2
    assert "knn" not in record["results"] and "steps" not in record["probe"]
    assert record["results"]["train_videos"] == {"1.0": 12, "0.1": 4}
    assert all(a in np.arange(5) / 4 for a in record["results"]["attentive"].values())
    assert list((tmp_path / "feats").glob("tokens-*.pt"))  # token features, cached


def test_published_weights_in_probe_finetune_and_fit(
    tiny_synthetic, tiny_ckpt, tmp_path, run_cli, capsys
):
    """``--ckpt`` takes weights of another format (a vssl export here, its format read from the
    keys) with the clip defaults; a wrong ``--ckpt-format`` is one line naming the file and the
    format; ``fit --init_weights.path`` starts the backbone from the weights (lr 0: the run's
    checkpoint still holds them)."""
    from cli_helpers import tiny_config

    from vssl.cli import main
    from vssl.export import main as export_main

    assert export_main([str(tiny_ckpt), "--out", str(tmp_path / "w")]) == 0
    weights = tmp_path / "w.safetensors"
    clip = ["--clip-len", "4", "--crop-size", "24", "--decode-size", "32", "--clips", "2"]
    data = ["--data.root", str(tiny_synthetic), *clip, "--cache-dir", str(tmp_path / "feats")]
    out = run_cli(
        ["probe", "--ckpt", str(weights), *data, "--steps", "20", "--out", "p.json"], tmp_path
    )
    assert "linear top-1 (100% labels, 12 videos)" in out
    record = json.loads((tmp_path / "p.json").read_text())
    assert record["test_features"]["ckpt_format"] == "auto"
    assert record["data_settings_from"]["stride"] != "checkpoint"  # an export has no data settings

    capsys.readouterr()
    assert main(["probe", "--ckpt", str(weights), "--ckpt-format", "videomae", *data]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "w.safetensors" in err[0] and "VideoMAE" in err[0], err

    run_cli(
        ["finetune", "--ckpt", str(weights), *data[:-2], "--epochs", "1", "--lr", "0"], tmp_path
    )

    cfg = tiny_config(tiny_synthetic, tmp_path / "cache", max_epochs=1, limit_train_batches=1)
    cfg["model"]["init_args"]["lr"] = 0.0
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = run_cli(["fit", "--config", "run.yaml", "--init_weights.path", str(weights)], tmp_path)
    assert f"backbone initialised from {weights} (auto)" in out
    run = next((tmp_path / "runs").rglob("last.ckpt"))
    trained = load_task(run).backbone.state_dict()
    source = load_task(tiny_ckpt).backbone.state_dict()
    convs = [k for k in source if k.endswith("weight") and source[k].ndim == 5]
    assert convs and all(torch.equal(trained[k], source[k]) for k in convs)
