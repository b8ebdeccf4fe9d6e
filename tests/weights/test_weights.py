"""vssl.load_backbone: published checkpoints into vssl's backbones, exactly or with a clear error.

The official layouts are built here from the official code's module names (MCG-NJU/VideoMAE
``modeling_finetune.py`` / ``modeling_pretrain.py``, VCOP's and RSPNet's ``c3d.py``, VCOP's
``r21d.py``, PRP's ``c3d.py`` / ``net_part.py``, RSPNet's MoCo wrapper and Hara's
``resnet.py``), with random values; features are compared with the official forward written
out from that code, or each official tensor is found at its mapped place.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import vssl
from vssl.backbones import build
from vssl.errors import MissingInputError, UserError
from vssl.weights import (
    WeightsFormatError,
    detect_format,
    is_lightning_checkpoint,
    load_task,
    prp,
    read_backbone,
    vcop,
)
from vssl.weights._common import ViTShape, vit_entry

DIM, DEPTH, HEADS, PATCH, HIDDEN = 32, 2, 2, 16, 128
TINY = {"dim": DIM, "depth": DEPTH, "heads": HEADS, "patch_size": PATCH, "tubelet_frames": 2}


def _clip(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def _randn(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * 0.2


# ----------------------------------------------------------------------------- official VideoMAE


def _official_vit_state(prefix: str = "", seed: int = 0) -> dict[str, torch.Tensor]:
    """An official VideoMAE encoder state dict (names of modeling_finetune.py), random values."""
    gen = torch.Generator().manual_seed(seed)
    s = {
        f"{prefix}patch_embed.proj.weight": _randn(DIM, 3, 2, PATCH, PATCH, gen=gen),
        f"{prefix}patch_embed.proj.bias": _randn(DIM, gen=gen),
    }
    for i in range(DEPTH):
        b = f"{prefix}blocks.{i}."
        s |= {
            b + "norm1.weight": 1 + _randn(DIM, gen=gen),
            b + "norm1.bias": _randn(DIM, gen=gen),
            b + "attn.q_bias": _randn(DIM, gen=gen),
            b + "attn.v_bias": _randn(DIM, gen=gen),
            b + "attn.qkv.weight": _randn(3 * DIM, DIM, gen=gen),
            b + "attn.proj.weight": _randn(DIM, DIM, gen=gen),
            b + "attn.proj.bias": _randn(DIM, gen=gen),
            b + "norm2.weight": 1 + _randn(DIM, gen=gen),
            b + "norm2.bias": _randn(DIM, gen=gen),
            b + "mlp.fc1.weight": _randn(HIDDEN, DIM, gen=gen),
            b + "mlp.fc1.bias": _randn(HIDDEN, gen=gen),
            b + "mlp.fc2.weight": _randn(DIM, HIDDEN, gen=gen),
            b + "mlp.fc2.bias": _randn(DIM, gen=gen),
        }
    return s


def _official_sinusoid(n: int, d: int) -> torch.Tensor:
    """modeling_finetune.get_sinusoid_encoding_table, as written there (numpy)."""
    table = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float)[None]


def _official_tokens(s: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """The official encoder's blocks on clip ``x`` (modeling_finetune.py's forward_features)."""
    x = F.conv3d(
        x, s[f"{prefix}patch_embed.proj.weight"], s[f"{prefix}patch_embed.proj.bias"], (2, 16, 16)
    )
    x = x.flatten(2).transpose(1, 2)
    b, n, c = x.shape
    x = x + _official_sinusoid(n, c)
    for i in range(DEPTH):
        p = f"{prefix}blocks.{i}."
        h = F.layer_norm(x, (c,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-6)
        bias = torch.cat([s[p + "attn.q_bias"], torch.zeros(c), s[p + "attn.v_bias"]])
        qkv = F.linear(h, s[p + "attn.qkv.weight"], bias)
        q, k, v = qkv.reshape(b, n, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        x = x + F.linear(h, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        h = F.layer_norm(x, (c,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])),
                     s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])  # fmt: skip
        x = x + h
    return x


def _tokens(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_features(x).flatten(2).transpose(1, 2)


def test_official_videomae_finetuned_checkpoint_gives_the_official_features(tmp_path: Path):
    state = _official_vit_state()
    gen = torch.Generator().manual_seed(5)
    state |= {
        "fc_norm.weight": 1 + _randn(DIM, gen=gen),
        "fc_norm.bias": _randn(DIM, gen=gen),
        "head.weight": _randn(7, DIM, gen=gen),
        "head.bias": _randn(7, gen=gen),
    }
    path = tmp_path / "vit_tiny_finetuned.pth"
    torch.save({"model": state, "epoch": 3}, path)
    assert detect_format(path) == "videomae"
    loaded = read_backbone(path, backbone="vit_tiny_8", backbone_kwargs=TINY)
    assert loaded.format == "videomae" and loaded.backbone == "vit_tiny_8"
    assert loaded.notes == ["dropped 2 key(s) under 'head.'"]
    x = _clip()
    with torch.no_grad():
        tokens = _official_tokens(state, x)
        pooled = F.layer_norm(tokens.mean(1), (DIM,), state["fc_norm.weight"],
                              state["fc_norm.bias"], eps=1e-6)  # fmt: skip
        assert torch.allclose(_tokens(loaded.model, x), tokens, atol=1e-5)
        assert torch.allclose(loaded.model(x), pooled, atol=1e-5)


def test_official_videomae_pretraining_checkpoint_drops_the_decoder(tmp_path: Path):
    state = _official_vit_state("encoder.")
    gen = torch.Generator().manual_seed(6)
    state |= {
        "encoder.norm.weight": 1 + _randn(DIM, gen=gen),
        "encoder.norm.bias": _randn(DIM, gen=gen),
        "encoder_to_decoder.weight": _randn(16, DIM, gen=gen),
        "mask_token": _randn(1, 1, 16, gen=gen),
        "decoder.blocks.0.attn.qkv.weight": _randn(48, 16, gen=gen),
        "decoder.norm.weight": _randn(16, gen=gen),
        "decoder.head.weight": _randn(1536, 16, gen=gen),
    }
    path = tmp_path / "pretrain.pth"
    torch.save({"model": state}, path)
    model = build("vit_tiny_8", **TINY)
    loaded = read_backbone(path, backbone=model)
    assert loaded.model is model and loaded.backbone is None
    assert loaded.notes[-2:] == [
        "dropped 2 key(s) under 'norm.' (the pretraining encoder's final norm)",
        "fc_norm starts at weight 1, bias 0, as the official fine-tuning code",
    ]
    assert torch.equal(model.fc_norm.weight, torch.ones(DIM))
    assert torch.equal(model.fc_norm.bias, torch.zeros(DIM))
    x = _clip(2)
    with torch.no_grad():
        assert torch.allclose(_tokens(model, x), _official_tokens(state, x, "encoder."), atol=1e-5)


def test_official_videomae_layouts_vssl_cannot_compute_are_refused(tmp_path: Path):
    state = _official_vit_state() | {"blocks.0.gamma_1": torch.ones(DIM)}
    torch.save({"model": state}, tmp_path / "layer_scale.pth")
    with pytest.raises(
        WeightsFormatError, match=r"layer_scale.pth: .*layer scale.*'blocks.0.gamma_1'"
    ):
        vssl.load_backbone(
            tmp_path / "layer_scale.pth", backbone="vit_tiny_8", backbone_kwargs=TINY
        )
    state = _official_vit_state() | {"norm.weight": torch.ones(DIM), "norm.bias": torch.zeros(DIM)}
    torch.save({"model": state}, tmp_path / "cls.pth")
    with pytest.raises(
        WeightsFormatError, match=r"cls.pth: a use_mean_pooling=False .* first token"
    ):
        vssl.load_backbone(tmp_path / "cls.pth", backbone="vit_tiny_8", backbone_kwargs=TINY)


def test_strict_loading_lists_the_keys_by_name(tmp_path: Path):
    state = _official_vit_state() | {"fc_norm.weight": torch.ones(DIM)}
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.0.attn.extra"] = torch.zeros(3)
    path = tmp_path / "odd.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsFormatError) as err:
        vssl.load_backbone(path, backbone="vit_tiny_8", backbone_kwargs=TINY)
    assert str(err.value) == (
        f"{path}: official VideoMAE checkpoint weights do not fit backbone 'vit_tiny_8': "
        "missing 2 key(s): fc_norm.bias, trunk.blocks.1.mlp.fc2.bias; unexpected 1 key(s): "
        "blocks.0.attn.extra (strict loading; strict=False loads what fits)"
    )
    loaded = read_backbone(path, backbone="vit_tiny_8", backbone_kwargs=TINY, strict=False)
    assert loaded.initialised == ["fc_norm.bias", "trunk.blocks.1.mlp.fc2.bias"]
    assert torch.equal(
        loaded.model.trunk.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"]
    )


def test_published_vit_sizes_map_to_the_registered_vits():
    assert vit_entry(ViTShape(384, 12, None, 16, 2, 1536), Path("s"), "x") == (
        "vit_s_16",
        {"patch_size": 16, "tubelet_frames": 2},
    )
    assert vit_entry(ViTShape(768, 12, None, 16, 2, 3072), Path("b"), "x")[0] == "vit_b_16"
    large = vit_entry(ViTShape(1024, 24, None, 16, 2, 4096), Path("l"), "x")
    if "vit_l_16" in vssl.backbones.available():
        assert large == ("vit_l_16", {"patch_size": 16, "tubelet_frames": 2})
    else:  # the same network, built by the registered vit_tiny_8 with ViT-L's sizes
        assert large == (
            "vit_tiny_8",
            {"dim": 1024, "depth": 24, "heads": 16, "patch_size": 16, "tubelet_frames": 2},
        )
    assert vit_entry(ViTShape(32, 2, 2, 16, 2, 128), Path("t"), "x") == ("vit_tiny_8", TINY)
    assert vit_entry(ViTShape(32, 2, None, 16, 2, 128), Path("t"), "x") == (None, {})
    with pytest.raises(WeightsFormatError, match="MLP width 100 is not 4 x 32"):
        vit_entry(ViTShape(32, 2, 2, 16, 2, 100), Path("t"), "x")


# ----------------------------------------------------------------------------- wrong formats


def test_wrong_format_gives_the_expected_and_the_found(tmp_path: Path):
    from vssl.tasks import Supervised

    task = Supervised(backbone="tiny3d", backbone_kwargs={"width": 4}, num_classes=2)
    ckpt = tmp_path / "probe.ckpt"
    import lightning

    torch.save(
        {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
         "pytorch-lightning_version": lightning.__version__},
        ckpt,
    )  # fmt: skip
    with pytest.raises(UserError) as err:
        vssl.load_backbone(ckpt, format="videomae")
    assert str(err.value) == (
        f"{ckpt}: expected an official VideoMAE checkpoint (a 'model' dict with "
        "'patch_embed.proj.weight'), found a Lightning checkpoint"
    )
    # auto: the Lightning checkpoint's own backbone, and its task
    clip = torch.randn(1, 3, 4, 24, 24)
    with torch.no_grad():
        expected = task.eval().backbone(clip)
        assert torch.equal(vssl.load_backbone(ckpt)(clip), expected)
        assert torch.equal(load_task(ckpt).backbone(clip), expected)
    assert is_lightning_checkpoint(ckpt) and detect_format(ckpt) == "vssl"
    torch.save({"foo": torch.zeros(1)}, tmp_path / "foo.pt")
    with pytest.raises(WeightsFormatError, match=r"foo.pt: cannot tell the weight format \(found "
                       r"a dict with keys 'foo'\); pass format= one of vssl, hf, videomae"):  # fmt: skip
        vssl.load_backbone(tmp_path / "foo.pt")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsFormatError, match="junk.pth: not a PyTorch weight file"):
        vssl.load_backbone(tmp_path / "junk.pth", format="vcop")
    torch.save({"model": {"x": Path("a")}}, tmp_path / "pickled.pth")
    with pytest.raises(WeightsFormatError, match="pickled.pth: cannot be read with weights_only"):
        vssl.load_backbone(tmp_path / "pickled.pth")
    with pytest.raises(UserError, match="unknown weight format 'timm'; use one of auto, vssl"):
        vssl.load_backbone(ckpt, format="timm")
    with pytest.raises(MissingInputError, match="nowhere.pth: weight file not found"):
        vssl.load_backbone(tmp_path / "nowhere.pth")


# ----------------------------------------------------------------------------- paper CNNs

_C3D = (("1", 3, 64), ("2", 64, 128), ("3a", 128, 256), ("3b", 256, 256), ("4a", 256, 512),
        ("4b", 512, 512), ("5a", 512, 512), ("5b", 512, 512))  # fmt: skip


def _bn(prefix: str, c: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}weight": 1 + _randn(c, gen=gen),
        f"{prefix}bias": _randn(c, gen=gen),
        f"{prefix}running_mean": _randn(c, gen=gen),
        f"{prefix}running_var": 1 + torch.rand(c, generator=gen),
        f"{prefix}num_batches_tracked": torch.tensor(7),
    }


def _official_c3d(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """VCOP's (and RSPNet's) C3D state dict: conv1, bn1, ..., conv5b, bn5b, linear."""
    s: dict[str, torch.Tensor] = {}
    for name, cin, cout in _C3D:
        scale = math.sqrt(2 / (cin * 27))
        s[f"conv{name}.weight"] = torch.randn(cout, cin, 3, 3, 3, generator=gen) * scale
        s[f"conv{name}.bias"] = _randn(cout, gen=gen)
        s |= _bn(f"bn{name}.", cout, gen)
    return s | {"linear.weight": _randn(101, 512, gen=gen), "linear.bias": _randn(101, gen=gen)}


def _official_c3d_features(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """RSPNet's c3d.py forward: conv, bn, relu, pools (floor mode), no pool5, average."""
    pools = {"1": (1, 2, 2), "2": (2, 2, 2), "3b": (2, 2, 2), "4b": (2, 2, 2)}
    for name, _, _ in _C3D:
        x = F.conv3d(x, s[f"conv{name}.weight"], s[f"conv{name}.bias"], padding=1)
        bn = [s[f"bn{name}.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
        x = F.relu(F.batch_norm(x, *bn, training=False))
        if name in pools:
            x = F.max_pool3d(x, pools[name], pools[name])
    return x.mean(dim=(2, 3, 4))


def test_vcop_and_prp_c3d_give_the_official_features(tmp_path: Path):
    official = _official_c3d(torch.Generator().manual_seed(0))
    vcop_file = tmp_path / "vcop_c3d.pt"
    torch.save({f"base_network.{k}": v for k, v in official.items() if "linear" not in k}
               | {"fc7.weight": torch.zeros(512, 1024), "fc8.weight": torch.zeros(6, 1536)},
               vcop_file)  # fmt: skip
    loaded = read_backbone(vcop_file)
    assert (loaded.format, loaded.backbone, loaded.backbone_kwargs) == (
        "vcop",
        "c3d",
        {"pool5": False},
    )
    assert loaded.notes == ["dropped the pretext model's fc7, fc8"]
    x = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = _official_c3d_features(official, x)
        assert torch.allclose(loaded.model(x), expected, rtol=1e-4, atol=1e-5)
    # PRP: each conv nested with its BatchNorm in conv3d, layers conv3_1 ... conv5_2
    prp_names = {"3a": "3_1", "3b": "3_2", "4a": "4_1", "4b": "4_2", "5a": "5_1", "5b": "5_2"}
    prp_file = {"module.outc.conv3d.0.weight": torch.zeros(3, 64, 3, 3, 3)}
    for key, value in official.items():
        kind, name, rest = (
            key[:2] == "bn",
            *key.removeprefix("bn").removeprefix("conv").split(".", 1),
        )
        if key.startswith("linear"):
            continue
        layer = prp_names.get(name, name)
        prp_file[f"module.base_network.conv{layer}.conv3d.{int(kind)}.{rest}"] = value
    prp_converted = prp.convert(prp_file, Path("prp_c3d.pth.tar"))
    assert (prp_converted.backbone, prp_converted.backbone_kwargs) == ("c3d", {"pool5": False})
    assert prp_converted.notes == ["dropped the pretext model's outc"]
    vcop_converted = vcop.convert(torch.load(vcop_file, weights_only=True), vcop_file)
    assert prp_converted.state.keys() == vcop_converted.state.keys()
    for key, value in vcop_converted.state.items():
        assert torch.equal(prp_converted.state[key], value), key
    with torch.device("meta"):
        with_pool5 = build("c3d")
    with pytest.raises(WeightsFormatError, match="vcop_c3d.pt: the official C3D has no pool5"):
        vssl.load_backbone(vcop_file, backbone=with_pool5)


def _official_r21d_keys() -> dict[str, tuple[int, ...]]:
    """VCOP's R2Plus1DNet((1, 1, 1, 1)) parameter shapes, from r21d.py's SpatioTemporalConv."""

    def st(prefix: str, cin: int, cout: int, k: tuple[int, int, int]) -> dict[str, tuple]:
        t, h, w = k
        mid = math.floor(t * h * w * cin * cout / (h * w * cin + t * cout))
        return {
            f"{prefix}spatial_conv.weight": (mid, cin, 1, h, w),
            **{
                f"{prefix}bn.{n}": (mid,) for n in ("weight", "bias", "running_mean", "running_var")
            },
            f"{prefix}temporal_conv.weight": (cout, mid, t, 1, 1),
        }

    def bn(prefix: str, c: int) -> dict[str, tuple]:
        return {f"{prefix}{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")}

    shapes = st("conv1.", 3, 64, (3, 7, 7)) | bn("bn1.", 64)
    for k, (cin, cout) in enumerate(((64, 64), (64, 128), (128, 256), (256, 512)), start=2):
        b = f"conv{k}.block1."
        shapes |= st(b + "conv1.", cin, cout, (3, 3, 3)) | bn(b + "bn1.", cout)
        shapes |= st(b + "conv2.", cout, cout, (3, 3, 3)) | bn(b + "bn2.", cout)
        if cin != cout:
            shapes |= st(b + "downsampleconv.", cin, cout, (1, 1, 1)) | bn(
                b + "downsamplebn.", cout
            )
    return shapes


def test_vcop_r2plus1d_puts_every_official_tensor_in_its_place(tmp_path: Path):
    gen = torch.Generator().manual_seed(0)
    official = {k: torch.randn(*s, generator=gen) for k, s in _official_r21d_keys().items()}
    torch.save({"module." + k: v for k, v in official.items()} | {"module.linear.weight": torch.zeros(101, 512)},
               tmp_path / "r21d_ucf101.pt")  # fmt: skip
    loaded = read_backbone(tmp_path / "r21d_ucf101.pt", format="vcop")
    assert loaded.backbone == "r2plus1d_10"
    ours = loaded.model.state_dict()
    # hand-renamed: the stem's spatial conv, a factorised conv2, a factorised shortcut
    assert torch.equal(ours["trunk.stem.0.weight"], official["conv1.spatial_conv.weight"])
    assert torch.equal(ours["trunk.stem.4.running_var"], official["bn1.running_var"])
    assert torch.equal(
        ours["trunk.layer2.0.conv2.0.3.weight"], official["conv3.block1.conv2.temporal_conv.weight"]
    )
    assert torch.equal(
        ours["trunk.layer4.0.downsample.0.1.bias"], official["conv5.block1.downsampleconv.bn.bias"]
    )
    matched = {
        k for k, v in ours.items() if any(v is w or torch.equal(v, w) for w in official.values())
    }
    assert (
        len(official)
        == len([k for k in ours if not k.endswith("num_batches_tracked")])
        == len(matched)
    )


def test_rspnet_resnet18_takes_the_query_encoder(tmp_path: Path):
    with torch.device("meta"):
        reference = build("r3d_18_hara").trunk.state_dict()
    backbone: dict[str, torch.Tensor] = {}
    for i, (key, value) in enumerate(reference.items()):  # Hara's: layerX.Y.conv1 / bn1 / ...
        name = key.replace(".conv1.0.", ".conv1.").replace(".conv2.0.", ".conv2.")
        name = name.replace(".conv1.1.", ".bn1.").replace(".conv2.1.", ".bn2.")
        backbone[name] = torch.full(value.shape, float(i), dtype=value.dtype)  # one value each
    assert "layer2.0.bn1.weight" in backbone and "layer2.0.downsample.1.weight" in backbone
    model = {f"encoder_q.encoder.{k}": v for k, v in backbone.items()}
    model |= {"encoder_k.encoder.conv1.weight": torch.zeros(64, 3, 7, 7, 7)}
    model |= {"encoder_q.encoder.fc.weight": torch.zeros(1, 512), "queue": torch.zeros(128, 16),
              "encoder_q.fc1.2.weight": torch.zeros(128, 512)}  # fmt: skip
    torch.save({"epoch": 200, "model": model}, tmp_path / "rspnet_r18.pth.tar")
    loaded = read_backbone(tmp_path / "rspnet_r18.pth.tar")
    assert (loaded.format, loaded.backbone) == ("rspnet", "r3d_18_hara")
    assert loaded.notes == [
        "dropped encoder_k, encoder_q.fc1, queue",
        "dropped 1 key(s) under 'fc.'",
    ]
    ours = loaded.model.state_dict()
    assert torch.equal(ours["trunk.conv1.weight"], backbone["conv1.weight"])
    assert torch.equal(
        ours["trunk.layer3.1.conv2.1.running_mean"], backbone["layer3.1.bn2.running_mean"]
    )
    assert torch.equal(
        ours["trunk.layer4.0.downsample.0.weight"], backbone["layer4.0.downsample.0.weight"]
    )


# ----------------------------------------------------------------------------- torch hub files


def test_torchvision_weights_by_file_and_by_name(tmp_path: Path, monkeypatch):
    from torchvision.models import video

    torch.manual_seed(0)
    net = video.mc3_18(weights=None).eval()
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(MissingInputError, match=r"mc3_18: torchvision's weights are not on disk at "
                       r".*mc3_18-a90a0ba3.pth; vssl does not download"):  # fmt: skip
        vssl.load_backbone("mc3_18", format="torchvision")
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(net.state_dict(), hub / "checkpoints" / "mc3_18-a90a0ba3.pth")
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        y = net.stem(x)
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            y = layer(y)
        expected = net.avgpool(y).flatten(1)
        by_name = read_backbone("mc3_18", format="torchvision")
        assert by_name.backbone == "mc3_18"
        assert torch.allclose(by_name.model(x), expected, atol=1e-5)
    assert detect_format(hub / "checkpoints" / "mc3_18-a90a0ba3.pth") == "torchvision"
    torch.save({"features.0.0.weight": torch.zeros(64, 3, 1, 7, 7)}, tmp_path / "s3d.pth")
    with pytest.raises(WeightsFormatError, match="s3d.pth: torchvision's S3D weights; vssl's s3dg"):
        vssl.load_backbone(tmp_path / "s3d.pth", format="torchvision")


def test_pytorchvideo_x3d_keeps_conv5_and_drops_the_head(tmp_path: Path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models.x3d import create_x3d

    torch.manual_seed(0)
    net = create_x3d(input_clip_length=4, input_crop_size=160, depth_factor=2.2).eval()
    torch.save({"model_state": net.state_dict(), "epoch": 300}, tmp_path / "X3D_XS.pyth")
    loaded = read_backbone(tmp_path / "X3D_XS.pyth")
    assert (loaded.format, loaded.backbone) == ("pytorchvideo", "x3d_xs")
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        y = x
        for block in net.blocks[:5]:
            y = block(y)
        pool = net.blocks[5].pool
        y = pool.pre_act(pool.pre_norm(pool.pre_conv(y)))
        assert torch.allclose(loaded.model.forward_features(x), y, atol=1e-5)


# ----------------------------------------------------------------------------- transformers


def _hf_config():
    transformers = pytest.importorskip("transformers")
    return transformers.VideoMAEConfig(
        hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        intermediate_size=HIDDEN, image_size=32, patch_size=PATCH, num_frames=4, tubelet_size=2,
        decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
    )  # fmt: skip


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.mark.parametrize(
    "architecture", ["VideoMAEModel", "VideoMAEForVideoClassification", "VideoMAEForPreTraining"]
)
def test_transformers_folders_and_state_dicts_give_the_same_features(architecture, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = _hf_config()
    hf_model = _perturbed(getattr(transformers, architecture)(config))
    hf_model.save_pretrained(tmp_path / "folder")
    torch.save(hf_model.state_dict(), tmp_path / "state.bin")
    encoder = getattr(hf_model, "videomae", hf_model)
    x = _clip(4)
    folder = read_backbone(tmp_path / "folder")
    assert (folder.format, folder.backbone, folder.backbone_kwargs) == ("hf", "vit_tiny_8", TINY)
    state = read_backbone(tmp_path / "state.bin", backbone="vit_tiny_8", backbone_kwargs=TINY)
    assert state.format == "hf" and not is_lightning_checkpoint(tmp_path / "state.bin")
    # the folder's weight file alone: its config.json is read too
    assert read_backbone(tmp_path / "folder" / "model.safetensors").backbone_kwargs == TINY
    with torch.no_grad():
        tokens = encoder(pixel_values=x.transpose(1, 2)).last_hidden_state
        for loaded in (folder, state):
            assert torch.allclose(_tokens(loaded.model, x), tokens, atol=1e-5)
        if architecture == "VideoMAEForVideoClassification":
            assert torch.allclose(folder.model(x), hf_model.fc_norm(tokens.mean(1)), atol=1e-5)
    # transformers' default LayerNorm epsilon (1e-12), set on the loaded model from config.json
    assert folder.model.trunk.blocks[0].norm1.eps == 1e-12


def _vit_checkpoint(task: torch.nn.Module, path: Path) -> Path:
    torch.save(
        {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "epoch": 2,
         "global_step": 10, "datamodule_hyper_parameters": {"clip_len": 4, "crop_size": 32}},
        path,
    )  # fmt: skip
    return path


def test_export_hf_of_a_videomae_checkpoint_loads_into_videomae_for_pretraining(tmp_path):
    transformers = pytest.importorskip("transformers")
    from vssl.export import main
    from vssl.tasks import VideoMAE

    torch.manual_seed(0)
    kwargs = {k: v for k, v in TINY.items() if k != "tubelet_frames"}
    task = _perturbed(VideoMAE(backbone="vit_tiny_8", backbone_kwargs=kwargs, decoder_dim=16,
                               decoder_depth=1, decoder_heads=2))  # fmt: skip
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = _vit_checkpoint(task, run / "checkpoints" / "last.ckpt")
    probe = {"protocol": "probe", "results": {"knn": 0.4375, "linear": {"1.0": 0.5}}}
    (run / "probe.json").write_text(__import__("json").dumps(probe))
    out = tmp_path / "hf"
    assert main([str(ckpt), "--format", "hf", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    card = (out / "README.md").read_text()
    assert "- knn: 43.75 %" in card and "- linear.1.0: 50.00 %" in card and "## Data" in card
    hf_model = transformers.VideoMAEForPreTraining.from_pretrained(out).eval()
    hf_model.videomae.config.use_mean_pooling  # noqa: B018 - loads without error
    hf_model.decoder.norm.eps = 1e-6  # transformers fixes the decoder norm's eps at 1e-5
    x = _clip(5)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, [1, 2, 5, 6]] = True
    with torch.no_grad():
        ours = task.decode(task.encode_visible(x, mask), mask)
        theirs = hf_model(pixel_values=x.transpose(1, 2), bool_masked_pos=mask).logits
        assert torch.allclose(theirs, ours, atol=1e-5)
        encoder = transformers.VideoMAEModel.from_pretrained(out).eval()
        tokens = encoder(pixel_values=x.transpose(1, 2)).last_hidden_state
        assert torch.allclose(tokens, task.encoder_norm(_tokens(task.backbone, x)), atol=1e-5)
        back = vssl.load_backbone(out)  # and back into vssl
        assert torch.allclose(_tokens(back, x), _tokens(task.backbone, x), atol=1e-5)


def test_export_hf_of_a_vit_backbone_and_errors(tmp_path: Path, capsys):
    transformers = pytest.importorskip("transformers")
    from vssl.export import main
    from vssl.tasks import Supervised

    torch.manual_seed(0)
    kwargs = {k: v for k, v in TINY.items() if k != "tubelet_frames"}
    task = _perturbed(Supervised(backbone="vit_tiny_8", backbone_kwargs=kwargs, num_classes=3))
    ckpt = _vit_checkpoint(task, tmp_path / "sup.ckpt")
    assert main([str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    classifier = transformers.VideoMAEForVideoClassification.from_pretrained(
        tmp_path / "hf", num_labels=3
    ).eval()
    classifier.fc_norm.eps = 1e-6  # vssl's fc_norm epsilon; transformers builds it with 1e-5
    x = _clip(6)
    with torch.no_grad():
        tokens = classifier.videomae(pixel_values=x.transpose(1, 2)).last_hidden_state
        assert torch.allclose(tokens, _tokens(task.backbone, x), atol=1e-5)
        assert torch.allclose(classifier.fc_norm(tokens.mean(1)), task.backbone(x), atol=1e-5)
        as_task = load_task(tmp_path / "hf")
        assert as_task.hparams.backbone == "vit_tiny_8" and as_task.hparams.backbone_kwargs == TINY
        assert torch.allclose(as_task.backbone(x), task.backbone(x), atol=1e-5)
    capsys.readouterr()
    assert main([str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert "config.json" in capsys.readouterr().err
    cnn = Supervised(backbone="tiny3d", backbone_kwargs={"width": 4}, num_classes=2)
    torch.save({"state_dict": cnn.state_dict(), "hyper_parameters": dict(cnn.hparams)},
               tmp_path / "cnn.ckpt")  # fmt: skip
    assert main([str(tmp_path / "cnn.ckpt"), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
    assert "--format hf exports the video ViTs (vit_*)" in capsys.readouterr().err
    frames = Supervised(backbone="vit_tiny_8_image", num_classes=2)
    torch.save({"state_dict": frames.state_dict(), "hyper_parameters": dict(frames.hparams)},
               tmp_path / "frames.ckpt")  # fmt: skip
    assert (
        main([str(tmp_path / "frames.ckpt"), "--format", "hf", "--out", str(tmp_path / "y")]) == 2
    )
    assert "ImageViT (frame by frame" in capsys.readouterr().err


def test_vit_l_factory_is_videomae_vit_large():
    from vssl.backbones.vit import vit_l_16

    with torch.device("meta"):
        large, same = vit_l_16(), build("vit_tiny_8", dim=1024, depth=24, heads=16, patch_size=16)
    assert sum(p.numel() for p in large.parameters()) == 303_885_312
    assert {k: v.shape for k, v in large.state_dict().items()} == {
        k: v.shape for k, v in same.state_dict().items()
    }
    assert large.trunk.blocks[0].attn.heads == 16
