"""The position table when fine-tuning at another grid: a fixed sin-cos table is rebuilt for the model's grid
(on the checkpoint's '3d' reference), a learned one is resampled (see resampling.interpolate_pos_embed)."""
from __future__ import annotations

from typing import Any

import torch

from patches.checkpoints.load_report import LoadReport, format_shape
from patches.checkpoints.reading import recorded_args
from patches.checkpoints.resampling import interpolate_pos_embed
from patches.grid import PatchGrid
from patches.models.classifier import VideoClassifier
from patches.models.layers import build_pos_table


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


def note_trained_grids(ckpt: dict[str, Any], report: LoadReport) -> None:
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


def load_pos_embed(model: VideoClassifier, sd: dict[str, torch.Tensor], src: PatchGrid | None,
                   ckpt: dict[str, Any], to_load: dict[str, torch.Tensor], report: LoadReport) -> None:
    """The checkpoint's ``pos_embed`` (taken out of ``sd``) for ``model``: nothing for a fixed table (rebuilt on
    the checkpoint's reference), else into ``to_load`` as it is, rebuilt, or resampled from ``src``'s grid."""
    pos = sd.pop("pos_embed", None)
    grid, dim = model.grid, model.embed_dim
    learned = isinstance(model.pos_embed, torch.nn.Parameter)
    args = recorded_args(ckpt)
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
