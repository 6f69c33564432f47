"""``--finetune``: load a pre-trained or fine-tuned checkpoint into a classifier built for any patch grid.

What is adapted, and how:

* key names: wrappers (``_orig_mod.``, ``module.``), trunk prefixes (``encoder.``, ``backbone.``) and
  ``--model_prefix`` are stripped; pre-training-only tensors (decoder, ``encoder_to_decoder``,
  ``mask_token``) are dropped;
* ``norm.*``: the pre-training encoder's final LayerNorm initialises a mean-pooling classifier's
  ``fc_norm`` (``norm_to_fc_norm=True``). VideoMAE itself does not do this: it leaves ``fc_norm`` at
  ones/zeros and ignores ``norm.*``; pass ``norm_to_fc_norm=False`` for that behaviour. We start from
  the encoder's own learned output scale and shift rather than unit scale; it is a starting point
  only (fc_norm normalises the mean token, not each token) and is retrained with the head;
* ``head``: kept when its shape equals the model's, dropped otherwise (other class count);
* patch embedding: a different kernel is resampled by :func:`resize_patch_embed`;
* position table: fixed sin-cos tables are never loaded (they belong to the model's grid); a learned
  table is resampled to the model's token grid by :func:`interpolate_pos_embed`.

Besides our ``.pth`` checkpoints this reads ``.safetensors`` files (the grid from our metadata when
present) and transformers VideoMAE folders (config.json + model.safetensors, see hf_videomae.py), all
through :func:`checkpoint.read_checkpoint`. What was done is reported by load_report.py.
"""
from __future__ import annotations

import argparse
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from patches.checkpoints.files import read_checkpoint
from patches.checkpoints.load_report import LoadReport, format_shape, split_entry
from patches.models.layers import build_pos_table, pi_resize_kernel
from patches.models.registry import DEFAULT_GRID
from patches.models.classifier import VideoClassifier
from patches.grid import GridError, PatchGrid, make_grid, recorded_grid
from patches.utils.distributed import is_main_process, unwrap_model

WRAPPER_PREFIXES = ("_orig_mod.", "module.")
TRUNK_PREFIXES = ("encoder.", "backbone.")
PRETRAIN_ONLY_PREFIXES = ("decoder.", "encoder_to_decoder.")
PRETRAIN_ONLY_KEYS = ("mask_token", "decoder_pos_embed")
# Frame counts tried, in this order, when only a learned table's length tells the checkpoint's grid.
GUESS_FRAMES = (16, 8, 32, 4, 64, 2, 1)


# ---------------------------------------------------------------- resampling

def _temporal_matrix(t_old: int, t_new: int) -> torch.Tensor:
    """A [t_new, t_old]: old slice k spreads over the new slices in proportion to their time overlap.

    Each column sums to 1, so the kernel's sum over time (its response to a still clip) is unchanged.
    """
    a = torch.zeros(t_new, t_old, dtype=torch.float64)
    for j in range(t_new):
        for k in range(t_old):
            lo = max(Fraction(j, t_new), Fraction(k, t_old))
            hi = min(Fraction(j + 1, t_new), Fraction(k + 1, t_old))
            if hi > lo:
                a[j, k] = float((hi - lo) * t_old)
    return a


def resize_patch_embed(weight: torch.Tensor, new_kernel: tuple[int, int, int]) -> torch.Tensor:
    """Resample a Conv3d patch-embedding weight [D, C, t, ph, pw] to the kernel (t', ph', pw').

    Space: FlexiViT's pseudo-inverse resize, :func:`model_layers.pi_resize_kernel` (the same function
    flexible-grid pre-training applies on the fly), here in float64.

    Time (tubelet change): old slice k is spread over the new slices by time overlap (2 -> 1 sums the
    two slices, 1 -> 2 splits the slice evenly, 4 -> 2 sums pairs). The sum over time is preserved, so
    a still clip (each frame repeated) gives exactly the same response; motion selectivity is coarsened
    when the tubelet shrinks and spread evenly when it grows.
    """
    if weight.dim() != 5:
        raise ValueError(f"patch-embedding weight must be [D, C, t, ph, pw], got {list(weight.shape)}")
    t_new, ph_new, pw_new = (int(k) for k in new_kernel)
    t_old = weight.shape[2]
    w = weight.detach().to(torch.float64)
    if t_old != t_new:
        w = torch.einsum("jk,dckhw->dcjhw", _temporal_matrix(t_old, t_new), w)
    return pi_resize_kernel(w, (ph_new, pw_new)).to(weight.dtype)


def interpolate_pos_embed(pos: torch.Tensor, old_grid_shape: tuple[int, int, int],
                          new_grid_shape: tuple[int, int, int]) -> torch.Tensor:
    """Resample a position table [1, N, D] from token grid T x H x W to T' x H' x W'.

    Bicubic in space (per time step), then linear in time. A leading extra row (cls token, when
    N == T*H*W + 1) is carried over unchanged. The same grid returns an unchanged copy.
    """
    old_grid_shape = tuple(int(s) for s in old_grid_shape)
    new_grid_shape = tuple(int(s) for s in new_grid_shape)
    n_old = math.prod(old_grid_shape)
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[1] not in (n_old, n_old + 1):
        raise ValueError(f"position table {list(pos.shape)} does not fit a {'x'.join(map(str, old_grid_shape))} "
                         f"token grid ({n_old} tokens, or {n_old + 1} with a cls token)")
    extra, body = pos[:, :pos.shape[1] - n_old], pos[:, pos.shape[1] - n_old:]
    if old_grid_shape == new_grid_shape:
        return pos.detach().clone()
    (t, h, w), (t2, h2, w2), d = old_grid_shape, new_grid_shape, pos.shape[-1]
    work = torch.float64 if pos.dtype == torch.float64 else torch.float32
    x = body.detach().to(work).reshape(t, h, w, d)
    if (h, w) != (h2, w2):
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(h2, w2), mode="bicubic", align_corners=False)
        x = x.permute(0, 2, 3, 1)  # [t, h2, w2, d]
    if t != t2:
        x = x.permute(1, 2, 3, 0).reshape(h2 * w2, d, t)
        x = F.interpolate(x, size=t2, mode="linear", align_corners=False)
        x = x.reshape(h2, w2, d, t2).permute(3, 0, 1, 2)
    return torch.cat([extra.detach(), x.reshape(1, t2 * h2 * w2, d).to(pos.dtype)], dim=1)


# ---------------------------------------------------------------- reading

def _select_state_dict(ckpt: dict[str, Any], model_key: str, path: Path) -> tuple[dict[str, Any], str]:
    keys = [k for k in model_key.split("|") if k]
    for k in keys:
        if isinstance(ckpt.get(k), dict):
            return ckpt[k], f"checkpoint[{k!r}]"
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, "the file's top-level dict"
    held = ", ".join(sorted(map(str, ckpt))[:12])
    raise ValueError(f"{path}: none of --model_key {model_key!r} is in the checkpoint and it is not a plain "
                     f"state dict; it holds: {held}")


def _normalise_name(name: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def _prepare(raw: dict[str, Any], model_prefix: str, report: LoadReport) -> dict[str, torch.Tensor]:
    """Normalised names -> tensors, pre-training-only and non-tensor entries moved to ``dropped``."""
    if model_prefix and not model_prefix.endswith("."):
        model_prefix += "."
    prefixes = WRAPPER_PREFIXES + ((model_prefix,) if model_prefix else ()) + TRUNK_PREFIXES
    sd: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = _normalise_name(str(key), prefixes)
        if not isinstance(value, torch.Tensor):
            report.dropped.append(f"{name} (not a tensor)")
        elif name.startswith(PRETRAIN_ONLY_PREFIXES) or name in PRETRAIN_ONLY_KEYS:
            report.dropped.append(f"{name} (pre-training only)")
        elif name in sd:
            report.dropped.append(f"{name} (duplicate name after stripping prefixes: {key})")
        else:
            sd[name] = value
    return sd


# ---------------------------------------------------------------- the checkpoint's grid

def _ckpt_args(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's flags: our plain dict, or VideoMAE's argparse.Namespace where it could be read."""
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return args if isinstance(args, dict) else {}


def _kernel_of(sd: dict[str, torch.Tensor]) -> tuple[int, int, int, int] | None:
    """(in_chans, tubelet, patch_h, patch_w) from the patch-embedding weight."""
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.dim() != 5:
        return None
    return int(w.shape[1]), int(w.shape[2]), int(w.shape[3]), int(w.shape[4])


def _grid_from_table_length(n: int, tubelet: int, patch: int, in_chans: int) -> tuple[PatchGrid, int, int] | None:
    """(grid, frames, extra rows) for a table of n rows: square frames, the first plausible frame count."""
    for extra in (0, 1):
        tokens = n - extra
        for frames in GUESS_FRAMES:
            if frames % tubelet or tokens % (frames // tubelet):
                continue
            side = math.isqrt(tokens // (frames // tubelet))
            if side * side == tokens // (frames // tubelet) and side > 0:
                return make_grid(frames, tubelet, side * patch, patch, in_chans), frames, extra
    return None


def _source_grid(ckpt: dict[str, Any], sd: dict[str, torch.Tensor],
                 report: LoadReport) -> PatchGrid | None:
    kernel = _kernel_of(sd)
    pos = sd.get("pos_embed")
    grid, note = None, ""
    try:
        grid = recorded_grid(ckpt)
        note = "from the checkpoint's grid" if grid is not None else ""
    except GridError as e:
        report.notes.append(f"{e}; ignored")
    args = _ckpt_args(ckpt)
    if grid is None and args.get("num_frames") and args.get("input_size"):
        tubelet = args.get("tubelet_size") or (kernel[1] if kernel else DEFAULT_GRID["tubelet_size"])
        patch = args.get("patch_size") or (kernel[2] if kernel else DEFAULT_GRID["patch_size"])
        try:
            grid = make_grid(int(args["num_frames"]), int(tubelet), args["input_size"], int(patch),
                             kernel[0] if kernel else 3)
            note = "from the checkpoint's args"
        except (GridError, TypeError, ValueError) as e:
            report.notes.append(f"the checkpoint's args give no valid grid ({e}); ignored")
    if grid is not None and kernel is not None and (grid.tubelet_size, grid.patch_size) != kernel[1:3]:
        report.notes.append(f"the checkpoint's recorded tubelet/patch {grid.tubelet_size}/{grid.patch_size} "
                            f"disagree with its patch-embedding kernel {kernel[1]}x{kernel[2]}x{kernel[3]}; "
                            f"the kernel is trusted")
        grid = None
    if (grid is not None and isinstance(pos, torch.Tensor) and pos.dim() == 3
            and pos.shape[1] not in (grid.num_tokens, grid.num_tokens + 1)):
        report.notes.append(f"the checkpoint's pos_embed has {pos.shape[1]} rows but its recorded grid has "
                            f"{grid.num_tokens} tokens; the grid is re-inferred from the table")
        grid = None
    if grid is None and kernel is not None:
        in_chans, tubelet, patch = kernel[0], kernel[1], kernel[2]
        guess = (_grid_from_table_length(int(pos.shape[1]), tubelet, patch, in_chans)
                 if isinstance(pos, torch.Tensor) and pos.dim() == 3 else None)
        if guess is not None:
            grid, frames, extra = guess
            note = (f"not recorded: inferred from the kernel and the {pos.shape[1]}-row pos_embed"
                    f"{' (with a cls row)' if extra else ''}, assuming {frames} frames, square")
        else:
            frames = max(tubelet, DEFAULT_GRID["num_frames"] // tubelet * tubelet)
            side = max(patch, DEFAULT_GRID["input_size"] // patch * patch)
            grid = make_grid(frames, tubelet, side, patch, in_chans)
            note = (f"not recorded: tubelet and patch from the kernel, {frames} frames at {side} px assumed "
                    f"(VideoMAE's default)")
    report.source_grid, report.grid_note = grid, note
    return grid


# ---------------------------------------------------------------- position table

def inferred_grid(ckpt: dict[str, Any], model_key: str = "model|module") -> tuple[PatchGrid | None, str]:
    """A checkpoint's patch grid as ``--finetune`` infers it (recorded, from its flags, or from the
    patch-embedding kernel and position table; for VideoMAE's releases 16 frames at 224 px), and a note
    saying how. ``(None, "")`` when it holds no patch embedding."""
    raw, _ = _select_state_dict(ckpt, model_key, Path("checkpoint"))
    report = LoadReport()
    grid = _source_grid(ckpt, _prepare(raw, "", report), report)
    return grid, report.grid_note


def _matches_sincos(pos: torch.Tensor, grid: PatchGrid | None) -> str | None:
    """'1d' or '3d' when ``pos`` is that fixed table of ``grid`` (ignoring a leading cls row)."""
    if grid is None or pos.dim() != 3:
        return None
    body = pos[:, -grid.num_tokens:].float() if pos.shape[1] >= grid.num_tokens else None
    if body is None:
        return None
    for kind in ("1d", "3d"):
        table = build_pos_table(grid, pos.shape[-1], kind)
        if table.shape == body.shape and torch.allclose(body, table, atol=1e-3):
            return kind
    return None


def _pos_reference(ckpt: dict[str, Any], report: LoadReport) -> list[int] | None:
    """The checkpoint's '3d' table reference (rows, cols), or None when it records none (or an unusable one)."""
    entry = ckpt.get("pos_reference")
    if entry is None:
        return None
    try:
        ref = [int(r) for r in entry]
        if len(ref) == 2 and min(ref) > 0:
            return ref
    except (TypeError, ValueError):
        pass
    report.notes.append(f"the checkpoint's pos_reference {entry!r} is not [rows, cols]; ignored")
    return None


def _trained_grids(ckpt: dict[str, Any], report: LoadReport) -> None:
    """The grids a flexible-grid pre-training recorded (``"grids"``), into the report (one grid: a fixed run)."""
    entries = ckpt.get("grids")
    if not isinstance(entries, list) or len(entries) < 2:
        return
    try:
        report.trained_grids = [PatchGrid.from_dict(e) for e in entries]
    except (KeyError, TypeError, ValueError) as e:
        report.notes.append(f"the checkpoint's grids entry is unusable ({e}); ignored")


def _fixed_pos_embed(model: VideoClassifier, pos: torch.Tensor | None, src_kind: str | None, ref: list[int] | None,
                     args: dict[str, Any], report: LoadReport) -> None:
    """A model with a fixed table: nothing is loaded; a '3d' table takes the checkpoint's reference."""
    trained_with = src_kind or (args.get("pos_embed") if pos is None else "learned")
    if trained_with in ("1d", "3d") and trained_with != model.pos_embed_type:
        report.notes.append(f"the checkpoint was trained with the '{trained_with}' position table, the model "
                            f"uses '{model.pos_embed_type}'")
    if ref is not None and model.pos_embed_type == "3d":
        model.set_pos_reference(ref)
        report.pos_reference = ref
    ignored = "; the checkpoint's is ignored" if pos is not None else ""
    if report.pos_reference is not None and tuple(ref) != (model.grid.h, model.grid.w):
        report.rebuilt.append(f"pos_embed (fixed '3d' table of the model grid on the checkpoint's reference "
                              f"of {ref[0]}x{ref[1]} tokens per frame{ignored})")
    elif pos is not None:
        report.rebuilt.append(f"pos_embed (fixed '{model.pos_embed_type}' table of the model grid{ignored})")
    if pos is not None and src_kind is None:
        report.notes.append("the checkpoint's pos_embed is not a sin-cos table (it was learned) and is "
                            "discarded because the model's table is fixed; build the model with "
                            "pos_embed='learned' to keep it")


def _handle_pos_embed(model: VideoClassifier, sd: dict[str, torch.Tensor], src: PatchGrid | None,
                      ckpt: dict[str, Any], to_load: dict[str, torch.Tensor], report: LoadReport) -> None:
    pos = sd.pop("pos_embed", None)
    grid, dim = model.grid, model.embed_dim
    learned = isinstance(model.pos_embed, torch.nn.Parameter)
    args = _ckpt_args(ckpt)
    src_kind = _matches_sincos(pos, src) if pos is not None else None
    ref = _pos_reference(ckpt, report)
    if not learned:
        _fixed_pos_embed(model, pos, src_kind, ref, args, report)
        return
    if pos is None:
        kind = args.get("pos_embed") if args.get("pos_embed") in ("1d", "3d") else "1d"
        to_load["pos_embed"] = build_pos_table(grid, dim, kind, ref if kind == "3d" else None)
        report.rebuilt.append(f"pos_embed (not in the checkpoint: learned, starting from the model grid's "
                              f"'{kind}' sin-cos table)")
        return
    if pos.dim() != 3 or pos.shape[-1] != dim:
        report.dropped.append(f"pos_embed (shape {format_shape(pos.shape)} vs model "
                              f"{format_shape(model.pos_embed.shape)})")
        return
    if src_kind is not None and src is not None and src.shape != grid.shape:
        to_load["pos_embed"] = build_pos_table(grid, dim, src_kind, ref if src_kind == "3d" else None)
        report.rebuilt.append(f"pos_embed (the checkpoint's is the fixed '{src_kind}' sin-cos table: rebuilt "
                              f"for the model grid, then learned)")
        return
    if pos.shape == model.pos_embed.shape and (src is None or src.shape == grid.shape):
        to_load["pos_embed"] = pos
        report.loaded.append("pos_embed")
        return
    if src is None or pos.shape[1] not in (src.num_tokens, src.num_tokens + 1):
        report.dropped.append(f"pos_embed ({pos.shape[1]} rows fit no known grid)")
        return
    new = interpolate_pos_embed(pos, src.shape, grid.shape)
    if new.shape[1] == grid.num_tokens + 1:
        new = new[:, 1:]  # our classifier's cls token has no position row
        report.notes.append("the checkpoint's pos_embed had a cls row; dropped (the model's cls token has no "
                            "position row)")
    to_load["pos_embed"] = new
    report.resized.append(f"pos_embed ({format_shape(pos.shape)} -> {format_shape(new.shape)}, token grid "
                          f"{format_shape(src.shape)} -> {format_shape(grid.shape)})")


# ---------------------------------------------------------------- loading

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


def load_finetune_weights(model: VideoClassifier, path: str | Path, model_key: str = "model|module",
                          model_prefix: str = "", verbose: bool = True,
                          norm_to_fc_norm: bool = True) -> LoadReport:
    """Load a pre-training or fine-tuning checkpoint into ``model`` (built for any grid) and report.

    ``model_key``: '|'-separated keys tried in order for the state dict (else the file itself, when it is
    one). ``model_prefix``: a further prefix to strip from the checkpoint's names. Raises ValueError,
    naming the file, when fewer than half of the model's patch-embedding and block tensors can be loaded.
    """
    path = Path(path)
    model = unwrap_model(model)
    report = LoadReport(path=str(path), model_grid=model.grid)
    ckpt = read_checkpoint(path)
    raw, where = _select_state_dict(ckpt, model_key, path)
    sd = _prepare(raw, model_prefix, report)
    target = model.state_dict()
    src = _source_grid(ckpt, sd, report)
    _trained_grids(ckpt, report)
    report.notes.extend(ckpt.get("load_notes", []))
    to_load: dict[str, torch.Tensor] = {}

    _move_norm_to_fc_norm(model, sd, norm_to_fc_norm, report)
    _drop_unfit_head(sd, target, report)
    _resize_kernel(sd, target, report)
    _handle_pos_embed(model, sd, src, ckpt, to_load, report)
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

    core = [k for k in target if k.startswith(("patch_embed.", "blocks."))]
    core_loaded = sum(k in to_load for k in core)
    if core_loaded * 2 < len(core):
        raise ValueError(f"{path} ({where}) does not fit this model: only {core_loaded} of its {len(core)} "
                         f"patch-embedding/block tensors could be loaded; {_failure_cause(sd, model, target)}")
    depth = _depth_of(sd)
    if depth and depth != len(model.blocks):
        report.notes.append(f"the checkpoint has {depth} blocks, the model {len(model.blocks)}")

    model.load_state_dict(to_load, strict=False)
    if verbose and is_main_process():
        print(report.table(), flush=True)
    return report
