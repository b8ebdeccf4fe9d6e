"""The batched torch labels against the worker's numpy/OpenCV labels: equal, label for label.

Labels are argmaxes with ties to the lowest index, so the two implementations must compute the
same floats, not close ones: the Prewitt derivatives and magnitudes are compared bit for bit,
and the labels on constructed cases (ties, undefined labels, every bin and region) and on clips
of real and encoded video with their DIS flow.
"""

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from vssl.data.flow import compute_flow
from vssl.data.statistics_labels import (
    _sum_over_time,
    appearance_statistics,
    motion_boundaries,
    motion_statistics,
    prewitt,
    region_masks,
)
from vssl.data.statistics_labels_torch import (
    appearance_labels,
    batch_labels,
    magnitude,
    motion_labels,
    prewitt_batch,
    sum_over_time,
)
from vssl.data.synthetic import SYNTHETIC_CLASSES, clip_rng, render_clip

VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "videos"


def numpy_labels(frames: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(motion (B, 14), appearance (B, 13)) clip by clip: frames (B, T, S, S, 3), flow (B, T, 2,
    S, S)."""
    motion = np.stack([motion_statistics(f) for f in flow])
    appearance = np.stack([appearance_statistics(c) for c in frames])
    return motion, appearance


def torch_labels(frames: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    video = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 1, 4, 2, 3)))
    return motion_labels(torch.from_numpy(flow)).numpy(), appearance_labels(video).numpy()


def assert_same_labels(frames: np.ndarray, flow: np.ndarray) -> None:
    expected, got = numpy_labels(frames, flow), torch_labels(frames, flow)
    np.testing.assert_array_equal(got[0], expected[0], err_msg="motion")
    np.testing.assert_array_equal(got[1], expected[1], err_msg="appearance")


# ----------------------------------------------------------------------------- arithmetic
def test_prewitt_and_magnitudes_are_the_numpy_floats_bit_for_bit():
    rng = np.random.default_rng(0)
    # values over many binades, where any other order of additions rounds differently
    flow = rng.normal(size=(6, 2, 24, 24)) * np.exp(rng.normal(size=(6, 2, 24, 24)) * 3)
    flow = flow.astype(np.float32)
    dx, dy = prewitt_batch(torch.from_numpy(flow))
    ex, ey = prewitt(flow)
    np.testing.assert_array_equal(dx.numpy(), ex)
    np.testing.assert_array_equal(dy.numpy(), ey)
    mb = motion_boundaries(flow)
    sx, sy = sum_over_time(dx[None])[0], sum_over_time(dy[None])[0]
    np.testing.assert_array_equal(sx.numpy(), mb.dx)
    np.testing.assert_array_equal(magnitude(sx, sy).numpy(), mb.magnitude)
    per_field = magnitude(dx, dy).sum((-2, -1), dtype=torch.float64)
    np.testing.assert_array_equal(per_field.numpy(), mb.per_field)


def test_sums_over_time_add_in_time_order():
    # in float32, (1e8 + 1) - 1e8 is 0 while (1e8 - 1e8) + 1 is 1: the order shows
    planes = np.array([1e8, 1.0, -1e8], np.float32).reshape(3, 1, 1)
    assert sum_over_time(torch.from_numpy(planes)[None]).item() == 0.0
    assert _sum_over_time(planes).item() == 0.0
    assert _sum_over_time(planes[[0, 2, 1]]).item() == 1.0
    assert sum_over_time(torch.from_numpy(planes[:1])[None]).item() == 1e8  # one field


def test_prewitt_of_a_ramp():
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    dx, dy = prewitt_batch((2 * x - 3 * y)[None])
    assert (dx[0, 1:-1, 1:-1] == 12).all() and (dy[0, 1:-1, 1:-1] == -18).all()
    assert (dx[0, 5, 0] == 6).all()  # the replicated border: half the step


# ----------------------------------------------------------------------------- constructed
def bump_in(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(np.float32)


def constructed_flows() -> list[np.ndarray]:
    """Flows (T, 2, 32, 32) of the numpy tests' kinds: motion in one region of each pattern,
    ramps in every direction, one strong field, none, a uniform translation, v alone, exact
    ties."""
    s, flows = 32, []
    for masks in region_masks(s).values():
        for region in range(len(masks)):
            flow = np.zeros((3, 2, s, s), np.float32)
            flow[1, 0] = 1.5 * bump_in(masks[region])
            flow[2, 1] = -0.5 * bump_in(masks[(region + 1) % len(masks)])
            flows.append(flow)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    for k in range(16):  # bin centres and the midpoints between them
        theta = np.radians(22.5 * k)
        ramp = 0.05 * (np.cos(theta) * x + np.sin(theta) * y)
        flows.append(np.stack([ramp, -ramp])[None].repeat(4, 0).astype(np.float32))
    rng = np.random.default_rng(0)
    strong = rng.normal(0, 0.1, (8, 2, s, s)).astype(np.float32)
    strong[3, 0] *= 20
    flows += [strong, np.zeros((4, 2, s, s), np.float32), np.full((4, 2, s, s), 3.0, np.float32)]
    v_only = np.zeros((4, 2, s, s), np.float32)
    v_only[2, 1, 10:14, 3:6] = 1.0
    flows.append(v_only)
    # exact ties: a shear whose blocks in rows 2 and 3 score alike, identical fields, a symmetric
    # square whose left and right edges vote alike for opposite bins
    shear = (y * (1 + x / s)).astype(np.float32)
    flows.append(np.stack([shear, 0 * shear])[None].repeat(3, 0))
    square = np.zeros((2, 2, s, s), np.float32)
    square[:, :, 8:24, 8:24] = 1.0
    flows.append(square)
    return flows


def test_constructed_motion_labels_are_the_numpy_labels():
    flows = constructed_flows()
    for flow in flows:
        got = motion_labels(torch.from_numpy(flow)[None])[0].numpy()
        np.testing.assert_array_equal(got, motion_statistics(flow))
    # the cases cover undefined labels, exact ties and every orientation bin
    labels = np.stack([motion_statistics(f) for f in flows])
    assert (labels == 0).any() and set(labels[:, 1].tolist()) >= set(range(1, 9))
    # a batch of different sizes of T is refused, one of equal T gives the same rows
    same_t = [f for f in flows if f.shape[0] == 4]
    batch = motion_labels(torch.from_numpy(np.stack(same_t))).numpy()
    np.testing.assert_array_equal(batch, np.stack([motion_statistics(f) for f in same_t]))


def constructed_clips() -> list[np.ndarray]:
    """Clips (4, 32, 32, 3) of the numpy tests' kinds: one changing region of each pattern,
    every colour octant, ties of the global colour, a still clip."""
    s, clips = 32, []
    rng = np.random.default_rng(1)
    p3 = region_masks(s)["p3"]
    for masks in region_masks(s).values():
        for region in range(len(masks)):
            clip = np.broadcast_to(np.array([200, 40, 200], np.uint8), (4, s, s, 3)).copy()
            changing = masks[region] & (p3.sum(0) == 1)
            clip[:, changing] = rng.integers(0, 256, (4, int(changing.sum()), 3), dtype=np.uint8)
            clips.append(clip)
    for octant in range(8):
        clip = np.full((4, s, s, 3), 255, np.uint8)
        bits = [octant // 2 % 2, octant % 2, 1 - octant // 4]
        values = [
            rng.integers(128, 256, (4, 64)) if b else rng.integers(0, 128, (4, 64)) for b in bits
        ]
        clip[:, region_masks(s)["p1"][6]] = np.stack(values, axis=-1).astype(np.uint8)
        clips.append(clip)
    tie = np.zeros((4, s, s, 3), np.uint8)
    tie[:, :, : s // 2] = (0, 0, 255)  # half the pixels octant 1, half octant 5
    clips.append(tie)
    clips.append(np.repeat(rng.integers(0, 256, (1, s, s, 3), dtype=np.uint8), 4, axis=0))
    return clips


def test_constructed_appearance_labels_are_the_numpy_labels():
    clips = np.stack(constructed_clips())
    video = torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 1, 4, 2, 3)))
    got = appearance_labels(video).numpy()
    np.testing.assert_array_equal(got, np.stack([appearance_statistics(c) for c in clips]))
    assert got[-2, 12] == 1 and (got[-1, [0, 2, 4, 6, 8, 10]] == 1).all()  # ties go to 1


# ----------------------------------------------------------------------------- video clips
def synthetic_frames(count: int, frames: int = 9, size: int = 32) -> np.ndarray:
    """``count`` clips (frames, size, size, 3) of the synthetic dataset's moving shapes."""
    out = []
    for k in range(count):
        name = SYNTHETIC_CLASSES[k % len(SYNTHETIC_CLASSES)].name
        out.append(render_clip(name, clip_rng(0, name, k), frames=frames, size=size).frames)
    return np.stack(out)


def encoded(frames: np.ndarray, path: Path) -> np.ndarray:
    """The clips written one after another as H.264 with PyAV and decoded again."""
    n, t, s = frames.shape[:3]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = s
        stream.pix_fmt = "yuv420p"
        for frame in frames.reshape(n * t, s, s, 3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    with av.open(str(path)) as src:
        decoded = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    return np.stack(decoded).reshape(frames.shape)


def real_frames(count: int, frames: int = 9, size: int = 32) -> np.ndarray:
    """``count`` clips cut from the videos of ../shared/videos, resized to short side 40."""
    clips = []
    rng = np.random.default_rng(2)
    for name in ("vtest.avi", "bikes.mp4", "bigbuckbunny.mp4"):
        with av.open(str(VIDEOS / name)) as src:
            decoded = []
            for frame in src.decode(video=0):
                image = frame.to_ndarray(format="rgb24")
                h, w = image.shape[:2]
                decoded.append(cv2.resize(image, (round(w * 40 / h), 40), cv2.INTER_AREA))
                if len(decoded) == 60:
                    break
        video = np.stack(decoded)
        for _ in range(count // 3):
            t0 = int(rng.integers(0, len(video) - frames + 1))
            left = int(rng.integers(0, video.shape[2] - size + 1))
            clips.append(video[t0 : t0 + frames, 4 : 4 + size, left : left + size])
    return np.stack(clips)


def flows_of(frames: np.ndarray) -> np.ndarray:
    return np.stack([compute_flow(c) for c in frames])


def test_labels_of_encoded_clips_and_their_flow(tmp_path):
    frames = encoded(synthetic_frames(12), tmp_path / "clips.mp4")
    assert_same_labels(frames[:, :-1], flows_of(frames))


@pytest.mark.skipif(not VIDEOS.is_dir(), reason="no ../shared/videos")
def test_labels_of_real_clips_and_their_flow():
    frames = real_frames(12)
    assert_same_labels(frames[:, :-1], flows_of(frames))


def test_batch_labels_on_the_cpu_are_the_torch_labels():
    frames = synthetic_frames(4)
    flow = torch.from_numpy(flows_of(frames))
    video = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 1, 4, 2, 3)))
    motion, appearance = batch_labels(video, flow)  # T + 1 frames: the last one is left out
    assert torch.equal(motion, motion_labels(flow))
    assert torch.equal(appearance, appearance_labels(video[:, :-1]))
    assert motion.dtype == appearance.dtype == torch.int64
    assert torch.equal(batch_labels(video[:, :-1], flow)[1], appearance)


def test_bad_input_is_refused():
    flow = torch.zeros(2, 4, 2, 32, 32)
    video = torch.zeros(2, 4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"flow must have shape \(B, T, 2, S, S\)"):
        motion_labels(flow[:, :, :1])
    with pytest.raises(ValueError, match="must be square"):
        motion_labels(flow[..., :24])
    with pytest.raises(ValueError, match="divisible by 8"):
        motion_labels(flow[..., :20, :20])
    with pytest.raises(ValueError, match="flow must be a float tensor"):
        motion_labels(flow.long())
    with pytest.raises(ValueError, match=r"uint8 RGB clips \(B, T, 3, S, S\)"):
        appearance_labels(video.float())
    with pytest.raises(ValueError, match="do not go with flow"):
        batch_labels(video[:1], flow)
    with pytest.raises(ValueError, match="do not go with flow"):
        batch_labels(video[:, :2], flow)
