"""The patch grid a checkpoint was made at: recorded (``"grid"``), from its flags, or inferred from its
patch-embedding kernel and position table (for VideoMAE's releases: 16 frames at 224 px)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.load_report import LoadReport
from patches.checkpoints.reading import recorded_args
from patches.checkpoints.state_dict_names import normalise_state_dict, select_state_dict
from patches.grid import GridError, PatchGrid, make_grid, recorded_grid
from patches.models.registry import DEFAULT_GRID

# Frame counts tried, in this order, when only a learned table's length tells the checkpoint's grid.
GUESS_FRAMES = (16, 8, 32, 4, 64, 2, 1)


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


def source_grid(ckpt: dict[str, Any], sd: dict[str, torch.Tensor], report: LoadReport) -> PatchGrid | None:
    """The grid ``ckpt`` (with its normalised state dict ``sd``) was made at, into ``report`` with a note saying
    how it is known: recorded or from its flags when they agree with its tensors, else inferred from them.
    None when it holds no patch embedding and records no grid."""
    kernel = _kernel_of(sd)
    pos = sd.get("pos_embed")
    grid, note = _recorded_grid(ckpt, kernel, report)
    if grid is not None and not _fits_tensors(grid, kernel, pos, report):
        grid = None
    if grid is None and kernel is not None:
        grid, note = _grid_from_tensors(kernel, pos)
    report.source_grid, report.grid_note = grid, note
    return grid


def _recorded_grid(ckpt: dict[str, Any], kernel: tuple[int, int, int, int] | None,
                   report: LoadReport) -> tuple[PatchGrid | None, str]:
    """The grid ``ckpt`` records, else the one its flags give, and a note; unusable records noted and ignored."""
    try:
        grid = recorded_grid(ckpt)
        if grid is not None:
            return grid, "from the checkpoint's grid"
    except GridError as e:
        report.notes.append(f"{e}; ignored")
    args = recorded_args(ckpt)
    if not (args.get("num_frames") and args.get("input_size")):
        return None, ""
    tubelet = args.get("tubelet_size") or (kernel[1] if kernel else DEFAULT_GRID["tubelet_size"])
    patch = args.get("patch_size") or (kernel[2] if kernel else DEFAULT_GRID["patch_size"])
    try:
        return (make_grid(int(args["num_frames"]), int(tubelet), args["input_size"], int(patch),
                          kernel[0] if kernel else 3), "from the checkpoint's args")
    except (GridError, TypeError, ValueError) as e:
        report.notes.append(f"the checkpoint's args give no valid grid ({e}); ignored")
        return None, ""


def _fits_tensors(grid: PatchGrid, kernel: tuple[int, int, int, int] | None, pos: torch.Tensor | None,
                  report: LoadReport) -> bool:
    """Whether a recorded ``grid`` agrees with the patch-embedding kernel and the position table's length."""
    if kernel is not None and (grid.tubelet_size, grid.patch_size) != kernel[1:3]:
        report.notes.append(f"the checkpoint's recorded tubelet/patch {grid.tubelet_size}/{grid.patch_size} "
                            f"disagree with its patch-embedding kernel {kernel[1]}x{kernel[2]}x{kernel[3]}; "
                            f"the kernel is trusted")
        return False
    if (isinstance(pos, torch.Tensor) and pos.dim() == 3
            and pos.shape[1] not in (grid.num_tokens, grid.num_tokens + 1)):
        report.notes.append(f"the checkpoint's pos_embed has {pos.shape[1]} rows but its recorded grid has "
                            f"{grid.num_tokens} tokens; the grid is re-inferred from the table")
        return False
    return True


def _grid_from_tensors(kernel: tuple[int, int, int, int], pos: torch.Tensor | None) -> tuple[PatchGrid, str]:
    """A grid inferred from the kernel and the position table's length (else VideoMAE's default frames and
    size), and a note saying what was assumed."""
    in_chans, tubelet, patch = kernel[0], kernel[1], kernel[2]
    guess = (_grid_from_table_length(int(pos.shape[1]), tubelet, patch, in_chans)
             if isinstance(pos, torch.Tensor) and pos.dim() == 3 else None)
    if guess is not None:
        grid, frames, extra = guess
        return grid, (f"not recorded: inferred from the kernel and the {pos.shape[1]}-row pos_embed"
                      f"{' (with a cls row)' if extra else ''}, assuming {frames} frames, square")
    frames = max(tubelet, DEFAULT_GRID["num_frames"] // tubelet * tubelet)
    side = max(patch, DEFAULT_GRID["input_size"] // patch * patch)
    return make_grid(frames, tubelet, side, patch, in_chans), (
        f"not recorded: tubelet and patch from the kernel, {frames} frames at {side} px assumed (VideoMAE's default)")


def inferred_grid(ckpt: dict[str, Any], model_key: str = "model|module") -> tuple[PatchGrid | None, str]:
    """A checkpoint's patch grid as ``--finetune`` infers it (recorded, from its flags, or from the
    patch-embedding kernel and position table; for VideoMAE's releases 16 frames at 224 px), and a note
    saying how. ``(None, "")`` when it holds no patch embedding."""
    raw, _ = select_state_dict(ckpt, model_key, Path("checkpoint"))
    report = LoadReport()
    grid = source_grid(ckpt, normalise_state_dict(raw, "", report), report)
    return grid, report.grid_note
