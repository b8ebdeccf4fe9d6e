"""The official VideoMAE checkpoints (MCG-NJU/VideoMAE) into vssl's video ViTs.

The files are ``torch.save`` dicts with the weights under ``model`` (some under ``module``).
Key layout, from the official ``modeling_finetune.py`` (``VisionTransformer``) and
``modeling_pretrain.py`` (``PretrainVisionTransformer``, whose encoder has the same names under
``encoder.``):

=====================================  =========================================
official                               vssl ``VideoViT``
=====================================  =========================================
``patch_embed.proj.{weight,bias}``     ``trunk.patch_embed.{weight,bias}``
``blocks.i.norm1`` / ``norm2``         ``trunk.blocks.i.norm1`` / ``norm2``
``blocks.i.attn.qkv.weight``           ``trunk.blocks.i.attn.qkv.weight``
``blocks.i.attn.q_bias``, ``v_bias``   ``trunk.blocks.i.attn.qkv.bias`` = (q, 0, v)
``blocks.i.attn.proj``                 ``trunk.blocks.i.attn.proj``
``blocks.i.mlp.fc1`` / ``fc2``         ``trunk.blocks.i.mlp.fc1`` / ``fc2``
``fc_norm`` (fine-tuned models)        ``fc_norm``
``head`` (the classifier)              dropped
``encoder.norm`` (pretraining)         dropped, ``fc_norm`` set to weight 1, bias 0
``decoder.*``, ``encoder_to_decoder``,
``mask_token`` (pretraining)           dropped
=====================================  =========================================

The official attention has no k bias (``q_bias`` and ``v_bias`` only); vssl's qkv bias gets a
zero k part, the same function (a k bias adds one value to all logits of a query). The
pretraining encoder's final ``norm`` is not part of the fine-tuning network: the official
``run_class_finetuning.py`` drops it and starts ``fc_norm`` anew at weight 1 and bias 0, as done
here. Checkpoints that vssl's ViT cannot compute are refused: layer scale (``gamma_1``),
learned position embeddings (``pos_embed``), and ``use_mean_pooling=False`` models (a final
``norm`` and no ``fc_norm``), which pool the first token instead of the mean.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vssl.weights._common import (
    Converted,
    State,
    ViTShape,
    WeightsFormatError,
    depth_of,
    drop,
    join_qkv_bias,
    vit_entry,
)
from vssl.weights.detect import videomae_state

FORMAT = "videomae"
EXPECTED = "an official VideoMAE checkpoint (a 'model' dict with 'patch_embed.proj.weight')"

_UNSUPPORTED = {
    "gamma_1": "layer scale (gamma_1, gamma_2; init_values > 0)",
    "pos_embed": "learned position embeddings (pos_embed); vssl's ViT uses the sinusoidal table",
    "cls_token": "a class token",
}


def _rename(key: str) -> str | None:
    if key.startswith("patch_embed.proj."):
        return "trunk.patch_embed." + key.removeprefix("patch_embed.proj.")
    block = re.fullmatch(
        r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(.+)", key
    )
    if block:
        return f"trunk.blocks.{block[1]}.{block[2]}.{block[3]}"
    if key.startswith("fc_norm."):
        return key
    return None


def convert(obj: Any, path: Path) -> Converted:
    """Rename an official VideoMAE checkpoint (fine-tuning or pretraining) to vssl's keys."""
    state = videomae_state(obj)
    if state is None:
        raise WeightsFormatError(f"{path}: not {EXPECTED}")
    notes: list[str] = []
    pretraining = "encoder.patch_embed.proj.weight" in state
    if pretraining:
        state, dropped = drop(state, ("decoder.", "encoder_to_decoder.", "mask_token"))
        notes += dropped
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
    for key in state:
        for marker, what in _UNSUPPORTED.items():
            if re.search(rf"(^|\.){marker}$", key):
                raise WeightsFormatError(
                    f"{path}: this VideoMAE checkpoint uses {what}, which vssl's VideoViT "
                    f"does not have ({key!r}); it cannot be loaded exactly"
                )
    if not pretraining and "norm.weight" in state and "fc_norm.weight" not in state:
        raise WeightsFormatError(
            f"{path}: a use_mean_pooling=False VideoMAE model (a final 'norm', no 'fc_norm') "
            "pools its first token; vssl's VideoViT pools the mean of all tokens"
        )
    state, dropped = drop(state, ("head.",))
    notes += dropped
    fill: State = {}
    if pretraining:
        state, dropped = drop(state, ("norm.",))
        notes += [d + " (the pretraining encoder's final norm)" for d in dropped]
        dim = state["patch_embed.proj.weight"].shape[0]
        fill = {"fc_norm.weight": torch.ones(dim), "fc_norm.bias": torch.zeros(dim)}
        notes.append("fc_norm starts at weight 1, bias 0, as the official fine-tuning code")
    depth = depth_of(state, "blocks.")
    mlp = state.get("blocks.0.mlp.fc1.weight")
    shape = ViTShape.from_patch_embed(
        state["patch_embed.proj.weight"], depth, 0 if mlp is None else mlp.shape[0], None
    )
    out: State = {}
    for i in range(depth):
        q = state.pop(f"blocks.{i}.attn.q_bias", None)
        v = state.pop(f"blocks.{i}.attn.v_bias", None)
        if f"blocks.{i}.attn.qkv.bias" not in state:
            out[f"trunk.blocks.{i}.attn.qkv.bias"] = join_qkv_bias(q, v, shape.dim)
    for key, value in state.items():
        new = _rename(key)
        out[key if new is None else new] = value
    name, kwargs = vit_entry(shape, path, "VideoMAE")
    return Converted(out, name, kwargs, fill=fill, notes=notes)
