import colorsys
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn import functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vssl.data.transforms import (
    BatchAugment,
    ViewTransform,
    eval_clip_transform,
    train_clip_transform,
)
from vssl.tasks.cvrl import CVRL_AUGMENT
from vssl.tasks.rspnet import RSPNET_AUGMENT

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _reference(
    x: torch.Tensor,
    p,
    i: int,
    kernel: int,
    contrast=F.adjust_contrast,
    saturation=F.adjust_saturation,
    blur=None,
    grayscale_first: bool = False,
) -> torch.Tensor:
    """The same augmentation of clip i with per-sample ops (torchvision's unless given)."""
    ops = [
        lambda v: F.adjust_brightness(v, p.brightness[i].item()),
        lambda v: contrast(v, p.contrast[i].item()),
        lambda v: saturation(v, p.saturation[i].item()),
        lambda v: F.adjust_hue(v, p.hue[i].item()),
    ]
    v = x[i]
    if p.grayscale[i] and grayscale_first:
        v = F.rgb_to_grayscale(v, num_output_channels=3)
    if p.jitter[i]:
        for op in p.order[i].tolist():
            v = ops[op](v)
    if p.grayscale[i] and not grayscale_first:
        v = F.rgb_to_grayscale(v, num_output_channels=3)
    if p.blur_sigma[i] > 0:
        sigma = p.blur_sigma[i].item()
        v = blur(v, sigma, kernel) if blur else F.gaussian_blur(v, [kernel, kernel], [sigma] * 2)
    if p.solarize[i]:
        v = F.solarize(v, 0.5)
    return v


# The official formulas, written out directly on one clip (T, C, H, W) in [0, 1].
def rspnet_contrast(v: torch.Tensor, factor: float) -> torch.Tensor:
    """RSPNet's ``adjust_contrast``: blend toward one grey mean of the whole clip."""
    mean = (0.2989 * v[:, 0] + 0.587 * v[:, 1] + 0.114 * v[:, 2]).mean()
    return (factor * v + (1 - factor) * mean).clamp(0, 1)


def cvrl_contrast(v: torch.Tensor, factor: float) -> torch.Tensor:
    """``tf.image.adjust_contrast`` on the frames as one image (CVRL), then the clip to [0, 1]."""
    mean = v.mean(dim=(0, 2, 3), keepdim=True)  # per channel, over every frame and pixel
    return ((v - mean) * factor + mean).clamp(0, 1)


def cvrl_saturation(v: torch.Tensor, factor: float) -> torch.Tensor:
    """``tf.image.adjust_saturation`` (CVRL): S times factor, clipped to [0, 1], per pixel."""
    pixels = v.permute(0, 2, 3, 1).reshape(-1, 3).double().tolist()
    out = []
    for r, g, b in pixels:
        h, s, val = colorsys.rgb_to_hsv(r, g, b)
        out.append(colorsys.hsv_to_rgb(h, min(1.0, max(0.0, s * factor)), val))
    t, c, height, width = v.shape
    return torch.tensor(out, dtype=v.dtype).reshape(t, height, width, c).permute(0, 3, 1, 2)


def cvrl_blur(v: torch.Tensor, sigma: float, kernel: int) -> torch.Tensor:
    """CVRL's ``gaussian_blur``: exp(-k^2 / (2 sigma^2)) at integer offsets, zero padding."""
    radius = kernel // 2
    k = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    k2d = torch.outer(k, k) / k.sum() ** 2
    t, c, h, w = v.shape
    planes = v.reshape(t * c, 1, h, w).double()
    return nnf.conv2d(planes, k2d[None, None], padding=radius).reshape(v.shape).to(v.dtype)


def test_batched_augment_equals_torchvision_per_sample():
    aug = BatchAugment(
        0.8, 0.8, 0.8, 0.2, jitter_p=0.8, grayscale_p=0.3, blur_p=0.5, solarize_p=0.3, blur_kernel=5
    )
    x = torch.rand(12, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    params = aug.sample_params(12, generator=torch.Generator().manual_seed(0))
    assert params.jitter.any() and params.grayscale.any() and (params.blur_sigma > 0).any()
    out = aug.apply(x, params)
    for i in range(12):
        torch.testing.assert_close(out[i], _reference(x, params, i, 5), atol=1e-5, rtol=0)


JITTER = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}


@pytest.mark.parametrize(
    "options,reference",
    [
        ({"contrast_mean": "clip"}, {"contrast": rspnet_contrast}),
        ({"contrast_mean": "channel"}, {"contrast": cvrl_contrast}),
        ({"saturation_mode": "hsv"}, {"saturation": cvrl_saturation}),
        ({"grayscale_first": True}, {"grayscale_first": True}),
        (  # RSPNet's whole variant
            {"contrast_mean": "clip", "grayscale_first": True},
            {"contrast": rspnet_contrast, "grayscale_first": True},
        ),
        (  # CVRL's whole variant
            {"contrast_mean": "channel", "saturation_mode": "hsv", "blur_padding": "zeros"},
            {"contrast": cvrl_contrast, "saturation": cvrl_saturation, "blur": cvrl_blur},
        ),
    ],
)
def test_official_variants_equal_the_official_formulas(options, reference):
    aug = BatchAugment(**JITTER, jitter_p=0.8, grayscale_p=0.3, blur_p=0.5, **options)
    x = torch.rand(10, 3, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    params = aug.sample_params(10, generator=torch.Generator().manual_seed(0))
    assert params.jitter.any() and params.grayscale.any() and (params.blur_sigma > 0).any()
    out = aug.apply(x, params)
    default = BatchAugment(**JITTER, jitter_p=0.8, grayscale_p=0.3, blur_p=0.5).apply(x, params)
    assert not torch.allclose(out, default, atol=1e-3)  # the option changes the result
    kernel = 3  # the official size for 20-px frames: radius int((20 // 10) / 2) = 1
    for i in range(10):
        expected = _reference(x, params, i, kernel, **reference)
        torch.testing.assert_close(out[i], expected, atol=2e-5, rtol=0)


def test_zero_padded_blur_on_a_constant_clip_darkens_only_the_border():
    aug = BatchAugment(blur_p=1.0, blur_sigma=(1.0, 1.0), blur_kernel=5, blur_padding="zeros")
    x = torch.full((1, 2, 3, 12, 12), 0.6)
    params = aug.sample_params(1)
    out = aug.apply(x, params)
    torch.testing.assert_close(out[0], cvrl_blur(x[0], 1.0, 5))
    torch.testing.assert_close(out[..., 2:-2, 2:-2], x[..., 2:-2, 2:-2])
    assert out[0, 0, 0, 0, 0] < 0.6 * 0.6  # a corner sees 2 of 5 kernel taps in each direction
    reflect = BatchAugment(blur_p=1.0, blur_sigma=(1.0, 1.0), blur_kernel=5).apply(x, params)
    torch.testing.assert_close(reflect, x)


def test_hsv_saturation_clips_s_where_the_grey_blend_overshoots():
    # A pixel with S = 0.8: factor 1.5 gives S 1.2 -> clipped to 1 (the min channel goes to 0);
    # the grey blend extrapolates away from grey and clamps each channel instead.
    pixel = torch.tensor([1.0, 0.6, 0.2]).view(1, 1, 3, 1, 1)
    aug = BatchAugment(saturation=0.5, jitter_p=1.0, random_order=False, saturation_mode="hsv")
    params = aug.sample_params(1)
    params.brightness[:], params.contrast[:], params.saturation[:], params.hue[:] = 1, 1, 1.5, 0
    out = aug.apply(pixel, params)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(out[0], cvrl_saturation(pixel[0], 1.5))


def test_clip_and_channel_contrast_centres_by_hand():
    # Frame 0 is grey 0.2, frame 1 grey 0.6, and red 0.1 brighter than green and blue.
    x = torch.tensor([0.2, 0.6]).view(1, 2, 1, 1, 1).expand(1, 2, 3, 2, 2).clone()
    x[0, :, 0] += 0.1
    grey = torch.tensor([0.2, 0.6]) * (0.2989 + 0.587 + 0.114) + 0.1 * 0.2989  # per frame
    centres = {
        "frame": grey.view(1, 2, 1, 1, 1),
        "clip": grey.mean(),
        "channel": torch.tensor([0.5, 0.4, 0.4]).view(1, 1, 3, 1, 1),
    }
    for mode, centre in centres.items():
        aug = BatchAugment(contrast=0.5, jitter_p=1.0, random_order=False, contrast_mean=mode)
        params = aug.sample_params(1)
        params.brightness[:], params.contrast[:], params.saturation[:], params.hue[:] = 1, 0.5, 1, 0
        torch.testing.assert_close(aug.apply(x, params), 0.5 * x + 0.5 * centre)


@pytest.mark.parametrize(
    "option,value",
    [("contrast_mean", "video"), ("saturation_mode", "scale"), ("blur_padding", "replicate")],
)
def test_bad_variant_names_are_clear_errors(option, value):
    with pytest.raises(ValueError, match=f"augment {option} must be one of"):
        BatchAugment(**{option: value})


def test_same_parameters_on_every_frame_of_a_clip():
    aug = BatchAugment(
        0.8, 0.8, 0.8, 0.2, jitter_p=1.0, grayscale_p=0.0, mean=(0, 0, 0), std=(1, 1, 1)
    )
    frame = torch.randint(0, 256, (2, 1, 3, 8, 8), dtype=torch.uint8)
    video = frame.expand(2, 6, 3, 8, 8).contiguous()  # every frame identical
    out = aug(video, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 6, 8, 8)
    for t in range(1, 6):
        torch.testing.assert_close(out[:, :, t], out[:, :, 0])
    assert not torch.allclose(out[0, :, 0], frame[0, 0].float() / 255)  # something was applied


def test_eval_mode_only_normalises_and_layout():
    aug = BatchAugment(
        0.8, 0.8, 0.8, 0.2, jitter_p=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    ).eval()
    video = torch.full((2, 3, 4, 3, 5, 5), 255, dtype=torch.uint8)  # (B, N, T, C, H, W)
    out = aug(video)
    assert out.shape == (2, 3, 3, 4, 5, 5) and out.dtype == torch.float32
    assert torch.all(out == 1.0)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="B, \\[N,\\] T, C, H, W"):
        BatchAugment()(torch.zeros(3, 4, 4, dtype=torch.uint8))


def torchvision_views(transform, clips: torch.Tensor) -> torch.Tensor:
    """``transform`` applied by torchvision on a `tv_tensors.Video`, each clip of a stack alone."""
    if clips.ndim == 5:
        return torch.stack([torchvision_views(transform, c) for c in clips])
    return transform(tv_tensors.Video(clips)).as_subclass(torch.Tensor)


def test_view_transform_consistent_within_clip_independent_between_clips():
    torch.manual_seed(0)
    base = torch.arange(32 * 32, dtype=torch.int64).reshape(1, 1, 32, 32)
    clip = (base % 251).to(torch.uint8).expand(6, 3, 32, 32).contiguous()
    transform = ViewTransform(train_clip_transform(16, scale=(0.1, 0.5)), views=("a", "b"))
    out = transform({"a": clip, "b": clip.clone(), "label": 3})
    assert out["label"] == 3
    for name in ("a", "b"):
        assert out[name].shape == (6, 3, 16, 16)
        assert all(torch.equal(out[name][t], out[name][0]) for t in range(6))
    assert not torch.equal(out["a"], out["b"])
    stacked = ViewTransform(train_clip_transform(16, scale=(0.1, 0.5)))(
        {"video": torch.stack([clip] * 4)}
    )
    assert stacked["video"].shape == (4, 6, 3, 16, 16)
    assert len({stacked["video"][i].sum().item() for i in range(4)}) > 1


@pytest.mark.parametrize(
    "shape, size",
    [
        ((5, 3, 20, 30), 12),  # both axes drawn
        ((5, 3, 12, 30), 12),  # only the left offset is drawn
        ((5, 3, 20, 12), (12, 12)),  # only the top offset is drawn
        ((5, 3, 12, 12), 12),  # nothing drawn
        ((3, 4, 2, 20, 30), (8, 10)),  # a stack of clips, one crop each
    ],
)
def test_view_transform_random_crop_equals_torchvision(shape, size):
    """The sliced RandomCrop gives torchvision's crop and leaves the RNG where torchvision does."""
    clips = torch.randint(0, 256, shape, dtype=torch.uint8)
    sample = {"video": clips, "label": torch.tensor(1)}
    crop = v2.RandomCrop(size)
    fast = ViewTransform(crop)
    assert fast.clip_transform.fast
    torch.manual_seed(3)
    got = fast(sample)
    after_fast = torch.rand(())
    torch.manual_seed(3)
    want = torchvision_views(crop, clips)  # the reference: torchvision itself, clip by clip
    assert torch.rand(()) == after_fast
    assert got["video"].shape == want.shape
    assert torch.equal(got["video"], want)
    assert got["label"] is sample["label"]


def test_view_transform_random_crop_larger_than_clip_fails_as_torchvision():
    clip = torch.zeros(2, 3, 10, 30, dtype=torch.uint8)
    with pytest.raises(ValueError, match="Required crop size \\(12, 12\\)"):
        ViewTransform(v2.RandomCrop(12))({"video": clip})


def test_view_transform_padded_random_crop_keeps_torchvision_path():
    clip = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8)
    transform = ViewTransform(v2.RandomCrop(12, pad_if_needed=True))
    assert not transform.clip_transform.fast
    torch.manual_seed(0)
    out = transform({"video": clip})["video"]
    assert out.shape == (2, 3, 12, 12) and type(out) is torch.Tensor


def test_eval_clip_transform_is_deterministic_centre_crop():
    clip = torch.randint(0, 256, (4, 3, 40, 60), dtype=torch.uint8)
    out = eval_clip_transform(20)(clip)
    assert out.shape == (4, 3, 20, 20)
    torch.testing.assert_close(out, eval_clip_transform(20)(clip))


PAPER_VARIANTS = {
    "rspnet": (RSPNET_AUGMENT, {"contrast_mean": "clip", "grayscale_first": True}),
    "cvrl": (
        CVRL_AUGMENT,
        {"contrast_mean": "channel", "saturation_mode": "hsv", "blur_padding": "zeros"},
    ),
}


@pytest.mark.parametrize(
    "config",
    sorted(
        path
        for task in PAPER_VARIANTS
        for path in (CONFIGS / task).glob("*.yaml")
        if not path.stem.endswith("_tiny")  # CPU configs, tuned on CPU data
    ),
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_paper_configs_select_their_papers_variants(config):
    recipe, variants = PAPER_VARIANTS[config.parent.name]
    augment = yaml.safe_load(config.read_text())["model"]["init_args"]["augment"]
    aug = BatchAugment(**augment)
    assert {key: getattr(aug, key) for key in variants} == variants
    for key, value in recipe.items():  # the rest of the paper's recipe is unchanged
        assert getattr(aug, key) == (tuple(value) if isinstance(value, list) else value), key
