"""``VideoDataModule.attach(task)``: the task declares its views, the datamodule serves them."""

from __future__ import annotations

from pathlib import Path

import pytest

from vssl.data.datamodule import VideoDataModule
from vssl.data.sampling import ClipSpec, RandomClip, UniformClips
from vssl.eval.features import MultiCrop


class ThreeClips:
    """A task's declaration: three evenly spaced clips per video, centre-cropped."""

    def clip_sampler(self, stage: str, spec: ClipSpec) -> UniformClips:
        return UniformClips(spec.clip_len, spec.stride, num_clips=3)

    def clip_transform(self, stage: str, spec: ClipSpec) -> MultiCrop:
        return MultiCrop(spec.crop_size, crops=1)


def test_attach_hands_the_tasks_views_to_every_dataset(tiny_synthetic: Path, tmp_path: Path):
    dm = VideoDataModule(
        root=str(tiny_synthetic),
        clip_len=4,
        stride=2,
        crop_size=24,
        decode_size=32,
        cache_dir=str(tmp_path),
    )
    assert isinstance(dm.build_dataset("train").sampler, RandomClip)  # no task: one random clip
    assert dm.attach(ThreeClips()) is dm
    for stage in ("train", "val"):
        dataset = dm.build_dataset(stage)
        assert dataset.sampler == UniformClips(4, 2, num_clips=3)
        assert tuple(dataset[0]["video"].shape) == (3, 4, 3, 24, 24)  # (clips, T, C, H, W)
    with pytest.raises(TypeError, match="object declares no clip_sampler and clip_transform"):
        dm.attach(object())
