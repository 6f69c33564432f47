"""Checkpoint defaults: the model and grid flags a run leaves unset take the values its checkpoint records
(run_inference.py, extract_features.py)."""
from __future__ import annotations

import argparse
from typing import Any

from patches.checkpoints.models import classifier_name
from patches.eval.features import GRID_FLAGS
from patches.grid import PatchGrid, grid_from_args, recorded_grid


def checkpoint_flag_values(args: argparse.Namespace, ckpt: dict[str, Any], fallback: dict[str, Any]
                           ) -> tuple[dict[str, Any], PatchGrid]:
    """The values of the model and grid flags left unset (None): what ``ckpt`` records, else ``fallback`` (the
    parser's defaults). Returns them and the grid they give; ``args`` is only read. Raises :class:`GridError`
    naming a bad combination."""
    recorded = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    grid = recorded_grid(ckpt)
    from_grid = {} if grid is None else {"input_size": list(grid.input_size), "patch_size": grid.patch_size,
                                         "num_frames": grid.num_frames, "tubelet_size": grid.tubelet_size}
    values: dict[str, Any] = {}
    for flag in ("model", "pos_embed", "sampling_rate", *GRID_FLAGS):
        if getattr(args, flag, None) is None:
            value = from_grid.get(flag, recorded.get(flag, fallback.get(flag)))
            values[flag] = classifier_name(value) if flag == "model" else value
    if "use_mean_pooling" in recorded and getattr(args, "use_mean_pooling", None) is None:
        values["use_mean_pooling"] = recorded["use_mean_pooling"]
    return values, grid_from_args(argparse.Namespace(**{**vars(args), **values}))
