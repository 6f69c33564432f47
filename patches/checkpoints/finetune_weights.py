"""``--finetune``: load a pre-trained or fine-tuned checkpoint into a classifier built for any patch grid.

What is adapted, and how:

* key names: wrappers (``_orig_mod.``, ``module.``), trunk prefixes (``encoder.``, ``backbone.``) and
  ``--model_prefix`` are stripped; pre-training-only tensors (decoder, ``encoder_to_decoder``,
  ``mask_token``) are dropped (state_dict_names.py);
* ``norm.*``: with ``norm_to_fc_norm=True`` (this function's default; ``--fc_norm_init encoder_norm``) the
  pre-training encoder's final LayerNorm initialises a mean-pooling classifier's ``fc_norm``: the encoder's
  own learned output scale and shift rather than unit scale, a starting point only (fc_norm normalises the
  mean token, not each token), retrained with the head. VideoMAE itself leaves ``fc_norm`` at ones/zeros
  and ignores ``norm.*``: ``norm_to_fc_norm=False``, the run scripts' default (``--fc_norm_init fresh``);
* ``head``: kept when its shape equals the model's, dropped otherwise (other class count);
* patch embedding: a different kernel is resampled by :func:`resampling.resize_patch_embed`;
* position table: fixed sin-cos tables are never loaded (they belong to the model's grid); a learned
  table is resampled to the model's token grid by :func:`resampling.interpolate_pos_embed`
  (pos_embed_loading.py); the checkpoint's own grid is source_grid.py's.

It reads every format :func:`reading.read_any_checkpoint` reads: our ``.pth`` checkpoints, VideoMAE's,
``.safetensors`` files (the grid from our metadata when present) and transformers VideoMAE folders
(config.json + model.safetensors, see hf_videomae.py). What was done is reported by load_report.py.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.load_report import LoadReport, format_shape, split_entry
from patches.checkpoints.pos_embed_loading import load_pos_embed, note_trained_grids
from patches.checkpoints.reading import LoadedCheckpoint, read_any_checkpoint
from patches.checkpoints.resampling import resize_patch_embed
from patches.checkpoints.source_grid import source_grid
from patches.checkpoints.state_dict_names import normalise_state_dict, select_state_dict
from patches.models.classifier import VideoClassifier
from patches.utils.distributed import is_main_process, unwrap_model

__all__ = ["load_finetune_weights"]


def _width_of(sd: dict[str, torch.Tensor]) -> int | None:
    for key in ("patch_embed.proj.weight", "blocks.0.norm1.weight", "norm.weight", "fc_norm.weight"):
        if key in sd and sd[key].dim() >= 1:
            return int(sd[key].shape[0])
    return None


def _depth_of(names: Any) -> int:
    idx = [int(m.group(1)) for n in names if (m := re.match(r"^blocks\.(\d+)\.", n))]
    return max(idx) + 1 if idx else 0


def _failure_cause(sd: dict[str, torch.Tensor], model: VideoClassifier, target: dict[str, torch.Tensor]) -> str:
    width = _width_of(sd)
    if width is not None and width != model.embed_dim:
        return f"checkpoint width {width} vs model width {model.embed_dim}: wrong --model size?"
    if not set(sd) & set(target):
        sample = ", ".join(sorted(sd)[:5]) or "nothing"
        return (f"no tensor name matches the model (checkpoint names look like: {sample}); wrong file, "
                f"or set --model_key / --model_prefix")
    depth = _depth_of(sd)
    if depth and depth != len(model.blocks):
        return f"checkpoint depth {depth} vs model depth {len(model.blocks)}: wrong --model size?"
    return "shapes differ from the model's: wrong --model?"


def _move_norm_to_fc_norm(model: VideoClassifier, sd: dict[str, torch.Tensor], norm_to_fc_norm: bool,
                          report: LoadReport) -> None:
    """The encoder's final norm: into fc_norm for a mean-pooling model (see the module docstring)."""
    if model.fc_norm is None or any(k.startswith("fc_norm.") for k in sd):
        return
    for suffix in ("weight", "bias"):
        if f"norm.{suffix}" in sd:
            t = sd.pop(f"norm.{suffix}")
            if norm_to_fc_norm:
                sd[f"fc_norm.{suffix}"] = t
            else:
                report.dropped.append(f"norm.{suffix} (encoder's final norm; fc_norm starts fresh)")
    if norm_to_fc_norm and "fc_norm.weight" in sd:
        report.notes.append("fc_norm initialised from the encoder's final norm (norm_to_fc_norm=True)")


def _drop_unfit_head(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor], report: LoadReport) -> None:
    """The checkpoint's head, when the model has none or one for another class count."""
    if "head.weight" not in sd and "head.bias" not in sd:
        return
    if "head.weight" not in target:
        why = "the model has no head"
    elif sd.get("head.weight") is not None and sd["head.weight"].shape != target["head.weight"].shape:
        old, new = sd["head.weight"].shape[0], target["head.weight"].shape[0]
        why = f"{old} classes in the checkpoint, {new} in the model"
    else:
        return
    for k in ("head.weight", "head.bias"):
        if k in sd:
            report.dropped.append(f"{k} ({why})")
            sd.pop(k)


def _resize_kernel(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor], report: LoadReport) -> None:
    """A patch-embedding kernel of another size, resampled to the model's (:func:`resize_patch_embed`)."""
    w = sd.get("patch_embed.proj.weight")
    tw = target["patch_embed.proj.weight"]
    if (w is not None and w.dim() == 5 and w.shape[:2] == tw.shape[:2] and w.shape[2:] != tw.shape[2:]):
        sd["patch_embed.proj.weight"] = resize_patch_embed(w, tuple(tw.shape[2:]))
        report.resized.append(f"patch_embed.proj.weight ({format_shape(w.shape)} -> {format_shape(tw.shape)}, "
                              f"kernel {format_shape(w.shape[2:])} -> {format_shape(tw.shape[2:])})")


FC_NORM_INITS = ("fresh", "encoder_norm")  # --fc_norm_init: norm_to_fc_norm False / True


def load_finetune_weights(model: VideoClassifier, source: str | Path | LoadedCheckpoint,
                          model_key: str = "model|module", model_prefix: str = "", verbose: bool = True,
                          norm_to_fc_norm: bool = True) -> LoadReport:
    """Load a pre-training or fine-tuning checkpoint (a path in any format, or one already read) into ``model``
    (built for any grid) and report what was done with every tensor.

    ``model_key``: '|'-separated keys tried in order for the state dict (else the file itself, when it is
    one). ``model_prefix``: a further prefix to strip from the checkpoint's names. Raises
    :class:`CheckpointError` naming the file when it cannot be read, or when fewer than half of the model's
    patch-embedding and block tensors can be loaded.
    """
    loaded = source if isinstance(source, LoadedCheckpoint) else read_any_checkpoint(source)
    ckpt, path = loaded.contents, loaded.path
    model = unwrap_model(model)
    report = LoadReport(path=str(path), model_grid=model.grid)
    raw, where = select_state_dict(ckpt, model_key, path)
    sd = normalise_state_dict(raw, model_prefix, report)
    target = model.state_dict()
    src = source_grid(ckpt, sd, report)
    note_trained_grids(ckpt, report)
    report.notes.extend(ckpt.get("load_notes", []))
    to_load: dict[str, torch.Tensor] = {}

    _move_norm_to_fc_norm(model, sd, norm_to_fc_norm, report)
    _drop_unfit_head(sd, target, report)
    _resize_kernel(sd, target, report)
    load_pos_embed(model, sd, src, ckpt, to_load, report)
    _sort_fitting(sd, target, to_load, report)
    core = [k for k in target if k.startswith(("patch_embed.", "blocks."))]
    core_loaded = sum(k in to_load for k in core)
    if core_loaded * 2 < len(core):
        raise CheckpointError(f"{path} ({where}) does not fit this model: only {core_loaded} of its {len(core)} "
                              f"patch-embedding/block tensors could be loaded; {_failure_cause(sd, model, target)}")
    depth = _depth_of(sd)
    if depth and depth != len(model.blocks):
        report.notes.append(f"the checkpoint has {depth} blocks, the model {len(model.blocks)}")

    model.load_state_dict(to_load, strict=False)
    if verbose and is_main_process():
        print(report.table(), flush=True)
    return report


def _sort_fitting(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor], to_load: dict[str, torch.Tensor],
                  report: LoadReport) -> None:
    """Each remaining tensor into ``to_load`` (loaded) or the report (unexpected, dropped); then the missing."""
    resized_names = {split_entry(e)[0] for e in report.resized}
    for name, value in sd.items():
        if name not in target:
            report.unexpected.append(name)
        elif value.shape != target[name].shape:
            report.dropped.append(f"{name} (shape {format_shape(value.shape)} vs model "
                                  f"{format_shape(target[name].shape)})")
        else:
            to_load[name] = value
            if name not in resized_names:
                report.loaded.append(name)
    rebuilt_names = {split_entry(e)[0] for e in report.rebuilt}
    report.missing = [k for k in target if k not in to_load and k not in rebuilt_names]
