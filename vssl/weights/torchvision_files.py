"""torchvision's video model weights on disk (the torch hub cache) into vssl's wrappers.

vssl's ``r3d_18``, ``mc3_18``, ``r2plus1d_18`` and ``swin3d_t`` / ``_s`` / ``_b`` keep
torchvision's parameter names under ``trunk.``, so the key map adds that prefix and drops the
classifier (``fc`` of the ResNets, ``head`` of Swin). vssl's ``s3dg`` adds self-gating to
torchvision's S3D (parameters torchvision's weights do not have): those weights are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vssl.weights import hub_cache
from vssl.weights._common import (
    Converted,
    State,
    WeightsFormatError,
    depth_of,
    is_state_dict,
    strip_module,
)

FORMAT = "torchvision"
EXPECTED = "a torchvision video model state dict (e.g. r3d_18-b3b3357e.pth from the torch hub)"
#: vssl backbone name -> the torchvision.models.video builder whose weights it takes.
MODELS = {
    "r3d_18": "r3d_18",
    "mc3_18": "mc3_18",
    "r2plus1d_18": "r2plus1d_18",
    "swin3d_t": "swin3d_t",
    "swin3d_s": "swin3d_s",
    "swin3d_b": "swin3d_b",
}


def cached_file(name: str) -> Path:
    """The hub cache file of the default weights of backbone ``name`` (must be on disk)."""
    if name not in MODELS:
        raise WeightsFormatError(
            f"{name}: no torchvision weights for this backbone; torchvision's video models in "
            f"vssl are {', '.join(MODELS)}"
        )
    from torchvision.models import get_model_weights

    url = get_model_weights(MODELS[name]).DEFAULT.url
    how = f"torchvision.models.video.{MODELS[name]}(weights='DEFAULT')"
    return hub_cache.require(url, name, "torchvision", how)


def _infer(state: State) -> str | None:
    if "features.0.0.weight" in state and "patch_embed.proj.weight" not in state:
        return "s3d"
    if "stem.3.weight" in state:
        return "r2plus1d_18"
    conv = state.get("layer2.0.conv1.0.weight")
    if conv is not None:
        return "mc3_18" if conv.shape[2] == 1 else "r3d_18"
    embed = state.get("patch_embed.proj.weight")
    if embed is not None:
        if embed.shape[0] == 128:
            return "swin3d_b"
        return "swin3d_s" if depth_of(state, "features.4.") > 2 else "swin3d_t"
    return None


def convert(obj: Any, path: Path) -> Converted:
    """Prefix a torchvision state dict with ``trunk.``; its classifier is dropped."""
    if not is_state_dict(obj):
        raise WeightsFormatError(f"{path}: not {EXPECTED}")
    state = strip_module(obj)
    name = _infer(state)
    if name == "s3d":
        raise WeightsFormatError(
            f"{path}: torchvision's S3D weights; vssl's s3dg adds self-gating parameters that "
            "S3D does not have, so they cannot be loaded exactly"
        )
    return Converted(
        {f"trunk.{k}": v for k, v in state.items()},
        name,
        notes=["the classifier (fc / head) is dropped"],
        head_prefixes=("trunk.fc.", "trunk.head."),
    )
