"""Loading a checkpoint's weights exactly into the model they were saved from, as resuming and evaluating do:
the same grid, the same names and shapes (fine-tuning from a checkpoint at any grid is finetune_weights.py's)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.errors import CheckpointError
from patches.grid import GridError, PatchGrid, recorded_grid
from patches.utils.distributed import unwrap_model


def check_checkpoint_grid(ckpt: dict[str, Any], grid: PatchGrid, path: str | Path, remedy: str = "") -> None:
    """Raise :class:`CheckpointError` when ``ckpt`` records a patch grid other than ``grid``.

    Resuming and evaluating keep a checkpoint's grid. Without this check, a change of input size or frame
    count would load silently, because the fixed position tables are not saved and no tensor changes shape.
    Files with no record of their grid (VideoMAE's own) are left to the shape check of :func:`load_model_state`.
    """
    try:
        theirs = recorded_grid(ckpt)
    except GridError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if theirs is None:
        return
    differences = theirs.differences(grid)
    if differences:
        raise CheckpointError(f"{path} was made at another patch grid than this run's "
                              f"({'; '.join(differences)}: the file's value first)." + (f" {remedy}" if remedy else ""))


def load_model_state(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path, model_name: str) -> None:
    """Load ``ckpt["model"]`` into ``model`` exactly, or raise :class:`CheckpointError` saying what does not fit
    (no state dict, tensors of another shape, missing or unexpected names) before anything is changed."""
    check_model_state(model, ckpt, path, model_name)
    unwrap_model(model).load_state_dict(ckpt["model"])
    apply_pos_reference(model, ckpt)


def apply_pos_reference(model: torch.nn.Module, ckpt: dict[str, Any]) -> None:
    """Give ``model`` the '3d' table reference ``ckpt`` records (``"pos_reference"``, e.g. the finest grid of a
    flexible-grid pre-training): fixed tables are rebuilt, not loaded, so the weights alone would not carry it."""
    bare = unwrap_model(model)
    if ckpt.get("pos_reference") is not None and hasattr(bare, "set_pos_reference"):
        bare.set_pos_reference(ckpt["pos_reference"])


def check_model_state(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path, model_name: str) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt["model"]`` fits ``model`` exactly (names and shapes; a model on
    the meta device will do)."""
    sd = ckpt.get("model")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds no 'model' state dict (keys: {sorted(ckpt)[:8]})")
    own = unwrap_model(model).state_dict()
    reshaped = [k for k, v in sd.items() if k in own and tuple(getattr(v, "shape", ())) != tuple(own[k].shape)]
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if reshaped or missing or unexpected:
        details = []
        if reshaped:
            k = reshaped[0]
            details.append(f"{len(reshaped)} tensors of another shape, e.g. {k} {tuple(sd[k].shape)} in the file vs "
                           f"{tuple(own[k].shape)} in the model")
        if missing:
            details.append(f"{len(missing)} missing, e.g. {missing[:3]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}")
        raise CheckpointError(f"{path} does not fit --model {model_name} at this grid ({'; '.join(details)}); "
                              f"is it from another model size or grid?")
