"""The statistics task with its labels computed on the device, and precomputed flow in the
worker transform: same labels as in the workers, flow cropped and flipped with the frames."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vssl.data.flow import compute_flow
from vssl.data.sampling import ClipSpec
from vssl.data.statistics_labels import StatisticsTransform, motion_statistics
from vssl.data.statistics_labels_torch import appearance_labels, motion_labels
from vssl.data.synthetic import SYNTHETIC_CLASSES, clip_rng, render_clip
from vssl.tasks.statistics import SpatioTemporalStatistics

T, S = 6, 32


def make_task(**kwargs) -> SpatioTemporalStatistics:
    return SpatioTemporalStatistics(backbone="tiny3d", clip_len=T, online_probe=False, **kwargs)


def videos(count: int, size: int = 40) -> list[torch.Tensor]:
    """Samples' frames ``(T + 1, 3, size, size)`` of the synthetic dataset's moving shapes."""
    out = []
    for k in range(count):
        name = SYNTHETIC_CLASSES[k % len(SYNTHETIC_CLASSES)].name
        frames = render_clip(name, clip_rng(1, name, k), frames=T + 1, size=size).frames
        out.append(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous())
    return out


def collate(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


@pytest.mark.parametrize("stage", ["train", "val"])
def test_device_labels_equal_the_worker_labels_for_the_same_seed(stage):
    spec = ClipSpec(clip_len=T, crop_size=S, flip=True)
    clips = videos(6)
    batches = {}
    for place in ("worker", "device"):
        task = make_task(labels=place)
        transform = task.clip_transform(stage, spec)
        assert transform.labels == place
        torch.manual_seed(0)
        batch = collate([transform({"video": v}) for v in clips])
        if place == "device":  # the batched torch code itself (a CPU batch_labels runs numpy's)
            torch_labels = motion_labels(batch["flow"]), appearance_labels(batch["video"])
        torch.manual_seed(1)
        batches[place] = task.augment_batch(batch)
    worker, device = batches["worker"], batches["device"]
    assert "flow" not in device and set(device) == set(worker)
    for key in ("motion", "appearance", "video"):
        assert torch.equal(device[key], worker[key]), key
    assert torch.equal(torch_labels[0], worker["motion"])
    assert torch.equal(torch_labels[1], worker["appearance"])
    assert device["video"].dtype == torch.float32  # normalised after the labels
    assert (worker["motion"] > 0).any()


def test_device_transform_sends_the_flow_of_the_cropped_flipped_frames():
    clip = videos(1)[0]
    transform = StatisticsTransform(S, train=True, flip_p=1.0, labels="device")
    torch.manual_seed(3)
    out = transform({"video": clip})
    assert set(out) == {"video", "flow"}
    assert out["video"].shape == (T, 3, S, S) and out["flow"].shape == (T, 2, S, S)
    assert out["flow"].dtype == torch.float32 and out["flow"].is_contiguous()
    torch.manual_seed(3)
    frames = transform.crop_and_flip(clip).permute(0, 2, 3, 1).contiguous().numpy()
    np.testing.assert_array_equal(out["flow"].numpy(), compute_flow(frames))
    np.testing.assert_array_equal(out["video"].permute(0, 2, 3, 1).numpy(), frames[:-1])


def test_label_place_auto_is_the_device_on_a_gpu_and_the_worker_elsewhere():
    task = make_task()
    assert task.labels == "auto" and task.label_place() == "worker"  # no trainer
    assert task.clip_transform("train", ClipSpec(clip_len=T, crop_size=S)).labels == "worker"
    fixed = make_task(labels="worker")
    for device, place in (("cuda", "device"), ("cpu", "worker"), ("mps", "worker")):
        trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        task._trainer = fixed._trainer = trainer
        assert task.label_place() == place, device
        assert fixed.label_place() == "worker"  # an explicit choice stays
    with pytest.raises(ValueError, match="labels must be 'auto', 'worker' or 'device'"):
        make_task(labels="gpu")
    with pytest.raises(ValueError, match="labels must be one of"):
        StatisticsTransform(S, train=True, labels="gpu")


def test_device_labels_need_the_uint8_frames():
    task = make_task(labels="device")
    batch = {"video": torch.zeros(2, T, 3, S, S), "flow": torch.zeros(2, T, 2, S, S)}
    with pytest.raises(ValueError, match="need the batch's uint8 frames, got torch.float32"):
        task.augment_batch(batch)


# ----------------------------------------------------------------------------- given flow
def parabola_flow(fields: int = 2, size: int = S) -> torch.Tensor:
    """u = (t + 1) y^2 / 64 (its boundaries point down, stronger further down) and v = (t + 1)
    x^2 / 64 (pointing right, stronger further right): every value and derivative is exact in
    float32, and blocks alike across a row (u) or a column (v) tie exactly."""
    y, x = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    base = torch.stack([y * y, x * x]) / 64
    return torch.stack([(t + 1) * base for t in range(fields)])


@pytest.mark.parametrize("place", ["worker", "device"])
def test_given_flow_is_flipped_with_u_negated_and_labelled_by_hand(place):
    video = torch.zeros(3, 3, S, S, dtype=torch.uint8)
    flow = parabola_flow()
    results = {}
    for flip_p in (0.0, 1.0):
        transform = StatisticsTransform(S, train=True, flip_p=flip_p, labels=place)
        out = transform({"video": video, "flow": flow})
        if place == "device":
            assert "motion" not in out
            out["motion"] = torch.from_numpy(motion_statistics(out["flow"]))
        else:
            assert "flow" not in out  # the full-size flow does not travel on
        results[flip_p] = out["motion"].tolist()
    # By hand, p1 [u loc, u ori, v loc, v ori] and the global labels. Unflipped: u strongest in
    # the bottom row of blocks (13..16 tie: 13), pointing down (90 degrees: bin 3); v in the
    # right column (4, 8, 12, 16: 4), pointing right (0 degrees: bin 1); field 2 is twice
    # field 1, for u and v.
    assert results[0.0][:4] == [13, 3, 4, 1] and results[0.0][12:] == [2, 2]
    # Flipped: u(x) becomes -u(S - 1 - x), pointing up (270 degrees: bin 7; without negating u,
    # the official code's bug, it would still point down); v(x) becomes v(S - 1 - x), strongest
    # on the left (block 1), pointing left (180 degrees: bin 5).
    assert results[1.0][:4] == [13, 7, 1, 5] and results[1.0][12:] == [2, 2]
    mirrored = flow.flip(-1)
    mirrored[:, 0] *= -1
    assert results[1.0] == motion_statistics(mirrored).tolist()


def test_given_flow_is_cropped_with_the_frames_box():
    h, w = 40, 48
    video = torch.zeros(3, 3, h, w, dtype=torch.uint8)
    y, x = torch.meshgrid(torch.arange(h * 1.0), torch.arange(w * 1.0), indexing="ij")
    flow = torch.stack([x + 100 * y, -(x + 100 * y)])[None].repeat(2, 1, 1, 1)
    flow[1] *= 2
    transform = StatisticsTransform(S, train=True, flip_p=1.0, labels="device")
    torch.manual_seed(5)
    out = transform({"video": video, "flow": flow})
    torch.manual_seed(5)
    top, left, flipped = transform._crop_box(h, w)
    assert flipped
    expected = flow[:, :, top : top + S, left : left + S].flip(-1).clone()
    expected[:, 0] *= -1
    assert torch.equal(out["flow"], expected)
    assert out["flow"][0, 0, 0, 0] == -(left + S - 1 + 100 * top)
    # the sample's flow is its own array: later samples do not write into it
    transform({"video": video, "flow": flow + 1})
    transform({"video": videos(1, size=40)[0]})
    assert torch.equal(out["flow"], expected)


def test_given_flow_is_resized_and_rescaled_with_small_frames():
    video = torch.zeros(3, 3, 24, 30, dtype=torch.uint8)  # short side 24 < 32: resized up
    flow = torch.zeros(2, 2, 24, 30)
    flow[:, 0], flow[:, 1] = 1.5, -2.0
    out = StatisticsTransform(S, train=False, labels="device")({"video": video, "flow": flow})
    assert out["flow"].shape == (2, 2, S, S)
    torch.testing.assert_close(out["flow"][:, 0], torch.full((2, S, S), 1.5 * 40 / 30))
    torch.testing.assert_close(out["flow"][:, 1], torch.full((2, S, S), -2.0 * 32 / 24))


def test_given_flow_of_the_wrong_shape_or_type_is_refused():
    video = torch.zeros(3, 3, S, S, dtype=torch.uint8)
    transform = StatisticsTransform(S, train=False)
    with pytest.raises(ValueError, match=r"must be float32 \(2, 2, 32, 32\).*got torch.float32 of"):
        transform({"video": video, "flow": torch.zeros(3, 2, S, S)})
    with pytest.raises(ValueError, match="got torch.float64"):
        transform({"video": video, "flow": torch.zeros(2, 2, S, S, dtype=torch.float64)})
    with pytest.raises(ValueError, match="must be a tensor, got list"):
        transform({"video": video, "flow": [0.0]})
