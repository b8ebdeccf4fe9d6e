"""The evaluation commands' data defaults: clip length, stride, crop, decode size and flip come
from the checkpoint's training data unless given; finetune's run folder; progress bars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vssl.callbacks import PACKAGES, package_versions
from vssl.commands import finetune, probe, retrieve
from vssl.commands.common import clip_settings, data_block, parse
from vssl.commands.finetune import main as finetune_main
from vssl.commands.probe import main as probe_main
from vssl.eval import FeatureSettings, extract_features
from vssl.eval.features import (
    checkpoint_data_settings,
    describe_data_settings,
    resolve_data_settings,
)

DATA_KEYS = ("clip_len", "stride", "crop_size", "decode_size", "flip")


@pytest.fixture(scope="module")
def flip_ckpt(fit_checkpoint) -> Path:
    """A tiny3d checkpoint from ``vssl fit`` on 4-frame clips at stride 2, 24 px crops of
    32 px decodes, flipped: every data setting differs from the evaluation defaults
    (conftest's, trained once per session)."""
    return fit_checkpoint


def _probe(ckpt: Path, root: Path, tmp_path: Path, *options: str) -> dict:
    out = tmp_path / "probe.json"
    argv = [
        "--ckpt",
        str(ckpt),
        "--data.root",
        str(root),
        "--clips",
        "1",
        "--crops",
        "1",
        "--train-views",
        "1",
        "--steps",
        "5",
        "--fractions",
        "1.0",
        "--cache-dir",
        str(tmp_path / "feats"),
        "--out",
        str(out),
        *options,
    ]
    assert probe_main(argv) == 0
    return json.loads(out.read_text())


def _data(features: dict) -> dict:
    return {key: features[key] for key in DATA_KEYS}


def test_checkpoint_records_the_training_data_settings(flip_ckpt):
    assert checkpoint_data_settings(flip_ckpt) == {
        "clip_len": 4,
        "stride": 2,
        "crop_size": 24,
        "decode_size": 32,
        "flip": True,
    }


def test_probe_uses_the_checkpoint_data_settings(flip_ckpt, tiny_synthetic, tmp_path, capsys):
    record = _probe(flip_ckpt, tiny_synthetic, tmp_path)
    line = (
        "vssl probe: clips 4x2, crop 24, decode 32, flip on (from the checkpoint's data settings)"
    )
    assert line in capsys.readouterr().out.splitlines()
    trained = {"clip_len": 4, "stride": 2, "crop_size": 24, "decode_size": 32, "flip": True}
    assert _data(record["train_features"]) == trained
    assert _data(record["test_features"]) == trained
    assert set(record["data_settings_from"].values()) == {"the checkpoint's data settings"}


def test_explicit_options_override_the_checkpoint(flip_ckpt, tiny_synthetic, tmp_path, capsys):
    record = _probe(
        flip_ckpt, tiny_synthetic, tmp_path, "--clip-len", "2", "--crop-size", "16", "--no-flip"
    )
    line = (
        "vssl probe: clips 2x2, crop 16, decode 32, flip off (clip length, crop, flip from "
        "the command line; stride, decode from the checkpoint's data settings)"
    )
    assert line in capsys.readouterr().out.splitlines()
    assert _data(record["train_features"]) == {
        "clip_len": 2,
        "stride": 2,
        "crop_size": 16,
        "decode_size": 32,
        "flip": False,
    }
    assert record["data_settings_from"]["clip_len"] == "the command line"
    assert record["data_settings_from"]["decode_size"] == "the checkpoint's data settings"


def test_checkpoint_without_data_settings_falls_back_and_says_so(
    flip_ckpt, tiny_synthetic, tmp_path, capsys
):
    data = torch.load(flip_ckpt, weights_only=True)
    del data["datamodule_hyper_parameters"]  # as a checkpoint written without a datamodule
    bare = tmp_path / "bare.ckpt"
    torch.save(data, bare)
    assert checkpoint_data_settings(bare) is None
    # The default 112 px crops of 128 px decodes would work too, only slower.
    record = _probe(bare, tiny_synthetic, tmp_path, "--crop-size", "24", "--decode-size", "32")
    line = (
        "vssl probe: clips 16x1, crop 24, decode 32, flip off (clip length, stride, flip from "
        "the defaults: the checkpoint records no data settings; crop, decode from the command "
        "line)"
    )
    assert line in capsys.readouterr().out.splitlines()
    assert _data(record["test_features"]) == {
        "clip_len": 16,
        "stride": 1,
        "crop_size": 24,
        "decode_size": 32,
        "flip": False,
    }


def test_settings_missing_from_the_checkpoint_take_the_defaults(flip_ckpt, tmp_path):
    data = torch.load(flip_ckpt, weights_only=True)
    del data["datamodule_hyper_parameters"]["flip"], data["datamodule_hyper_parameters"]["stride"]
    partial = tmp_path / "partial.ckpt"
    torch.save(data, partial)
    defaults = {"clip_len": 16, "stride": 1, "crop_size": 112, "decode_size": 128, "flip": True}
    values, sources = resolve_data_settings({"crop_size": 8}, partial, defaults)
    assert values == {"clip_len": 4, "stride": 1, "crop_size": 8, "decode_size": 32, "flip": True}
    assert describe_data_settings("vssl finetune", values, sources) == (
        "vssl finetune: clips 4x1, crop 8, decode 32, flip on (clip length, decode from the "
        "checkpoint's data settings; stride, flip from the defaults: not in the checkpoint's "
        "data settings; crop from the command line)"
    )


def _clip_settings(command, argv: list[str], flip: bool | None) -> tuple[dict, dict]:
    """A command's clip settings as its ``main`` resolves them from ``argv``."""
    args, given = parse(command.build_parser(), argv)
    _, data_given = data_block(args, given)
    return clip_settings(command.PROG, args, given, data_given, flip=flip)


def test_random_init_keeps_each_commands_defaults(capsys, tmp_path):
    argv = ["--backbone", "tiny3d", "--data.root", str(tmp_path)]
    values, sources = _clip_settings(finetune, [*argv, "--decode-size", "none"], flip=True)
    assert values == {
        "clip_len": 16,
        "stride": 1,
        "crop_size": 112,
        "decode_size": None,
        "flip": True,
    }
    assert sources["decode_size"] == "the command line"
    assert capsys.readouterr().out == (
        "vssl finetune: clips 16x1, crop 112, decode full size, flip on (clip length, stride, "
        "crop, flip from the defaults: random init, no checkpoint; decode from the command line)\n"
    )
    values, _ = _clip_settings(retrieve, argv, flip=None)
    assert "flip" not in values
    assert capsys.readouterr().out == (
        "vssl retrieve: clips 16x1, crop 112, decode 128 "
        "(from the defaults: random init, no checkpoint)\n"
    )


def test_a_data_blocks_clip_settings_come_before_the_checkpoints(flip_ckpt, tmp_path, capsys):
    # A fit config's data block (as a task's config gives it) sets the clip length and the
    # flip; the command line sets the crop; the rest is the checkpoint's.
    config = tmp_path / "fit.yaml"
    config.write_text(
        "trainer: {max_epochs: 3}\n"
        "model: {class_path: vssl.tasks.Supervised, init_args: {backbone: tiny3d}}\n"
        f"data: {{init_args: {{root: {tmp_path}, clip_len: 8, flip: false, batch_size: 2}}}}\n"
    )
    argv = ["--ckpt", str(flip_ckpt), "--config", str(config), "--crop-size", "16"]
    values, sources = _clip_settings(probe, argv, flip=False)
    assert values == {"clip_len": 8, "stride": 2, "crop_size": 16, "decode_size": 32, "flip": False}
    assert sources == {
        "clip_len": "the data block (data.init_args)",
        "stride": "the checkpoint's data settings",
        "crop_size": "the command line",
        "decode_size": "the checkpoint's data settings",
        "flip": "the data block (data.init_args)",
    }
    assert capsys.readouterr().out == (
        "vssl probe: clips 8x2, crop 16, decode 32, flip off (clip length, flip from the data "
        "block (data.init_args); stride, decode from the checkpoint's data settings; crop from "
        "the command line)\n"
    )


def test_finetune_writes_a_new_version_folder_each_run(flip_ckpt, tiny_synthetic, tmp_path, capsys):
    argv = [
        "--ckpt",
        str(flip_ckpt),
        "--data.root",
        str(tiny_synthetic),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--clips",
        "1",
        "--accelerator",
        "cpu",
        "--devices",
        "1",
        "--run-dir",
        str(tmp_path / "runs"),
    ]
    assert finetune_main([*argv, "--crop-size", "16"]) == 0
    assert finetune_main(argv) == 0
    out = capsys.readouterr().out
    base = tmp_path / "runs" / "finetune"
    assert sorted(p.name for p in base.iterdir()) == ["version_0", "version_1"]
    for version, crop in (("version_0", 16), ("version_1", 24)):
        folder = base / version
        assert f"vssl finetune: logs and settings in {folder}" in out
        settings = json.loads((folder / "settings.json").read_text())
        assert settings["ckpt"] == str(flip_ckpt) and settings["epochs"] == 1
        assert _data(settings) == {
            "clip_len": 4,
            "stride": 2,
            "crop_size": crop,
            "decode_size": 32,
            "flip": True,
        }
        versions = json.loads((folder / "versions.json").read_text())
        assert versions == package_versions() and set(PACKAGES) <= set(versions)
        (ckpt,) = (folder / "checkpoints").glob("*.ckpt")
        assert f"vssl finetune: checkpoint {ckpt}" in out
    assert "vssl finetune: clips 4x2, crop 24, decode 32, flip on (from the checkpoint's" in out


def test_feature_progress_bar_on_request_and_off_when_not_a_terminal(tiny_synthetic, capsys):
    settings = FeatureSettings(
        root=str(tiny_synthetic),
        split="test",
        backbone="tiny3d",
        backbone_kwargs={"width": 4},
        clips=1,
        clip_len=4,
        crop_size=24,
        decode_size=32,
    )
    first = extract_features(settings, batch_size=2, progress=True)
    assert "features of test (4 videos)" in capsys.readouterr().err
    second = extract_features(settings, batch_size=2)  # stderr is captured: not a terminal
    assert capsys.readouterr().err == ""
    torch.testing.assert_close(first.feats, second.feats, rtol=0, atol=0)
