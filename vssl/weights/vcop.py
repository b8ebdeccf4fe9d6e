"""The official VCOP checkpoints (xudejing/video-clip-order-prediction) into vssl's C3D, R3D-10
and R(2+1)D-10; the naming of these three networks, which RSPNet and PRP reuse, lives here.

``train_vcop.py`` saves ``VCOPN.state_dict()``: the clip network under ``base_network.`` and
the order head ``fc7`` / ``fc8`` (dropped); ``train_classify.py`` saves the network alone with
its classifier ``linear`` (dropped). A ``module.`` prefix (DataParallel) is removed.

- C3D (``models/c3d.py``, copied by RSPNet): ``conv1``, ``bn1``, ..., ``conv5b``, ``bn5b`` are
  the names of vssl's ``c3d`` trunk. The official network has no pool5 (its features average
  conv5b), so the backbone is ``c3d(pool5=False)``; a C3D with pool5 is refused.
- R3D / R(2+1)D with ``layer_sizes (1, 1, 1, 1)`` (``models/r3d.py``, ``models/r21d.py``):
  ``conv{k}.block1`` is ``layer{k-1}.0``; a block's ``conv1`` / ``bn1`` / ``conv2`` / ``bn2`` /
  ``downsampleconv`` / ``downsamplebn`` are ``conv1.0`` / ``conv1.1`` / ``conv2.0`` / ``conv2.1``
  / ``downsample.0`` / ``downsample.1``; R3D's ``temporal_spatial_conv`` is the conv itself and
  R(2+1)D's ``spatial_conv`` / ``bn`` / ``temporal_conv`` are ``0`` / ``1`` / ``3``. Stem: R3D's
  ``conv1`` / ``bn1`` are ``stem.0`` / ``stem.1``; R(2+1)D's ``conv1.*`` / ``bn1`` are
  ``stem.{0,1,3}`` / ``stem.4`` (see `vssl.backbones.vcop`). Deeper ``layer_sizes`` (keys under
  ``conv{k}.blocks.``) have no place in the 10-layer networks and are listed as unexpected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vssl.backbones import Backbone
from vssl.weights._common import (
    Converted,
    State,
    WeightsFormatError,
    drop,
    is_state_dict,
    rename,
    strip_module,
    strip_prefix,
)

FORMAT = "vcop"
EXPECTED = "an official VCOP checkpoint (a state dict with 'base_network.' or C3D/R3D/R(2+1)D keys)"
HEAD_PREFIXES = ("linear.", "fc.", "fc7.", "fc8.")


def c3d_key(key: str) -> str | None:
    """A VCOP/RSPNet C3D key as a vssl ``c3d`` key."""
    if re.fullmatch(r"(conv|bn)(1|2|3a|3b|4a|4b|5a|5b)\.[a-z_]+", key):
        return f"trunk.{key}"
    return None


def resnet_key(key: str, factorised: bool) -> str | None:
    """A VCOP R3D (``factorised=False``) or R(2+1)D key as a vssl ``r3d_10`` / ``r2plus1d_10``
    key; None for a key outside the 10-layer network."""
    stage = re.fullmatch(r"conv([2-5])\.block1\.(.*)", key)
    if stage:
        rest = re.sub(r"^(conv[12])\.", r"\1.0.", stage[2])
        rest = re.sub(r"^bn([12])\.", r"conv\1.1.", rest)
        rest = rest.replace("downsampleconv.", "downsample.0.").replace(
            "downsamplebn.", "downsample.1."
        )
        key = f"layer{int(stage[1]) - 1}.0.{rest}"
    elif re.match(r"(conv1|bn1)\.", key):
        if factorised:
            key = re.sub(r"^conv1\.", "stem.", re.sub(r"^bn1\.", "stem.4.", key))
        else:
            key = re.sub(r"^conv1\.", "stem.0.", re.sub(r"^bn1\.", "stem.1.", key))
    else:
        return None
    key = key.replace("temporal_spatial_conv.", "").replace("spatial_conv.", "0.")
    key = re.sub(r"(^|\.)bn\.", r"\g<1>1.", key).replace("temporal_conv.", "3.")
    return f"trunk.{key}"


def no_pool5(model: Backbone) -> str | None:
    """Why ``model`` cannot compute an official C3D: it has pool5 (None when it has not)."""
    if hasattr(model.trunk, "pool5"):
        return (
            "the official C3D has no pool5 (its features average conv5b); build the backbone "
            "as c3d with pool5=False"
        )
    return None


def network(state: State, path: Path, source: str) -> Converted:
    """Rename a VCOP-named clip network (keys without prefix) to the vssl backbone it fits."""
    state, notes = drop(state, HEAD_PREFIXES)
    if "conv3a.weight" in state:
        return Converted(
            rename(state, c3d_key), "c3d", {"pool5": False}, notes=notes, check=no_pool5
        )
    if "conv2.block1.conv1.temporal_spatial_conv.weight" in state:
        return Converted(rename(state, lambda k: resnet_key(k, False)), "r3d_10", notes=notes)
    if "conv2.block1.conv1.spatial_conv.weight" in state:
        return Converted(rename(state, lambda k: resnet_key(k, True)), "r2plus1d_10", notes=notes)
    keys = ", ".join(repr(k) for k in list(state)[:4])
    raise WeightsFormatError(
        f"{path}: {source} network not recognised (keys like {keys}); vssl maps C3D, the "
        "R3D and the R(2+1)D of VCOP's code"
    )


def top_level_notes(state: State, kept: str) -> list[str]:
    """Notes for the top-level modules outside ``kept`` (the pretext heads), dropped."""
    others = sorted({k.split(".", 1)[0] for k in state if not k.startswith(kept)})
    return [f"dropped the pretext model's {', '.join(others)}"] if others else []


def convert(obj: Any, path: Path) -> Converted:
    """Rename a VCOP checkpoint (VCOPN or a fine-tuned network) to vssl's keys."""
    if not is_state_dict(obj):
        raise WeightsFormatError(f"{path}: not {EXPECTED}")
    state = strip_module(obj)
    notes: list[str] = []
    if any(k.startswith("base_network.") for k in state):
        notes = top_level_notes(state, "base_network.")
        state = strip_prefix(state, "base_network.")
    converted = network(state, path, "VCOP")
    converted.notes[:0] = notes
    return converted
