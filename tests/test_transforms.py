import pytest
import torch
from torchvision.transforms.v2 import functional as F

from vssl.data.transforms import (
    BatchAugment,
    ViewTransform,
    eval_clip_transform,
    train_clip_transform,
)


def _reference(x: torch.Tensor, aug: BatchAugment, p, i: int, kernel: int) -> torch.Tensor:
    """The same augmentation of clip i with torchvision's per-sample functional ops."""
    ops = [
        lambda v: F.adjust_brightness(v, p.brightness[i].item()),
        lambda v: F.adjust_contrast(v, p.contrast[i].item()),
        lambda v: F.adjust_saturation(v, p.saturation[i].item()),
        lambda v: F.adjust_hue(v, p.hue[i].item()),
    ]
    v = x[i]
    if p.jitter[i]:
        for op in p.order[i].tolist():
            v = ops[op](v)
    if p.grayscale[i]:
        v = F.rgb_to_grayscale(v, num_output_channels=3)
    if p.blur_sigma[i] > 0:
        v = F.gaussian_blur(v, [kernel, kernel], [p.blur_sigma[i].item()] * 2)
    if p.solarize[i]:
        v = F.solarize(v, 0.5)
    return v


def test_batched_augment_equals_torchvision_per_sample():
    aug = BatchAugment(0.8, 0.8, 0.8, 0.2, jitter_p=0.8, grayscale_p=0.3, blur_p=0.5,
                       solarize_p=0.3, blur_kernel=5)
    x = torch.rand(12, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    params = aug.sample_params(12, generator=torch.Generator().manual_seed(0))
    assert params.jitter.any() and params.grayscale.any() and (params.blur_sigma > 0).any()
    out = aug.apply(x, params)
    for i in range(12):
        torch.testing.assert_close(out[i], _reference(x, aug, params, i, 5), atol=1e-5, rtol=0)


def test_same_parameters_on_every_frame_of_a_clip():
    aug = BatchAugment(0.8, 0.8, 0.8, 0.2, jitter_p=1.0, grayscale_p=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    frame = torch.randint(0, 256, (2, 1, 3, 8, 8), dtype=torch.uint8)
    video = frame.expand(2, 6, 3, 8, 8).contiguous()  # every frame identical
    out = aug(video, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 6, 8, 8)
    for t in range(1, 6):
        torch.testing.assert_close(out[:, :, t], out[:, :, 0])
    assert not torch.allclose(out[0, :, 0], frame[0, 0].float() / 255)  # something was applied


def test_eval_mode_only_normalises_and_layout():
    aug = BatchAugment(0.8, 0.8, 0.8, 0.2, jitter_p=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).eval()
    video = torch.full((2, 3, 4, 3, 5, 5), 255, dtype=torch.uint8)  # (B, N, T, C, H, W)
    out = aug(video)
    assert out.shape == (2, 3, 3, 4, 5, 5) and out.dtype == torch.float32
    assert torch.all(out == 1.0)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="B, \\[N,\\] T, C, H, W"):
        BatchAugment()(torch.zeros(3, 4, 4, dtype=torch.uint8))


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
    stacked = ViewTransform(train_clip_transform(16, scale=(0.1, 0.5)))({"video": torch.stack([clip] * 4)})
    assert stacked["video"].shape == (4, 6, 3, 16, 16)
    assert len({stacked["video"][i].sum().item() for i in range(4)}) > 1


def test_eval_clip_transform_is_deterministic_centre_crop():
    clip = torch.randint(0, 256, (4, 3, 40, 60), dtype=torch.uint8)
    out = eval_clip_transform(20)(clip)
    assert out.shape == (4, 3, 20, 20)
    torch.testing.assert_close(out, eval_clip_transform(20)(clip))
