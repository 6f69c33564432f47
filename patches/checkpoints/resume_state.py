"""Resume state: where a checkpoint stands in training (its position) and every process's RNG states, saved
with each checkpoint and restored on resume so that a resumed run continues exactly as an uninterrupted one.

Positions: a checkpoint records ``next_epoch``/``next_batch`` (mid-epoch saves) or only ``epoch`` (finished
epochs); :func:`resume_position` reads either, :func:`start_position` adapts it to the resumed run.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from patches.utils.distributed import get_rank, get_world_size, is_dist

# ---------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and Python RNG states as tensors, lists and numbers,
    so that a checkpoint holding them still loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's GPU only: a resume may see fewer GPUs (one per task under srun, for instance).
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def cuda_state_of_this_device(saved: torch.Tensor | list[torch.Tensor], index: int) -> torch.Tensor | None:
    """The CUDA RNG state to restore on device ``index``: the one state saved, or, from older checkpoints that
    hold every visible GPU's state, that device's when it was recorded (None when it was not)."""
    if isinstance(saved, torch.Tensor):
        return saved
    return saved[index] if index < len(saved) else None


def set_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = cuda_state_of_this_device(state["cuda"], torch.cuda.current_device())
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (a collective call under torch.distributed)."""
    mine = rng_state()
    if not is_dist():
        return [mine]
    states: list[Any] = [None] * get_world_size()
    dist.all_gather_object(states, mine)
    return states


def restore_rng_states(ckpt: dict[str, Any]) -> None:
    """Set this rank's RNGs from a checkpoint's ``rng_states`` (saved by the same number of processes)."""
    states = ckpt.get("rng_states")
    if not states:
        return
    if len(states) != get_world_size():
        print(f"warning: the checkpoint holds RNG states of {len(states)} processes, this run has "
              f"{get_world_size()}: dropout and mixup draws will differ from an uninterrupted run")
        return
    set_rng_state(states[get_rank()])


def position_fields(next_epoch: int, next_batch: int, batches_per_epoch: int, update_freq: int = 1
                    ) -> dict[str, Any]:
    """The checkpoint entries that locate it in training, and every rank's RNG states (a collective call)."""
    return {"next_epoch": next_epoch, "next_batch": next_batch, "batches_per_epoch": batches_per_epoch,
            "global_step": (next_epoch * batches_per_epoch + next_batch) // update_freq,
            "world_size": get_world_size(), "rng_states": gather_rng_states()}


def start_position(path: Path, ckpt: dict[str, Any], batches_per_epoch: int) -> tuple[int, int]:
    """Where a resumed run starts: the checkpoint's position, or the start of its epoch when the epoch's
    batches changed (another batch size or process count) so that the batch index means something else."""
    epoch, batch = resume_position(ckpt)
    saved = ckpt.get("batches_per_epoch", batches_per_epoch)
    if batch and saved != batches_per_epoch:
        print(f"warning: {path} was saved {batch} of {saved} batches into epoch {epoch}, but this run has "
              f"{batches_per_epoch} batches per epoch; epoch {epoch} starts over")
        batch = 0
    if batch >= batches_per_epoch and "epoch_record" not in ckpt:  # (with one: trained, not yet validated)
        epoch, batch = epoch + 1, 0
    return epoch, batch


def resume_position(ckpt: dict[str, Any]) -> tuple[int, int]:
    """(epoch, batch) to continue from: mid-epoch checkpoints say so, epoch checkpoints mean the next epoch."""
    if "next_epoch" in ckpt:
        return int(ckpt["next_epoch"]), int(ckpt.get("next_batch", 0))
    return int(ckpt["epoch"]) + 1, 0
