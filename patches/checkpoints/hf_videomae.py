"""Hugging Face ``transformers`` VideoMAE interop: tensor names, config.json, the export itself, and reading
such a folder back as one of our checkpoints.

Our layout (VideoMAE's release) and transformers' differ in names and in one tensor: we keep the
attention's query/key/value as one ``qkv`` matrix with separate ``q_bias``/``v_bias``, transformers
keeps three Linear layers (the key has no bias). Everything else is a rename::

    ours                                   transformers
    patch_embed.proj                       videomae.embeddings.patch_embeddings.projection
    blocks.N.norm1 / norm2                 videomae.encoder.layer.N.layernorm_before / layernorm_after
    blocks.N.attn.qkv (+ q_bias, v_bias)   videomae.encoder.layer.N.attention.attention.{query,key,value}
    blocks.N.attn.proj                     videomae.encoder.layer.N.attention.output.dense
    blocks.N.mlp.fc1 / fc2                 videomae.encoder.layer.N.intermediate.dense / output.dense
    encoder.norm (pre-training)            videomae.layernorm   (config.use_mean_pooling = False)
    decoder.blocks.N.*                     decoder.decoder_layers.N.*   (same block renames)
    decoder.norm, decoder.head             decoder.norm, decoder.head
    encoder_to_decoder, mask_token         encoder_to_decoder, mask_token
    fc_norm, head (classifier)             fc_norm, classifier

transformers only has VideoMAE's fixed 1-D sin-cos position table, no layer scale and no cls token, so
checkpoints using any of those are refused rather than exported wrongly.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.errors import CheckpointError, ExportError, ExportNeedsFlag
from patches.grid import GridError, PatchGrid, make_grid, recorded_grid
from patches.models.registry import VIT_SIZES
from patches.utils.files import write_atomically

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
LAYER_NORM_EPS = 1e-6  # our LayerNorms (transformers' own default, 1e-12, is not VideoMAE's)

# Per-block renames, ours -> transformers (relative to the block).
_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_HF_QKV = "attention.attention"
_PRETRAIN_TOP = {"encoder_to_decoder.weight": "encoder_to_decoder.weight", "mask_token": "mask_token",
                 "decoder.norm.weight": "decoder.norm.weight", "decoder.norm.bias": "decoder.norm.bias",
                 "decoder.head.weight": "decoder.head.weight", "decoder.head.bias": "decoder.head.bias"}
_CLASSIFIER_TOP = {"fc_norm.weight": "fc_norm.weight", "fc_norm.bias": "fc_norm.bias",
                   "head.weight": "classifier.weight", "head.bias": "classifier.bias"}


# ---------------------------------------------------------------- ours -> transformers

def _block_to_hf(sd: dict[str, torch.Tensor], ours: str, hf: str, out: dict[str, torch.Tensor]) -> None:
    """Move one block's tensors from ``sd`` (names under ``ours``) to ``out`` (names under ``hf``)."""
    qkv = sd.pop(f"{ours}.attn.qkv.weight")
    for name, part in zip(("query", "key", "value"), qkv.chunk(3, dim=0)):
        out[f"{hf}.{_HF_QKV}.{name}.weight"] = part
    for ours_bias, name in (("q_bias", "query"), ("v_bias", "value")):
        if f"{ours}.attn.{ours_bias}" in sd:
            out[f"{hf}.{_HF_QKV}.{name}.bias"] = sd.pop(f"{ours}.attn.{ours_bias}")
    for src, dst in _BLOCK_RENAMES.items():
        for p in ("weight", "bias"):
            out[f"{hf}.{dst}.{p}"] = sd.pop(f"{ours}.{src}.{p}")


def _block_indices(names: Any, stem: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(stem)}\.(\d+)\.")
    return sorted({int(m.group(1)) for n in names if (m := pattern.match(n))})


def checkpoint_kind(sd: dict[str, torch.Tensor]) -> str:
    """'pretrain' (our MaskedVideoAutoencoder) or 'classifier' (our VideoClassifier)."""
    if any(k.startswith("encoder.") for k in sd):
        return "pretrain"
    if "patch_embed.proj.weight" in sd:
        return "classifier"
    sample = ", ".join(sorted(sd)[:5])
    raise ExportError(f"not a PATCHES model state dict (names look like: {sample})")


def ours_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our pre-training or classifier state dict -> transformers' VideoMAE names (contiguous copies)."""
    kind = checkpoint_kind(state_dict)
    sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    trunk = "encoder." if kind == "pretrain" else ""
    if f"{trunk}pos_embed" in sd:
        raise ExportError("the model has a learned position table (--pos_embed learned); transformers' VideoMAE "
                          "only has the fixed 1-D sin-cos table")
    if f"{trunk}cls_token" in sd:
        raise ExportError("the classifier uses a cls token (--use_cls); transformers' VideoMAE classifies the "
                          "mean token (use_mean_pooling) or the first patch token, never a cls token")
    if any(re.search(r"\.gamma_[12]$", k) for k in sd):
        raise ExportError("the model uses layer scale (init_values > 0), which transformers' VideoMAE lacks")
    out: dict[str, torch.Tensor] = {}
    for p in ("weight", "bias"):
        out[f"videomae.embeddings.patch_embeddings.projection.{p}"] = sd.pop(f"{trunk}patch_embed.proj.{p}")
    for i in _block_indices(sd, f"{trunk}blocks"):
        _block_to_hf(sd, f"{trunk}blocks.{i}", f"videomae.encoder.layer.{i}", out)
    if kind == "pretrain":
        for p in ("weight", "bias"):
            out[f"videomae.layernorm.{p}"] = sd.pop(f"encoder.norm.{p}")
        for i in _block_indices(sd, "decoder.blocks"):
            _block_to_hf(sd, f"decoder.blocks.{i}", f"decoder.decoder_layers.{i}", out)
        renames = _PRETRAIN_TOP
    else:
        renames = _CLASSIFIER_TOP
    for src, dst in renames.items():
        if src in sd:
            out[dst] = sd.pop(src)
    if sd:
        raise ExportError(f"no transformers counterpart for: {', '.join(sorted(sd)[:8])}")
    return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}


# ---------------------------------------------------------------- transformers -> ours

_HF_BLOCK_RE = re.compile(r"^(videomae\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)$")


def hf_to_ours(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers VideoMAE tensors -> our names: a MaskedVideoAutoencoder state dict when the decoder
    is there, else a VideoClassifier one. Accepts the older ``q_bias``/``v_bias`` attention names; a
    checkpoint without query/value biases (``qv_bias: false``) gets zero biases, which is the same model.
    Names with no counterpart are kept as they are (the loader reports them as unexpected).
    """
    pretrain = any(k.startswith(("decoder.", "encoder_to_decoder.")) for k in hf)
    trunk = "encoder." if pretrain else ""
    blocks: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    top = {v: k for k, v in (_PRETRAIN_TOP if pretrain else _CLASSIFIER_TOP).items()}
    for name, value in hf.items():
        if (m := _HF_BLOCK_RE.match(name)):
            blocks.setdefault((m.group(1), int(m.group(2))), {})[m.group(3)] = value
        elif name.startswith("videomae.embeddings.patch_embeddings.projection."):
            out[f"{trunk}patch_embed.proj.{name.rsplit('.', 1)[1]}"] = value
        elif name.startswith("videomae.layernorm."):
            out[f"{trunk}norm.{name.rsplit('.', 1)[1]}"] = value
        else:
            out[top.get(name, name)] = value
    back = {hf_name: ours for ours, hf_name in _BLOCK_RENAMES.items()}
    for (stem, i), parts in sorted(blocks.items()):
        ours = f"{trunk}blocks.{i}" if stem.startswith("videomae") else f"decoder.blocks.{i}"
        q, k, v = (parts.pop(f"{_HF_QKV}.{n}.weight", None) for n in ("query", "key", "value"))
        if q is not None and k is not None and v is not None:
            out[f"{ours}.attn.qkv.weight"] = torch.cat([q, k, v], dim=0)
            for bias, names in (("q_bias", ("query.bias", "q_bias")), ("v_bias", ("value.bias", "v_bias"))):
                found = [parts.pop(f"{_HF_QKV}.{n}") for n in names if f"{_HF_QKV}.{n}" in parts]
                out[f"{ours}.attn.{bias}"] = found[0] if found else torch.zeros(q.shape[0], dtype=q.dtype)
        for rest, value in parts.items():
            module, _, p = rest.rpartition(".")
            mapped = back.get(module)
            out[f"{ours}.{mapped}.{p}" if mapped else f"{ours}.hf.{rest}"] = value
    return out


# ---------------------------------------------------------------- config.json

def grid_from_hf_config(cfg: dict[str, Any], where: str = HF_CONFIG) -> PatchGrid:
    """The patch grid a transformers VideoMAE config describes (:class:`CheckpointError` when it does not tile)."""
    try:
        patch = cfg.get("patch_size", 16)
        if isinstance(patch, (list, tuple)):
            if len(set(patch)) != 1:
                raise ValueError(f"non-square patch_size {patch} is not supported")
            patch = patch[0]
        return make_grid(int(cfg.get("num_frames", 16)), int(cfg.get("tubelet_size", 2)),
                         cfg.get("image_size", 224), int(patch), int(cfg.get("num_channels", 3)))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def _heads_from_name(args: dict[str, Any], width: int, decoder: bool) -> int | None:
    """Attention heads of a named model size (``pretrain_videomae_small_patch16_224`` -> small), when the
    width in the weights agrees with that size."""
    key = "decoder_num_heads" if decoder else "num_heads"
    if args.get(key):
        return int(args[key])
    m = re.match(r"^(?:pretrain_videomae|video_vit|vit)_([a-z]+)_patch", str(args.get("model", "")))
    dims = VIT_SIZES.get(m.group(1)) if m else None
    if dims and dims["decoder_embed_dim" if decoder else "embed_dim"] == width:
        return dims[key]
    return None


def hf_config(sd: dict[str, torch.Tensor], grid: PatchGrid, args: dict[str, Any], num_heads: int | None = None,
              decoder_num_heads: int | None = None, labels: list[str] | None = None) -> dict[str, Any]:
    """config.json for our state dict ``sd``: geometry from our grid, sizes from the weights."""
    kind = checkpoint_kind(sd)
    trunk = "encoder." if kind == "pretrain" else ""
    width = int(sd[f"{trunk}patch_embed.proj.weight"].shape[0])
    heads = num_heads or _heads_from_name(args, width, decoder=False)
    if not heads:
        raise ExportNeedsFlag(f"cannot tell the attention heads of a width-{width} encoder from the checkpoint "
                          f"(its args name no known model size): pass --num_heads")
    h, w = grid.input_size
    cfg: dict[str, Any] = dict(
        model_type="videomae",
        architectures=["VideoMAEForPreTraining" if kind == "pretrain" else "VideoMAEForVideoClassification"],
        image_size=h if h == w else [h, w], patch_size=grid.patch_size, num_channels=grid.in_chans,
        num_frames=grid.num_frames, tubelet_size=grid.tubelet_size,
        hidden_size=width, num_hidden_layers=len(_block_indices(sd, f"{trunk}blocks")), num_attention_heads=heads,
        intermediate_size=int(sd[f"{trunk}blocks.0.mlp.fc1.weight"].shape[0]), hidden_act="gelu",
        layer_norm_eps=LAYER_NORM_EPS, qv_bias=f"{trunk}blocks.0.attn.q_bias" in sd,
        norm_pix_loss=bool(args.get("normlize_target", True)),
    )
    if kind == "pretrain":
        dec_width = int(sd["encoder_to_decoder.weight"].shape[0])
        dec_heads = decoder_num_heads or _heads_from_name(args, dec_width, decoder=True)
        if not dec_heads:
            raise ExportNeedsFlag(f"cannot tell the attention heads of a width-{dec_width} decoder from the checkpoint: "
                              f"pass --decoder_num_heads")
        cfg.update(use_mean_pooling=False,  # so that videomae.layernorm exists to hold the encoder's final norm
                   decoder_hidden_size=dec_width, decoder_num_hidden_layers=len(_block_indices(sd, "decoder.blocks")),
                   decoder_num_attention_heads=dec_heads,
                   decoder_intermediate_size=int(sd["decoder.blocks.0.mlp.fc1.weight"].shape[0]))
    else:
        if "fc_norm.weight" not in sd:
            raise ExportError("only mean-pooling classifiers (fc_norm) can be exported")
        num_labels = int(sd["head.weight"].shape[0])
        names = labels or [f"LABEL_{i}" for i in range(num_labels)]
        if len(names) != num_labels:
            raise ExportError(f"{len(names)} label names for a head of {num_labels} classes")
        cfg.update(use_mean_pooling=True, id2label={str(i): n for i, n in enumerate(names)},
                   label2id={n: i for i, n in enumerate(names)})
    return cfg


# ---------------------------------------------------------------- export

def export_to_hf(ckpt: dict[str, Any], out_dir: str | Path, num_heads: int | None = None,
                 decoder_num_heads: int | None = None, labels: list[str] | None = None) -> Path:
    """Write ``out_dir/config.json`` and ``out_dir/model.safetensors`` from one of our checkpoints.

    ``ckpt`` is our checkpoint dict ({"model", "grid", "args", ...}); the grid is required.
    """
    from safetensors.torch import save_file

    if not isinstance(ckpt.get("model"), dict):
        raise ExportError("the checkpoint holds no 'model' state dict")
    try:
        grid = recorded_grid(ckpt)
    except GridError as e:
        raise ExportError(str(e)) from None
    if grid is None:
        raise ExportError("the checkpoint records no patch grid ('grid'); only PATCHES checkpoints can be exported")
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    pos_embed = "3d" if ckpt.get("pos_reference") is not None else args.get("pos_embed") or "1d"
    if pos_embed != "1d":
        flexible = (" A flexible-grid checkpoint (pre-trained with --grids) needs the 3-D table, at every grid: use it "
                    "through run_class_finetuning.py --finetune/--probe or extract_features.py instead."
                    if len(ckpt.get("grids") or []) > 1 else "")
        raise ExportError(f"the model uses the '{pos_embed}' position table; transformers' VideoMAE only "
                          f"has the fixed 1-D sin-cos table.{flexible}")
    sd = dict(ckpt["model"])
    cfg = hf_config(sd, grid, args, num_heads, decoder_num_heads, labels)
    tensors = ours_to_hf(sd)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # each file whole or not at all; the config last, so a folder with a config has its weights
    write_atomically(out / HF_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    write_atomically(out / HF_CONFIG, lambda tmp: tmp.write_text(json.dumps(cfg, indent=2) + "\n"))
    return out


def read_hf_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of a transformers VideoMAE directory; :class:`CheckpointError` naming what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    missing = [n for n in (HF_CONFIG, HF_WEIGHTS) if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"{path} is a folder but not a transformers model folder: {' and '.join(missing)} "
                              f"missing (expected {HF_CONFIG} + {HF_WEIGHTS})")
    try:
        cfg = json.loads((path / HF_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / HF_CONFIG} is not readable JSON ({e})") from None
    if cfg.get("model_type") != "videomae":
        raise CheckpointError(f"{path / HF_CONFIG}: model_type is {cfg.get('model_type')!r}, not 'videomae'")
    try:
        return cfg, dict(load_file(str(path / HF_WEIGHTS), device="cpu"))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{path / HF_WEIGHTS} is not a readable safetensors file ({e})") from None


def read_hf_checkpoint(path: Path) -> dict[str, Any]:
    """A transformers VideoMAE folder (config.json + model.safetensors) as one of our checkpoints: tensors
    renamed to ours, the grid from config.json (checked here, then against the patch-embedding kernel)."""
    cfg, tensors = read_hf_dir(path)
    grid = grid_from_hf_config(cfg, str(path / "config.json"))
    notes = []
    if cfg.get("layer_norm_eps", 1e-12) != LAYER_NORM_EPS:
        notes.append(f"config.json has layer_norm_eps {cfg.get('layer_norm_eps', 1e-12)}, our blocks use "
                     f"{LAYER_NORM_EPS}: outputs differ very slightly from transformers'")
    # transformers' VideoMAE always uses the fixed 1-D sin-cos table.
    return {"model": hf_to_ours(tensors), "grid": grid.to_dict(), "args": {"pos_embed": "1d"}, "load_notes": notes}
