"""Writing checkpoint files: the checkpoint dict of a model and its training state, saved atomically with a
checksum of its tensors, and the weights as safetensors beside it (``--save_safetensors``)."""
from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.errors import CheckpointSaveError
from patches.checkpoints.file_format import (CHECKPOINT_FORMAT, CHECKSUM, GRID_RECORDS, SAFETENSORS_FORMAT, plain_args,
                                             tensor_checksum)
from patches.grid import PatchGrid
from patches.utils.distributed import unwrap_model
from patches.utils.files import fsync_dir, temp_path, write_atomically


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically: temporary file in the same folder, fsync, then rename over the target.

    A crash or kill while saving leaves the previous file untouched (at worst a stray ``.tmp``). A
    write that fails (no space left on the device, quota, I/O error) removes the temporary file and
    raises :class:`CheckpointSaveError` saying so. The file carries a checksum of its tensors
    (:func:`tensor_checksum`), verified by :func:`reading.read_pth_checkpoint`.
    """
    path = Path(path)
    state = {**{k: v for k, v in state.items() if k != CHECKSUM}, CHECKSUM: tensor_checksum(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            _killed_mid_save_if_armed(tmp, state)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = _os_error_in_chain(e)
        if cause is not None:
            raise CheckpointSaveError(path, cause) from e
        raise
    fsync_dir(path.parent)
    return path


# Fault injection for the elastic-restart test (tests/test_elastic.py), inert unless set: the file this variable
# names holds an update count; the first save of a checkpoint at that count removes the file, cuts its temporary
# file to half and SIGKILLs its own process, as a node lost mid-save would.
KILL_IN_SAVE_VARIABLE = "PATCHES_TEST_KILL_IN_SAVE"


def _killed_mid_save_if_armed(tmp: Path, state: dict[str, Any]) -> None:
    armed = os.environ.get(KILL_IN_SAVE_VARIABLE)
    if not armed:
        return
    try:
        step = int(Path(armed).read_text())
    except (OSError, ValueError):
        return
    if state.get("global_step") == step:
        Path(armed).unlink()
        os.truncate(tmp, tmp.stat().st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)


def _os_error_in_chain(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch.save reports a failed write as a RuntimeError whose context it is."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def checkpoint_state(model: torch.nn.Module, grid: PatchGrid, args: argparse.Namespace, epoch: int,
                     optimizer: torch.optim.Optimizer | None = None, scaler: Any = None,
                     **extra: Any) -> dict[str, Any]:
    """Everything a checkpoint holds: weights, training state, flags (``args``, recorded) and the patch grid."""
    bare = unwrap_model(model)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": bare.state_dict(),
        "epoch": epoch,
        "args": plain_args(args),
        "grid": grid.to_dict(),
    }
    if getattr(bare, "pos_embed_type", None) == "3d":  # the table is not in the state dict; its reference is
        state["pos_reference"] = list(bare.pos_reference)
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    state.update(extra)
    return state


def print_saved_and_export_safetensors(path: Path, state: dict[str, Any], grid: PatchGrid,
                                       flags: argparse.Namespace | dict[str, Any], export: bool) -> None:
    """Print a saved checkpoint's path; with ``export`` (``--save_safetensors``) also write its weights beside
    it as ``.safetensors``, with ``grid`` and ``flags`` in the metadata, and print that path too."""
    print(f"Saved {path}")
    if export:
        records = {k: state[k] for k in GRID_RECORDS if k in state}
        print(f"Saved {save_safetensors(path.with_suffix('.safetensors'), state['model'], grid, flags, records)}")


def save_safetensors(path: str | Path, state_dict: dict[str, torch.Tensor], grid: PatchGrid,
                     args: argparse.Namespace | dict[str, Any], records: dict[str, Any] | None = None) -> Path:
    """Model weights only, as safetensors, with the grid, the flags and ``records`` (the checkpoint's
    :data:`GRID_RECORDS`) as JSON in the metadata; atomic."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = plain_args(args) if isinstance(args, argparse.Namespace) else plain_args(argparse.Namespace(**args))
    metadata = {"format": "pt", "patches_format": SAFETENSORS_FORMAT, "grid": json.dumps(grid.to_dict()),
                "args": json.dumps(flags), **{k: json.dumps(v) for k, v in (records or {}).items()}}
    # safetensors refuses views into shared storage; plain contiguous CPU copies are what it stores anyway.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
