"""The official RSPNet checkpoints (PeihaoChen/RSPNet, Chen et al., AAAI 2021) into vssl's C3D,
R(2+1)D-10 and Hara's 3D ResNet-18/34.

``pretrain.py`` saves ``{'epoch', 'model', ...}``; ``model`` is the MoCo state dict: the query
encoder ``encoder_q`` (a ``MultiTaskWrapper``: the backbone under ``encoder_q.encoder.`` and
the two projection heads ``fc1`` / ``fc2``), the momentum encoder ``encoder_k`` and the queue.
As the official ``retrieval.py`` (``load_moco_checkpoint``), the backbone is
``encoder_q.encoder.*`` without its ``fc`` / ``linear`` / ``head`` / ``new_fc``; everything else
is dropped. Fine-tuned models keep the backbone under ``encoder.`` (also accepted). A
``module.`` prefix (DistributedDataParallel) is removed.

Backbones: ``c3d`` is VCOP's C3D and ``r2plus1d_vcop`` VCOP's R(2+1)D (`vssl.weights.vcop`);
``resnet18`` / ``resnet34`` (``models/resnet.py``, Hara et al.'s 3D ResNet, shortcut B) map onto
``r3d_18_hara`` / ``r3d_34_hara``: ``conv1`` / ``bn1`` keep their names,
``layerX.Y.conv1`` / ``bn1`` / ``conv2`` / ``bn2`` are ``layerX.Y.conv1.0`` / ``conv1.1`` /
``conv2.0`` / ``conv2.1`` and ``downsample.0`` / ``.1`` stay. RSPNet's ResNet-50 (bottlenecks),
S3D-G, SlowFast, TSM and MFNet have no vssl counterpart with their layout and are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vssl.weights import vcop
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

FORMAT = "rspnet"
EXPECTED = "an official RSPNet checkpoint (a 'model' dict with 'encoder_q.encoder.' keys)"
HEAD_PREFIXES = ("fc.", "linear.", "head.", "new_fc.")


def hara_key(key: str) -> str | None:
    """A Hara 3D ResNet key (RSPNet's ``models/resnet.py``) as a vssl ``r3d_*_hara`` key."""
    if re.fullmatch(r"(conv1|bn1)\.[a-z_]+", key):
        return f"trunk.{key}"
    block = re.fullmatch(r"(layer[1-4]\.\d+)\.(conv|bn)([12])\.([a-z_]+)", key)
    if block:
        index = "0" if block[2] == "conv" else "1"
        return f"trunk.{block[1]}.conv{block[3]}.{index}.{block[4]}"
    if re.fullmatch(r"layer[1-4]\.\d+\.downsample\.[01]\.[a-z_]+", key):
        return f"trunk.{key}"
    return None


def _backbone(state: State, path: Path) -> Converted:
    state, notes = drop(state, HEAD_PREFIXES)
    if "layer1.0.conv1.weight" in state and "conv1.weight" in state:
        if "layer1.0.conv3.weight" in state:
            raise WeightsFormatError(
                f"{path}: an RSPNet ResNet with bottleneck blocks (ResNet-50); vssl has Hara's "
                "ResNet-18 and -34 only"
            )
        name = "r3d_34_hara" if "layer3.5.conv1.weight" in state else "r3d_18_hara"
        return Converted(rename(state, hara_key), name, notes=notes)
    converted = vcop.network(state, path, "RSPNet")
    converted.notes[:0] = notes
    return converted


def convert(obj: Any, path: Path) -> Converted:
    """Rename an RSPNet checkpoint's query-encoder backbone to vssl's keys."""
    model = obj.get("model", obj) if isinstance(obj, dict) else None
    if not is_state_dict(model):
        raise WeightsFormatError(f"{path}: not {EXPECTED}")
    state = strip_module(model)
    for prefix in ("encoder_q.encoder.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            wrapper = prefix.split(".")[0]
            dropped = sorted(
                {
                    ".".join(k.split(".")[:2]) if k.startswith(wrapper + ".") else k.split(".")[0]
                    for k in state
                    if not k.startswith(prefix)
                }
            )
            converted = _backbone(strip_prefix(state, prefix), path)
            if dropped:
                converted.notes.insert(0, f"dropped {', '.join(dropped)}")
            return converted
    raise WeightsFormatError(f"{path}: not {EXPECTED} (no 'encoder_q.encoder.' keys)")
