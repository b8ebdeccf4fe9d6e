"""What every weight source shares: reading a file safely, key renaming, strict loading, ViTs.

Each source module (``videomae``, ``hf``, ``rspnet``, ``vcop``, ``prp``, ``torchvision_files``,
``pytorchvideo_files``) holds its key map and says which keys it drops on purpose (classifiers,
decoders, momentum encoders); anything else that does not fit the backbone is an error that
names the keys.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vssl import backbones
from vssl.backbones import Backbone
from vssl.errors import InvalidInputError, MissingInputError

State = dict[str, Tensor]


class WeightsFormatError(InvalidInputError):
    """A weight file that is not in the format asked for, or does not fit the backbone."""


@dataclass
class Converted:
    """A source's state dict renamed to vssl's keys, and the backbone it was made for.

    ``state``: vssl keys (keys the map could not place keep their source names, so that strict
    loading lists them as unexpected). ``backbone`` / ``backbone_kwargs``: the registry entry
    the weights fit. ``fill``: backbone keys the source does not have and that get fixed
    values by design (e.g. the fine-tuning norm of a pretraining checkpoint), with why.
    ``layer_norm_eps``: LayerNorm epsilons of the source to set on the built model, by module
    name, so that its function is the source's. ``notes``: what was dropped or filled, for the
    user. ``check``: why a built backbone cannot compute the source's function (e.g. a C3D with
    pool5 for a checkpoint without one), or None. ``head_prefixes``: vssl keys of the source's
    classifier (e.g. ``trunk.fc.``), dropped where the backbone does not have them.
    """

    state: State
    backbone: str | None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    fill: dict[str, Tensor] = field(default_factory=dict)
    layer_norm_eps: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    check: Callable[[Backbone], str | None] | None = None
    head_prefixes: tuple[str, ...] = ()


def is_state_dict(obj: object) -> bool:
    """Whether ``obj`` is a non-empty mapping of string keys to tensors."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def read_file(path: Path, trust: bool = False) -> Any:
    """The object in a ``.safetensors`` or ``torch.save`` file, read on the CPU.

    ``torch.load`` runs with ``weights_only=True`` unless ``trust``: a file that holds other
    pickled objects is refused with the reason.
    """
    if not path.exists():
        raise MissingInputError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise WeightsFormatError(f"{path}: not a readable safetensors file ({err})") from None
    if path.is_file() and not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            if f.read(1) != b"\x80":  # neither torch.save's zip archive nor a legacy pickle
                raise WeightsFormatError(
                    f"{path}: not a PyTorch weight file (not a torch.save archive or pickle)"
                )
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        raise WeightsFormatError(
            f"{path}: cannot be read with weights_only=True (it holds pickled objects other "
            "than tensors and plain containers); pass trust=True (--trust-checkpoint) only if "
            "you trust its source"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise WeightsFormatError(f"{path}: not a PyTorch weight file ({err})") from None


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> State:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def strip_module(state: Mapping[str, Tensor]) -> State:
    """Remove the ``module.`` that (Distributed)DataParallel puts before every key."""
    if state and all(k.startswith("module.") for k in state):
        return strip_prefix(state, "module.")
    return dict(state)


def drop(state: State, prefixes: Iterable[str]) -> tuple[State, list[str]]:
    """``state`` without the keys under any of ``prefixes``; and the dropped keys' count by
    prefix, as readable notes."""
    prefixes = tuple(prefixes)
    kept: State = {}
    counts: dict[str, int] = {}
    for key, value in state.items():
        hit = next((p for p in prefixes if key == p.rstrip(".") or key.startswith(p)), None)
        if hit is None:
            kept[key] = value
        else:
            counts[hit] = counts.get(hit, 0) + 1
    return kept, [f"dropped {n} key(s) under {p!r}" for p, n in counts.items()]


def rename(state: State, rule: Callable[[str], str | None]) -> State:
    """Apply ``rule`` to every key (None: the rule does not know it, keep the source name)."""
    out: State = {}
    for key, value in state.items():
        new = rule(key)
        out[key if new is None else new] = value
    return out


def _listed(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_strict(
    model: Backbone,
    converted: Converted,
    path: Path,
    source: str,
    strict: bool = True,
    name: str | None = None,
) -> list[str]:
    """Load ``converted`` into ``model``; return the backbone keys left at their initialisation.

    Shapes must always agree. With ``strict``, a backbone key the file does not fill (and that
    the source does not fill by design) or a file key the backbone does not have is an error
    that lists them by name.
    """
    problem = converted.check(model) if converted.check is not None else None
    if problem:
        raise WeightsFormatError(f"{path}: {problem}")
    expected = model.state_dict()
    state = {**converted.fill, **converted.state}
    if converted.head_prefixes:
        state = {
            k: v
            for k, v in state.items()
            if k in expected or not k.startswith(converted.head_prefixes)
        }
    name = name or type(model).__name__
    wrong = [
        f"{k} (file {tuple(v.shape)}, backbone {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise WeightsFormatError(
            f"{path}: {source} weights do not fit backbone {name!r}: shapes differ for "
            f"{_listed(wrong)}"
        )
    untracked = [
        k for k in expected if k.endswith(".num_batches_tracked") and k not in state
    ]  # BatchNorm's step counter: absent from files older than PyTorch 0.4.1; used by no forward
    state.update({k: torch.zeros_like(expected[k]) for k in untracked})
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_listed(unexpected)}")
        raise WeightsFormatError(
            f"{path}: {source} weights do not fit backbone {name!r}: {'; '.join(parts)} "
            "(strict loading; strict=False loads what fits)"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    modules = dict(model.named_modules())
    for module_name, eps in converted.layer_norm_eps.items():
        modules[module_name].eps = float(eps)
    return missing


def build(
    default: str | None,
    default_kwargs: dict[str, Any],
    backbone: str | Backbone | None,
    backbone_kwargs: dict[str, Any] | None,
    path: Path,
    source: str,
) -> tuple[Backbone, str | None, dict[str, Any]]:
    """The backbone to load into: the user's module, the user's registry name, or the source's.

    A name given by the user is built with ``backbone_kwargs``, or with the kwargs the source
    inferred when the name is the one it inferred.
    """
    if isinstance(backbone, Backbone):
        return backbone, None, {}
    if backbone is None:
        if default is None:
            raise WeightsFormatError(
                f"{path}: cannot tell which backbone these {source} weights are for; pass "
                "backbone=NAME (a registered name) or a built backbone"
            )
        backbone = default
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a registered name or a Backbone, got {backbone!r}")
    kwargs = dict(backbone_kwargs if backbone_kwargs is not None else {})
    if backbone_kwargs is None and backbone == default:
        kwargs = dict(default_kwargs)
    return backbones.build(backbone, **kwargs), backbone, kwargs


# ----------------------------------------------------------------------------- video ViTs

#: Attention heads of the published ViT widths (ViT-S, -B, -L, -H); a checkpoint has no
#: trace of the head count.
HEADS_BY_DIM = {384: 6, 768: 12, 1024: 16, 1280: 16}
#: (dim, depth, heads) -> vssl's ViT of that size (used when registered; else ``vit_tiny_8``,
#: which builds any size, with the sizes as kwargs).
STANDARD_VITS = {(384, 12, 6): "vit_s_16", (768, 12, 12): "vit_b_16", (1024, 24, 16): "vit_l_16"}


@dataclass(frozen=True)
class ViTShape:
    """The sizes of a video ViT read from a checkpoint (``heads`` None when not recorded)."""

    dim: int
    depth: int
    heads: int | None
    patch: int
    tubelet_frames: int
    mlp_hidden: int

    @classmethod
    def from_patch_embed(
        cls, weight: Tensor, depth: int, mlp_hidden: int, heads: int | None
    ) -> ViTShape:
        """Sizes from the tubelet conv weight ``(dim, 3, t, p, p)``."""
        dim, _, t, p, p2 = weight.shape
        if p != p2:
            raise ValueError(f"non-square patches {p} x {p2} are not supported")
        return cls(int(dim), int(depth), heads, int(p), int(t), int(mlp_hidden))


def vit_entry(shape: ViTShape, path: Path, source: str) -> tuple[str | None, dict[str, Any]]:
    """The registry name and kwargs of vssl's ViT with ``shape`` (None when heads are unknown)."""
    if shape.mlp_hidden != int(shape.dim * 4.0):
        raise WeightsFormatError(
            f"{path}: {source} MLP width {shape.mlp_hidden} is not 4 x {shape.dim}; vssl's "
            "registered ViTs use MLP ratio 4 (pass a built VideoViT with its mlp_ratio)"
        )
    heads = shape.heads if shape.heads is not None else HEADS_BY_DIM.get(shape.dim)
    if heads is None:
        return None, {}
    tubelet = {"patch_size": shape.patch, "tubelet_frames": shape.tubelet_frames}
    name = STANDARD_VITS.get((shape.dim, shape.depth, heads))
    if name is not None and name in backbones.available():
        return name, tubelet
    return "vit_tiny_8", {"dim": shape.dim, "depth": shape.depth, "heads": heads, **tubelet}


def join_qkv_bias(q: Tensor | None, v: Tensor | None, dim: int) -> Tensor:
    """The ``qkv`` bias of vssl's attention from q and v biases (k bias zero; none: all zero).

    A k bias adds one value to all attention logits of a query, so a zero one loses nothing.
    """
    zeros = torch.zeros(dim)
    return torch.cat([zeros if q is None else q, zeros, zeros if v is None else v])


def depth_of(state: Mapping[str, Tensor], prefix: str) -> int:
    """The number of blocks ``prefix{i}.`` in ``state``."""
    indices = {
        int(k[len(prefix) :].split(".", 1)[0])
        for k in state
        if k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0].isdigit()
    }
    return max(indices) + 1 if indices else 0


def describe(obj: object) -> str:
    """What a loaded object looks like, for 'found ...' in error messages."""
    from vssl.weights import detect

    found = detect.identify(obj)
    if found is not None:
        return detect.DESCRIPTIONS[found]
    if isinstance(obj, Mapping) and not obj:
        return "an empty dict"
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:3]]
        return f"a dict with keys {', '.join(repr(k) for k in keys)}" + (
            ", ..." if len(obj) > 3 else ""
        )
    return f"a {type(obj).__name__}"
