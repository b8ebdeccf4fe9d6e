"""Backbone export: a real checkpoint from the CLI, reload, torchvision compatibility, no overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vssl
import vssl.export
from vssl.errors import UserError
from vssl.export import (
    ExportError,
    export_backbone,
    load_into,
    load_torchvision,
    main,
    read_export,
)
from vssl.tasks import Supervised


@pytest.fixture(scope="module")
def tiny_checkpoint(fit_checkpoint: Path) -> Path:
    """A checkpoint written by ``python -m vssl fit`` after one epoch of Supervised tiny3d
    (conftest's, trained once per session)."""
    return fit_checkpoint


def _checkpoint_of(task: torch.nn.Module, path: Path) -> Path:
    """Save ``task`` in the layout Lightning checkpoints use (state_dict + hyper_parameters)."""
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "epoch": 0,
            "global_step": 0,
        },
        path,
    )
    return path


def test_cli_export_then_load_gives_identical_outputs(
    tiny_checkpoint: Path, tmp_path: Path, run_cli
) -> None:
    run_cli(["export", str(tiny_checkpoint), "--out", str(tmp_path / "tiny")], cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tiny.json",
        "tiny.pt",
        "tiny.safetensors",
    ]
    meta = json.loads((tmp_path / "tiny.json").read_text())
    assert meta["backbone"] == "tiny3d"
    assert meta["backbone_kwargs"] == {"width": 4}
    assert meta["out_dim"] == 16
    assert meta["vssl_version"] == vssl.__version__
    assert meta["source_checkpoint"] == str(tiny_checkpoint.resolve())
    assert meta["torchvision_model"] is None

    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    task = Supervised(
        **{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    )
    task.load_state_dict(ckpt["state_dict"])
    task.eval()
    clip = torch.randn(2, 3, 4, 24, 24)
    with torch.no_grad():
        expected = task.backbone(clip)
        for name in ("tiny.safetensors", "tiny.pt", "tiny.json"):
            loaded = vssl.load_backbone(str(tmp_path / name))
            assert torch.equal(loaded(clip), expected), name
    # the trained weights, not a fresh initialisation
    fresh = vssl.backbones.build("tiny3d", width=4).eval()
    assert not torch.equal(fresh(clip), expected)


@pytest.mark.parametrize("arch", ["r3d_18", "r2plus1d_18"])
def test_torchvision_architecture_loads_into_torchvision(arch: str, tmp_path: Path) -> None:
    from torchvision.models import video

    torch.manual_seed(0)
    task = Supervised(backbone=arch, num_classes=5).eval()
    ckpt = _checkpoint_of(task, tmp_path / "task.ckpt")
    (weights, meta_file) = export_backbone(ckpt, tmp_path / f"{arch}.safetensors")
    assert meta_file.name == f"{arch}.json"
    model = load_torchvision(weights).eval()
    assert isinstance(model, video.VideoResNet)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        # torchvision's forward up to the pooled features equals the backbone's features
        x = model.stem(clip)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = layer(x)
        torchvision_features = model.avgpool(x).flatten(1)
        assert torch.allclose(torchvision_features, task.backbone(clip), atol=1e-5)
    # into a model the user built, too; a wrong architecture is refused, naming the file
    load_torchvision(weights, video.__dict__[arch](num_classes=3))
    other = "mc3_18" if arch == "r3d_18" else "r3d_18"
    with pytest.raises(ExportError, match=f"{arch}.safetensors.*does not fit VideoResNet"):
        load_torchvision(weights, video.__dict__[other]())


def test_pytorchvideo_architecture_loads_into_pytorchvideo(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore's torch.jit.script at import
        from pytorchvideo.models.x3d import create_x3d

    torch.manual_seed(0)
    task = Supervised(backbone="x3d_xs", num_classes=5).eval()
    (weights, _) = export_backbone(_checkpoint_of(task, tmp_path / "x3d.ckpt"), tmp_path / "x3d.pt")
    net = load_into(
        weights,
        create_x3d(input_clip_length=4, input_crop_size=160, depth_factor=2.2),
        head="blocks.5",
    ).eval()
    clip = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        x = clip
        for block in net.blocks[:5]:
            x = block(x)
        pool = net.blocks[5].pool
        x = pool.pre_act(pool.pre_norm(pool.pre_conv(x)))  # conv5, the backbone's last layer
        assert torch.allclose(x, task.backbone.forward_features(clip), atol=1e-5)
    with pytest.raises(ExportError, match="x3d.pt: backbone 'x3d_xs' does not fit"):
        load_into(
            weights,
            create_x3d(input_clip_length=4, input_crop_size=160, depth_factor=2.2),
            head="fc",
        )


def test_refuses_to_overwrite_without_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    task = Supervised(backbone="tiny3d", backbone_kwargs={"width": 4}, num_classes=2)
    ckpt = _checkpoint_of(task, tmp_path / "task.ckpt")
    out = tmp_path / "w.pt"
    assert main([str(ckpt), "--out", str(out)]) == 0
    before = out.read_bytes()
    with torch.no_grad():
        for p in task.backbone.parameters():
            p.add_(1.0)
    _checkpoint_of(task, ckpt)
    assert main([str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}, {out.with_suffix('.json')}: already exist(s); pass --overwrite" in err
    assert out.read_bytes() == before
    assert main([str(ckpt), "--out", str(out), "--overwrite"]) == 0
    state, _ = read_export(out)
    assert torch.equal(state["trunk.0.weight"], task.backbone.state_dict()["trunk.0.weight"])


def test_export_reads_its_options_from_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from vssl.cli import main as vssl_main

    task = Supervised(backbone="tiny3d", backbone_kwargs={"width": 4}, num_classes=2)
    ckpt = _checkpoint_of(task, tmp_path / "task.ckpt")
    out = tmp_path / "w.pt"
    config = tmp_path / "export.yaml"
    config.write_text(f"checkpoint: {ckpt}\nout: {out}\noverwrite: true\n")
    assert vssl_main(["export", "--config", str(config)]) == 0
    assert vssl_main(["export", "--config", str(config)]) == 0  # the file's overwrite: true
    assert f"written to\n  {out}\n" in capsys.readouterr().out
    assert vssl_main(["export", "--config", str(config), "--no-overwrite"]) == 2
    assert "already exist(s); pass --overwrite" in capsys.readouterr().err
    config.write_text(f"checkpoint: {ckpt}\nout: {out}\nformats: hf\n")
    assert vssl_main(["export", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"vssl export: error: {config}, line 3: formats: no such option; did you mean 'format'?\n"
    )


def test_not_a_torchvision_architecture_and_bad_files(tmp_path: Path) -> None:
    task = Supervised(backbone="tiny3d", backbone_kwargs={"width": 4}, num_classes=2)
    ckpt = _checkpoint_of(task, tmp_path / "task.ckpt")
    (weights, _) = export_backbone(ckpt, tmp_path / "w.safetensors")
    with pytest.raises(ExportError, match="'tiny3d' is not a torchvision architecture"):
        load_torchvision(weights)
    with pytest.raises(ExportError, match="unknown weight format '.bin'"):
        export_backbone(ckpt, tmp_path / "w.bin")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="garbage.ckpt: not a PyTorch checkpoint"):
        export_backbone(garbage, tmp_path / "g.pt")
    lonely = tmp_path / "lonely.pt"
    torch.save({}, lonely)
    with pytest.raises(ExportError, match="lonely.pt: no lonely.json next to it"):
        vssl.export.load_backbone(str(lonely))
    with pytest.raises(
        UserError, match=r"lonely.pt: cannot tell the weight format \(found an empty"
    ):
        vssl.load_backbone(str(lonely))
