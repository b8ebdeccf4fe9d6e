"""Backbone weights out of a training checkpoint, usable without vssl's tasks or Lightning.

``python -m vssl export CKPT --out FILE`` writes the backbone's weights alone (``.safetensors``,
``.pt``, or both when ``FILE`` has no suffix) and ``FILE``'s stem with ``.json``: how to rebuild
the backbone (registry name, builder kwargs, ``out_dim``, vssl version, source checkpoint).
``load_backbone(FILE)`` rebuilds it with the weights. Backbones that wrap torchvision's video
ResNets keep torchvision's parameter names under ``trunk.``, so ``load_torchvision(FILE)`` loads
the same weights into ``torchvision.models.video.r3d_18()`` (and mc3_18, r2plus1d_18) with only
the classifier ``fc`` missing; ``load_into(FILE, model, head="blocks.5")`` does the same for the
pytorchvideo models that slow_r50, r3d_50 and x3d_* wrap.

``python -m vssl export CKPT --format hf --out DIR`` writes a video ViT (``vit_*``) as a
transformers VideoMAE model: ``config.json``, ``model.safetensors`` and a model card
``README.md`` (`export_hf`; the key map is `vssl.weights.hf`). ``VideoMAEModel.from_pretrained
(DIR)`` loads it, and ``VideoMAEForPreTraining.from_pretrained(DIR)`` a VideoMAE checkpoint's
with its decoder.
"""

from __future__ import annotations

import json
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vssl import backbones
from vssl.errors import UserError

#: vssl backbone name -> the torchvision.models.video builder with the same parameter names.
TORCHVISION_MODELS = {"r3d_18": "r3d_18", "mc3_18": "mc3_18", "r2plus1d_18": "r2plus1d_18"}

FORMAT = "vssl-backbone/1"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


class ExportError(UserError, ValueError):
    """A checkpoint or an exported file that cannot be used, with the file named."""


def _version() -> str:
    from vssl import __version__

    return __version__


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, with ``weights_only=True`` unless ``trust``.

    ``trust`` allows arbitrary pickled objects: only for checkpoints from a source you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path}: not a PyTorch checkpoint (not a torch.save zip archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        raise ExportError(
            f"{path}: cannot be loaded with weights_only=True (it holds pickled objects other "
            "than tensors and plain containers); pass --trust-checkpoint if you trust its source"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ExportError(f"{path}: not a PyTorch checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ExportError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def backbone_from_checkpoint(
    path: str | Path, trust: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return the backbone's state dict and its rebuild metadata from a vssl task checkpoint."""
    path = Path(path)
    ckpt = read_checkpoint(path, trust=trust)
    hparams = ckpt.get("hyper_parameters") or {}
    name = hparams.get("backbone")
    if not isinstance(name, str):
        raise ExportError(
            f"{path}: no backbone name in hyper_parameters; not a vssl task checkpoint"
        )
    kwargs = dict(hparams.get("backbone_kwargs") or {})
    state = {
        key[len("backbone.") :]: value.detach().clone().contiguous()
        for key, value in ckpt["state_dict"].items()
        if key.startswith("backbone.")
    }
    if not state:
        raise ExportError(f"{path}: the state_dict has no 'backbone.' parameters")
    model = backbones.build(name, **kwargs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(
            f"{path}: the backbone weights do not fit backbone {name!r} {kwargs}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    meta = {
        "format": FORMAT,
        "backbone": name,
        "backbone_kwargs": kwargs,
        "out_dim": int(model.out_dim),
        "source": backbones.info(name).source,
        "torchvision_model": TORCHVISION_MODELS.get(name),
        "task": hparams.get("_class_path"),
        "vssl_version": _version(),
        "source_checkpoint": str(path.resolve()),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
    }
    return state, meta


def _outputs(out: Path) -> list[Path]:
    if out.suffix in WEIGHT_SUFFIXES:
        return [out]
    if out.suffix:
        raise ExportError(
            f"{out}: unknown weight format {out.suffix!r}; use one of {', '.join(WEIGHT_SUFFIXES)} "
            "or no suffix to write both .safetensors and .pt"
        )
    return [out.with_name(out.name + ".safetensors"), out.with_name(out.name + ".pt")]


def _meta_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def export_backbone(
    checkpoint: str | Path, out: str | Path, overwrite: bool = False, trust: bool = False
) -> list[Path]:
    """Write the backbone of ``checkpoint`` to ``out`` (+ a ``.json``); return the files written.

    Refuses to replace an existing file unless ``overwrite``.
    """
    out = Path(out)
    weights = _outputs(out)
    files = [*weights, _meta_path(weights[0])]
    existing = [str(f) for f in files if f.exists()]
    if existing and not overwrite:
        raise ExportError(
            f"{', '.join(existing)}: already exist(s); pass --overwrite to replace the export"
        )
    state, meta = backbone_from_checkpoint(checkpoint, trust=trust)
    meta["weights"] = [f.name for f in weights]
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in weights:
        if path.suffix == ".safetensors":
            save_file(state, str(path), metadata={"format": FORMAT, "backbone": meta["backbone"]})
        else:
            torch.save(state, path)
    files[-1].write_text(json.dumps(meta, indent=2) + "\n")
    return files


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return the state dict and metadata of an export (given its weights or its ``.json``)."""
    path = Path(path)
    meta_path = _meta_path(path)
    if not meta_path.is_file():
        raise ExportError(
            f"{path}: no {meta_path.name} next to it saying how to rebuild the backbone"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportError(f"{meta_path}: not a vssl backbone export (format is not {FORMAT!r})")
    if path.suffix not in WEIGHT_SUFFIXES:
        names = meta.get("weights") or []
        if not names:
            raise ExportError(f"{meta_path}: lists no weight files")
        path = meta_path.with_name(names[0])
    if not path.is_file():
        raise ExportError(f"{path}: weight file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any read failure is reported with the file named
        raise ExportError(f"{path}: cannot read the weights ({err})") from None
    return state, meta


def load_backbone(path: str | Path) -> backbones.Backbone:
    """Rebuild an exported backbone with its weights (``path``: the weights or the ``.json``).

    `vssl.load_backbone` reads these files too, and the other formats of `vssl.weights`.
    """
    state, meta = read_export(path)
    model = backbones.build(meta["backbone"], **meta.get("backbone_kwargs", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ExportError(
            f"{path}: weights do not fit backbone {meta['backbone']!r}: {err}"
        ) from None
    return model.eval()


def torchvision_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename backbone keys to torchvision's: drop the ``trunk.`` prefix."""
    return {key.removeprefix("trunk."): value for key, value in state.items()}


def load_into(path: str | Path, model: nn.Module, head: str = "fc") -> nn.Module:
    """Load an export into the library model it wraps (torchvision, pytorchvideo); return it.

    The export has no classifier, so the parameters under ``head`` (torchvision's ``fc``,
    pytorchvideo's ``blocks.5`` for its ResNets and X3D) keep their initialisation; any other
    missing or extra key is an error naming the file.
    """
    state, meta = read_export(path)
    try:
        missing, unexpected = model.load_state_dict(torchvision_state_dict(state), strict=False)
    except RuntimeError as err:  # shapes differ: another architecture
        raise ExportError(
            f"{path}: backbone {meta['backbone']!r} does not fit {type(model).__name__}: {err}"
        ) from None
    outside_head = [k for k in missing if not k.startswith(f"{head}.")]
    if outside_head or unexpected or not missing:
        raise ExportError(
            f"{path}: backbone {meta['backbone']!r} does not fit {type(model).__name__} with "
            f"head {head!r}: missing {sorted(outside_head)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model


def load_torchvision(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load an exported R3D-18 / MC3-18 / R(2+1)D-18 into a torchvision video ResNet.

    Builds ``torchvision.models.video.<name>()`` when ``model`` is None; ``fc`` is not in the
    export and keeps its initialisation (train or replace it for your classes).
    """
    if model is None:
        _, meta = read_export(path)
        name = meta.get("torchvision_model")
        if not name:
            raise ExportError(
                f"{path}: backbone {meta['backbone']!r} is not a torchvision architecture "
                f"(those are {', '.join(TORCHVISION_MODELS)}); use load_into with your model"
            )
        from torchvision.models import video

        model = getattr(video, name)(weights=None)
    return load_into(path, model, head="fc")


HF_FILES = ("config.json", "model.safetensors", "README.md")


def _hf_sizes(model: backbones.Backbone, path: Path) -> dict[str, Any]:
    from vssl.backbones.vit import ImageViT, VideoViT

    if not isinstance(model, VideoViT) or isinstance(model, ImageViT):
        raise ExportError(
            f"{path}: --format hf exports the video ViTs (vit_*); this checkpoint's backbone is "
            f"a {type(model).__name__}"
            + (
                " (frame by frame: a transformers VideoMAE would attend across frames)"
                if isinstance(model, ImageViT)
                else ""
            )
        )
    block = model.trunk.blocks[0]
    return {
        "dim": int(model.out_dim),
        "depth": len(model.trunk.blocks),
        "heads": int(block.attn.heads),
        "mlp_hidden": int(block.mlp.fc1.out_features),
        "tubelet": tuple(model.tubelet),
    }


def find_probe(checkpoint: Path) -> Path | None:
    """A ``vssl probe --out`` JSON in the run folder of ``checkpoint`` (up to three levels up,
    and their ``eval/`` folders), the newest if several."""
    found: list[Path] = []
    for folder in list(checkpoint.resolve().parents)[:3]:
        for candidate in [*folder.glob("*.json"), *folder.glob("eval/*.json")]:
            try:
                data = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and data.get("protocol") == "probe" and "results" in data:
                found.append(candidate)
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value)]


def model_card(
    meta: dict[str, Any],
    config: dict[str, Any],
    hparams: dict[str, Any],
    data: dict[str, Any],
    probe: Path | None,
) -> str:
    """The README.md of an exported transformers folder: task, data, settings, probe result."""
    pretraining = config["architectures"] == ["VideoMAEForPreTraining"]
    task = meta.get("task") or "unknown"
    frames, size = config["num_frames"], config["image_size"]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [video, self-supervised, videomae, vssl]",
        "---",
        "",
        f"# {meta['backbone']} pretrained with {task.rsplit('.', 1)[-1]} (vssl)",
        "",
        f"A video ViT ({config['hidden_size']}-d, {config['num_hidden_layers']} blocks, "
        f"{config['num_attention_heads']} heads, {config['tubelet_size']}x{config['patch_size']}x"
        f"{config['patch_size']} tubelets) exported by vssl {meta['vssl_version']} from "
        f"`{Path(meta['source_checkpoint']).name}` (epoch {meta.get('epoch')}, step "
        f"{meta.get('global_step')}).",
        "",
        "## Task",
        "",
        f"`{task}`" + (" with its decoder (`VideoMAEForPreTraining`)." if pretraining else "."),
        "",
        "## Data",
        "",
    ]
    lines += [f"- {k}: `{v}`" for k, v in sorted(data.items())] or ["- not recorded"]
    lines += ["", "## Settings", ""]
    lines += [f"- {k}: `{v}`" for k, v in sorted(hparams.items()) if not k.startswith("_")]
    lines += ["", "## Probe result", ""]
    if probe is None:
        lines.append("No `vssl probe --out` result was found in the run folder.")
    else:
        record = json.loads(probe.read_text())
        lines.append(f"From `{probe.name}` (`vssl probe`):")
        lines.append("")
        for key, value in _flat(record.get("results", {})):
            shown = f"{100 * value:.2f} %" if isinstance(value, float) else f"`{value}`"
            lines.append(f"- {key}: {shown}")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from transformers import VideoMAEModel",
        "",
        'model = VideoMAEModel.from_pretrained("PATH").eval()',
        f"video = torch.randn(1, {frames}, 3, {size}, {size})  # (B, T, C, H, W), normalised",
        "tokens = model(pixel_values=video).last_hidden_state",
        "```",
        "",
        "transformers takes clips as (B, T, C, H, W), vssl as (B, C, T, H, W). vssl's pooled "
        "features are `fc_norm` of the token mean"
        + (
            "; this pretraining export's `last_hidden_state` includes the encoder's final norm."
            if pretraining
            else " (`VideoMAEForVideoClassification` loads `fc_norm` too)."
        ),
        "",
        'With vssl: `vssl.load_backbone("PATH")`.',
        "",
    ]
    return "\n".join(lines)


def export_hf(
    checkpoint: str | Path,
    out: str | Path,
    frames: int | None = None,
    size: int | None = None,
    overwrite: bool = False,
    trust: bool = False,
    probe: str | Path | None = None,
) -> list[Path]:
    """Write a video ViT checkpoint as a transformers VideoMAE folder; return the files.

    ``frames`` / ``size``: the clip length and crop of ``config.json`` (transformers fixes both);
    by default the checkpoint's data settings, else the backbone's published input. A VideoMAE
    task checkpoint is written with its decoder (``VideoMAEForPreTraining``). ``probe``: a
    ``vssl probe --out`` JSON for the model card (default: one found in the run folder).
    """
    from vssl.weights import hf

    checkpoint, out = Path(checkpoint), Path(out)
    files = [out / name for name in HF_FILES]
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: --format hf writes a folder; this is a file")
    existing = [str(f) for f in files if f.exists()]
    if existing and not overwrite:
        raise ExportError(f"{', '.join(existing)}: already exist(s); pass --overwrite to replace")
    state, meta = backbone_from_checkpoint(checkpoint, trust=trust)
    ckpt = read_checkpoint(checkpoint, trust=trust)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    data = dict(ckpt.get("datamodule_hyper_parameters") or {})
    model = backbones.build(meta["backbone"], **meta["backbone_kwargs"])
    sizes = _hf_sizes(model, checkpoint)
    default_frames, default_size = backbones.info(meta["backbone"]).input_size
    frames = int(frames or data.get("clip_len") or default_frames)
    size = int(size or data.get("crop_size") or default_size)
    task_state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("backbone.")}
    dim = sizes["dim"]
    decoder = None
    weights = hf.encoder_state(state, dim)
    if "encoder_to_decoder.weight" in task_state:
        decoder_dim = int(task_state["encoder_to_decoder.weight"].shape[0])
        decoder = {
            "decoder_hidden_size": decoder_dim,
            "decoder_num_hidden_layers": hf.depth_of(task_state, "decoder."),
            "decoder_num_attention_heads": int(hparams.get("decoder_heads", 6)),
            "decoder_intermediate_size": int(task_state["decoder.0.mlp.fc1.weight"].shape[0]),
            "norm_pix_loss": bool(hparams.get("normalize_target", True)),
        }
        weights.update(hf.pretraining_state(task_state, dim, decoder_dim))
    else:
        weights.update({f"fc_norm.{k}": state[f"fc_norm.{k}"] for k in ("weight", "bias")})
    try:
        config = hf.config_dict(**sizes, frames=frames, size=size, decoder=decoder)
    except ValueError as err:
        raise ExportError(f"{checkpoint}: {err}") from None
    config["vssl"] = {"backbone": meta["backbone"], "backbone_kwargs": meta["backbone_kwargs"]}
    probe_file = Path(probe) if probe is not None else find_probe(checkpoint)
    if probe_file is not None and not probe_file.is_file():
        raise ExportError(f"{probe_file}: probe result not found")
    out.mkdir(parents=True, exist_ok=True)
    files[0].write_text(json.dumps(config, indent=2) + "\n")
    save_file(hf.contiguous(weights), str(files[1]), metadata={"format": "pt"})
    files[2].write_text(model_card(meta, config, hparams, data, probe_file))
    return files


def main(argv: list[str] | None = None) -> int:
    """``python -m vssl export CKPT --out FILE``: write a checkpoint's backbone weights alone
    (the options are `vssl.commands.export`'s)."""
    from vssl.commands.export import main as command

    return command(sys.argv[1:] if argv is None else list(argv))


def run(args: Any) -> int:
    """Exports as the parsed options ``args`` of `vssl.commands.export` say and prints the files
    written; 2 (with one line on stderr) for a user mistake."""
    checkpoint, out = Path(args.checkpoint), Path(args.out)
    probe = None if args.probe is None else Path(args.probe)
    try:
        if args.format == "hf":
            files = export_hf(
                checkpoint,
                out,
                frames=args.frames,
                size=args.size,
                overwrite=args.overwrite,
                trust=args.trust_checkpoint,
                probe=probe,
            )
        else:
            files = export_backbone(checkpoint, out, args.overwrite, args.trust_checkpoint)
    except (UserError, TypeError, KeyError) as err:
        print(f"vssl export: error: {err}", file=sys.stderr)
        return 2
    if args.format == "hf":
        config = json.loads(files[0].read_text())
        print(
            f"vssl export: {config['vssl']['backbone']} as transformers "
            f"{config['architectures'][0]} ({config['num_frames']} frames, "
            f"{config['image_size']} px) written to"
        )
        for path in files:
            print(f"  {path}")
        return 0
    meta = json.loads(files[-1].read_text())
    print(f"vssl export: backbone {meta['backbone']} (out_dim {meta['out_dim']}) written to")
    for path in files:
        print(f"  {path}")
    if meta["torchvision_model"]:
        print(
            f"  loads into torchvision.models.video.{meta['torchvision_model']}() with "
            "vssl.export.load_torchvision (fc stays untrained)"
        )
    return 0


__all__ = [
    "ExportError",
    "backbone_from_checkpoint",
    "export_backbone",
    "export_hf",
    "find_probe",
    "load_backbone",
    "load_into",
    "load_torchvision",
    "main",
    "run",
    "read_export",
    "torchvision_state_dict",
]
