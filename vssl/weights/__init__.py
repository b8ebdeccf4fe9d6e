"""Published weights into vssl backbones: ``load_backbone(path, format=..., backbone=...)``.

Formats (one module per source, each with its key map):

- ``vssl``: a Lightning checkpoint of a vssl task, or a ``python -m vssl export`` file;
- ``videomae``: the official VideoMAE checkpoints (`vssl.weights.videomae`);
- ``hf``: transformers' VideoMAE models, state dicts or ``save_pretrained`` folders
  (`vssl.weights.hf`);
- ``rspnet``, ``vcop``, ``prp``: the official RSPNet, VCOP and PRP checkpoints into the paper
  backbones (`vssl.weights.rspnet`, `vssl.weights.vcop`, `vssl.weights.prp`);
- ``torchvision``, ``pytorchvideo``: their Kinetics weights already on disk, given as a file or
  as a backbone name looked up in the torch hub cache (nothing is downloaded);
- ``auto`` (default): the format read from the file's keys.

Files are read with ``torch.load(weights_only=True)``. Loading is strict: a backbone key the
file does not fill, or a file key with no place in the backbone, is an error that lists them;
keys a source drops on purpose (classifiers, decoders, momentum encoders) are said in
``LoadedBackbone.notes``. Where vssl's backbone differs from the official network so that no
key map is exact, the file is refused with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vssl import backbones
from vssl.backbones import Backbone
from vssl.errors import InvalidInputError, MissingInputError
from vssl.weights import (
    detect,
    hf,
    prp,
    pytorchvideo_files,
    rspnet,
    torchvision_files,
    vcop,
    videomae,
)
from vssl.weights._common import Converted, WeightsFormatError, build, load_strict, read_file

if TYPE_CHECKING:
    from vssl.tasks.base import VSSLTask

_SOURCES = {
    "videomae": videomae,
    "rspnet": rspnet,
    "vcop": vcop,
    "prp": prp,
    "torchvision": torchvision_files,
    "pytorchvideo": pytorchvideo_files,
}
#: What each format is, as error messages say it.
EXPECTED = {
    "vssl": "a vssl checkpoint (a Lightning checkpoint of a vssl task, or a vssl export)",
    "hf": hf.EXPECTED,
    **{name: module.EXPECTED for name, module in _SOURCES.items()},
}
FORMATS = ("auto", *EXPECTED)
#: Formats whose files have the same layout (PRP's R3D and R(2+1)D are VCOP's).
_SAME_LAYOUT = {"prp": {"vcop"}, "vcop": {"prp"}}


@dataclass
class LoadedBackbone:
    """A backbone with published weights, and how to rebuild it from the registry.

    ``backbone`` / ``backbone_kwargs``: the registry entry (None when the caller passed a built
    module). ``initialised``: backbone keys the file did not fill (only with ``strict=False``).
    ``notes``: what the key map dropped or set, in words.
    """

    model: Backbone
    backbone: str | None
    backbone_kwargs: dict[str, Any]
    format: str
    initialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _vssl_export_meta(path: Path) -> Path | None:
    """The ``.json`` of a vssl export at ``path`` (its weights or the json itself), if any."""
    from vssl.export import FORMAT as EXPORT_FORMAT

    meta = path.with_suffix(".json")
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return meta if isinstance(data, dict) and data.get("format") == EXPORT_FORMAT else None


def _resolve_name(path: Path, fmt: str, backbone: object) -> tuple[Path, object]:
    """A torchvision / pytorchvideo backbone name given as ``path``: its hub cache file."""
    if (
        fmt in ("torchvision", "pytorchvideo")
        and not path.exists()
        and str(path) in (backbones.available())
    ):
        module = torchvision_files if fmt == "torchvision" else pytorchvideo_files
        return module.cached_file(str(path)), backbone if backbone is not None else str(path)
    return path, backbone


def _check_format(path: Path, fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidInputError(
            f"{path}: unknown weight format {fmt!r}; use one of {', '.join(FORMATS)}"
        )


def _wrong(path: Path, fmt: str, found: str) -> WeightsFormatError:
    return WeightsFormatError(f"{path}: expected {EXPECTED[fmt]}, found {found}")


def _from_vssl(path: Path, lightning: bool, trust: bool) -> Converted:
    """The backbone of a vssl task's Lightning checkpoint, or of a ``vssl export`` file."""
    from vssl.export import backbone_from_checkpoint, read_export

    if lightning:
        state, meta = backbone_from_checkpoint(path, trust=trust)
    else:
        state, meta = read_export(path)
    return Converted(state, meta["backbone"], dict(meta.get("backbone_kwargs") or {}))


def read_backbone(
    path: str | Path,
    format: str = "auto",
    backbone: str | Backbone | None = None,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    strict: bool = True,
    trust: bool = False,
) -> LoadedBackbone:
    """Build the backbone that weight file ``path`` (in ``format``) fits and load it.

    ``backbone``: a registered name (built with ``backbone_kwargs``), a built `Backbone` to load
    into, or None for the one the file's keys call for. ``strict=False`` leaves keys the file
    lacks at their initialisation (listed in ``initialised``) and ignores extra ones; shapes
    must agree either way. ``trust`` reads with ``weights_only=False`` (trusted files only).
    """
    path = Path(path)
    _check_format(path, format)
    path, backbone = _resolve_name(path, format, backbone)
    if not path.exists():
        raise MissingInputError(f"{path}: weight file not found")
    obj: object = None
    config = None
    if path.name in hf.WEIGHT_NAMES and (path.parent / "config.json").is_file():
        path = path.parent  # the weights of a save_pretrained folder: read its config too
    if path.is_dir():
        kind, found = "hf", "a folder"
        if format not in ("auto", "hf"):
            raise _wrong(path, format, found)
        state, config = hf.read(path, trust)
        obj = state
    elif _vssl_export_meta(path) is not None:
        kind, found = "vssl", "a vssl backbone export"
    else:
        obj = read_file(path, trust)
        found = describe(obj)
        kind = detect.identify(obj)
        kind = "vssl" if kind == "lightning" else kind
    if format == "auto":
        if kind is None:
            raise WeightsFormatError(
                f"{path}: cannot tell the weight format (found {found}); pass format= one of "
                f"{', '.join(FORMATS[1:])}"
            )
        format = kind
    elif kind is not None and kind != format and kind not in _SAME_LAYOUT.get(format, ()):
        raise _wrong(path, format, found)
    if format == "vssl":
        converted = _from_vssl(path, kind == "vssl" and obj is not None, trust)
    elif format == "hf":
        converted = hf.convert(obj, config, path)  # type: ignore[arg-type]
    else:
        converted = _SOURCES[format].convert(obj, path)
    label = EXPECTED[format].split(" (")[0].removeprefix("an ").removeprefix("a ")
    model, name, kwargs = build(
        converted.backbone, converted.backbone_kwargs, backbone, backbone_kwargs, path, label
    )
    initialised = load_strict(model, converted, path, label, strict=strict, name=name)
    return LoadedBackbone(
        model.eval(), name, kwargs, format, initialised=initialised, notes=converted.notes
    )


def describe(obj: object) -> str:
    """How an error message names a loaded object."""
    from vssl.weights._common import describe as _describe

    return _describe(obj)


def load_backbone(
    path: str | Path,
    format: str = "auto",
    backbone: str | Backbone | None = None,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    strict: bool = True,
    trust: bool = False,
) -> Backbone:
    """The backbone of weight file ``path`` with its weights, in eval mode (see `read_backbone`).

    ``backbone`` may be a built `Backbone`, e.g. a task's, which is then loaded in place.
    """
    return read_backbone(
        path, format, backbone, backbone_kwargs=backbone_kwargs, strict=strict, trust=trust
    ).model


def load_task(
    path: str | Path,
    format: str = "auto",
    backbone: str | None = None,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    strict: bool = True,
    trust: bool = False,
) -> VSSLTask:
    """A `VSSLTask` holding the backbone of ``path``, what probe / retrieve / finetune take.

    A Lightning checkpoint of a vssl task gives its own task (`vssl.eval.load_task`); any other
    format gives a plain `VSSLTask` (no online probe) whose hyper-parameters name the registry
    backbone the weights were loaded into.
    """
    from vssl.tasks.base import VSSLTask

    path = Path(path)
    _check_format(path, format)
    if format in ("auto", "vssl") and is_lightning_checkpoint(path, trust):
        from vssl.eval import load_task as load_vssl_task

        return load_vssl_task(path, trust=trust)
    loaded = read_backbone(
        path, format, backbone, backbone_kwargs=backbone_kwargs, strict=strict, trust=trust
    )
    task = VSSLTask(
        backbone=loaded.backbone, backbone_kwargs=loaded.backbone_kwargs, online_probe=False
    )
    task.backbone = loaded.model
    return task.eval()


def is_lightning_checkpoint(path: str | Path, trust: bool = False) -> bool:
    """Whether ``path`` is a Lightning checkpoint (of a vssl task), the file that commands read
    data settings and whole tasks from; False for every other weight format."""
    path = Path(path)
    if not path.is_file() or _vssl_export_meta(path) is not None or path.suffix == ".safetensors":
        return False
    return detect.identify(read_file(path, trust)) == "lightning"


def detect_format(path: str | Path, trust: bool = False) -> str:
    """The format ``format="auto"`` would pick for ``path`` (a clear error when none fits)."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: weight file not found")
    if path.is_dir():
        return "hf"
    if _vssl_export_meta(path) is not None:
        return "vssl"
    obj = read_file(path, trust)
    kind = detect.identify(obj)
    if kind is None:
        raise WeightsFormatError(f"{path}: cannot tell the weight format (found {describe(obj)})")
    return "vssl" if kind == "lightning" else kind


__all__ = [
    "EXPECTED",
    "FORMATS",
    "LoadedBackbone",
    "WeightsFormatError",
    "detect_format",
    "is_lightning_checkpoint",
    "load_backbone",
    "load_task",
    "read_backbone",
]
