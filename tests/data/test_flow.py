import inspect

import cv2
import numpy as np
import pytest
import torch

from vssl.data.flow import (
    DEFAULT_DIS_PRESET,
    DIS_PRESETS,
    compute_flow,
    compute_flow_into,
    decode_flow,
    encode_flow,
    flow_to_rgb,
    limit_threads,
    read_flow_folder,
    scratch,
    to_gray_frames,
    write_flow_folder,
)


def translating_texture(shift=(2, -1), frames=5, size=64, seed=0):
    """A smooth periodic texture moving by ``shift`` = (dx, dy) pixels per frame: uint8 RGB."""
    rng = np.random.default_rng(seed)
    noise = np.tile(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (3, 3, 1))
    texture = cv2.GaussianBlur(noise, (0, 0), 2.0)[size : 2 * size, size : 2 * size]  # periodic
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    dx, dy = shift
    return np.stack([np.roll(texture, (t * dy, t * dx), axis=(0, 1)) for t in range(frames)])


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_compute_flow_recovers_a_known_shift(method):
    clip = translating_texture(shift=(2, -1))
    flow = compute_flow(clip, method=method)
    assert flow.shape == (4, 2, 64, 64) and flow.dtype == np.float32
    inner = flow[:, :, 12:-12, 12:-12]  # away from the wrap-around at the borders
    assert np.median(inner[:, 0]) == pytest.approx(2.0, abs=0.15)
    assert np.median(inner[:, 1]) == pytest.approx(-1.0, abs=0.15)
    assert np.mean(np.abs(inner[:, 0] - 2.0) < 0.5) > 0.9


def test_compute_flow_accepts_channels_first_tensors():
    clip = translating_texture(frames=3, size=32)
    from_numpy = compute_flow(clip)
    from_tensor = compute_flow(torch.from_numpy(clip).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(from_numpy, from_tensor)
    np.testing.assert_array_equal(to_gray_frames(clip), to_gray_frames(clip.transpose(0, 3, 1, 2)))


def test_compute_flow_still_clip_is_zero():
    clip = np.repeat(translating_texture(frames=1, size=32), 3, axis=0)
    assert np.abs(compute_flow(clip)).max() < 1e-3


def test_compute_flow_bad_input():
    clip = translating_texture(frames=2, size=32)
    with pytest.raises(ValueError, match="uint8 RGB"):
        compute_flow(clip.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        compute_flow(clip[..., :2])
    with pytest.raises(ValueError, match="at least 2 frames"):
        compute_flow(clip[:1])
    with pytest.raises(ValueError, match="unknown optical flow method 'tvl1'"):
        compute_flow(clip, method="tvl1")
    with pytest.raises(ValueError, match="unknown DIS preset 'slow'"):
        compute_flow(clip, preset="slow")


def test_default_dis_setting_is_fast_with_three_refinement_iterations():
    """Pins the default flow: OpenCV's "fast" DIS preset with 3 variational refinement iterations
    instead of 5 (17% faster; its labels agree with DIS "medium" as well as "fast"'s do, see the
    measurement in vssl.data.flow's docstring)."""
    assert DEFAULT_DIS_PRESET == "fast_vr3"
    assert inspect.signature(compute_flow).parameters["preset"].default == DEFAULT_DIS_PRESET
    assert DIS_PRESETS["fast_vr3"] == (cv2.DISOPTICAL_FLOW_PRESET_FAST, 3)
    assert DIS_PRESETS["fast"] == (cv2.DISOPTICAL_FLOW_PRESET_FAST, None)
    clip = translating_texture(frames=3, size=32)
    flow = compute_flow(clip)
    np.testing.assert_array_equal(flow, compute_flow(clip, preset="fast_vr3"))
    assert not np.array_equal(flow, compute_flow(clip, preset="fast"))  # the setting takes effect
    assert not np.array_equal(flow, compute_flow(clip, preset="ultrafast"))


def test_compute_flow_restores_thread_settings():
    before = cv2.getNumThreads(), torch.get_num_threads()
    compute_flow(translating_texture(frames=2, size=32))
    with limit_threads(1):
        assert cv2.getNumThreads() == 1 and torch.get_num_threads() == 1
    assert (cv2.getNumThreads(), torch.get_num_threads()) == before


def test_encode_decode_quantisation():
    flow = np.array([-25.0, -20.0, -3.3, 0.0, 7.9, 20.0, 31.0], dtype=np.float32)
    images = encode_flow(flow, bound=20)
    assert images.dtype == np.uint8
    assert images[0] == 0 and images[1] == 0 and images[-2] == 255 and images[-1] == 255
    back = decode_flow(images, bound=20)
    assert back[0] == -20 and back[-1] == 20  # clipped at the bound
    np.testing.assert_allclose(back[1:-1], flow[1:-1], atol=20 / 255 + 1e-6)
    with pytest.raises(ValueError, match="uint8"):
        decode_flow(flow)
    with pytest.raises(ValueError, match="bound must be positive"):
        encode_flow(flow, bound=0)


def test_flow_folder_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    flow = rng.uniform(-15, 15, (3, 2, 8, 12)).astype(np.float32)
    write_flow_folder(tmp_path / "vid", flow, ext=".png")
    assert sorted(p.name for p in (tmp_path / "vid" / "u").iterdir())[0] == "frame_000001.png"
    back = read_flow_folder(tmp_path / "vid")
    assert back.shape == (3, 2, 8, 12)
    np.testing.assert_allclose(back, flow, atol=20 / 255 + 1e-5)
    np.testing.assert_array_equal(read_flow_folder(tmp_path / "vid", [2, 0]), back[[2, 0]])
    jpeg = read_flow_folder(write_flow_folder(tmp_path / "jpg", flow), bound=20)
    assert np.abs(jpeg - flow).mean() < 1.0  # lossy, but close


def test_flow_folder_errors_name_the_file(tmp_path):
    flow = np.zeros((2, 2, 8, 8), dtype=np.float32)
    root = write_flow_folder(tmp_path / "vid", flow, ext=".png")
    with pytest.raises(IndexError, match=r"vid: flow field indices \[5\] out of range for 2"):
        read_flow_folder(root, [0, 5])
    (root / "v" / "frame_000002.png").unlink()
    with pytest.raises(ValueError, match="2 images in u/ but 1 in v/"):
        read_flow_folder(root)
    (root / "v" / "frame_000002.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="frame_000002.png: not a readable image"):
        read_flow_folder(root)
    cv2.imwrite(str(root / "v" / "frame_000002.png"), np.zeros((4, 8), np.uint8))
    with pytest.raises(ValueError, match="frame_000002.png: size 8x4 differs"):
        read_flow_folder(root)
    with pytest.raises(FileNotFoundError, match="no 'u' folder"):
        read_flow_folder(tmp_path / "missing")


def test_flow_to_rgb_colours():
    right = np.zeros((2, 4, 4), np.float32)
    right[0] = 3.0
    rgb = flow_to_rgb(right)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 0, 0)  # to the right is red
    assert flow_to_rgb(np.zeros((2, 4, 4), np.float32)).max() == 0
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        flow_to_rgb(np.zeros((3, 4, 4)))


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_compute_flow_into_pads_with_the_edge_rows(method):
    clip = translating_texture(shift=(1, 2), frames=4, size=32)
    flow = compute_flow(clip, method=method)
    out = np.full((3, 2, 34, 32), np.nan, dtype=np.float32)
    assert compute_flow_into(to_gray_frames(clip), out, method=method, pad=1) is out
    np.testing.assert_array_equal(out[:, :, 1:-1], flow)  # the same flow, bit for bit
    np.testing.assert_array_equal(out[:, :, 0], flow[:, :, 0])
    np.testing.assert_array_equal(out[:, :, -1], flow[:, :, -1])


def test_compute_flow_into_bad_input():
    gray = to_gray_frames(translating_texture(frames=3, size=16))
    with pytest.raises(
        ValueError, match=r"out must be C-contiguous float32 of shape \(2, 2, 18, 16\)"
    ):
        compute_flow_into(gray, np.empty((2, 2, 16, 16), np.float32), pad=1)
    with pytest.raises(ValueError, match="got float64"):
        compute_flow_into(gray, np.empty((2, 2, 16, 16)))
    with pytest.raises(ValueError, match=r"gray frames must be uint8 \(N, H, W\)"):
        compute_flow_into(gray.astype(np.float32), np.empty((2, 2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        compute_flow_into(gray[:1], np.empty((0, 2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="unknown DIS preset 'slow'"):
        compute_flow_into(gray, np.empty((2, 2, 16, 16), np.float32), preset="slow")


def test_scratch_reuses_one_array_per_name_shape_and_dtype():
    a = scratch("test_a", (3, 4))
    assert a.shape == (3, 4) and a.dtype == np.float32
    assert scratch("test_a", (3, 4)) is a
    assert scratch("test_b", (3, 4)) is not a
    assert scratch("test_a", (4, 3)) is not a
    assert scratch("test_a", (3, 4), np.uint8).dtype == np.uint8
