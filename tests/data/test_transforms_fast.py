"""`ClipTransform`'s plain-tensor path gives torchvision's clips: the same values, strides and
random draws (so a seeded run gives the same clips as torchvision's own transforms)."""

import pickle

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from vssl.data.transforms import (
    ClipTransform,
    ViewTransform,
    eval_clip_transform,
    resize_clip,
    train_clip_transform,
)
from vssl.tasks.clip_order import TupleTransform
from vssl.tasks.playback_rate import SharedCropTransform
from vssl.tasks.rspnet import KeyPairTransform


def torchvision_clip(transform, clip: torch.Tensor) -> torch.Tensor:
    """The reference: torchvision itself, on a `tv_tensors.Video`."""
    return transform(tv_tensors.Video(clip)).as_subclass(torch.Tensor)


def torchvision_views(transform, clips: torch.Tensor) -> torch.Tensor:
    if clips.ndim == 5:
        return torch.stack([torchvision_clip(transform, c) for c in clips])
    return torchvision_clip(transform, clips)


FAST = {
    "train 16": lambda: train_clip_transform(16),
    "train 17 small area, no flip": lambda: train_clip_transform(17, scale=(0.05, 0.3), flip=False),
    "train 9x13 box": lambda: v2.RandomResizedCrop((9, 13), scale=(0.3, 1.0), antialias=True),
    # no box of these ratios fits a frame of 5 by 13 or less: torchvision's central fallback
    "train fallback": lambda: v2.RandomResizedCrop(11, ratio=(3.0, 4.0), antialias=True),
    "train bilinear by name": lambda: v2.RandomResizedCrop(
        12, interpolation="bilinear", antialias=True
    ),
    "eval 16": lambda: eval_clip_transform(16),
    "resize 12, padded centre crop 15": lambda: v2.Compose(
        [v2.Resize(12, antialias=True), v2.CenterCrop(15)]
    ),
    "resize h w": lambda: v2.Resize([11, 23], antialias=True),
    "resize max_size": lambda: v2.Resize(10, max_size=14, antialias=True),
    "tdl train": lambda: v2.Compose([v2.Resize(18, antialias=True), v2.RandomCrop(16)]),
    "nested, flip p=0.3": lambda: v2.Compose(
        [
            v2.Compose([v2.RandomResizedCrop(10, antialias=True)]),
            v2.RandomHorizontalFlip(0.3),
            v2.RandomHorizontalFlip(),
        ]
    ),
}

SHAPES = [
    (3, 3, 20, 31),  # odd sizes
    (2, 3, 5, 13),  # frames smaller than the crop: upscaled
    (1, 3, 33, 17),  # one frame
    (4, 3, 16, 16),
    (2, 3, 3, 21, 25),  # a stack of clips, its own draws each
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", FAST)
def test_fast_path_equals_torchvision_values_strides_and_draws(name, shape):
    transform = FAST[name]()
    view = ViewTransform(transform)
    assert view.clip_transform.fast
    for seed in range(8):
        clips = torch.randint(
            0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
        )
        torch.manual_seed(seed)
        got = view({"video": clips})["video"]
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        want = torchvision_views(transform, clips)
        assert torch.equal(torch.get_rng_state(), state), f"{name}, seed {seed}: other draws"
        assert got.dtype == torch.uint8 and got.shape == want.shape
        assert torch.equal(got, want), f"{name}, seed {seed}"
        assert got.stride() == want.stride(), f"{name}, seed {seed}"


def test_many_seeds_of_the_tasks_training_transform_at_odd_frame_sizes():
    transform = train_clip_transform(15, scale=(0.2, 1.0))
    fast = ClipTransform(transform)
    gen = torch.Generator().manual_seed(0)
    for seed in range(30):
        h, w = (int(v) for v in torch.randint(6, 40, (2,), generator=gen))
        clip = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=gen)
        torch.manual_seed(seed)
        got = fast(clip)
        after = torch.rand(())
        torch.manual_seed(seed)
        want = torchvision_clip(transform, clip)
        assert torch.rand(()) == after
        assert torch.equal(got, want), (seed, h, w)


def test_channels_last_frames_give_torchvisions_values_and_layout():
    """Frames decoded as channels-last (the MJPEG reader's) stay channels-last, as in
    torchvision, and hold the same values as planar frames give."""
    clip = torch.randint(0, 256, (3, 3, 24, 30), dtype=torch.uint8)
    interleaved = clip.contiguous(memory_format=torch.channels_last)
    for transform in (train_clip_transform(16), eval_clip_transform(16)):
        torch.manual_seed(5)
        got = ClipTransform(transform)(interleaved)
        torch.manual_seed(5)
        want = torchvision_clip(transform, interleaved)
        torch.manual_seed(5)
        assert torch.equal(got, torchvision_clip(transform, clip))
        assert torch.equal(got, want) and got.stride() == want.stride()
        assert got.stride(-3) == 1  # channels-last


def test_float_clips_go_to_torchvisions_resize_unchanged():
    clip = torch.rand(2, 3, 19, 27)
    transform = train_clip_transform(12)
    torch.manual_seed(1)
    got = ClipTransform(transform)(clip)
    torch.manual_seed(1)
    assert torch.equal(got, torchvision_clip(transform, clip))


def test_hand_computed_flip_centre_crop_and_identity():
    ramp = torch.arange(4 * 6, dtype=torch.uint8).reshape(1, 1, 4, 6).expand(2, 3, 4, 6)
    flipped = ClipTransform(v2.RandomHorizontalFlip(p=1.0))(ramp)
    assert flipped[0, 0, 0].tolist() == [5, 4, 3, 2, 1, 0]
    centre = ClipTransform(v2.CenterCrop((2, 2)))(ramp)
    assert centre[1, 2].tolist() == [[8, 9], [14, 15]]
    # a box of the whole frame at the frame's own size: torchvision returns the frames unchanged
    whole = v2.RandomResizedCrop((4, 6), scale=(1.0, 1.0), ratio=(1.5, 1.5), antialias=True)
    assert torch.equal(ClipTransform(whole)(ramp), ramp)
    assert resize_clip(ramp, [4]) is ramp and resize_clip(ramp, 4) is ramp
    assert resize_clip(ramp, 2).shape == (2, 3, 2, 3)


def test_resize_clip_of_a_constant_clip_is_constant():
    clip = torch.full((2, 3, 17, 29), 200, dtype=torch.uint8)
    out = resize_clip(clip, [7, 11])
    assert out.shape == (2, 3, 7, 11) and out.is_contiguous()
    assert torch.all(out == 200)


@pytest.mark.parametrize(
    "transform",
    [
        v2.RandomResizedCrop(12, interpolation=InterpolationMode.NEAREST),
        v2.RandomResizedCrop(12, antialias=False),
        v2.Resize(12, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomCrop(12, padding=2),
        v2.Compose([v2.RandomRotation(10), v2.Resize(14, antialias=True), v2.RandomCrop(12)]),
        v2.Compose([train_clip_transform(12), v2.RandomVerticalFlip()]),
    ],
    ids=["nearest", "no antialias", "bicubic", "padding", "rotation", "unknown step"],
)
def test_other_transforms_keep_the_torchvision_path(transform):
    clip = torch.randint(0, 256, (2, 3, 20, 26), dtype=torch.uint8)
    fast = ClipTransform(transform)
    assert not fast.fast
    torch.manual_seed(2)
    got = fast(clip)
    torch.manual_seed(2)
    want = torchvision_clip(transform, clip)
    assert type(got) is torch.Tensor and torch.equal(got, want)


def test_task_wrappers_draw_once_for_their_frames_as_torchvision():
    """RSPNet's key pair, VCOP's tuple and PRP's input with its in-between frames."""
    transform = train_clip_transform(12)
    clips = torch.randint(0, 256, (5, 4, 3, 18, 23), dtype=torch.uint8)
    torch.manual_seed(4)
    pair = KeyPairTransform(transform)(
        {"query": clips[0], "key_same": clips[1], "key_other": clips[2]}
    )
    tup = TupleTransform(transform)({"video": clips[:3]})["video"]
    shared = SharedCropTransform(transform)({"video": clips[3], "between": clips[4, :2]})
    torch.manual_seed(4)
    want_query = torchvision_clip(transform, clips[0])
    want_keys = torchvision_clip(transform, clips[1:3].flatten(0, 1))
    want_tuple = torchvision_clip(transform, clips[:3].flatten(0, 1)).reshape(3, 4, 3, 12, 12)
    want_shared = torchvision_clip(transform, torch.cat([clips[3], clips[4, :2]]))
    assert torch.equal(pair["query"], want_query)
    assert torch.equal(torch.cat([pair["key_same"], pair["key_other"]]), want_keys)
    assert torch.equal(tup, want_tuple)
    assert torch.equal(torch.cat([shared["video"], shared["between"]]), want_shared)


def test_view_transform_pickles_for_spawned_workers():
    view = pickle.loads(pickle.dumps(ViewTransform(train_clip_transform(12))))
    clip = torch.randint(0, 256, (2, 3, 20, 26), dtype=torch.uint8)
    assert view.clip_transform.fast
    assert view({"video": clip})["video"].shape == (2, 3, 12, 12)
