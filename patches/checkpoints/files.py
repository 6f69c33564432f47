"""Checkpoint files: writing them atomically, with a checksum of their tensors, and reading any supported source
safely (finding, naming, linking and pruning them in an output folder is checkpoint_folder.py's).

A checkpoint is a dict saved with ``torch.save`` and loaded with ``weights_only=True``: weights, training
state, the flags as plain values and the patch grid. ``--save_safetensors`` writes the weights beside it as
safetensors (grid and flags in the metadata). Epoch checkpoints are ``checkpoint-N.pth`` (or, with DeepSpeed,
``checkpoint-N/`` folders, see ds_utils.py), the newest state is ``checkpoint-latest``.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from patches.utils.distributed import unwrap_model
from patches.utils.files import fsync_dir, temp_path, write_atomically
from patches.grid import GridError, PatchGrid, recorded_grid

CHECKPOINT_FORMAT = "patches-checkpoint-v1"
SAFETENSORS_FORMAT = "patches-safetensors-v1"
LATEST = "checkpoint-latest"
# What a flexible-grid pre-training adds beside "grid": the grids trained on, and the 3-D table's reference.
GRID_RECORDS = ("grids", "pos_reference")
CHECKSUM = "tensor_checksum"  # the key of a checkpoint's own checksum, see tensor_checksum()
# What save_checkpoint, save_safetensors and link_atomically write first: ".{name}.{pid}.tmp".
# Temporary files of checkpoints, and of extract_features.py's shards and index.
TEMP_FILE = re.compile(r"^\.(checkpoint[^/]*\.(?:pth|safetensors)|shard-\d+(?:\.\w+)?\.(?:safetensors|npy|json)|"
                        r"(?:index|features)\.json)\.(\d+)\.tmp$")


# ---------------------------------------------------------------- writing

def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as plain values, so a checkpoint loads with ``weights_only=True``."""
    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return str(v)
    return {k: plain(v) for k, v in vars(args).items()}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically: temporary file in the same folder, fsync, then rename over the target.

    A crash or kill while saving leaves the previous file untouched (at worst a stray ``.tmp``). A
    write that fails (no space left on the device, quota, I/O error) removes the temporary file and
    raises :class:`CheckpointSaveError` saying so. The file carries a checksum of its tensors
    (:func:`tensor_checksum`), verified by :func:`load_checkpoint`.
    """
    path = Path(path)
    state = {**{k: v for k, v in state.items() if k != CHECKSUM}, CHECKSUM: tensor_checksum(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
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


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the file it was to replace (if any) is unchanged."""

    def __init__(self, path: Path, cause: OSError) -> None:
        self.path, self.errno = path, cause.errno
        what = "no space left on the device" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else \
            (cause.strerror or str(cause))
        kept = (f"the previous {path.name} is intact" if path.exists()
                else f"nothing was replaced; checkpoints saved earlier in {path.parent} are intact")
        super().__init__(f"could not save checkpoint {path}: {what}; {kept}. Free some space (or choose "
                         f"another --output_dir) and run the same command again to resume")


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


def tensor_checksum(state: dict[str, Any]) -> str:
    """SHA-256 over every tensor of ``state`` (name, dtype, shape and bytes, in key order), the checksum entry
    itself left out: torch.load does not check its archive's CRCs, so flipped bytes in tensor data would load."""
    digest = hashlib.sha256()

    def walk(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if not (name == "" and key == CHECKSUM):
                    walk(f"{name}/{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{name}/{i}", item)

    walk("", state)
    return digest.hexdigest()


# ---------------------------------------------------------------- reading

class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Any supported source as a checkpoint dict: a transformers VideoMAE folder (see
    :func:`hf_videomae.read_hf_checkpoint`), a ``.safetensors`` file (:func:`load_safetensors`) or our
    ``.pth`` (:func:`load_checkpoint`). Raises :class:`CheckpointError` when it cannot be used."""
    path = Path(path)
    if path.is_dir():
        from patches.checkpoints.hf_videomae import read_hf_checkpoint
        try:
            return read_hf_checkpoint(path)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    if path.suffix == ".safetensors":
        return load_safetensors(path)  # {"model"}, with "grid"/"args" when PATCHES wrote the file
    return load_checkpoint(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` (no code from the file ever runs); clear message on bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # VideoMAE's own checkpoints store their flags as an argparse.Namespace: a plain attribute holder,
        # safe to rebuild, so it is the one class allowed beyond tensors and plain values.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # a file of another pickle protocol is refused below with our message; torch's warning adds nothing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for bad files
        raise CheckpointError(_load_failure_message(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    if CHECKSUM not in obj:
        print(f"note: {path} carries no checksum of its tensors (an older PATCHES run's, or VideoMAE's): loaded "
              f"without verifying it")
    elif obj.pop(CHECKSUM) != tensor_checksum(obj):
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the checksum written with them (bytes "
                              f"changed on disk or in a copy); it was not used")
    return obj  # as it was given to save_checkpoint


def _load_failure_message(path: Path, e: BaseException) -> str:
    """Why torch.load refused ``path``, in words (its own messages are long and suggest unsafe loading)."""
    text = str(e)
    name = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)
    if name or "Unsupported global" in text:
        what = f" ({name.group(1)})" if name else ""
        return (f"refused to load {path}: it refers to Python code or classes{what} that unpickling would run; "
                f"checkpoints are loaded with torch.load(weights_only=True), which accepts only tensors and "
                f"plain values, and nothing from the file was run. Re-save the weights from a trusted source")
    size = path.stat().st_size
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save's archive format
    if size == 0 or zipped:
        reason = text.splitlines()[0].split(". ")[0][:160] if text else type(e).__name__
        return (f"{path} is truncated or corrupt ({size} bytes{'' if size == 0 else '; ' + reason}); was it saved "
                f"or copied completely?")
    return (f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle of tensors and plain "
            f"values that weights_only loading accepts); nothing from it was run")


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """A .safetensors file as a checkpoint dict: {"model"}, plus "grid", "args" and the grid records when ours
    wrote it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        ckpt: dict[str, Any] = {"model": dict(load_file(str(path), device="cpu"))}
        for key in ("grid", "args", *GRID_RECORDS):
            if key in metadata:
                ckpt[key] = json.loads(metadata[key])
    except (OSError, ValueError, SafetensorError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason})") from None
    return ckpt


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
