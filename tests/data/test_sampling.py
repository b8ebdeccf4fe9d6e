import numpy as np
import pytest

from vssl.data.sampling import RandomClip, UniformClips, clip_indices, clip_span


def test_clip_span_and_indices():
    assert clip_span(16, 1) == 16
    assert clip_span(16, 2) == 31
    assert clip_indices(3, 4, 2, 100).tolist() == [3, 5, 7, 9]


def test_short_video_loops():
    assert clip_indices(0, 6, 1, 4).tolist() == [0, 1, 2, 3, 0, 1]
    out = RandomClip(clip_len=8, stride=2)(5, np.random.default_rng(0))["video"]
    assert out.tolist() == [0, 2, 4, 1, 3, 0, 2, 4]


def test_random_clip_covers_valid_starts_uniformly():
    sampler = RandomClip(clip_len=4, stride=3)  # span 10
    rng = np.random.default_rng(0)
    starts = [sampler(12, rng)["video"][0] for _ in range(3000)]
    assert set(starts) == {0, 1, 2}
    counts = np.bincount(starts)
    assert counts.min() > 900
    clip = sampler(12, rng)["video"]
    assert np.all(np.diff(clip) == 3) and clip.max() < 12


def test_random_clip_extra_frames():
    clip = RandomClip(clip_len=4, stride=1, extra_frames=1)(5, np.random.default_rng(0))["video"]
    assert clip.tolist() == [0, 1, 2, 3, 4]


def test_uniform_clips_even_and_centred():
    clips = UniformClips(clip_len=4, stride=2, num_clips=3)(27, np.random.default_rng(0))["video"]
    assert clips.shape == (3, 4)
    assert clips[:, 0].tolist() == [0, 10, 20]  # last valid start is 27 - 7 = 20
    centre = UniformClips(clip_len=4, stride=1, num_clips=1, stack=False)(10, None)["video"]
    assert centre.tolist() == [3, 4, 5, 6]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="clip_len"):
        clip_span(0, 1)
