"""The statistics task's worker path against straightforward references, value for value.

`StatisticsTransform` copies, flips and splits frames with OpenCV into reused work arrays, and
`appearance_regions` counts colours per atom and sums atoms into regions. The references below
do the same things the plain way (a torch crop and flip, one mask and one ``np.bincount`` per
region and channel), and every output must be equal, not close: the labels are argmaxes, so a
last-bit difference could move one, and ties must go to the lowest index as before.
"""

import numpy as np
import pytest
import torch

from vssl.data.flow import compute_flow
from vssl.data.statistics_labels import (
    PATTERNS,
    StatisticsTransform,
    appearance_regions,
    appearance_statistics,
    colour_octants,
    motion_statistics,
    region_masks,
)


# ----------------------------------------------------------------------------- references
def reference_crop_and_flip(transform: StatisticsTransform, clip: torch.Tensor) -> torch.Tensor:
    """The crop and flip written out with torch ops, drawing top, left, flip in that order."""
    size = transform.crop_size
    h, w = clip.shape[-2:]
    if transform.train:
        top = int(torch.randint(0, h - size + 1, ()))
        left = int(torch.randint(0, w - size + 1, ()))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    clip = clip[:, :, top : top + size, left : left + size]
    if transform.train and transform.flip_p > 0 and bool(torch.rand(()) < transform.flip_p):
        clip = clip.flip(-1)
    return clip


def reference_sample(transform: StatisticsTransform, video: torch.Tensor) -> dict:
    """The transform's sample from public functions: crop, flip, flow, labels."""
    clip = reference_crop_and_flip(transform, video)
    frames = clip.permute(0, 2, 3, 1).contiguous().numpy()
    return {
        "video": clip[:-1].contiguous(),
        "motion": torch.from_numpy(motion_statistics(compute_flow(frames))),
        "appearance": torch.from_numpy(appearance_statistics(frames[:-1])),
    }


def reference_regions(clip: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """pattern -> (IoU (R,), octant counts (R, 8)), region by region from its mask."""
    octants = colour_octants(clip)
    out = {}
    for pattern, masks in region_masks(clip.shape[1]).items():
        ious, counts = [], []
        for mask in masks:
            pixels = clip[:, mask]  # (T, n, 3)
            hists = np.stack(
                [[np.bincount(f[:, c], minlength=256) for c in range(3)] for f in pixels]
            )  # (T, 3, 256)
            ious.append((hists.min(0).sum(-1) / hists.max(0).sum(-1)).mean())
            counts.append(np.bincount(octants[:, mask].ravel(), minlength=9)[1:])
        out[pattern] = (np.array(ious), np.array(counts))
    return out


def reference_appearance_labels(clip: np.ndarray) -> list[int]:
    """The 13 appearance labels from `reference_regions` (ties to the lowest index)."""
    labels = []
    for iou, counts in reference_regions(clip).values():
        for region in (int(np.argmin(iou)), int(np.argmax(iou))):
            labels += [region + 1, int(np.argmax(counts[region])) + 1]
    labels.append(int(np.argmax(np.bincount(colour_octants(clip).ravel(), minlength=9)[1:])) + 1)
    return labels


def assert_regions_equal(clip: np.ndarray) -> None:
    stats = appearance_regions(clip)
    for pattern, (iou, counts) in reference_regions(clip).items():
        np.testing.assert_array_equal(stats.iou[pattern], iou, err_msg=pattern)
        np.testing.assert_array_equal(stats.octant_counts[pattern], counts, err_msg=pattern)
    assert appearance_statistics(clip).tolist() == reference_appearance_labels(clip)


def textured_clip(rng: np.random.Generator, frames: int, h: int, w: int) -> np.ndarray:
    """A random background with a few moving blocks: flow and colours that vary by region."""
    base = rng.integers(0, 256, (h + frames, w + 2 * frames, 3), dtype=np.uint8)
    clip = np.stack([base[t : t + h, 2 * t : 2 * t + w] for t in range(frames)])
    for _ in range(3):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        dy, dx = rng.integers(-2, 3, 2)
        colour = rng.integers(0, 256, 3, dtype=np.uint8)
        for t in range(frames):
            yy, xx = np.clip(y + dy * t, 0, h - 8), np.clip(x + dx * t, 0, w - 8)
            clip[t, yy : yy + 8, xx : xx + 8] = colour
    return np.ascontiguousarray(clip)


# ----------------------------------------------------------------------------- the transform
@pytest.mark.parametrize("layout", ["planar", "channels_last"])
@pytest.mark.parametrize("train, flip_p", [(True, 0.5), (True, 1.0), (True, 0.0), (False, 0.5)])
def test_transform_equals_the_reference(layout, train, flip_p):
    transform = StatisticsTransform(32, train=train, flip_p=flip_p)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        pixels = torch.from_numpy(textured_clip(rng, 6, 40, 52))
        video = pixels.permute(0, 3, 1, 2)
        if layout == "planar":
            video = video.contiguous()
        torch.manual_seed(seed)
        got = transform({"video": video, "label": torch.tensor(seed)})
        next_draw = float(torch.rand(()))
        torch.manual_seed(seed)
        want = reference_sample(transform, video)
        assert float(torch.rand(())) == next_draw  # the same random draws, in the same order
        assert got["label"] == seed
        for key, value in want.items():
            assert torch.equal(got[key], value), (layout, train, flip_p, seed, key)
        assert got["video"].is_contiguous() and got["video"].shape == (5, 3, 32, 32)


def test_transform_resizes_small_frames_and_crop_and_flip_agrees():
    rng = np.random.default_rng(9)
    video = torch.from_numpy(textured_clip(rng, 4, 24, 30)).permute(0, 3, 1, 2)
    transform = StatisticsTransform(32, train=True, flip_p=1.0)
    torch.manual_seed(0)
    got = transform({"video": video})
    torch.manual_seed(0)
    cropped = transform.crop_and_flip(video)
    assert cropped.shape == (4, 3, 32, 32)
    assert torch.equal(got["video"], cropped[:-1])
    frames = cropped.permute(0, 2, 3, 1).contiguous().numpy()
    assert got["appearance"].tolist() == reference_appearance_labels(frames[:-1])


def test_transform_results_are_new_memory():
    """The sample's video is a fresh tensor, never a view of the reused work arrays."""
    rng = np.random.default_rng(2)
    transform = StatisticsTransform(32, train=False)
    clips = [torch.from_numpy(textured_clip(rng, 5, 32, 32)).permute(0, 3, 1, 2) for _ in "ab"]
    first = transform({"video": clips[0]})
    kept = first["video"].clone()
    transform({"video": clips[1]})
    assert torch.equal(first["video"], kept) and torch.equal(kept, clips[0][:-1])
    two = transform({"video": clips[0][:2]})  # one frame out: still its own memory
    kept = two["video"].clone()
    transform({"video": clips[1][:2]})
    assert two["video"].shape == (1, 3, 32, 32) and torch.equal(two["video"], kept)


def test_transform_rejects_bad_clips():
    transform = StatisticsTransform(16, train=True)
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        transform({"video": torch.zeros(1, 3, 16, 16, dtype=torch.uint8)})
    with pytest.raises(ValueError, match=r"uint8 clips \(T\+1, 3, H, W\), got torch.float32"):
        transform({"video": torch.zeros(3, 3, 16, 16)})
    with pytest.raises(ValueError, match=r"got torch.uint8 of shape \(3, 16, 16, 3\)"):
        transform({"video": torch.zeros(3, 16, 16, 3, dtype=torch.uint8)})


# ----------------------------------------------------------------------------- appearance
@pytest.mark.parametrize("seed", range(6))
def test_appearance_regions_equal_the_reference_on_random_clips(seed):
    rng = np.random.default_rng(seed)
    size = (16, 24, 32)[seed % 3]
    assert_regions_equal(textured_clip(rng, 2 + seed % 4, size, size))
    assert_regions_equal(rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8))


def test_appearance_ties_go_to_the_lowest_region_and_octant():
    # Left-right mirror-symmetric frames that change over time: mirrored regions have exactly
    # equal histograms, so every IoU ties with its mirror's and argmin/argmax take the lower.
    rng = np.random.default_rng(4)
    half = rng.integers(0, 256, (4, 16, 8, 3), dtype=np.uint8)
    clip = np.ascontiguousarray(np.concatenate([half, half[:, :, ::-1]], axis=2))
    stats = appearance_regions(clip)
    p1 = stats.iou["p1"].reshape(4, 4)
    np.testing.assert_array_equal(p1, p1[:, ::-1])  # exact ties, not close values
    labels = appearance_statistics(clip)
    assert labels.tolist() == reference_appearance_labels(clip)
    assert (labels[0] - 1) % 4 < 2 and (labels[2] - 1) % 4 < 2  # the left one of each pair
    # A clip that never changes: every IoU is 1, both locations are region 1.
    still = np.repeat(clip[:1], 3, axis=0)
    assert appearance_statistics(still)[[0, 2, 4, 6, 8, 10]].tolist() == [1] * 6
    # Two octants with exactly as many pixels: the lower octant wins everywhere.
    even = np.zeros((2, 16, 16, 3), np.uint8)
    even[:, :, ::2] = (255, 255, 0)  # octant 8 on every other column
    even[:, :, 1::2] = (0, 0, 255)  # octant 1
    labels = appearance_statistics(even)
    assert labels[[1, 3, 5, 7, 12]].tolist() == [1] * 5
    assert labels.tolist() == reference_appearance_labels(even)


def test_appearance_regions_of_a_long_clip_are_exact():
    """Counts over many frames stay exact integers (the octant counts in runs of frames)."""
    rng = np.random.default_rng(8)
    clip = np.repeat(rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8), 300, axis=0)
    changed = rng.random(clip.shape[:3]) < 0.05
    clip[changed] = rng.integers(0, 256, (int(changed.sum()), 3), dtype=np.uint8)
    assert_regions_equal(clip)
    stats = appearance_regions(clip)
    assert stats.octant_counts["p2"].sum() == 300 * 16 * 16
    assert sum(PATTERNS.values()) == 28
