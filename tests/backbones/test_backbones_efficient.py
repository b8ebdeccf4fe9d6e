"""3D ShuffleNet V1/V2 (Kopuklu et al. 2019) and torchvision's Video Swin backbones."""

import pytest
import torch
from torch import nn

from vssl.backbones import Backbone, build, info
from vssl.backbones.shufflenet import ShortcutPool, ShuffleV2Block


def _ceil_halve(n: int, times: int) -> int:
    for _ in range(times):
        n = -(-n // 2)
    return n


def _shufflenet_map(t: int, h: int) -> tuple[int, int]:
    return _ceil_halve(t, 4), _ceil_halve(h, 5)


def _swin_map(t: int, h: int) -> tuple[int, int]:
    # 2x4x4 patches (input padded to whole patches), then three 2x2 patch mergings
    return _ceil_halve(t, 1), _ceil_halve(-(-h // 4), 3)


# case id -> (name, kwargs, out_dim, (T, H) -> (T', H'))
CASES = {
    "v1-g3-0.5x": ("shufflenet3d_v1", {"width_mult": 0.5}, 480, _shufflenet_map),
    "v1-g3-1.0x": ("shufflenet3d_v1", {}, 960, _shufflenet_map),
    "v1-g3-1.5x": ("shufflenet3d_v1", {"width_mult": 1.5}, 1440, _shufflenet_map),
    "v1-g3-2.0x": ("shufflenet3d_v1", {"width_mult": 2.0}, 1920, _shufflenet_map),
    "v1-g1-1.0x": ("shufflenet3d_v1", {"groups": 1}, 567, _shufflenet_map),
    "v1-g8-2.0x": ("shufflenet3d_v1", {"groups": 8, "width_mult": 2}, 3072, _shufflenet_map),
    "v2-0.25x": ("shufflenet3d_v2", {"width_mult": 0.25}, 1024, _shufflenet_map),
    "v2-0.5x": ("shufflenet3d_v2", {"width_mult": 0.5}, 1024, _shufflenet_map),
    "v2-1.0x": ("shufflenet3d_v2", {}, 1024, _shufflenet_map),
    "v2-1.5x": ("shufflenet3d_v2", {"width_mult": 1.5}, 1024, _shufflenet_map),
    "v2-2.0x": ("shufflenet3d_v2", {"width_mult": 2.0}, 2048, _shufflenet_map),
    "swin3d_t": ("swin3d_t", {}, 768, _swin_map),
    "swin3d_s": ("swin3d_s", {}, 768, _swin_map),
    "swin3d_b": ("swin3d_b", {}, 1024, _swin_map),
}
SHUFFLENETS = [case for case in CASES if case.startswith("v")]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _on_meta(name: str, **kwargs) -> Backbone:
    with torch.device("meta"):
        return build(name, **kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_shapes_over_the_input_grid_on_meta(case):
    name, kwargs, out_dim, size_map = CASES[case]
    model = _on_meta(name, **kwargs).eval()
    assert isinstance(model, Backbone) and model.out_dim == out_dim
    # the whole grid for the default widths; the others (and Swin, slow even on meta) on three
    sizes = [(8, 112), (15, 160), (32, 224)]
    if case in ("v1-g3-1.0x", "v2-1.0x"):
        sizes = [(t, h) for t in (8, 15, 16, 32) for h in (112, 160, 224)]
    for t, h in sizes:
        features = model.forward_features(torch.empty(2, 3, t, h, h, device="meta"))
        t_out, h_out = size_map(t, h)
        assert features.shape == (2, out_dim, t_out, h_out, h_out), (t, h)
    assert model(torch.empty(2, 3, 16, 112, 112, device="meta")).shape == (2, out_dim)


@pytest.mark.parametrize("case", SHUFFLENETS)
def test_shufflenet_cpu_forward_backward(case):
    name, kwargs, out_dim, _ = CASES[case]
    torch.manual_seed(0)
    model = build(name, **kwargs)
    x = torch.randn(2, 3, 8, 32, 32)
    out = model(x)
    assert out.shape == (2, out_dim) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert model.trunk.conv1[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x).mean(dim=(2, 3, 4)))


def _v1_params(groups: int, width_mult: float) -> int:
    """Parameters of Efficient-3DCNNs models/shufflenet.py ShuffleNet without its classifier,
    counted from the layer definitions (Bottleneck: conv1 1x1x1 grouped, ungrouped when its
    input has 24 channels; conv2 3x3x3 depthwise; conv3 1x1x1 grouped to out - in channels
    at stride 2; BatchNorm after each)."""
    widths = {3: [24, 240, 480, 960], 1: [24, 144, 288, 567], 8: [24, 384, 768, 1536]}[groups]
    widths = [int(w * width_mult) for w in widths]
    total = 3 * widths[0] * 27 + 2 * widths[0]  # conv1: conv_bn(3, 24, stride (1, 2, 2))
    inp = widths[0]
    for out, blocks in zip(widths[1:], (4, 8, 4), strict=True):
        for i in range(blocks):
            mid = out // 4
            conv3_out = out - inp if i == 0 else out
            g = 1 if inp == 24 else groups
            total += (inp // g) * mid + 2 * mid  # conv1, bn1
            total += mid * 27 + 2 * mid  # conv2 (groups=mid), bn2
            total += (mid // groups) * conv3_out + 2 * conv3_out  # conv3, bn3
            inp = out
    return total


def _v2_params(widths: list[int]) -> int:
    """Parameters of Efficient-3DCNNs models/shufflenetv2.py ShuffleNetV2 without its
    classifier: conv1, 16 InvertedResiduals (banch1 only at stride 2), conv_last."""
    stem, *stages, last = widths
    total = 3 * stem * 27 + 2 * stem
    inp = stem
    for oup, blocks in zip(stages, (4, 8, 4), strict=True):
        half = oup // 2
        for i in range(blocks):
            if i == 0:  # banch1: dw 3x3x3 + BN, pw + BN; banch2 starts from all inp channels
                total += inp * 27 + 2 * inp + inp * half + 2 * half
                total += inp * half + 2 * half
            else:
                total += half * half + 2 * half
            total += half * 27 + 2 * half + half * half + 2 * half  # banch2: dw + BN, pw + BN
            inp = oup
    return total + inp * last + 2 * last


V2_WIDTHS = {
    0.25: [24, 32, 64, 128, 1024],
    0.5: [24, 48, 96, 192, 1024],
    1.0: [24, 116, 232, 464, 1024],
    1.5: [24, 176, 352, 704, 1024],
    2.0: [24, 224, 488, 976, 2048],
}


def test_shufflenet_parameter_counts_match_the_official_definitions():
    assert _params(_on_meta("shufflenet3d_v1")) == _v1_params(3, 1.0) == 944_904
    assert _params(_on_meta("shufflenet3d_v2")) == _v2_params(V2_WIDTHS[1.0]) == 1_299_180
    for width_mult in (0.5, 1.5, 2.0):
        model = _on_meta("shufflenet3d_v1", width_mult=width_mult)
        assert _params(model) == _v1_params(3, width_mult), width_mult
    for groups, width_mult in ((1, 1.0), (8, 2.0)):
        model = _on_meta("shufflenet3d_v1", groups=groups, width_mult=width_mult)
        assert _params(model) == _v1_params(groups, width_mult), (groups, width_mult)
    for width_mult, widths in V2_WIDTHS.items():
        model = _on_meta("shufflenet3d_v2", width_mult=width_mult)
        assert _params(model) == _v2_params(widths), width_mult


def _module(**children: nn.Module) -> nn.Module:
    module = nn.Module()
    for name, child in children.items():
        module.add_module(name, child)
    return module


def _conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, k, bias=False), nn.BatchNorm3d(cout), nn.ReLU())


def _official_v1(groups: int, width_mult: float) -> nn.Module:
    """The module tree (names and shapes, no forward) of the official ShuffleNet, written from
    models/shufflenet.py."""
    widths = [int(w * width_mult) for w in {3: [24, 240, 480, 960]}[groups]]
    inp, stages = widths[0], {}
    for s, (out, blocks) in enumerate(zip(widths[1:], (4, 8, 4), strict=True)):
        units = []
        for i in range(blocks):
            mid, o = out // 4, (out - inp if i == 0 else out)
            units.append(
                _module(
                    conv1=nn.Conv3d(inp, mid, 1, groups=1 if inp == 24 else groups, bias=False),
                    bn1=nn.BatchNorm3d(mid),
                    conv2=nn.Conv3d(mid, mid, 3, groups=mid, bias=False),
                    bn2=nn.BatchNorm3d(mid),
                    conv3=nn.Conv3d(mid, o, 1, groups=groups, bias=False),
                    bn3=nn.BatchNorm3d(o),
                )
            )
            inp = out
        stages[f"layer{s + 1}"] = nn.Sequential(*units)
    classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(inp, 600))
    return _module(conv1=_conv_bn(3, widths[0], 3), **stages, classifier=classifier)


def _official_v2(widths: list[int]) -> nn.Module:
    """The module tree of the official ShuffleNetV2, written from models/shufflenetv2.py
    (including its ``banch`` spelling)."""
    stem, *stages, last = widths
    inp, features = stem, []
    for oup, blocks in zip(stages, (4, 8, 4), strict=True):
        half = oup // 2
        for i in range(blocks):
            parts = {}
            if i == 0:
                parts["banch1"] = nn.Sequential(
                    nn.Conv3d(inp, inp, 3, groups=inp, bias=False),
                    nn.BatchNorm3d(inp),
                    nn.Conv3d(inp, half, 1, bias=False),
                    nn.BatchNorm3d(half),
                    nn.ReLU(),
                )
            parts["banch2"] = nn.Sequential(
                nn.Conv3d(inp if i == 0 else half, half, 1, bias=False),
                nn.BatchNorm3d(half),
                nn.ReLU(),
                nn.Conv3d(half, half, 3, groups=half, bias=False),
                nn.BatchNorm3d(half),
                nn.Conv3d(half, half, 1, bias=False),
                nn.BatchNorm3d(half),
                nn.ReLU(),
            )
            features.append(_module(**parts))
            inp = oup
    return _module(
        conv1=_conv_bn(3, stem, 3),
        features=nn.Sequential(*features),
        conv_last=_conv_bn(inp, last, 1),
        classifier=nn.Sequential(nn.Dropout(0.2), nn.Linear(last, 600)),
    )


@pytest.mark.parametrize(
    ("name", "kwargs", "official"),
    [
        ("shufflenet3d_v1", {"width_mult": 1.0}, lambda: _official_v1(3, 1.0)),
        ("shufflenet3d_v1", {"width_mult": 2.0}, lambda: _official_v1(3, 2.0)),
        ("shufflenet3d_v2", {"width_mult": 1.0}, lambda: _official_v2(V2_WIDTHS[1.0])),
        ("shufflenet3d_v2", {"width_mult": 0.25}, lambda: _official_v2(V2_WIDTHS[0.25])),
    ],
)
def test_official_checkpoint_keys_load_strictly(name, kwargs, official):
    with torch.device("meta"):
        # as the official training script saves it: from nn.DataParallel, so "module."
        checkpoint = {f"module.{k}": v for k, v in official().state_dict().items()}
        trunk = build(name, **kwargs).trunk
    # the documented renaming: strip "module.", drop the classifier
    state = {
        k.removeprefix("module."): v
        for k, v in checkpoint.items()
        if not k.startswith("module.classifier.")
    }
    trunk.load_state_dict(state, strict=True, assign=True)


def test_shufflenet_v1_layout():
    trunk = _on_meta("shufflenet3d_v1").trunk
    assert list(trunk._modules) == ["conv1", "maxpool", "layer1", "layer2", "layer3"]
    assert [len(trunk.layer1), len(trunk.layer2), len(trunk.layer3)] == [4, 8, 4]
    conv = trunk.conv1[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3, 3), (1, 2, 2), (1, 1, 1))
    pool = trunk.maxpool
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    first = trunk.layer1[0]
    # the official quirk: the first 1x1x1 conv after the 24-channel stem is not grouped
    assert (first.conv1.groups, first.conv3.groups, first.conv2.groups) == (1, 3, 60)
    assert first.conv3.out_channels == 240 - 24 and first.conv2.stride == (2, 2, 2)
    assert trunk.layer2[0].conv1.groups == 3 and trunk.layer1[1].conv2.stride == (1, 1, 1)
    # at 2.0x the stem has 48 channels, so that conv is grouped
    assert _on_meta("shufflenet3d_v1", width_mult=2.0).trunk.layer1[0].conv1.groups == 3


def test_shortcut_pool_is_the_official_pool_on_even_frames():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 7, 8)
    official = nn.AvgPool3d(kernel_size=(2, 3, 3), stride=2, padding=(0, 1, 1))
    torch.testing.assert_close(ShortcutPool()(x), official(x))
    # corner window: frames 0-1, pixels (-1..1) x (-1..1) with the zero padding counted: /18
    torch.testing.assert_close(
        ShortcutPool()(x)[:, :, 0, 0, 0], x[:, :, :2, :2, :2].sum((2, 3, 4)) / 18
    )
    # odd frame count: the last output frame pools the last input frame with itself
    odd = torch.randn(1, 2, 5, 4, 4)
    out = ShortcutPool()(odd)
    assert out.shape == (1, 2, 3, 2, 2)
    torch.testing.assert_close(
        out[:, :, 2], official(torch.cat([odd[:, :, 4:]] * 2, dim=2))[:, :, 0]
    )
    # maps smaller than the kernel, which nn.AvgPool3d refuses
    assert ShortcutPool()(torch.ones(1, 1, 1, 2, 2)).shape == (1, 1, 1, 1, 1)


def test_shufflenet_v2_block_passes_half_the_channels_interleaved():
    torch.manual_seed(0)
    block = ShuffleV2Block(8, 8, stride=1).eval()
    x = torch.randn(1, 8, 2, 3, 3)
    with torch.no_grad():
        out = block(x)
        processed = block.banch2(x[:, 4:])
    # concatenation then a shuffle in 2 groups: kept channel i lands at 2i, processed at 2i + 1
    torch.testing.assert_close(out[:, 0::2], x[:, :4])
    torch.testing.assert_close(out[:, 1::2], processed)
    trunk = _on_meta("shufflenet3d_v2").trunk
    assert list(trunk._modules) == ["conv1", "maxpool", "features", "conv_last"]
    strided = [i for i, b in enumerate(trunk.features) if hasattr(b, "banch1")]
    assert strided == [0, 4, 12] and len(trunk.features) == 16
    assert trunk.features[0].banch1[0].stride == (2, 2, 2)
    assert trunk.conv_last[0].kernel_size == (1, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"groups": 5}, ValueError, "shufflenet3d_v1: groups must be one of 1, 2, 3, 4, 8, got 5"),
        ({"groups": True}, ValueError, "groups must be one of"),
        ({"width_mult": 0.75}, ValueError, r"width_mult must be one of 0\.5, 1\.0, 1\.5, 2\.0"),
        ({"width_mult": "1.0"}, TypeError, "shufflenet3d_v1: width_mult must be a number"),
        (
            {"groups": 2, "width_mult": 0.5},
            ValueError,
            r"groups=2, width_mult=0\.5\): .* 25 bottleneck channels do not split into 2 groups",
        ),
        ({"width": 2}, TypeError, "backbone 'shufflenet3d_v1': .*width"),
    ],
)
def test_shufflenet_v1_bad_kwargs(kwargs, error, message):
    with pytest.raises(error, match=message):
        build("shufflenet3d_v1", **kwargs)


def test_shufflenet_v2_and_swin_bad_kwargs():
    with pytest.raises(ValueError, match=r"shufflenet3d_v2: width_mult must be one of 0\.25, 0\.5"):
        build("shufflenet3d_v2", width_mult=0.3)
    with pytest.raises(TypeError, match="shufflenet3d_v2: width_mult must be a number"):
        build("shufflenet3d_v2", width_mult=None)
    with pytest.raises(TypeError, match="backbone 'shufflenet3d_v2': .*groups"):
        build("shufflenet3d_v2", groups=3)
    with pytest.raises(TypeError, match="backbone 'swin3d_t': .*weights"):
        build("swin3d_t", weights="KINETICS400_V1")


def test_equal_width_mults_given_as_int_or_float():
    assert _params(_on_meta("shufflenet3d_v1", width_mult=2)) == _v1_params(3, 2.0)
    assert build("shufflenet3d_v2", width_mult=1).out_dim == 1024


@pytest.mark.parametrize("name", ["swin3d_t", "swin3d_s", "swin3d_b"])
def test_swin_trunks_are_torchvision_minus_head(name):
    from torchvision.models import get_model_weights, video

    model = _on_meta(name)
    weights = get_model_weights(name).DEFAULT
    head = model.out_dim * 400 + 400
    assert _params(model) + head == weights.meta["num_params"]
    with torch.device("meta"):
        reference = getattr(video, name)(weights=None).state_dict()
    state = {k: v for k, v in reference.items() if not k.startswith("head.")}
    assert sorted(set(reference) - set(state)) == ["head.bias", "head.weight"]
    model.trunk.load_state_dict(state, strict=True, assign=True)
    embed = model.trunk.patch_embed.proj
    assert (embed.kernel_size, embed.stride) == ((2, 4, 4), (2, 4, 4))
    assert model.trunk.features[0][0].attn.window_size == [8, 7, 7]
    assert info(name).input_size == (32, 224) and info(name).source == "torchvision"


def test_swin_with_torchvision_weights_gives_torchvisions_pooled_features():
    from torchvision.models import video

    torch.manual_seed(0)
    reference = video.swin3d_t(weights=None).eval()
    model = build("swin3d_t").eval()
    # a torchvision state dict (here random weights), "trunk." added, its head dropped
    state = {
        f"trunk.{k}": v for k, v in reference.state_dict().items() if not k.startswith("head.")
    }
    model.load_state_dict(state, strict=True)
    reference.head = nn.Identity()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        features = model(x)
        torch.testing.assert_close(features, reference(x))
        assert model.forward_features(x).shape == (1, 768, 2, 1, 1)
    assert features.shape == (1, 768) and features.abs().sum() > 0
