"""Feature extraction shared by every protocol: N evenly spaced clips x M crops per video.

A model comes from a checkpoint of any vssl task (the class recorded by LightningCLI in the
checkpoint's hyperparameters, else the first class of `vssl.tasks` that loads it) or from a bare
backbone name with random initialisation. Features are the task's evaluation features
(`VSSLTask.extract_features`: the backbone's pooled features, or what the task chooses, as
V-JEPA's target encoder with ``eval_encoder: target``), averaged over every clip and crop of a
video. Results are cached on disk as a ``.pt`` file named by a hash of the settings (checkpoint
path and modification time, dataset, split, clips, crops, sizes, seed) and reused only when the
stored settings equal the requested ones.

The commands take their clip length, stride, crop size, decode size and flip from the
checkpoint's training data settings (`resolve_data_settings`) unless the user gives them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from vssl.data.corruptions import Corruption
from vssl.data.datamodule import VideoDataModule
from vssl.data.sampling import ClipSampler, RandomClip, UniformClips
from vssl.data.transforms import ViewTransform, train_clip_transform
from vssl.errors import MissingInputError
from vssl.tasks.base import VSSLTask

#: The data settings an evaluation takes from the checkpoint's training run, with the values
#: used when neither the command line nor the checkpoint gives them.
DATA_DEFAULTS: dict[str, Any] = {
    "clip_len": 16,
    "stride": 1,
    "crop_size": 112,
    "decode_size": 128,
    "flip": False,
}


@dataclass
class FeatureSettings:
    """Everything that determines a set of extracted features (and its cache key).

    With ``random_views`` = K > 0 (training features for a probe), each video gives K randomly
    placed clips, each with its own random resized crop (area ``crop_scale``, flipped when
    ``flip``), kept apart rather than averaged; ``clips`` and ``crops`` are then unused.
    ``data_options``: other `VideoDataModule` arguments that change what is decoded (``backend``,
    ``index_mode``, ``decode_timeout``, ``max_decode_failures``), only where they differ from
    its defaults.
    """

    root: str
    split: str
    layout: str = "folder"
    fold: int = 1
    annotations: str | None = None
    ckpt: str | None = None
    backbone: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    clips: int = 10
    crops: int = 1
    clip_len: int = 16
    stride: int = 1
    crop_size: int = 112
    decode_size: int | tuple[int, int] | None = 128
    seed: int = 0
    random_views: int = 0
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: bool = False
    corruption: str | None = None
    severity: int | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    ckpt_format: str = "auto"

    def __post_init__(self) -> None:
        if self.corruption is not None:
            Corruption(self.corruption, self.severity)  # checks the name and the severity
        if (self.ckpt is None) == (self.backbone is None):
            raise ValueError(
                "give exactly one of a checkpoint (ckpt) or a backbone name (backbone)"
            )
        if self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")
        if self.random_views < 0:
            raise ValueError(f"random_views must be >= 0, got {self.random_views}")
        self.crop_scale = tuple(self.crop_scale)
        if isinstance(self.decode_size, list):
            self.decode_size = tuple(self.decode_size)
        if self.crops not in (1, 3):
            raise ValueError(
                f"crops must be 1 (centre) or 3 (both ends and centre), got {self.crops}"
            )

    def key(self) -> str:
        """Hash of the settings, including the checkpoint file's modification time; settings
        that do not change the features (``crop_scale`` without random views) are left out."""
        record = asdict(self)
        if self.corruption is None:  # the keys of features cached before corruptions existed
            del record["corruption"], record["severity"]
        if not self.data_options:  # nor those cached before data options existed
            del record["data_options"]
        if self.ckpt_format == "auto":  # nor those cached before checkpoint formats existed
            del record["ckpt_format"]
        if not self.random_views:  # unused without random views: probe and retrieve share
            record["crop_scale"] = [0.2, 1.0]
        if self.ckpt is not None:
            path = Path(self.ckpt)
            record["ckpt"] = str(path.resolve())
            record["ckpt_mtime_ns"] = path.stat().st_mtime_ns
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


def load_task(ckpt: str | Path, trust: bool = False) -> VSSLTask:
    """The task stored in a Lightning checkpoint of any vssl task, in eval mode on the CPU.

    Uses the class path that LightningCLI records in the hyperparameters; for checkpoints
    without one, tries each task class exported by `vssl.tasks` in turn. The file is read with
    ``weights_only=True`` (tensors and plain containers only) unless ``trust``, which allows
    pickled objects and so runs code from the file: only for checkpoints you trust.
    """
    from vssl.export import read_checkpoint

    path = Path(ckpt)
    if not path.is_file():
        raise MissingInputError(f"{path}: checkpoint not found")
    data = read_checkpoint(path, trust=trust)
    class_path = data.get("hyper_parameters", {}).get("_class_path")
    candidates: list[type] = []
    if class_path:
        module, _, name = class_path.rpartition(".")
        candidates.append(getattr(import_module(module), name))
    else:
        tasks = import_module("vssl.tasks")
        candidates += [
            c
            for n in tasks.__all__
            if isinstance(c := getattr(tasks, n), type)
            and issubclass(c, VSSLTask)
            and c is not VSSLTask
        ]
    errors = []
    for cls in candidates:
        try:
            return cls.load_from_checkpoint(path, map_location="cpu", weights_only=not trust).eval()
        except Exception as err:  # noqa: BLE001 - the next class may fit; all errors are reported
            errors.append(f"{cls.__name__}: {err}")
    raise ValueError(
        f"{path}: no vssl task class could load this checkpoint:\n  " + "\n  ".join(errors)
    )


def save_task(task: VSSLTask, path: str | Path) -> Path:
    """Write ``task`` as a checkpoint that `load_task` (so ``vssl probe --ckpt``, a
    `~vssl.tasks.Distillation` teacher, ``vssl export``) reads back: its weights and
    hyperparameters, with the class path and instantiator LightningCLI records, for a task
    built in Python rather than trained by ``vssl fit``."""
    import lightning

    cls = type(task)
    hparams = {
        **dict(task.hparams),
        "_class_path": f"{cls.__module__}.{cls.__qualname__}",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    path = Path(path)
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def checkpoint_data_settings(ckpt: str | Path, trust: bool = False) -> dict[str, Any] | None:
    """The training data settings (the keys of `DATA_DEFAULTS`) that a checkpoint records.

    Lightning stores the init arguments of a datamodule that saves its hyperparameters, as
    `VideoDataModule` does, under ``datamodule_hyper_parameters``. None when the checkpoint has
    none of them (written without a datamodule, or by an older vssl). ``trust``: see `load_task`.
    """
    from vssl.export import read_checkpoint

    path = Path(ckpt)
    if not path.is_file():
        raise MissingInputError(f"{path}: checkpoint not found")
    hparams = read_checkpoint(path, trust=trust).get("datamodule_hyper_parameters")
    if not isinstance(hparams, dict):
        return None
    found = {key: hparams[key] for key in DATA_DEFAULTS if key in hparams}
    if isinstance(found.get("decode_size"), list):
        found["decode_size"] = tuple(found["decode_size"])
    return found or None


_LABELS = {
    "clip_len": "clip length",
    "stride": "stride",
    "crop_size": "crop",
    "decode_size": "decode",
    "flip": "flip",
}
FROM_COMMAND_LINE = "the command line"
FROM_DATA_BLOCK = "the data block (data.init_args)"
FROM_CHECKPOINT = "the checkpoint's data settings"
FROM_DEFAULTS_NO_DATA = "the defaults: the checkpoint records no data settings"
FROM_DEFAULTS_RANDOM_INIT = "the defaults: random init, no checkpoint"
FROM_DEFAULTS_NOT_STORED = "the defaults: not in the checkpoint's data settings"


def resolve_data_settings(
    given: dict[str, Any],
    ckpt: str | Path | None,
    defaults: dict[str, Any],
    trust: bool = False,
    data_given: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each data setting of ``defaults`` from the command line (``given``), else the data block
    of a config (``data_given``: the ``data.init_args`` set in a config file or on the command
    line, such as a fit config's clip length), else the checkpoint's training data, else
    ``defaults``; returns the values and where each came from.

    An evaluation at another clip length, crop or decode size than the network was trained at
    measures the mismatch as much as the features, and flipping swaps direction-dependent
    classes; the training run's settings are the defaults that fit the data.
    """
    stored: dict[str, Any] | None = None
    no_data = FROM_DEFAULTS_RANDOM_INIT
    if ckpt is not None:
        from vssl.weights import is_lightning_checkpoint

        if not Path(ckpt).exists():
            raise MissingInputError(f"{ckpt}: checkpoint not found")
        # Published weights (another format) carry no data settings: the defaults apply.
        if is_lightning_checkpoint(ckpt, trust):
            stored = checkpoint_data_settings(ckpt, trust=trust)
        no_data = FROM_DEFAULTS_NO_DATA
    values, sources = {}, {}
    for key, default in defaults.items():
        if key in given:
            values[key], sources[key] = given[key], FROM_COMMAND_LINE
        elif data_given and key in data_given:
            values[key], sources[key] = data_given[key], FROM_DATA_BLOCK
        elif stored is not None and key in stored:
            values[key], sources[key] = stored[key], FROM_CHECKPOINT
        elif stored is not None:
            values[key], sources[key] = default, FROM_DEFAULTS_NOT_STORED
        else:
            values[key], sources[key] = default, no_data
    return values, sources


def describe_data_settings(prog: str, values: dict[str, Any], sources: dict[str, str]) -> str:
    """One line of the data settings used and where they came from, e.g. ``vssl probe: clips
    16x1, crop 112, decode 128, flip off (from the checkpoint's data settings)``."""
    decode = values.get("decode_size")
    if decode is None:
        decode_text = "full size"
    elif isinstance(decode, (tuple, list)):
        decode_text = "x".join(str(v) for v in decode)
    else:
        decode_text = str(decode)
    parts = [
        f"clips {values['clip_len']}x{values['stride']}",
        f"crop {values['crop_size']}",
        f"decode {decode_text}",
    ]
    if "flip" in values:
        parts.append(f"flip {'on' if values['flip'] else 'off'}")
    groups: dict[str, list[str]] = {}
    for key, source in sources.items():
        groups.setdefault(source, []).append(_LABELS[key])
    if len(groups) == 1:
        origin = f"from {next(iter(groups))}"
    else:
        origin = "; ".join(
            f"{', '.join(labels)} from {source}" for source, labels in groups.items()
        )
    return f"{prog}: {', '.join(parts)} ({origin})"


def show_progress() -> bool:
    """Whether to draw progress bars: when stderr (where they go) is a terminal."""
    return Console(stderr=True).is_terminal


def build_model(settings: FeatureSettings, trust: bool = False) -> VSSLTask:
    """The model that ``settings`` names: a checkpoint's task (``trust``: see `load_task`), or a
    random-init backbone."""
    if settings.ckpt is not None:
        from vssl.weights import load_task as load_weights

        return load_weights(settings.ckpt, format=settings.ckpt_format, trust=trust)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        task = VSSLTask(
            backbone=settings.backbone, backbone_kwargs=settings.backbone_kwargs, online_probe=False
        )
    return task.eval()


def crop_offsets(length: int, size: int, crops: int) -> list[int]:
    """Start offsets of ``crops`` windows of ``size`` along a side of ``length``.

    One crop: the centre. Three: the start, the centre and the end of the side.
    """
    if size > length:
        raise ValueError(f"crop size {size} is larger than the frame side {length}")
    centre = (length - size) // 2
    return [centre] if crops == 1 else [0, centre, length - size]


class MultiCrop:
    """Worker-side transform: resize short side to ``size``, then 1 or 3 square crops per clip.

    Input view: uint8 ``(N, T, C, H, W)``; output ``(N * crops, T, C, size, size)``, the crops
    of one clip next to each other, taken along the long side (left/centre/right for landscape).
    """

    def __init__(self, size: int, crops: int = 1, view: str = "video"):
        self.size, self.crops, self.view = size, crops, view

    def __call__(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        clips = sample[self.view]
        n, t = clips.shape[:2]
        frames = TF.resize(clips.reshape(n * t, *clips.shape[2:]), self.size, antialias=True)
        h, w = frames.shape[-2:]
        out = []
        for off in crop_offsets(max(h, w), self.size, self.crops):
            top, left = (off, (w - self.size) // 2) if h > w else ((h - self.size) // 2, off)
            out.append(frames[..., top : top + self.size, left : left + self.size])
        crops = torch.stack(out, dim=1).reshape(n, t, len(out), *out[0].shape[1:])
        return {
            **sample,
            self.view: crops.permute(0, 2, 1, 3, 4, 5).reshape(n * len(out), t, *out[0].shape[1:]),
        }


class Corrupted:
    """Worker-side transform: ``transform``, then ``corruption`` on the views it returns (test
    clips corrupted after cropping, as the network sees them)."""

    def __init__(self, transform: Any, corruption: Corruption, view: str = "video") -> None:
        self.transform, self.corruption, self.view = transform, corruption, view

    def __call__(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        sample = self.transform(sample)
        return {**sample, self.view: self.corruption(sample[self.view])}


@dataclass
class RandomClips(ClipSampler):
    """``num_clips`` independent `RandomClip` draws from one video, stacked ``(N, T)``."""

    clip_len: int = 16
    stride: int = 1
    num_clips: int = 1
    view: str = "video"

    def __call__(self, num_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        one = RandomClip(self.clip_len, self.stride, view=self.view)
        return {
            self.view: np.stack([one(num_frames, rng)[self.view] for _ in range(self.num_clips)])
        }


@dataclass
class Features:
    """Features of one split: per video ``(V, D)``, or ``(V, K, D)`` with K random views each;
    labels ``(V,)``, file paths and class names."""

    feats: Tensor
    labels: Tensor
    paths: list[str]
    classes: list[str]
    settings: dict[str, Any]


def _datamodule(settings: FeatureSettings, index_cache: str | None) -> VideoDataModule:
    return VideoDataModule(
        root=settings.root,
        layout=settings.layout,
        train_split=settings.split,
        val_split=None,
        fold=settings.fold,
        annotations=settings.annotations,
        clip_len=settings.clip_len,
        stride=settings.stride,
        crop_size=settings.crop_size,
        decode_size=settings.decode_size,
        cache_dir=index_cache,
        **settings.data_options,
    )


def feature_dataset(settings: FeatureSettings, index_cache: str | None) -> tuple[Any, list[str]]:
    """The videos of one split with the views ``settings`` asks for (seeded random views, or
    ``clips`` x ``crops`` with the crops of a clip next to each other; corrupted if asked) and
    the class names."""
    dm = _datamodule(settings, index_cache)
    sampler: ClipSampler
    if settings.random_views:
        sampler = RandomClips(settings.clip_len, settings.stride, settings.random_views)
        transform: Any = ViewTransform(
            train_clip_transform(settings.crop_size, scale=settings.crop_scale, flip=settings.flip)
        )
    else:
        sampler = UniformClips(settings.clip_len, settings.stride, num_clips=settings.clips)
        transform = MultiCrop(settings.crop_size, settings.crops)
    if settings.corruption is not None:
        corruption = Corruption(settings.corruption, settings.severity, seed=settings.seed)
        transform = Corrupted(transform, corruption)
    return dm.build_dataset("train", sampler=sampler, transform=transform), list(dm.classes)


def clip_tokens(model: VSSLTask, video: Tensor) -> Tensor:
    """Frozen tokens ``(B, T' H' W', C)`` of clips: the backbone's unpooled map, flattened in
    (t, h, w) raster order (a ViT's tokens, a CNN's last map), or the tokens of a task that
    chooses its own evaluation encoder (an ``evaluation_tokens(video)`` method returning
    ``(B, N, C)``: `vssl.tasks.VJEPA` with ``eval_encoder: target`` reads its target encoder
    after its final norm, as the official frozen evaluation). uint8 ``(B, T, C, H, W)`` clips
    are normalised first by the task's augmentation in eval mode, as
    `VSSLTask.extract_features` does."""
    if video.dtype == torch.uint8:
        was = model.augment.training
        model.augment.eval()
        try:
            video = model.augment(video)
        finally:
            model.augment.train(was)
    evaluation_tokens = getattr(model, "evaluation_tokens", None)
    if callable(evaluation_tokens):
        return evaluation_tokens(video)
    return model.backbone.forward_features(video).flatten(2).transpose(1, 2)


@torch.no_grad()
def extract_features(
    settings: FeatureSettings,
    model: VSSLTask | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    tokens: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Features:
    """Per-video features of one split: mean pooled features over ``clips`` x ``crops`` views
    (``(V, D)``; ``(V, K, D)`` with ``random_views``), or with ``tokens`` every view's tokens
    (`clip_tokens`, ``(V, M, N, C)``, stored as ``dtype``: float16 halves the size).

    With ``cache_dir``, a cached result of identical settings (and ``tokens``, ``dtype``) is
    returned without decoding, and a new result is written there (the video index is cached
    there too). ``model`` overrides building one from ``settings`` (it must be what the
    settings name; it is not part of the cache key beyond them). ``progress``: a progress bar
    per batch on stderr (None: when stderr is a terminal).
    """
    cache_file = None
    record = asdict(settings) | ({"token_dtype": str(dtype)} if tokens else {})
    if cache_dir is not None:
        prefix = "tokens" if tokens else "features"
        cache_file = Path(cache_dir) / f"{prefix}-{settings.key()}.pt"
        if cache_file.is_file():
            stored = torch.load(cache_file, map_location="cpu", weights_only=False)
            if stored.get("record", stored.get("settings")) == record:
                return Features(**stored.get("features", stored))
    dataset, classes = feature_dataset(settings, None if cache_dir is None else str(cache_dir))
    model = (model or build_model(settings)).to(device).eval()
    feats, labels = [], []
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)  # the random views' positions and crops
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(settings.seed),
        )
        if progress is None:
            progress = show_progress()
        description = f"{'tokens' if tokens else 'features'} of {settings.split}"
        for batch in track(
            loader,
            f"{description} ({len(dataset)} videos)",
            total=len(loader),
            disable=not progress,
            console=Console(stderr=True),
        ):
            video = batch["video"].to(device)
            b, v = video.shape[:2]
            clips = video.reshape(b * v, *video.shape[2:])
            if tokens:
                out = clip_tokens(model, clips)
                feats.append(out.reshape(b, v, *out.shape[1:]).to("cpu", dtype))
            else:
                out = model.extract_features(clips).reshape(b, v, -1)
                feats.append((out if settings.random_views else out.mean(dim=1)).float().cpu())
            labels.append(batch["label"])
    result = Features(
        feats=torch.cat(feats),
        labels=torch.cat(labels),
        paths=dataset.table.paths(),
        classes=classes,
        settings=asdict(settings),
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        torch.save(
            {"record": record, "features": asdict(result)} if tokens else asdict(result), tmp
        )
        tmp.replace(cache_file)
    return result
