import math
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn

import vssl.backbones as vb
from vssl.backbones import Backbone, BackboneInfo, available, build, info, register
from vssl.backbones import registry as registry_module
from vssl.backbones.s3dg import SelfGating
from vssl.backbones.vit import VideoViT


def _ceil_halve(n: int, times: int) -> int:
    for _ in range(times):
        n = -(-n // 2)
    return n


def _keep(n: int) -> int:
    return n


# name -> (out_dim, T -> T', H -> H'): the feature-map size each architecture must produce.
ARCH: dict[str, tuple[int, Callable[[int], int], Callable[[int], int]]] = {
    "c3d": (512, lambda t: _ceil_halve(t, 4), lambda h: _ceil_halve(h, 5)),
    "r3d_18": (512, lambda t: _ceil_halve(t, 3), lambda h: _ceil_halve(h, 4)),
    # Hara's: the stem's max-pool halves T too.
    "r3d_18_hara": (512, lambda t: _ceil_halve(t, 4), lambda h: _ceil_halve(h, 5)),
    "r3d_34_hara": (512, lambda t: _ceil_halve(t, 4), lambda h: _ceil_halve(h, 5)),
    "r3d_10": (512, lambda t: _ceil_halve(t, 3), lambda h: _ceil_halve(h, 4)),
    "r2plus1d_10": (512, lambda t: _ceil_halve(t, 3), lambda h: _ceil_halve(h, 4)),
    "mc3_18": (512, _keep, lambda h: _ceil_halve(h, 4)),
    "r2plus1d_18": (512, lambda t: _ceil_halve(t, 3), lambda h: _ceil_halve(h, 4)),
    # S3D's last max-pool (2x2x2, no padding) floors.
    "s3dg": (1024, lambda t: _ceil_halve(t, 2) // 2, lambda h: _ceil_halve(h, 4) // 2),
    "x3d_xs": (432, _keep, lambda h: _ceil_halve(h, 5)),
    "x3d_s": (432, _keep, lambda h: _ceil_halve(h, 5)),
    "x3d_m": (432, _keep, lambda h: _ceil_halve(h, 5)),
    "x3d_l": (432, _keep, lambda h: _ceil_halve(h, 5)),
    "slow_r50": (2048, _keep, lambda h: _ceil_halve(h, 5)),
    "r3d_50": (2048, lambda t: _ceil_halve(t, 1), lambda h: _ceil_halve(h, 5)),
    "tiny3d": (64, lambda t: _ceil_halve(t, 2), lambda h: _ceil_halve(h, 3)),
    "tiny_r2plus1d": (64, lambda t: _ceil_halve(t, 2), lambda h: _ceil_halve(h, 3)),
    # Video ViTs: one token per tubelet (2x16x16, or 2x8x8 for the tiny one).
    "vit_s_16": (384, lambda t: t // 2, lambda h: h // 16),
    "vit_b_16": (768, lambda t: t // 2, lambda h: h // 16),
    "vit_l_16": (1024, lambda t: t // 2, lambda h: h // 16),
    "vit_tiny_8": (64, lambda t: t // 2, lambda h: h // 8),
    "vit_tiny_8_convstem": (64, lambda t: t // 2, lambda h: h // 8),
    # Image ViTs: every frame its own grid of 16x16 (8x8) patches.
    "vit_s_16_image": (384, _keep, lambda h: h // 16),
    "vit_tiny_8_image": (64, _keep, lambda h: h // 8),
    # 3D ShuffleNets: stem stride (1, 2, 2), a stride-2 max-pool, three stride-2 stages.
    "shufflenet3d_v1": (960, lambda t: _ceil_halve(t, 4), lambda h: _ceil_halve(h, 5)),
    "shufflenet3d_v2": (1024, lambda t: _ceil_halve(t, 4), lambda h: _ceil_halve(h, 5)),
    # Video Swin: 2x4x4 patches, then three 2x2 patch mergings.
    "swin3d_t": (768, lambda t: _ceil_halve(t, 1), lambda h: _ceil_halve(h, 5)),
    "swin3d_s": (768, lambda t: _ceil_halve(t, 1), lambda h: _ceil_halve(h, 5)),
    "swin3d_b": (1024, lambda t: _ceil_halve(t, 1), lambda h: _ceil_halve(h, 5)),
}
NAMES = sorted(ARCH)
# Builder options that change the architecture: case id -> (name, kwargs, as ARCH).
VARIANTS: dict[str, tuple[str, dict, tuple[int, Callable[[int], int], Callable[[int], int]]]] = {
    "c3d-no-pool5": (
        "c3d",
        {"pool5": False},
        (512, lambda t: _ceil_halve(t, 3), lambda h: _ceil_halve(h, 4)),
    ),
}
CASES = {name: (name, {}, ARCH[name]) for name in NAMES} | VARIANTS


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _on_meta(name: str, **kwargs) -> Backbone:
    with torch.device("meta"):
        return build(name, **kwargs)


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry that test registrations cannot leak out of."""
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))


def test_every_registered_backbone_is_covered():
    assert available() == NAMES


@pytest.mark.parametrize("case", sorted(CASES))
def test_shapes_over_the_full_input_grid_on_meta(case):
    name, kwargs, (out_dim, t_map, h_map) = CASES[case]
    model = _on_meta(name, **kwargs).eval()  # eval: meta BatchNorm is faster without batch stats
    assert isinstance(model, Backbone) and model.out_dim == out_dim
    for t in (8, 16, 32):
        for h in (112, 160, 224):
            x = torch.empty(2, 3, t, h, h, device="meta")
            features = model.forward_features(x)
            assert features.shape == (2, out_dim, t_map(t), h_map(h), h_map(h)), (t, h)
    for t, h in ((8, 112), (16, 160), (32, 224)):
        assert model(torch.empty(2, 3, t, h, h, device="meta")).shape == (2, out_dim)


# Built on the CPU only on the meta device: ViT-B/16's code at 3.5x the size (tens of seconds).
TOO_BIG_FOR_CPU_TESTS = {"vit_l_16"}


@pytest.mark.parametrize("case", sorted(set(CASES) - TOO_BIG_FOR_CPU_TESTS))
def test_cpu_forward_backward_reaches_first_layer(case):
    name, kwargs, _ = CASES[case]
    torch.manual_seed(0)
    model = build(name, **kwargs)
    x = torch.randn(2, 3, 8, 32, 32)
    out = model(x)
    assert out.shape == (2, model.out_dim)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv3d))
    assert first_conv.in_channels == 3
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = features.mean(dim=(2, 3, 4))
        if isinstance(model, VideoViT):  # the token mean, then the fine-tuning LayerNorm
            pooled = model.fc_norm(pooled)
        torch.testing.assert_close(model(x), pooled)


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_trunks_are_torchvision_minus_fc(name):
    from torchvision.models import get_model_weights, video

    with torch.device("meta"):
        reference = getattr(video, name)(weights=None)
    model = _on_meta(name)
    assert _params(model) == _params(reference) - _params(reference.fc)
    weights = get_model_weights(name).DEFAULT
    assert _params(model) + 512 * 400 + 400 == weights.meta["num_params"]
    # Parameter names match torchvision's once the "trunk." prefix is stripped.
    state = {k.removeprefix("trunk."): v for k, v in build(name).state_dict().items()}
    result = getattr(video, name)(weights=None).load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []


# Output channels of each S3D-G gate: the Conv2d_2c separable conv, then the four branches of
# each of the nine inception blocks (the Inception-v1 widths that S3D keeps).
S3DG_GATED = [192] + [
    c
    for block in (
        (64, 128, 32, 32),
        (128, 192, 96, 64),
        (192, 208, 48, 64),
        (160, 224, 64, 64),
        (128, 256, 64, 64),
        (112, 288, 64, 64),
        (256, 320, 128, 128),
        (256, 320, 128, 128),
        (384, 384, 128, 128),
    )
    for c in block
]


def test_s3dg_is_torchvision_s3d_plus_gates():
    from torchvision.models.video import S3D_Weights, s3d

    model = build("s3dg")
    gates = [m for m in model.modules() if isinstance(m, SelfGating)]
    assert [g.fc.in_features for g in gates] == S3DG_GATED
    s3d_features = S3D_Weights.DEFAULT.meta["num_params"] - (1024 * 400 + 400)
    assert _params(model) == s3d_features + sum(c * c + c for c in S3DG_GATED)
    state = {k.removeprefix("trunk."): v for k, v in model.state_dict().items()}
    result = s3d(weights=None).load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["classifier.1.bias", "classifier.1.weight"]
    assert len(result.unexpected_keys) == 2 * len(S3DG_GATED)
    assert all(".fc." in k for k in result.unexpected_keys)


def test_s3dg_gates_are_in_the_forward_path():
    torch.manual_seed(0)
    model = build("s3dg").eval()
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert model(x).abs().sum() > 0
        # Closing every gate of the last inception block (the output) zeroes the features.
        for gate in [m for m in model.modules() if isinstance(m, SelfGating)][-4:]:
            gate.fc.weight.zero_()
            gate.fc.bias.fill_(-1e4)
        assert model(x).abs().max() == 0


def test_self_gating_exact_values():
    gate = SelfGating(2)
    with torch.no_grad():
        gate.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, -1.0]]))
        gate.fc.bias.copy_(torch.tensor([0.0, 0.25]))
    x = torch.zeros(1, 2, 2, 2, 2)
    x[0, 0] = 2.0
    x[0, 1, 0] = 4.0  # channel 1: half its values 4, half 0 -> mean 2
    out = gate(x)
    g0 = torch.sigmoid(torch.tensor(2.0))
    g1 = torch.sigmoid(torch.tensor(0.5 * 2.0 - 1.0 * 2.0 + 0.25))
    torch.testing.assert_close(out[0, 0], torch.full((2, 2, 2), 2.0) * g0)
    torch.testing.assert_close(out[0, 1, 0], torch.full((2, 2), 4.0) * g1)
    assert (out[0, 1, 1] == 0).all()


def test_c3d_parameter_count_and_layers():
    widths = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    convs = sum(a * b * 27 + b for a, b in zip(widths, widths[1:], strict=False))
    bns = sum(2 * b for b in widths[1:])
    model = build("c3d")
    assert _params(model) == convs + bns == 27_661_440
    pools = [n for n, m in model.trunk.named_children() if isinstance(m, nn.MaxPool3d)]
    assert pools == [f"pool{i}" for i in range(1, 6)]
    assert model.trunk.pool1.kernel_size == (1, 2, 2)
    assert model.trunk.conv5b.out_channels == 512
    # Caffe-style ceil pooling: 16x112 ends at 1x4x4 as in the original C3D before fc6.
    x = torch.empty(1, 3, 16, 112, 112, device="meta")
    assert _on_meta("c3d").forward_features(x).shape == (1, 512, 1, 4, 4)


def test_pytorchvideo_parameter_counts_match_published():
    fc_400 = 2048 * 400 + 400
    # pytorchvideo model zoo: SLOW_8x8_R50 32.45M; X3D XS/S/M 3.79M, X3D-L 6.15M (with head).
    slow = _params(_on_meta("slow_r50"))
    assert round((slow + fc_400) / 1e6, 2) == 32.45
    x3d_head = 432 * 2048 + fc_400
    for name in ("x3d_xs", "x3d_s", "x3d_m"):
        assert round((_params(_on_meta(name)) + x3d_head) / 1e6, 2) == 3.79
    assert round((_params(_on_meta("x3d_l")) + x3d_head) / 1e6, 2) == 6.15
    # CVRL's R3D-50 differs from Slow-R50 in the stem's temporal kernel (5 instead of 1), which
    # adds parameters, and its temporal stride (2 instead of 1), which adds none.
    r3d_50 = _on_meta("r3d_50")
    assert _params(r3d_50) - slow == 3 * 64 * 7 * 7 * (5 - 1)


def test_r3d_50_is_cvrls_official_network():
    """tensorflow/models official/projects/video_ssl cvrl_pretrain_k600_200ep.yaml: stem conv
    temporal kernel 5 stride 2, stem pool temporal stride 1 (pool 1x3x3), temporal kernels
    (1,1,1), (1,1,1,1), (3,)*6, (3,)*3 in the four block groups, temporal strides 1."""
    r3d_50 = _on_meta("r3d_50").eval()
    stem = r3d_50.trunk.blocks[0]
    assert (stem.conv.kernel_size, stem.conv.stride) == ((5, 7, 7), (2, 2, 2))
    assert (stem.pool.kernel_size, stem.pool.stride) == ((1, 3, 3), (1, 2, 2))
    # a 16-frame clip leaves the stem with 8 time steps and the network with 8
    assert stem(torch.empty(1, 3, 16, 224, 224, device="meta")).shape == (1, 64, 8, 56, 56)
    assert r3d_50.forward_features(torch.empty(1, 3, 16, 224, 224, device="meta")).shape == (
        1,
        2048,
        8,
        7,
        7,
    )
    blocks = [m for m in r3d_50.modules() if hasattr(m, "conv_a")]
    assert [b.conv_a.kernel_size for b in blocks] == [(1, 1, 1)] * 7 + [(3, 1, 1)] * 9
    assert all(b.conv_b.kernel_size == (1, 3, 3) for b in blocks)
    assert [b.conv_b.stride for b in blocks if b.conv_b.stride != (1, 1, 1)] == [(1, 2, 2)] * 3
    assert all(b.conv_a.stride == (1, 1, 1) for b in blocks)


def _hara_params(layers: list[int]) -> int:
    """Parameters of kenshohara/3D-ResNets-PyTorch models/resnet.py ResNet(BasicBlock, layers,
    shortcut_type="B") without fc, counted from its layer definitions."""
    total = 3 * 64 * 7**3 + 2 * 64  # conv1 (7x7x7, no bias), bn1
    inplanes = 64
    for planes, blocks, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2), strict=True):
        for i in range(blocks):
            total += 27 * inplanes * planes + 27 * planes * planes + 4 * planes  # conv1/2, bn1/2
            if i == 0 and (stride != 1 or inplanes != planes):
                total += inplanes * planes + 2 * planes  # type B shortcut: 1x1x1 conv + BN
            inplanes = planes
    return total


def test_hara_resnets_match_the_official_definition():
    assert _params(_on_meta("r3d_18_hara")) == _hara_params([2, 2, 2, 2]) == 33_203_904
    assert _params(_on_meta("r3d_34_hara")) == _hara_params([3, 4, 6, 3]) == 63_513_536
    trunk = _on_meta("r3d_18_hara").trunk
    assert list(trunk._modules)[:4] == ["conv1", "bn1", "relu", "maxpool"]
    conv1 = trunk.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((7, 7, 7), (1, 2, 2), (3, 3, 3))
    assert conv1.bias is None
    pool = trunk.maxpool
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    for name, stride in (("layer1", 1), ("layer2", 2), ("layer3", 2), ("layer4", 2)):
        first = getattr(trunk, name)[0]
        assert first.conv1[0].kernel_size == (3, 3, 3)
        assert first.conv1[0].stride == (stride,) * 3
        if stride == 2:
            assert first.downsample[0].kernel_size == (1, 1, 1)
            assert first.downsample[0].stride == (2, 2, 2)
        else:
            assert first.downsample is None
    # 16 x 112 (Hara's and RSPNet's input): 16x56x56 after conv1, 8x28x28 after the pool.
    x = torch.empty(1, 3, 16, 112, 112, device="meta")
    assert trunk[:4](x).shape == (1, 64, 8, 28, 28)


def _vcop_conv(in_c: int, out_c: int, k: tuple[int, int, int], factorised: bool) -> int:
    """Parameters of VCOP's SpatioTemporalConv: r3d.py (one t x h x w conv) or r21d.py
    (1 x h x w conv to M channels, BN, t x 1 x 1 conv; M from the paper's formula)."""
    t, h, w = k
    if not factorised:
        return in_c * out_c * t * h * w
    mid = math.floor(t * h * w * in_c * out_c / (h * w * in_c + t * out_c))
    return in_c * mid * h * w + 2 * mid + mid * out_c * t


def _vcop_params(factorised: bool) -> int:
    """Parameters of VCOP's R3DNet / R2Plus1DNet((1, 1, 1, 1)) without the classifier."""
    total = _vcop_conv(3, 64, (3, 7, 7), factorised) + 2 * 64  # conv1, bn1
    for in_c, out_c in ((64, 64), (64, 128), (128, 256), (256, 512)):
        total += _vcop_conv(in_c, out_c, (3, 3, 3), factorised) + 2 * out_c  # conv1, bn1
        total += _vcop_conv(out_c, out_c, (3, 3, 3), factorised) + 2 * out_c  # conv2, bn2
        if in_c != out_c:  # downsampleconv (1x1x1, stride 2), downsamplebn
            total += _vcop_conv(in_c, out_c, (1, 1, 1), factorised) + 2 * out_c
    return total


def test_vcop_networks_match_the_official_definition():
    assert _params(_on_meta("r3d_10")) == _vcop_params(factorised=False) == 14_361_792
    assert _params(_on_meta("r2plus1d_10")) == _vcop_params(factorised=True) == 14_365_303
    r21d = _on_meta("r2plus1d_10").trunk
    spatial = [
        (m.in_channels, m.out_channels)
        for m in r21d.modules()
        if isinstance(m, nn.Conv3d) and m.kernel_size[0] == 1 and m.stride[0] == 1
    ]
    # stem, then per stage conv1, conv2 (and the factorised shortcut); e.g. 3*49*3*64 /
    # (49*3 + 3*64) = 83.3 and 27*128*128 / (9*128 + 3*128) = 288
    assert spatial == [
        (3, 83),
        (64, 144),
        (64, 144),
        (64, 230),
        (128, 288),
        (64, 42),
        (128, 460),
        (256, 576),
        (128, 85),
        (256, 921),
        (512, 1152),
        (256, 170),
    ]
    shortcut = r21d.layer2[0].downsample[0]
    assert [(c.kernel_size, c.stride) for c in (shortcut[0], shortcut[3])] == [
        ((1, 1, 1), (1, 2, 2)),
        ((1, 1, 1), (2, 1, 1)),
    ]


def _bn(c: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(c)


def _module(**children: nn.Module) -> nn.Module:
    module = nn.Module()
    for name, child in children.items():
        module.add_module(name, child)
    return module


def _official_vcop(factorised: bool) -> nn.Module:
    """The module tree (names and parameter shapes, no forward) of VCOP's R3DNet /
    R2Plus1DNet((1, 1, 1, 1)), written from models/r3d.py and models/r21d.py."""

    def st_conv(cin: int, cout: int, k: tuple[int, int, int], stride: int = 1) -> nn.Module:
        t, h, w = k
        if not factorised:
            return _module(temporal_spatial_conv=nn.Conv3d(cin, cout, k, bias=False))
        mid = math.floor(t * h * w * cin * cout / (h * w * cin + t * cout))
        return _module(
            spatial_conv=nn.Conv3d(cin, mid, (1, h, w), bias=False),
            bn=_bn(mid),
            temporal_conv=nn.Conv3d(mid, cout, (t, 1, 1), bias=False),
        )

    def block(cin: int, cout: int) -> nn.Module:
        parts = dict(
            conv1=st_conv(cin, cout, (3, 3, 3)),
            bn1=_bn(cout),
            conv2=st_conv(cout, cout, (3, 3, 3)),
            bn2=_bn(cout),
        )
        if cin != cout:
            parts.update(downsampleconv=st_conv(cin, cout, (1, 1, 1)), downsamplebn=_bn(cout))
        return _module(**parts)

    stages = {
        f"conv{k}": _module(block1=block(cin, cout), blocks=nn.ModuleList())
        for k, (cin, cout) in enumerate(((64, 64), (64, 128), (128, 256), (256, 512)), start=2)
    }
    return _module(conv1=st_conv(3, 64, (3, 7, 7)), bn1=_bn(64), **stages, linear=nn.Linear(512, 4))


def _vcop_key(key: str, factorised: bool) -> str | None:
    """A VCOP state-dict key as a ``trunk`` key: the renames vssl/backbones/vcop.py documents."""
    if key.startswith("linear."):
        return None
    stage = re.match(r"conv(\d)\.block1\.(.*)", key)
    if stage:
        rest = re.sub(r"^(conv[12])\.", r"\1.0.", stage[2])
        rest = re.sub(r"^bn([12])\.", r"conv\1.1.", rest)
        rest = rest.replace("downsampleconv.", "downsample.0.").replace(
            "downsamplebn.", "downsample.1."
        )
        key = f"layer{int(stage[1]) - 1}.0.{rest}"
    elif factorised:
        key = re.sub(r"^conv1\.", "stem.", re.sub(r"^bn1\.", "stem.4.", key))
    else:
        key = re.sub(r"^conv1\.", "stem.0.", re.sub(r"^bn1\.", "stem.1.", key))
    key = key.replace("temporal_spatial_conv.", "").replace("spatial_conv.", "0.")
    return re.sub(r"(^|\.)bn\.", r"\g<1>1.", key).replace("temporal_conv.", "3.")


@pytest.mark.parametrize(("name", "factorised"), [("r3d_10", False), ("r2plus1d_10", True)])
def test_vcop_checkpoint_keys_map_onto_the_trunk(name, factorised):
    with torch.device("meta"):
        official = _official_vcop(factorised).state_dict()
        trunk = build(name).trunk
    renamed = {_vcop_key(k, factorised): v for k, v in official.items()}
    renamed.pop(None)
    # strict: every key and every shape of the official network has its place in the trunk
    trunk.load_state_dict(renamed, strict=True, assign=True)


def _official_hara(layers: list[int]) -> nn.Module:
    """The module tree of kenshohara/3D-ResNets-PyTorch (RSPNet's copy) models/resnet.py
    ResNet(BasicBlock, layers, shortcut_type="B"), written from its definition."""
    stages, inplanes = {}, 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        stage = []
        for b in range(blocks):
            parts = dict(
                conv1=nn.Conv3d(inplanes, planes, 3, bias=False),
                bn1=_bn(planes),
                conv2=nn.Conv3d(planes, planes, 3, bias=False),
                bn2=_bn(planes),
            )
            if b == 0 and i > 0:
                parts["downsample"] = nn.Sequential(
                    nn.Conv3d(inplanes, planes, 1, bias=False), _bn(planes)
                )
            stage.append(_module(**parts))
            inplanes = planes
        stages[f"layer{i + 1}"] = nn.Sequential(*stage)
    conv1 = nn.Conv3d(3, 64, 7, bias=False)
    return _module(conv1=conv1, bn1=_bn(64), **stages, fc=nn.Linear(512, 400))


@pytest.mark.parametrize(
    ("name", "layers"), [("r3d_18_hara", [2, 2, 2, 2]), ("r3d_34_hara", [3, 4, 6, 3])]
)
def test_hara_checkpoint_keys_map_onto_the_trunk(name, layers):
    with torch.device("meta"):
        official = _official_hara(layers).state_dict()
        trunk = build(name).trunk
    renamed = {
        re.sub(
            r"^(layer\d\.\d+)\.bn([12])\.",
            r"\1.conv\2.1.",
            re.sub(r"^(layer\d\.\d+)\.conv([12])\.", r"\1.conv\2.0.", k),
        ): v
        for k, v in official.items()
        if not k.startswith("fc.")
    }
    trunk.load_state_dict(renamed, strict=True, assign=True)


def test_r3d_10_is_torchvisions_r3d_18_with_one_block_per_stage():
    from torchvision.models import video

    state = {k.removeprefix("trunk."): v for k, v in build("r3d_10").state_dict().items()}
    result = video.r3d_18(weights=None).load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in result.missing_keys} == {
        "layer1.1",
        "layer2.1",
        "layer3.1",
        "layer4.1",
        "fc.weight",
        "fc.bias",
    }


@pytest.mark.parametrize("name", ["r3d_10", "r2plus1d_10"])
def test_vcop_networks_keep_pytorchs_default_init(name):
    """VCOP's code never re-initialises: conv weights are uniform within 1/sqrt(fan_in)
    (kaiming_uniform with a=sqrt(5)), not torchvision's Kaiming normal (fan_out)."""
    torch.manual_seed(0)
    for conv in (m for m in build(name).modules() if isinstance(m, nn.Conv3d)):
        fan_in = conv.weight[0].numel()
        bound = 1 / math.sqrt(fan_in)
        assert conv.weight.abs().max() <= bound
        assert conv.weight.abs().max() > 0.9 * bound


def test_c3d_without_pool5_averages_conv5b():
    torch.manual_seed(0)
    with_pool5, without = build("c3d").eval(), build("c3d", pool5=False).eval()
    assert "pool5" not in without.trunk._modules and "pool5" in with_pool5.trunk._modules
    # the same parameters: a checkpoint of either loads into the other
    without.load_state_dict(with_pool5.state_dict())
    x = torch.randn(1, 3, 16, 32, 32)
    with torch.no_grad():
        conv5b = without.forward_features(x)
        assert conv5b.shape == (1, 512, 2, 2, 2)
        torch.testing.assert_close(without(x), conv5b.mean(dim=(2, 3, 4)))
        pooled = nn.functional.max_pool3d(conv5b, 2, ceil_mode=True)
        torch.testing.assert_close(with_pool5.forward_features(x), pooled)
        assert not torch.allclose(with_pool5(x), without(x))
    x = torch.empty(1, 3, 16, 112, 112, device="meta")
    assert _on_meta("c3d", pool5=False).forward_features(x).shape == (1, 512, 2, 7, 7)
    with pytest.raises(TypeError, match="c3d: pool5 must be true or false, got 'no'"):
        build("c3d", pool5="no")


def test_width_kwargs():
    assert build("tiny3d", width=8).out_dim == 32
    assert _on_meta("r3d_50", width=2).out_dim == 4096
    assert _on_meta("slow_r50", width=2).out_dim == 4096
    with pytest.raises(ValueError, match="width"):
        build("tiny_r2plus1d", width=0)


def test_tiny_backbones_are_tiny():
    assert _params(build("tiny3d")) == 3 * 16 * 27 + 16 * 32 * 27 + 32 * 64 * 27 + 2 * 112
    assert _params(build("tiny3d")) < 100_000
    assert _params(build("tiny_r2plus1d")) < 250_000


def test_vit_tiny_8_convstem_is_vit_tiny_8_with_a_conv_stem():
    model = _on_meta("vit_tiny_8_convstem")
    linear_embed = 3 * 64 * 2 * 8 * 8 + 64
    # 3x3x3 convolutions without bias, each with a BatchNorm, then a 1x1x1 one with a bias.
    stem = 3 * 32 * 27 + 2 * 32 + 32 * 32 * 27 + 2 * 32 + 32 * 64 * 27 + 2 * 64 + 64 * 64 + 64
    assert _params(model) == _params(_on_meta("vit_tiny_8")) - linear_embed + stem == 190_048
    strides = [m.stride for m in model.trunk.patch_embed if isinstance(m, nn.Conv3d)]
    assert strides == [(2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 1, 1)]
    assert model.tubelet == (2, 8, 8)
    tokens = model.embed(torch.empty(2, 3, 16, 32, 32, device="meta"))
    assert tokens.shape == (2, 8 * 4 * 4, 64)
    with pytest.raises(ValueError, match=r"power-of-two tubelet sizes, got \(2, 6, 6\)"):
        build("vit_tiny_8_convstem", patch_size=6)


def test_info():
    entry = info("r3d_50")
    assert isinstance(entry, BackboneInfo)
    assert entry.name == "r3d_50" and entry.source == "pytorchvideo"
    assert entry.input_size == (16, 224)
    assert info("c3d").input_size == (16, 112)
    assert "gating" in info("s3dg").description


def test_unknown_name_lists_available_names():
    for exc in (KeyError, ValueError):
        with pytest.raises(exc) as caught:
            build("r3d18")
        message = str(caught.value)
        assert "unknown backbone 'r3d18'" in message
        assert "Did you mean 'r3d_18'?" in message
        assert all(name in message for name in NAMES)
    with pytest.raises(KeyError, match="Available: c3d, mc3_18"):
        info("nope")


def test_register_a_custom_backbone(scratch_registry):
    @register("my_net", input_size=(4, 48), source="user", description="two convs")
    def my_net(channels: int = 5) -> Backbone:
        return Backbone(nn.Conv3d(3, channels, kernel_size=1), out_dim=channels)

    assert "my_net" in available() and available() == sorted(available())
    assert info("my_net") == BackboneInfo("my_net", (4, 48), "user", "two convs")
    model = build("my_net", channels=7)
    assert model(torch.ones(2, 3, 4, 6, 6)).shape == (2, 7)
    with pytest.raises(TypeError, match="backbone 'my_net'.*widht"):
        build("my_net", widht=2)
    with pytest.raises(ValueError, match="'my_net' is already registered"):
        register("my_net", input_size=(4, 48), source="user", description="again")(my_net)


def test_register_rejects_bad_definitions(scratch_registry):
    with pytest.raises(ValueError, match="input_size must be"):
        register("bad", input_size=(16,), source="user", description="")
    with pytest.raises(ValueError, match="non-empty string"):
        register("", input_size=(16, 112), source="user", description="")

    @register("not_a_backbone", input_size=(8, 64), source="user", description="")
    def not_a_backbone() -> nn.Module:
        return nn.Identity()

    with pytest.raises(TypeError, match="'not_a_backbone'.*returned Identity, not a Backbone"):
        build("not_a_backbone")


def test_wrong_input_shape_is_a_clear_error():
    model = build("tiny3d")
    with pytest.raises(
        ValueError, match=r"expects clips shaped \(B, 3, T, H, W\), got \(3, 8, 32, 32\)"
    ):
        model(torch.zeros(3, 8, 32, 32))
    with pytest.raises(ValueError, match=r"got \(1, 8, 3, 32, 32\)"):
        model(torch.zeros(1, 8, 3, 32, 32))


def test_import_is_lazy():
    code = (
        "import sys, vssl.backbones as vb\n"
        "assert 'pytorchvideo' not in sys.modules and 'torchvision' not in sys.modules\n"
        "print(len(vb.available()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(NAMES))


def test_public_api():
    assert set(vb.__all__) == {"Backbone", "BackboneInfo", "available", "build", "info", "register"}
