"""Checkpoints for fine-tuning and its test: which file ``--eval`` and the final test take, and loading a
classifier's (or VideoMAE's) weights at this run's patch grid.

Refusals raise :class:`CheckpointError`, naming the file and, for a pre-training checkpoint given where a
classifier's is expected, pointing at ``--finetune``.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.folder import FoundCheckpoint
from patches.checkpoints.model_state import apply_pos_reference, check_checkpoint_grid, load_model_state
from patches.checkpoints.reading import read_pth_checkpoint
from patches.grid import PatchGrid, recorded_grid
from patches.utils.distributed import is_dist, is_main_process

FINETUNE_HINT = " To fine-tune from its weights at this run's grid, pass it to --finetune instead."


def load_weights(path: str, model: torch.nn.Module, model_ema: Any, grid: PatchGrid, model_name: str,
                 model_key: str = "model|module", ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our checkpoint's model (and EMA) weights into ``model`` (``model_ema``), at this run's patch grid.
    ``ckpt``: the file's contents when already read. Returns the checkpoint."""
    if ckpt is None:
        ckpt = read_pth_checkpoint(path)
    try:
        if recorded_grid(ckpt) is None:
            ckpt = videomae_checkpoint(ckpt, path, grid, model_key)
        check_checkpoint_grid(ckpt, grid, path, f"Evaluating keeps a checkpoint's grid: pass the file's values."
                                                f"{FINETUNE_HINT}")
        load_model_state(model, ckpt, path, model_name)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{pretraining_model_hint(ckpt)}") from None
    if model_ema is not None and "model_ema" in ckpt:
        model_ema.module.load_state_dict(ckpt["model_ema"])
        apply_pos_reference(model_ema.module, ckpt)
    print(f"Loaded {path} (epoch {ckpt.get('epoch')})")
    return ckpt


def videomae_checkpoint(ckpt: dict[str, Any], path: str, grid: PatchGrid, model_key: str) -> dict[str, Any]:
    """A checkpoint with no recorded grid (VideoMAE's own) as ours: the state dict under ``model_key`` as "model";
    refused when the grid inferred from it (as --finetune infers it) is not this run's."""
    from patches.checkpoints.source_grid import inferred_grid
    try:
        theirs, note = inferred_grid(ckpt, model_key)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if theirs is not None and "assumed" not in note and theirs.differences(grid):
        raise CheckpointError(f"{path} was made at another patch grid than this run's ({note}: "
                              f"{'; '.join(theirs.differences(grid))}: the file's value first).{FINETUNE_HINT}")
    print(f"{path}: VideoMAE's layout, patch grid {note or 'unknown'}")
    sd = next((ckpt[k] for k in model_key.split("|") if isinstance(ckpt.get(k), dict)), None)
    return ckpt if sd is None else {**ckpt, "model": sd}


def pretraining_model_hint(ckpt: dict[str, Any]) -> str:
    """The end of a refusal message for a pre-training checkpoint given where a classifier's is expected."""
    if any(str(k).startswith("encoder.") for k in ckpt.get("model") or {}):
        return " It holds a pre-training model (encoder.* weights): start from it with --finetune."
    return ""


def shared_run_id(found: FoundCheckpoint | None) -> str:
    """A name for this training run, kept across its resumes and the same on every rank.

    ``checkpoint-best.pth`` carries it, so the final test never takes a best file an earlier run left behind.
    """
    run_id = [str(found.state["run_id"]) if found is not None and found.state.get("run_id") else uuid.uuid4().hex]
    if is_dist():
        torch.distributed.broadcast_object_list(run_id, src=0)
    return run_id[0]


def load_best_of_run(output_dir: str, model: torch.nn.Module, run_id: str, grid: PatchGrid, model_name: str,
                     model_key: str = "model|module") -> str:
    """Load this run's ``checkpoint-best.pth`` from ``output_dir`` into ``model`` for the final test; returns what
    is tested. Without validation, or when the file is another run's, the final weights are tested."""
    path = Path(output_dir) / "checkpoint-best.pth"
    if not path.is_file():
        return "final weights"
    ckpt = read_pth_checkpoint(path)
    if ckpt.get("run_id") != run_id:
        print(f"{path} is another run's (val acc@1 {ckpt.get('best_acc1')}, epoch {ckpt.get('epoch')}); "
              f"testing this run's final weights")
        return "final weights"
    load_weights(str(path), model, None, grid, model_name, model_key, ckpt)
    print(f"Testing {path} (epoch {ckpt.get('epoch')}, val acc@1 {float(ckpt.get('best_acc1', -1.0)):.2f})")
    return str(path)


def load_finetune(path: str, model: torch.nn.Module, model_ema: Any, model_key: str = "model|module",
                  model_prefix: str = "", fc_norm_init: str = "encoder_norm") -> None:
    """Start ``model`` (and ``model_ema``) from ``path`` (--finetune: any supported layout, any grid).
    ``fc_norm_init``: --fc_norm_init, fresh (VideoMAE's) or encoder_norm."""
    from patches.checkpoints.finetune_weights import load_finetune_weights
    try:
        report = load_finetune_weights(model, path, model_key=model_key, model_prefix=model_prefix,
                                       verbose=is_main_process(), norm_to_fc_norm=fc_norm_init == "encoder_norm")
    except ValueError as e:  # CheckpointError included
        raise CheckpointError(f"--finetune: {e}") from None
    if model_ema is not None:
        model_ema.module.load_state_dict(model.state_dict())
        if report.pos_reference is not None:
            model_ema.module.set_pos_reference(report.pos_reference)

