"""pytorchvideo's Kinetics weights on disk (``.pyth`` files from its model zoo) into vssl's
``slow_r50`` and ``x3d_*``.

The files hold ``{'model_state': state_dict, ...}`` (pytorchvideo's ``models/hub``). vssl's
wrappers keep pytorchvideo's names under ``trunk.``: the key map adds that prefix; the head
(``blocks.5``) is dropped except X3D's conv5 (``blocks.5.pool.pre_conv`` / ``pre_norm``),
which vssl's X3D keeps. X3D-XS, -S and -M are one network (they differ in input size only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vssl.weights import hub_cache
from vssl.weights._common import Converted, WeightsFormatError, is_state_dict, strip_module

FORMAT = "pytorchvideo"
EXPECTED = "a pytorchvideo checkpoint (a dict with 'model_state', e.g. X3D_M.pyth)"
_ROOT = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
#: vssl backbone name -> its pytorchvideo model zoo file (pytorchvideo/models/hub).
URLS = {
    "slow_r50": f"{_ROOT}/SLOW_8x8_R50.pyth",
    "x3d_xs": f"{_ROOT}/X3D_XS.pyth",
    "x3d_s": f"{_ROOT}/X3D_S.pyth",
    "x3d_m": f"{_ROOT}/X3D_M.pyth",
    "x3d_l": f"{_ROOT}/X3D_L.pyth",
}


def cached_file(name: str) -> Path:
    """The hub cache file of backbone ``name``'s Kinetics weights (must be on disk)."""
    if name not in URLS:
        raise WeightsFormatError(
            f"{name}: no pytorchvideo weights for this backbone; those in vssl are "
            f"{', '.join(URLS)}"
        )
    how = f"torch.hub.load('facebookresearch/pytorchvideo', '{name}', pretrained=True)"
    return hub_cache.require(URLS[name], name, "pytorchvideo", how)


def convert(obj: Any, path: Path) -> Converted:
    """Prefix a pytorchvideo state dict with ``trunk.``; the head is dropped."""
    state = obj.get("model_state", obj) if isinstance(obj, dict) else None
    if not is_state_dict(state):
        raise WeightsFormatError(f"{path}: not {EXPECTED}")
    state = strip_module(state)
    by_file = {Path(url).name: name for name, url in URLS.items()}
    name = by_file.get(path.name)
    if name is None and "blocks.5.proj.weight" in state and "blocks.0.conv.weight" in state:
        stem = state["blocks.0.conv.weight"]
        name = "slow_r50" if stem.shape[2] == 1 else "r3d_50" if stem.shape[2] == 5 else None
    return Converted(
        {f"trunk.{k}": v for k, v in state.items()},
        name,
        notes=["the head (blocks.5, but X3D's conv5) is dropped"],
        head_prefixes=("trunk.blocks.5.",),
    )
