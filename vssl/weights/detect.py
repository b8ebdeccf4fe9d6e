"""Which weight format a loaded file is in, from its keys (``format="auto"``)."""

from __future__ import annotations

from collections.abc import Mapping

from vssl.weights._common import is_state_dict, strip_module

#: Kind of file -> how error messages name it.
DESCRIPTIONS = {
    "lightning": "a Lightning checkpoint",
    "videomae": "an official VideoMAE checkpoint",
    "hf": "a transformers VideoMAE state dict",
    "rspnet": "an official RSPNet checkpoint",
    "prp": "an official PRP checkpoint",
    "vcop": "an official VCOP checkpoint",
    "pytorchvideo": "a pytorchvideo checkpoint",
    "torchvision": "a torchvision state dict",
}


def videomae_state(obj: object) -> dict | None:
    """The ``model`` (or ``module``) dict of an official VideoMAE checkpoint, else None."""
    if not isinstance(obj, Mapping):
        return None
    if is_state_dict(obj) and any(
        k in obj for k in ("blocks.0.attn.qkv.weight", "encoder.blocks.0.attn.qkv.weight")
    ):
        return dict(obj)
    for key in ("model", "module"):
        inner = obj.get(key)
        if is_state_dict(inner) and any(
            k in inner for k in ("patch_embed.proj.weight", "encoder.patch_embed.proj.weight")
        ):
            return dict(inner)
    return None


def identify(obj: object) -> str | None:
    """The kind of a loaded file (a key of `DESCRIPTIONS`), or None when it is none of them."""
    if not isinstance(obj, Mapping):
        return None
    if "state_dict" in obj and ("hyper_parameters" in obj or "pytorch-lightning_version" in obj):
        return "lightning"
    if videomae_state(obj) is not None:
        return "videomae"
    if is_state_dict(obj.get("model_state")):
        return "pytorchvideo"
    model = obj.get("model")
    if is_state_dict(model) and any(
        k.startswith(("encoder_q.encoder.", "module.encoder_q.encoder.")) for k in model
    ):
        return "rspnet"
    if not is_state_dict(obj):
        return None
    keys = list(strip_module(obj))
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        return "hf"
    if any(k in keys for k in ("blocks.0.attn.qkv.weight", "encoder.blocks.0.attn.qkv.weight")):
        return "videomae"
    if any(".conv3d.0.weight" in k for k in keys):
        return "prp"
    vcop_names = ("conv2.block1.", "conv3a.weight", "base_network.")
    if any(k.startswith(vcop_names) for k in keys):
        return "vcop"
    if any(k.startswith(("stem.0.", "features.0.0.", "patch_embed.proj.")) for k in keys):
        return "torchvision"
    if any(k.startswith("blocks.0.") for k in keys):
        return "pytorchvideo"
    return None
