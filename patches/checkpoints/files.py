"""Old names kept for patches/cli/finetune.py until it switches to the checkpoint API (then delete this module):
``load_checkpoint`` is :func:`reading.read_pth_checkpoint`; the rest live in errors.py and model_state.py."""
from __future__ import annotations

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.model_state import apply_pos_reference, check_checkpoint_grid, load_model_state
from patches.checkpoints.reading import read_pth_checkpoint as load_checkpoint

__all__ = ["CheckpointError", "apply_pos_reference", "check_checkpoint_grid", "load_checkpoint", "load_model_state"]
