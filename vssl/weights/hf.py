"""transformers' VideoMAE models in and out: ``VideoMAEModel``, ``VideoMAEForPreTraining``,
``VideoMAEForVideoClassification`` state dicts or ``save_pretrained`` folders.

Key layout (``transformers/models/videomae/modeling_videomae.py``; the task models put the
encoder under ``videomae.``):

================================================================  ==================================
transformers                                                      vssl ``VideoViT``
================================================================  ==================================
``embeddings.patch_embeddings.projection``                        ``trunk.patch_embed``
``encoder.layer.i.layernorm_before`` / ``layernorm_after``        ``trunk.blocks.i.norm1`` / ``norm2``
``encoder.layer.i.attention.attention.{query,key,value}.weight``  ``trunk.blocks.i.attn.qkv.weight``
``...q_bias``, ``...v_bias`` (``qv_bias``; no k bias)             ``trunk.blocks.i.attn.qkv.bias``
``encoder.layer.i.attention.output.dense``                        ``trunk.blocks.i.attn.proj``
``encoder.layer.i.intermediate.dense`` / ``output.dense``         ``trunk.blocks.i.mlp.fc1`` / ``fc2``
``fc_norm`` (classification)                                      ``fc_norm``
``layernorm`` (``use_mean_pooling=False``, pretraining)           dropped, ``fc_norm`` = (1, 0)
``classifier``, ``decoder.*``, ``encoder_to_decoder``,
``mask_token``                                                    dropped
================================================================  ==================================

The files (``save_pretrained``, the hub) name the q and v biases ``q_bias`` / ``v_bias``;
transformers 5 renames them to ``query.bias`` / ``value.bias`` in memory: both are read, and
exports write the file names, which transformers 4 and 5 load.

transformers' LayerNorms take ``config.layer_norm_eps`` (1e-12 by default; the official models
use 1e-6) and the classification ``fc_norm`` PyTorch's 1e-5: a model loaded from a folder gets
those epsilons, so it computes the same function as the transformers model.

Export (`export_hf`) writes the reverse map: a vssl ViT's encoder as ``videomae.*`` plus
``fc_norm`` (the layout of ``VideoMAEForVideoClassification`` without its classifier), which
``VideoMAEModel.from_pretrained`` and ``VideoMAEForVideoClassification.from_pretrained`` load;
a VideoMAE task checkpoint also gets its decoder, ``encoder_to_decoder``, ``mask_token`` and
its pretraining norm as ``videomae.layernorm`` (``use_mean_pooling=False``, as the VideoMAE
models on the hub), which ``VideoMAEForPreTraining.from_pretrained`` loads. The k bias of vssl's
qkv is dropped (transformers has none; the function is the same).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vssl.weights._common import (
    Converted,
    State,
    ViTShape,
    WeightsFormatError,
    depth_of,
    drop,
    join_qkv_bias,
    read_file,
    strip_module,
    vit_entry,
)

FORMAT = "hf"
EXPECTED = (
    "a transformers VideoMAE model (a save_pretrained folder, or a state dict with "
    "'embeddings.patch_embeddings.projection.weight')"
)
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")

_LAYER = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def read(path: Path, trust: bool = False) -> tuple[State, dict[str, Any] | None]:
    """A transformers state dict and its config (None for a bare weight file)."""
    config = None
    if path.is_dir():
        config_file = path / "config.json"
        weights = next((path / n for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if not config_file.is_file() or weights is None:
            raise WeightsFormatError(
                f"{path}: not a transformers save_pretrained folder (needs config.json and "
                f"{' or '.join(WEIGHT_NAMES)})"
            )
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise WeightsFormatError(f"{config_file}: not valid JSON ({err})") from None
        if config.get("model_type") != "videomae":
            raise WeightsFormatError(
                f"{config_file}: model_type is {config.get('model_type')!r}, not 'videomae'"
            )
        state = read_file(weights, trust)
    else:
        state = read_file(path, trust)
    return strip_module(state), config


def _rename(key: str) -> str | None:
    if key.startswith("embeddings.patch_embeddings.projection."):
        return "trunk.patch_embed." + key.rsplit(".", 1)[1]
    layer = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", key)
    if layer and layer[2] in _LAYER:
        return f"trunk.blocks.{layer[1]}.{_LAYER[layer[2]]}.{layer[3]}"
    if key.startswith("fc_norm."):
        return key
    return None


def convert(state: State, config: dict[str, Any] | None, path: Path) -> Converted:
    """Rename a transformers VideoMAE state dict to vssl's keys."""
    if not any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state):
        raise WeightsFormatError(f"{path}: not {EXPECTED}")
    notes: list[str] = []
    state, dropped = drop(
        state,
        ("classifier.", "decoder.", "encoder_to_decoder.", "mask_token", "position_embeddings"),
    )
    notes += dropped
    fc_norm = {k: v for k, v in state.items() if k.startswith("fc_norm.")}
    state = {k.removeprefix("videomae."): v for k, v in state.items()}
    state.update(fc_norm)
    fill: State = {}
    eps: dict[str, float] = {}
    proj = state["embeddings.patch_embeddings.projection.weight"]
    dim = int(proj.shape[0])
    if "layernorm.weight" in state:
        state, dropped = drop(state, ("layernorm.",))
        notes += [d + " (the final token norm of use_mean_pooling=False)" for d in dropped]
    if "fc_norm.weight" not in state:
        fill = {"fc_norm.weight": torch.ones(dim), "fc_norm.bias": torch.zeros(dim)}
        notes.append("fc_norm starts at weight 1, bias 0 (the model has no pooling norm)")
    depth = depth_of(state, "encoder.layer.")
    mlp = state.get("encoder.layer.0.intermediate.dense.weight")
    heads = None if config is None else int(config["num_attention_heads"])
    shape = ViTShape.from_patch_embed(proj, depth, 0 if mlp is None else mlp.shape[0], heads)
    if config is not None:
        if config.get("hidden_act", "gelu") != "gelu":
            raise WeightsFormatError(
                f"{path}: hidden_act {config['hidden_act']!r}; vssl's ViT uses exact GELU"
            )
        ln = float(config.get("layer_norm_eps", 1e-12))
        for i in range(depth):
            eps[f"trunk.blocks.{i}.norm1"] = eps[f"trunk.blocks.{i}.norm2"] = ln
        if "fc_norm.weight" in state:
            eps["fc_norm"] = 1e-5  # transformers builds it with PyTorch's default epsilon
    out: State = {}
    for i in range(depth):
        prefix = f"encoder.layer.{i}.attention.attention."
        q, k, v = (state.pop(f"{prefix}{n}.weight", None) for n in ("query", "key", "value"))
        if q is not None and k is not None and v is not None:
            out[f"trunk.blocks.{i}.attn.qkv.weight"] = torch.cat([q, k, v])
        qb = state.pop(f"{prefix}q_bias", state.pop(f"{prefix}query.bias", None))
        vb = state.pop(f"{prefix}v_bias", state.pop(f"{prefix}value.bias", None))
        state.pop(f"{prefix}key.bias", None)
        out[f"trunk.blocks.{i}.attn.qkv.bias"] = join_qkv_bias(qb, vb, dim)
    for key, value in state.items():
        new = _rename(key)
        out[key if new is None else new] = value
    name, kwargs = vit_entry(shape, path, "transformers VideoMAE")
    return Converted(out, name, kwargs, fill=fill, layer_norm_eps=eps, notes=notes)


# ----------------------------------------------------------------------------- export


def encoder_state(backbone: State, dim: int, prefix: str = "videomae.") -> State:
    """vssl ``VideoViT`` keys -> transformers ``VideoMAEModel`` keys under ``prefix``."""
    out: State = {}
    depth = depth_of(backbone, "trunk.blocks.")
    for end in ("weight", "bias"):
        out[f"{prefix}embeddings.patch_embeddings.projection.{end}"] = backbone[
            f"trunk.patch_embed.{end}"
        ]
    for i in range(depth):
        src, dst = f"trunk.blocks.{i}.", f"{prefix}encoder.layer.{i}."
        out.update(_block_state(backbone, src, dst, dim))
    return out


def _block_state(state: State, src: str, dst: str, dim: int) -> State:
    """One vssl transformer ``Block`` (under ``src``) as a transformers ``VideoMAELayer``."""
    out: State = {}
    qkv_w, qkv_b = state[f"{src}attn.qkv.weight"], state[f"{src}attn.qkv.bias"]
    attn = f"{dst}attention.attention."
    for n, (lo, hi) in zip(
        ("query", "key", "value"), ((0, dim), (dim, 2 * dim), (2 * dim, 3 * dim)), strict=True
    ):
        out[f"{attn}{n}.weight"] = qkv_w[lo:hi].clone()
    out[f"{attn}q_bias"] = qkv_b[:dim].clone()
    out[f"{attn}v_bias"] = qkv_b[2 * dim :].clone()
    for theirs, ours in _LAYER.items():
        for end in ("weight", "bias"):
            out[f"{dst}{theirs}.{end}"] = state[f"{src}{ours}.{end}"]
    return out


def config_dict(
    *,
    dim: int,
    depth: int,
    heads: int,
    mlp_hidden: int,
    tubelet: tuple[int, int, int],
    frames: int,
    size: int,
    decoder: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``VideoMAEConfig`` as a dict (``decoder``: the decoder's sizes, for pretraining)."""
    t, p, p2 = tubelet
    if p != p2:
        raise WeightsFormatError(f"transformers' VideoMAE needs square patches, got {p} x {p2}")
    if frames % t or size % p:
        raise WeightsFormatError(
            f"frames {frames} and size {size} must be multiples of the tubelet {tubelet}"
        )
    config: dict[str, Any] = {
        "model_type": "videomae",
        "architectures": ["VideoMAEForPreTraining" if decoder else "VideoMAEModel"],
        "image_size": size,
        "patch_size": p,
        "num_channels": 3,
        "num_frames": frames,
        "tubelet_size": t,
        "hidden_size": dim,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "intermediate_size": mlp_hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": 1e-6,
        "qv_bias": True,
        "use_mean_pooling": decoder is None,
    }
    if decoder:
        config.update(decoder)
    return config


def pretraining_state(task_state: State, dim: int, decoder_dim: int) -> State:
    """A vssl VideoMAE task's non-backbone parts as ``VideoMAEForPreTraining`` keys."""
    out: State = {
        "videomae.layernorm.weight": task_state["encoder_norm.weight"],
        "videomae.layernorm.bias": task_state["encoder_norm.bias"],
        "encoder_to_decoder.weight": task_state["encoder_to_decoder.weight"],
        "mask_token": task_state["mask_token"],
        "decoder.norm.weight": task_state["decoder_norm.weight"],
        "decoder.norm.bias": task_state["decoder_norm.bias"],
        "decoder.head.weight": task_state["head.weight"],
        "decoder.head.bias": task_state["head.bias"],
    }
    for i in range(depth_of(task_state, "decoder.")):
        out.update(
            _block_state(task_state, f"decoder.{i}.", f"decoder.decoder_layers.{i}.", decoder_dim)
        )
    return out


def contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached contiguous copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().clone().contiguous() for k, v in state.items()}
