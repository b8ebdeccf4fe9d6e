"""Video data: decoding, the video index, dataset layouts, clip sampling, augmentation, datamodule."""

# OpenCV first: its libpng must bind its own zlib before PyAV's encoders load theirs; imported
# after PyAV has written a video, cv2.imread of a PNG fails ("libpng error: bad parameters to
# zlib"; tests/data/test_flow.py after tests/data/test_codecs.py in one process).
import cv2  # noqa: F401

from vssl.data.datamodule import VideoDataModule
from vssl.data.dataset import TooManyDecodeFailures, VideoDataset
from vssl.data.encode import write_video
from vssl.data.index import VideoIndex, VideoInfo, probe_video
from vssl.data.layouts import LAYOUTS, VideoItem, load_layout
from vssl.data.prepare import PrepareSummary, prepare
from vssl.data.reader import VideoDecodeError, VideoReader, open_reader
from vssl.data.sampling import ClipSampler, ClipSpec, RandomClip, UniformClips
from vssl.data.synthetic import make_synthetic
from vssl.data.table import VideoTable
from vssl.data.transforms import (
    BatchAugment,
    ClipTransform,
    ViewTransform,
    eval_clip_transform,
    train_clip_transform,
)

__all__ = [
    "LAYOUTS",
    "BatchAugment",
    "ClipSampler",
    "ClipTransform",
    "ClipSpec",
    "PrepareSummary",
    "RandomClip",
    "TooManyDecodeFailures",
    "UniformClips",
    "VideoDataModule",
    "VideoDataset",
    "VideoDecodeError",
    "VideoIndex",
    "VideoInfo",
    "VideoItem",
    "VideoReader",
    "VideoTable",
    "ViewTransform",
    "eval_clip_transform",
    "load_layout",
    "make_synthetic",
    "open_reader",
    "prepare",
    "probe_video",
    "train_clip_transform",
    "write_video",
]
