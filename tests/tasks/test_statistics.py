import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vssl.data.flow import compute_flow
from vssl.data.sampling import ClipSpec, FlowOf, RandomClip, UniformClips, WithFlow
from vssl.data.statistics_labels import (
    APPEARANCE_LABELS,
    MOTION_LABELS,
    PATTERNS,
    MotionBoundaries,
    StatisticsTransform,
    _atom_octant_counts,
    _geometry,
    _motion_labels,
    appearance_regions,
    appearance_statistics,
    colour_octants,
    motion_boundaries,
    motion_statistics,
    orientation_histogram,
    prewitt,
    region_masks,
)
from vssl.tasks.statistics import SpatioTemporalStatistics

REPO = Path(__file__).resolve().parents[2]
P3_MIRROR = [4, 3, 2, 1, 8, 7, 6, 5]


# ----------------------------------------------------------------------------- geometry
def test_region_masks_geometry():
    masks = region_masks(112)
    assert {k: v.shape for k, v in masks.items()} == {
        "p1": (16, 112, 112),
        "p2": (4, 112, 112),
        "p3": (8, 112, 112),
    }
    assert (masks["p1"].sum(0) == 1).all() and (masks["p2"].sum(0) == 1).all()
    # p1: 28 x 28 blocks row by row
    assert masks["p1"][5, 28:56, 28:56].all() and masks["p1"][5].sum() == 28 * 28
    assert masks["p1"][3, 0, 111] and masks["p1"][12, 111, 0]
    # p2: the centre square is pixels 42..69, rings of width 14 around it
    rows = np.flatnonzero(masks["p2"][0].any(1))
    assert (rows.min(), rows.max()) == (42, 69) and masks["p2"][0].sum() == 28 * 28
    assert masks["p2"][1].sum() == 56 * 56 - 28 * 28 and masks["p2"][3][0].all()
    assert masks["p2"][2][14, 14] and masks["p2"][3][13, 13]
    # p3: triangles numbered as the spec says; diagonals belong to two triangles
    p3 = masks["p3"]
    expected = {
        (20, 5): 1,
        (5, 20): 2,
        (5, 91): 3,
        (20, 106): 4,
        (91, 5): 5,
        (106, 20): 6,
        (106, 91): 7,
        (91, 106): 8,
    }
    for (y, x), label in expected.items():
        assert p3[:, y, x].tolist().index(True) + 1 == label and p3[:, y, x].sum() == 1
    assert p3[[0, 1], 30, 30].all() and p3[[2, 3], 30, 81].all()
    assert p3[[4, 5], 81, 30].all() and p3[[6, 7], 81, 81].all()
    overlap = p3.sum(0) == 2
    assert overlap.sum() == 2 * 112 and (p3.sum(0) >= 1).all()
    assert not masks["p1"].flags.writeable


def test_region_masks_reject_bad_sizes():
    with pytest.raises(ValueError, match="side divisible by 8, got 20"):
        region_masks(20)
    with pytest.raises(ValueError, match="must be square"):
        motion_statistics(np.zeros((2, 2, 16, 24), np.float32))
    with pytest.raises(ValueError, match=r"shape \(T, 2, H, W\)"):
        motion_statistics(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="uint8 RGB clip"):
        appearance_statistics(np.zeros((2, 16, 16, 3), np.float32))


def test_prewitt_is_a_correlation_with_replicated_borders():
    y, x = np.mgrid[0:16, 0:16].astype(np.float32)
    dx, dy = prewitt(0.5 * x - 2.0 * y)
    assert np.allclose(dx[1:-1, 1:-1], 3.0) and np.allclose(dy[1:-1, 1:-1], -12.0)
    assert np.allclose(dx[5, 0], 1.5)  # one-sided at the replicated border
    dx, dy = prewitt(np.stack([x, y]))
    assert dx.shape == (2, 16, 16) and np.allclose(dy[1, 1:-1, 1:-1], 6.0)


# ----------------------------------------------------------------------------- motion
def bump_in(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """1 on ``mask`` shrunk by ``margin`` pixels: its motion boundaries stay inside ``mask``."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(np.float32)


@pytest.mark.parametrize("pattern,offset", [("p1", 0), ("p2", 4), ("p3", 8)])
def test_motion_location_labels(pattern, offset):
    masks = region_masks(64)[pattern]
    for region in range(len(masks)):
        other = (region + 1) % len(masks)
        flow = np.zeros((3, 2, 64, 64), np.float32)
        flow[1, 0] = 1.5 * bump_in(masks[region])  # u moves inside `region` only
        flow[2, 1] = -0.5 * bump_in(masks[other])  # v inside the next region
        labels = motion_statistics(flow)
        assert labels[offset] == region + 1, (pattern, region)
        assert labels[offset + 2] == other + 1, (pattern, region)
        assert labels[12:].tolist() == [2, 3]


@pytest.mark.parametrize("bin_index", range(8))
def test_motion_orientation_in_each_bin(bin_index):
    theta = np.radians(45 * bin_index)  # bin k (1-based) is centred at 45 (k - 1) degrees
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    ramp = 0.05 * (np.cos(theta) * x + np.sin(theta) * y)
    flow = np.zeros((4, 2, 64, 64), np.float32)
    flow[:, 0] = ramp
    flow[:, 1] = -ramp  # the opposite direction: 4 bins on
    labels = motion_statistics(flow)
    u_ori, v_ori = labels[[1, 5, 9]], labels[[3, 7, 11]]
    assert u_ori.tolist() == [bin_index + 1] * 3
    assert v_ori.tolist() == [(bin_index + 4) % 8 + 1] * 3


def test_orientation_histogram_splits_votes_linearly():
    # The official code: a votes 1 - r into bin floor(a / 45) + 1, r into the next, r = (a mod 45) / 45.
    np.testing.assert_allclose(orientation_histogram([0.0], [2.0]), [2, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(orientation_histogram([22.5], [1.0]), [0.5, 0.5, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(orientation_histogram([45.0], [1.0]), [0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(orientation_histogram([315.0], [1.0]), [0, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(orientation_histogram([337.5], [1.0]), [0.5, 0, 0, 0, 0, 0, 0, 0.5])
    np.testing.assert_allclose(  # wraps: mostly bin 1
        orientation_histogram([350.0], [1.0]), [35 / 45, 0, 0, 0, 0, 0, 0, 10 / 45]
    )
    np.testing.assert_allclose(
        orientation_histogram([30.0, 300.0], [1.0, 3.0]),
        [15 / 45, 30 / 45, 0, 0, 0, 0, 3 * 15 / 45, 3 * 30 / 45],
    )
    # Two populations, each nearest to another bin centre, whose split votes make bin 2 the largest.
    hist = orientation_histogram([21.0, 69.0], [1.0, 1.0])
    assert hist.argmax() == 1
    grouped = orientation_histogram([0.0, 200.0], [1.0, 1.0], groups=[1, 0], num_groups=2)
    assert grouped.shape == (2, 8) and grouped[1, 0] == 1.0 and grouped[0].argmax() == 4


def official_cell_gradient(magnitude: np.ndarray, angle: np.ndarray) -> list[float]:
    """The official ``cell_gradient`` (laura-wang/video_repres_sts), pixel by pixel."""
    centres = [0.0] * 8
    for strength, a in zip(magnitude.ravel(), angle.ravel(), strict=True):
        low = int(a / 45) % 8
        mod = a % 45
        centres[low] += strength * (1 - mod / 45)
        centres[(low + 1) % 8] += strength * (mod / 45)
    return centres


def test_orientation_histogram_equals_the_official_cell_gradient():
    rng = np.random.default_rng(3)
    angle = np.concatenate([rng.uniform(0, 360, 200), np.arange(0, 360, 22.5)])
    magnitude = rng.uniform(0, 2, angle.size)
    np.testing.assert_allclose(
        orientation_histogram(angle, magnitude), official_cell_gradient(magnitude, angle)
    )


def test_motion_orientation_uses_the_linear_vote():
    # u = ramp at 21 degrees left of the midline, at 69 degrees right of it, continuous at the
    # seam: every pixel of the centre region is nearer to another bin centre than bin 2's (45),
    # yet the split votes make bin 2 the dominant one there. A nearest-bin vote would say 1.
    s = 64
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    gx = np.where(x < s / 2, 1 / np.tan(np.radians(21.0)), 1 / np.tan(np.radians(69.0)))
    u = 0.05 * (gx * (x - s / 2 + 0.5) + y)
    flow = np.zeros((2, 2, s, s), np.float32)
    flow[:, 0] = u
    labels = motion_statistics(flow)
    assert labels[4] in (1, 2, 3)  # a p2 region that both halves share
    assert labels[5] == 2
    assert labels[1] == 1  # the chosen p1 block is in the steeper left half: most votes in bin 1


def test_global_motion_label():
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 0.1, (16, 2, 32, 32)).astype(np.float32)
    flow[6, 0] *= 20  # field 7 has by far the strongest u boundaries
    flow[11, 1] *= 20  # field 12 for v
    assert motion_statistics(flow)[12:].tolist() == [7, 12]


def test_no_motion_gives_zero_labels():
    assert motion_statistics(np.zeros((16, 2, 32, 32), np.float32)).tolist() == [0] * 14
    # A uniform translation has no motion boundary either.
    assert motion_statistics(np.full((4, 2, 32, 32), 3.0, np.float32)).tolist() == [0] * 14
    # Only v moves: u's labels are 0, v's are defined.
    flow = np.zeros((4, 2, 32, 32), np.float32)
    flow[2, 1, 10:14, 3:6] = 1.0
    labels = motion_statistics(flow)
    assert labels[[0, 1, 4, 5, 8, 9, 12]].tolist() == [0] * 7
    assert (labels[[2, 3, 6, 7, 10, 11]] > 0).all() and labels[13] == 3


def test_motion_statistics_accepts_torch_and_any_size():
    rng = np.random.default_rng(3)
    flow = rng.normal(0, 1, (5, 2, 24, 24)).astype(np.float32)
    a = motion_statistics(flow)
    assert a.dtype == np.int64 and a.shape == (14,) and len(MOTION_LABELS) == 14
    np.testing.assert_array_equal(a, motion_statistics(torch.from_numpy(flow)))
    assert (a[:12:2] >= 1).all() and (a[[0]] <= 16).all() and (a[[4, 6]] <= 4).all()


# ----------------------------------------------------------------------------- appearance
def test_colour_octants_numbering():
    lo, hi = 127, 128
    colours = np.array(
        [
            [lo, lo, hi],
            [lo, hi, hi],
            [hi, lo, hi],
            [hi, hi, hi],
            [lo, lo, lo],
            [lo, hi, lo],
            [hi, lo, lo],
            [hi, hi, lo],
        ],
        np.uint8,
    )
    assert colour_octants(colours).tolist() == list(range(1, 9))
    assert colour_octants(np.array([[0, 0, 255], [255, 255, 0]], np.uint8)).tolist() == [1, 8]


def background_clip(t: int = 6, s: int = 32, colour=(200, 40, 200)) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (t, s, s, 3)).copy()


@pytest.mark.parametrize("pattern,offset", [("p1", 0), ("p2", 4), ("p3", 8)])
def test_diversity_labels(pattern, offset):
    masks = region_masks(32)[pattern]
    p3 = region_masks(32)["p3"]
    rng = np.random.default_rng(0)
    for region in range(len(masks)):
        clip = background_clip()  # octant 3 everywhere, never changing
        changing = masks[region] & (p3.sum(0) == 1)  # leave out pixels shared by two triangles
        clip[:, changing] = rng.integers(0, 256, (6, int(changing.sum()), 3), dtype=np.uint8)
        labels = appearance_statistics(clip)
        assert labels[offset] == region + 1, (pattern, region)
        assert labels[offset + 2] == (2 if region == 0 else 1)  # first unchanged region
        assert labels[offset + 3] == 3


@pytest.mark.parametrize("octant", range(1, 9))
def test_colour_labels_every_octant(octant):
    lo = np.array([30, 0, 127])  # three values below 128 per octant channel
    hi = np.array([128, 200, 255])
    bits = [(octant - 1) // 2 % 2, (octant - 1) % 2, 1 - (octant - 1) // 4]  # R, G, B high?
    rng = np.random.default_rng(octant)
    clip = background_clip(t=4, s=32, colour=(255, 255, 255))  # octant 4
    block = region_masks(32)["p1"][6]  # block 7: changes colour, always inside `octant`
    values = np.stack([rng.choice(hi if b else lo, (4, 64)) for b in bits], axis=-1)
    clip[:, block] = values.astype(np.uint8)
    clip[:, 24:, 24:] = (10, 10, 10)  # block 16: a still block of octant 5
    labels = appearance_statistics(clip)
    assert labels[:2].tolist() == [7, octant]
    assert labels[2:4].tolist() == [1, 4]
    assert labels[12] == 4  # the white background holds most pixels
    assert len(APPEARANCE_LABELS) == 13


def test_global_colour_counts_every_pixel_once():
    clip = background_clip(t=2, s=16, colour=(0, 0, 0))  # octant 5
    clip[:, :, :8] = (0, 0, 255)  # octant 1 on exactly half the pixels: a tie goes to 1
    assert appearance_statistics(clip)[12] == 1
    clip[:, 0, 8] = (0, 0, 255)
    clip[:, 0, 0] = (0, 0, 0)  # still a tie: a diagonal pixel must not count twice
    assert appearance_statistics(clip)[12] == 1
    clip[:, 1, 1] = (0, 0, 0)  # a diagonal pixel turns the majority
    assert appearance_statistics(clip)[12] == 5


def test_still_clip_and_input_layouts():
    rng = np.random.default_rng(5)
    still = np.repeat(rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8), 3, axis=0)
    labels = appearance_statistics(still)
    assert labels[[0, 2, 4, 6, 8, 10]].tolist() == [1] * 6  # every IoU is 1: ties go to 1
    clip = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    a = appearance_statistics(clip)
    np.testing.assert_array_equal(a, appearance_statistics(torch.from_numpy(clip)))
    np.testing.assert_array_equal(a, appearance_statistics(clip.transpose(0, 3, 1, 2)))


def test_appearance_regions_match_a_direct_count():
    """Colour-histogram IoU and octant counts of every region against a count, region by region,
    of the pixels of its mask (p3 diagonal pixels in both triangles)."""
    rng = np.random.default_rng(11)
    clip = np.repeat(rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8), 5, axis=0)
    changed = rng.random((5, 16, 16)) < np.linspace(0, 0.6, 16)  # more change to the right
    clip[changed] = rng.integers(0, 256, (int(changed.sum()), 3), dtype=np.uint8)
    clip[:, :8] //= 3  # darker top half: a spread of octants
    stats = appearance_regions(clip)
    octants = colour_octants(clip)
    for pattern, masks in region_masks(16).items():
        for r, mask in enumerate(masks):
            pixels = clip[:, mask]  # (T, n, 3)
            hists = np.stack(
                [[np.bincount(f[:, c], minlength=256) for c in range(3)] for f in pixels]
            )  # (T, 3, 256)
            iou = (hists.min(0).sum(-1) / hists.max(0).sum(-1)).mean()
            assert stats.iou[pattern][r] == pytest.approx(iou, rel=1e-12), (pattern, r)
            counts = np.bincount(octants[:, mask].ravel(), minlength=9)[1:]
            assert stats.octant_counts[pattern][r].tolist() == counts.tolist(), (pattern, r)
    assert stats.global_counts.tolist() == np.bincount(octants.ravel(), minlength=9)[1:].tolist()
    # Counting in runs of frames (float32 histograms stay exact) changes nothing.
    n_atoms = _geometry(16).atom_members.shape[1]
    whole = _atom_octant_counts(clip, n_atoms)
    assert whole.sum() == clip[..., 0].size
    for max_pixels in (2 * 16 * 16 + 1, 16 * 16 + 1, 1):  # runs of 2, 1 and 1 frames
        np.testing.assert_array_equal(_atom_octant_counts(clip, n_atoms, max_pixels), whole)


# ----------------------------------------------------------------------------- flips
# Oracles: the labels of the horizontally mirrored clip, derived from the clip's labels by the
# geometry of a mirror (not by computing them again), so that a flip in the pipeline can be
# checked against what the labels of a flipped clip must be.
U_ORI_MIRROR = np.array([0, 1, 8, 7, 6, 5, 4, 3, 2])  # angle -> -angle (bin 1 at 0 degrees)
V_ORI_MIRROR = np.array([0, 5, 4, 3, 2, 1, 8, 7, 6])  # angle -> 180 - angle


def mirror_location(pattern: str, label: int) -> int:
    """The label of the region that mirrors region ``label`` of ``pattern`` (0 stays 0)."""
    if label == 0:
        return 0
    masks = region_masks(8)[pattern]  # the permutation is the same for every frame size
    flipped = masks[label - 1, :, ::-1]
    return int(np.flatnonzero((masks == flipped).all(axis=(1, 2)))[0]) + 1


def mirror_motion_labels(labels) -> np.ndarray:
    """The motion labels of the mirrored clip: mirroring negates u and reflects x, so a
    u-boundary direction at angle a goes to -a, a v-boundary direction to 180 - a; locations go
    to their mirror regions; global labels stay. This is what the official code misses when it
    flips precomputed flow without negating u."""
    labels = np.asarray(labels, dtype=np.int64)
    out = labels.copy()
    for k, name in enumerate(PATTERNS):
        base = 4 * k
        out[base] = mirror_location(name, labels[base])
        out[base + 1] = U_ORI_MIRROR[labels[base + 1]]
        out[base + 2] = mirror_location(name, labels[base + 2])
        out[base + 3] = V_ORI_MIRROR[labels[base + 3]]
    return out


def mirror_appearance_labels(labels) -> np.ndarray:
    """The appearance labels of the mirrored clip: locations mirrored, colours kept."""
    labels = np.asarray(labels, dtype=np.int64)
    out = labels.copy()
    for k, name in enumerate(PATTERNS):
        out[4 * k] = mirror_location(name, labels[4 * k])
        out[4 * k + 2] = mirror_location(name, labels[4 * k + 2])
    return out


def mirror_flow(flow: np.ndarray) -> np.ndarray:
    out = flow[..., ::-1].copy()
    out[:, 0] *= -1
    return out


def test_mirror_maps_follow_the_geometry():
    labels = np.array([1, 1, 5, 1, 2, 2, 3, 5, 1, 3, 7, 8, 4, 9])
    out = mirror_motion_labels(labels)
    assert out.tolist() == [4, 1, 8, 5, 2, 8, 3, 1, 4, 7, 6, 6, 4, 9]
    assert [mirror_motion_labels([0] * 8 + [k, 0, 0, 0, 0, 0])[8] for k in range(1, 9)] == P3_MIRROR
    assert mirror_motion_labels([0] * 14).tolist() == [0] * 14
    app = mirror_appearance_labels([2, 3, 16, 4, 1, 5, 4, 6, 5, 7, 1, 8, 2])
    assert app.tolist() == [3, 3, 13, 4, 1, 5, 4, 6, 8, 7, 4, 8, 2]


@pytest.mark.parametrize("seed", range(4))
def test_flipped_clip_labels_are_the_mirrored_labels(seed):
    rng = np.random.default_rng(seed)
    flow = cv2.GaussianBlur(rng.normal(0, 2, (32, 32, 8)).astype(np.float32), (0, 0), 1.5)
    flow = np.ascontiguousarray(flow.transpose(2, 0, 1).reshape(4, 2, 32, 32))
    labels = motion_statistics(flow)
    np.testing.assert_array_equal(
        motion_statistics(mirror_flow(flow)), mirror_motion_labels(labels)
    )
    # The official code's flip (u not negated) gets the u orientations wrong:
    official = flow[..., ::-1].copy()
    assert (
        motion_statistics(official)[[1, 5, 9]].tolist()
        != mirror_motion_labels(labels)[[1, 5, 9]].tolist()
    )
    clip = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        appearance_statistics(clip[:, :, ::-1]),
        mirror_appearance_labels(appearance_statistics(clip)),
    )


def moving_square_clip(frames: int = 5, size: int = 64) -> np.ndarray:
    """A textured square moving right by 1 pixel a frame in block 1 of a still background."""
    rng = np.random.default_rng(7)
    background = cv2.GaussianBlur(
        rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 1
    )
    patch = cv2.GaussianBlur(rng.uniform(0, 255, (10, 10, 3)).astype(np.float32), (0, 0), 1)
    clip = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        clip[t, 3:13, 2 + t : 12 + t] = patch
    return clip.astype(np.uint8)


def test_transform_computes_labels_after_the_flip():
    clip = torch.from_numpy(moving_square_clip()).permute(0, 3, 1, 2)
    plain = StatisticsTransform(64, train=True, flip_p=0.0)({"video": clip})
    flipped = StatisticsTransform(64, train=True, flip_p=1.0)({"video": clip})
    assert plain["video"].shape == (4, 3, 64, 64) and plain["video"].dtype == torch.uint8
    torch.testing.assert_close(flipped["video"], plain["video"].flip(-1))
    # u: the square's block and its boundary direction, mirrored (block 1 -> 4, angle -> -angle)
    assert plain["motion"][:2].tolist() == [1, 7]
    assert flipped["motion"][:2].tolist() == [4, 3]  # bin 7 (270 degrees) -> bin 3 (90)
    expected_flow = compute_flow(clip.flip(-1))
    np.testing.assert_array_equal(flipped["motion"].numpy(), motion_statistics(expected_flow))
    frames = flipped["video"].permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(flipped["appearance"].numpy(), appearance_statistics(frames))
    assert plain["appearance"][0] == 1 and flipped["appearance"][0] == 4  # most diverse block


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transform_gives_the_same_sample_for_planar_and_channels_last_frames(seed):
    """The MJPEG reader returns channels-last frames, PyAV planar ones: same sample either way."""
    rng = np.random.default_rng(seed)
    pixels = torch.from_numpy(rng.integers(0, 256, (5, 40, 52, 3), dtype=np.uint8))
    channels_last = pixels.permute(0, 3, 1, 2)
    planar = channels_last.contiguous()
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    outs = []
    for clip in (planar, channels_last):
        torch.manual_seed(seed)
        outs.append(StatisticsTransform(32, train=True)({"video": clip}))
    assert outs[0].keys() == outs[1].keys()
    for key in outs[0]:
        assert torch.equal(outs[0][key], outs[1][key]), key


# ----------------------------------------------------------------------------- the worker path
# The transform computes flow and labels with reused work arrays, one tall-image filter for all
# flow planes and a planar copy plus a merge for channels-last frames. The reference below is
# the previous code, written out: per-frame torch permute, DIS with fresh output arrays, one
# OpenCV filter call per flow plane.
def previous_flow(frames: np.ndarray) -> np.ndarray:
    n, h, w, _ = frames.shape
    gray = cv2.cvtColor(frames.reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    dis.setVariationalRefinementIterations(3)
    fields = [dis.calc(gray[t], gray[t + 1], None) for t in range(n - 1)]
    return np.stack(fields).transpose(0, 3, 1, 2).astype(np.float32)


def previous_boundaries(flow: np.ndarray) -> MotionBoundaries:
    """The boundaries written plainly: one OpenCV filter per plane, float32 magnitudes with each
    operation rounded on its own, float32 sums over time in time order, float64 sums over a
    field's pixels."""
    diff, box = np.array([-1, 0, 1], np.float32), np.ones(3, np.float32)
    planes = flow.reshape(-1, *flow.shape[2:])
    border = cv2.BORDER_REPLICATE
    dx = np.stack([cv2.sepFilter2D(p, cv2.CV_32F, diff, box, borderType=border) for p in planes])
    dy = np.stack([cv2.sepFilter2D(p, cv2.CV_32F, box, diff, borderType=border) for p in planes])
    dx, dy = dx.reshape(flow.shape), dy.reshape(flow.shape)
    field_magnitude = np.sqrt(dx * dx + dy * dy)
    per_field = field_magnitude.reshape(flow.shape[0], 2, -1).sum(-1, dtype=np.float64)
    sx, sy = dx[0].copy(), dy[0].copy()
    for t in range(1, len(dx)):
        sx, sy = sx + dx[t], sy + dy[t]
    return MotionBoundaries(sx, sy, np.sqrt(sx * sx + sy * sy), per_field)


def busy_clip(frames: int = 9, height: int = 48, width: int = 64, seed: int = 3) -> np.ndarray:
    """Two textured squares moving in different directions over a slowly panning texture."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (2 * height, 2 * width, 3)), (0, 0), 1.5)
    patch = cv2.GaussianBlur(rng.uniform(0, 255, (12, 12, 3)), (0, 0), 1.0)
    clip = []
    for t in range(frames):
        frame = big[t : t + height, 2 * t : 2 * t + width].copy()
        frame[5 + t : 17 + t, 30 - 2 * t : 42 - 2 * t] = patch
        frame[30:42, 3 + 3 * t : 15 + 3 * t] = 255 - patch
        clip.append(frame)
    return np.clip(np.stack(clip), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("train, flip_p, seed", [(True, 1.0, 0), (True, 0.0, 1), (False, 0.0, 0)])
def test_transform_gives_the_labels_and_flow_of_the_previous_code(train, flip_p, seed):
    """Flow, its derivatives' sums, their magnitudes and all labels as the plain code computes
    them, bit for bit."""
    video = torch.from_numpy(busy_clip()).permute(0, 3, 1, 2)
    transform = StatisticsTransform(32, train=train, flip_p=flip_p)
    torch.manual_seed(seed)
    out = transform({"video": video})
    torch.manual_seed(seed)
    frames = transform.crop_and_flip(video).permute(0, 2, 3, 1).contiguous().numpy()
    torch.testing.assert_close(out["video"], torch.from_numpy(frames[:-1]).permute(0, 3, 1, 2))
    flow = previous_flow(frames)
    np.testing.assert_array_equal(compute_flow(frames), flow)
    expected, got = previous_boundaries(flow), motion_boundaries(flow)
    for name in ("dx", "dy", "magnitude", "per_field"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
    motion = _motion_labels(expected)
    assert (motion > 0).all()  # every label is defined: the comparison covers all 14
    np.testing.assert_array_equal(out["motion"].numpy(), motion)
    np.testing.assert_array_equal(motion_statistics(flow), motion)
    np.testing.assert_array_equal(out["appearance"].numpy(), appearance_statistics(frames[:-1]))


def test_work_arrays_never_leak_into_results():
    """Results of one call stay as they were after calls on other clips (the work arrays that
    calls share are never returned)."""
    rng = np.random.default_rng(4)
    a, b = (torch.from_numpy(busy_clip(seed=s)).permute(0, 3, 1, 2) for s in (5, 6))
    transform = StatisticsTransform(32, train=False)
    first = transform({"video": a})
    kept = {k: v.clone() for k, v in first.items()}
    flow = rng.normal(size=(3, 2, 16, 16)).astype(np.float32)
    boundaries, derivatives = motion_boundaries(flow), prewitt(flow)
    kept_boundaries = [x.copy() for x in vars(boundaries).values()]
    kept_derivatives = [x.copy() for x in derivatives]
    transform({"video": b})
    motion_boundaries(-flow)
    prewitt(2 * flow)
    for key, value in kept.items():
        torch.testing.assert_close(first[key], value, rtol=0, atol=0)
    for got, want in zip(vars(boundaries).values(), kept_boundaries, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(derivatives, kept_derivatives, strict=True):
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- the task
def test_transform_crops_and_validates():
    clip = torch.randint(0, 256, (9, 3, 48, 64), dtype=torch.uint8)
    val = StatisticsTransform(32, train=False)
    out = val({"video": clip, "label": torch.tensor(3)})
    assert out["video"].shape == (8, 3, 32, 32) and out["label"] == 3
    torch.testing.assert_close(out["video"], clip[:8, :, 8:40, 16:48])
    assert out["motion"].shape == (14,) and out["appearance"].shape == (13,)
    assert out["motion"].dtype == torch.int64
    small = val({"video": clip[..., :20, :30]})  # short side below the crop: resized up
    assert small["video"].shape == (8, 3, 32, 32)
    with pytest.raises(ValueError, match="divisible by 8, got 30"):
        StatisticsTransform(30, train=True)
    with pytest.raises(ValueError, match=r"uint8 clips \(T\+1, 3, H, W\)"):
        val({"video": clip.float()})


def make_task(**kwargs):
    return SpatioTemporalStatistics(backbone="tiny3d", clip_len=8, online_probe=False, **kwargs)


def test_task_heads_and_groups():
    task = make_task()
    assert task.heads["motion"].out_features == 16 + 8 + 16 + 8 + 4 + 8 + 4 + 8 + 8 * 4 + 8 + 8
    assert task.heads["appearance"].out_features == 16 * 2 + 8 * 2 + 4 * 2 + 8 * 2 + 8 * 4 + 8
    reg = make_task(head="regression", groups=["p1", "global"], appearance=False)
    assert list(reg.heads) == ["motion"] and reg.heads["motion"].out_features == 6
    assert reg.families[0].labels == (
        "p1_u_loc",
        "p1_u_ori",
        "p1_v_loc",
        "p1_v_ori",
        "u_global",
        "v_global",
    )
    with pytest.raises(ValueError, match="unknown label groups"):
        make_task(groups=["p4"])
    with pytest.raises(ValueError, match="no labels left"):
        make_task(motion=False, appearance=False)
    with pytest.raises(ValueError, match="photometric augmentation"):
        make_task(augment={"jitter_p": 0.8, "brightness": 0.4})
    with pytest.raises(ValueError, match="head must be"):
        make_task(head="ranking")


def test_task_sampling():
    task = make_task()
    train = task.clip_sampler("train", ClipSpec(clip_len=8, stride=2))
    assert isinstance(train, WithFlow) and train.needs_flow  # used when data.flow is set
    train = train.sampler
    assert isinstance(train, RandomClip) and train.clip_len == 8 and train.extra_frames == 1
    val = task.clip_sampler("val", ClipSpec(clip_len=8))
    assert isinstance(val, WithFlow) and val(30, None)["flow"] == FlowOf("video")
    val = val.sampler
    assert isinstance(val, UniformClips) and val(30, None)["video"].tolist() == list(range(10, 19))
    with pytest.raises(
        ValueError, match="clip_len 16 differs from the statistics task's clip_len 8"
    ):
        task.clip_sampler("train", ClipSpec(clip_len=16))
    assert task.clip_transform("val", ClipSpec(crop_size=32, flip=True)).flip_p == 0.5
    assert task.clip_transform("train", ClipSpec(crop_size=32, flip=False)).flip_p == 0.0


def fake_batch(b: int = 4, t: int = 8) -> dict:
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (t + 1, 3, 32, 32), dtype=np.uint8) for _ in range(b)]
    samples = [StatisticsTransform(32, train=False)({"video": torch.from_numpy(c)}) for c in clips]
    return {k: torch.stack([s[k] for s in samples]) for k in ("video", "motion", "appearance")}


def test_classification_step_logs_and_ignores_undefined_labels():
    torch.manual_seed(0)
    task = make_task()
    batch = task.augment_batch(fake_batch())
    out = task.step(batch, "val")
    assert out.features.shape == (4, 64) and torch.isfinite(out.loss)
    for name in MOTION_LABELS:
        assert f"acc/motion_{name}" in out.logs
    assert {"loss_motion", "loss_appearance", "loss_motion_p1", "loss_appearance_global"} <= set(
        out.logs
    )
    expected = out.logs["loss_motion"] + 0.1 * out.logs["loss_appearance"]
    torch.testing.assert_close(out.loss.detach(), expected)
    assert "acc/motion_p1_u_loc" not in task.step(batch, "train").logs
    undefined = dict(batch, motion=torch.zeros_like(batch["motion"]))
    out = task.step(undefined, "val")
    assert out.logs["loss_motion"] == 0 and out.logs["acc/motion_p1_u_loc"] == 0


def test_regression_step_is_the_mse_of_the_labels():
    task = make_task(head="regression", appearance_weight=0.5)
    for head in task.heads.values():
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.constant_(head.bias, 2.0)
    batch = task.augment_batch(fake_batch())
    out = task.step(batch, "val")
    m, a = batch["motion"].float(), batch["appearance"].float()
    valid = batch["motion"] > 0
    mse_m = (((2.0 - m) ** 2 * valid).sum(0) / valid.sum(0).clamp(min=1)).mean()
    mse_a = ((2.0 - a) ** 2).mean(0).mean()
    torch.testing.assert_close(out.loss, mse_m + 0.5 * mse_a)
    acc = out.logs["acc/appearance_global_col"]
    assert acc == (batch["appearance"][:, 12] == 2).float().mean()


def read_losses(metrics: Path) -> list[float]:
    with metrics.open() as f:
        return [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


def test_cli_training_reduces_the_loss(tmp_path):
    from vssl.data.synthetic import make_synthetic

    # Videos of exactly T + 1 = 9 frames at the crop size: every epoch sees the same 12 clips,
    # so the loss must fall steadily (the task memorises their labels).
    make_synthetic(tmp_path / "syn", classes=4, videos_per_class=4, frames=9, size=32)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "vssl",
        "fit",
        "--config",
        str(REPO / "configs/statistics/synthetic_tiny.yaml"),
        f"--data.init_args.root={tmp_path / 'syn'}",
        "--data.init_args.synthetic=null",
        "--data.init_args.crop_size=32",
        "--data.init_args.decode_size=32",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--data.init_args.val_split=null",
        "--model.init_args.lr=0.01",
        "--model.init_args.warmup_epochs=0",
        "--model.init_args.lr_schedule=constant",
        "--model.init_args.online_probe=false",
        "--trainer.max_epochs=12",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--checkpoint.monitor=null",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    losses = read_losses(next((tmp_path / "runs").rglob("metrics.csv")))
    assert len(losses) == 36  # 12 epochs of 3 batches
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.7 * first, losses


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "statistics").glob("*.yaml")))
def test_configs_build_the_task(config):
    import yaml

    cfg = yaml.safe_load(config.read_text())
    model, data = cfg["model"], cfg["data"]["init_args"]
    assert model["class_path"] == "vssl.tasks.statistics.SpatioTemporalStatistics"
    # the real backbones are slow to build (tests/test_configs.py builds them on the meta device)
    args = dict(model["init_args"], backbone="tiny3d", backbone_kwargs=None)
    task = SpatioTemporalStatistics(**args)
    assert task.clip_len == data["clip_len"] and data["crop_size"] % 8 == 0
    assert task.families[0].weight == 1.0 and task.families[1].weight == 0.1


def test_label_functions_live_in_the_data_package_and_stay_importable_from_the_task_module():
    import vssl.data.statistics_labels as labels
    import vssl.tasks.statistics as task_module

    for name in ("motion_statistics", "appearance_statistics", "StatisticsTransform", "PATTERNS"):
        assert getattr(task_module, name) is getattr(labels, name)
    assert StatisticsTransform.__module__ == "vssl.data.statistics_labels"
    assert not hasattr(labels, "mirror_motion_labels")  # the flip oracles are the tests' own
