"""The official PRP checkpoints (yuanyao366/PRP, Yao et al., CVPR 2020) into vssl's C3D, R3D-10
and R(2+1)D-10.

``train_predict.py`` saves the ``SSCN_OneClip`` model under DataParallel: the clip network
under ``module.base_network.`` (``ft_classfy.py`` keeps exactly these keys); the rest (the
classification branch ``conv6_cls`` / ``fc8``, the decoder ``conv6_rec`` / ``up*`` / ``outc``,
the cycle copy ``base_network_cyc``) is the pretext model and is dropped. Fine-tuned models
have the network under ``module.`` with a ``linear`` classifier (dropped).

PRP's C3D (``models/c3d.py``) wraps each conv with its BatchNorm and ReLU in ``conv3d``
(``models/net_part.py``: ``conv3d.0`` conv, ``conv3d.1`` BatchNorm) and numbers the layers
``conv3_1`` ... ``conv5_2``: ``convX.conv3d.0`` / ``convX.conv3d.1`` are vssl's ``convY`` /
``bnY`` with 1, 2, 3_1, 3_2, 4_1, 4_2, 5_1, 5_2 -> 1, 2, 3a, 3b, 4a, 4b, 5a, 5b. It has no pool5,
so the backbone is ``c3d(pool5=False)``; its pools use floor mode, the same as vssl's ceil mode
on the even sizes of 16 x 112 clips. PRP's ``r3d.py`` and ``r21d.py`` are VCOP's networks
with VCOP's names (`vssl.weights.vcop`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vssl.weights import vcop
from vssl.weights._common import (
    Converted,
    WeightsFormatError,
    drop,
    is_state_dict,
    rename,
    strip_module,
    strip_prefix,
)

FORMAT = "prp"
EXPECTED = "an official PRP checkpoint (a state dict with 'module.base_network.' keys)"
_LAYERS = {
    "1": "1",
    "2": "2",
    "3_1": "3a",
    "3_2": "3b",
    "4_1": "4a",
    "4_2": "4b",
    "5_1": "5a",
    "5_2": "5b",
}


def c3d_key(key: str) -> str | None:
    """A PRP C3D key as a vssl ``c3d`` key."""
    match = re.fullmatch(r"conv(\d(?:_\d)?)\.conv3d\.([01])\.([a-z_]+)", key)
    if match is None or match[1] not in _LAYERS:
        return None
    kind = "conv" if match[2] == "0" else "bn"
    return f"trunk.{kind}{_LAYERS[match[1]]}.{match[3]}"


def convert(obj: Any, path: Path) -> Converted:
    """Rename a PRP checkpoint (pretraining or fine-tuned) to vssl's keys."""
    if not is_state_dict(obj):
        raise WeightsFormatError(f"{path}: not {EXPECTED}")
    state = strip_module(obj)
    notes: list[str] = []
    if any(k.startswith("base_network.") for k in state):
        notes = vcop.top_level_notes(state, "base_network.")
        state = strip_prefix(state, "base_network.")
    if any(".conv3d." in k for k in state):
        state, dropped = drop(state, vcop.HEAD_PREFIXES)
        return Converted(
            rename(state, c3d_key),
            "c3d",
            {"pool5": False},
            notes=notes + dropped,
            check=vcop.no_pool5,
        )
    converted = vcop.network(state, path, "PRP")
    converted.notes[:0] = notes
    return converted
