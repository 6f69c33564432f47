"""Reading checkpoints, safely, whatever their format.

:func:`read_any_checkpoint` takes every format PATCHES accepts and returns one :class:`LoadedCheckpoint`:

* ``.pth`` (any other suffix too): a ``torch.save`` file, ours or VideoMAE's (:func:`read_pth_checkpoint`);
* ``.safetensors``: weights, with the grid and flags in the metadata when PATCHES wrote the file
  (:func:`read_safetensors_checkpoint`);
* a transformers VideoMAE folder (``config.json`` + ``model.safetensors``, see hf_videomae.py);
* a DeepSpeed checkpoint folder (``checkpoint-N/``): its ``checkpoint.pth``, which holds the weights.

Every ``torch.load`` is ``weights_only=True``: no code from a file ever runs. Failures raise
:class:`CheckpointError` naming the file and what is wrong with it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.file_format import CHECKSUM, DEEPSPEED_META, GRID_RECORDS, tensor_checksum
from patches.grid import GridError, PatchGrid, recorded_grid

SOURCE_FORMATS = ("pth", "safetensors", "transformers", "deepspeed")
KINDS = ("pretrain", "finetune", "probe", "unknown")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint as :func:`read_any_checkpoint` read it.

    ``path``: what was given (a file or a folder); ``source_format``: one of :data:`SOURCE_FORMATS`;
    ``contents``: the checkpoint dict, as saved (``"model"``, and where recorded ``"args"``, ``"grid"``,
    ``"epoch"``, ``"model_ema"``, ...; a transformers folder's tensors renamed to ours).
    """

    path: Path
    source_format: str
    contents: dict[str, Any]

    @property
    def model_state(self) -> dict[str, Any] | None:
        """The model's state dict: under ``"model"`` (ours) or ``"module"`` (some of VideoMAE's), or the file
        itself when it is a plain state dict; None when there is none."""
        for key in ("model", "module"):
            if isinstance(self.contents.get(key), dict):
                return self.contents[key]
        if self.contents and all(isinstance(v, torch.Tensor) for v in self.contents.values()):
            return self.contents
        return None

    @property
    def recorded_args(self) -> dict[str, Any]:
        """The flags the checkpoint records, as a dict (VideoMAE's argparse.Namespace too); {} when none."""
        return recorded_args(self.contents)

    def recorded_grid(self) -> PatchGrid | None:
        """The patch grid the checkpoint records (None when it records none, as VideoMAE's files); raises
        :class:`CheckpointError` when the record is unusable. (finetune_weights.inferred_grid infers one.)"""
        try:
            return recorded_grid(self.contents)
        except GridError as e:
            raise CheckpointError(f"{self.path}: {e}") from None

    @property
    def kind(self) -> str:
        """'probe' (a frozen-encoder probe: its head only), 'pretrain' (encoder and decoder), 'finetune'
        (a classifier, or an encoder alone) or 'unknown'."""
        if "probe" in self.contents:
            return "probe"
        names = [str(k) for k in (self.model_state or {})]
        if any(n.startswith(("encoder.", "encoder_to_decoder", "decoder.")) for n in names):
            return "pretrain"
        if any(n.startswith(("patch_embed.", "blocks.")) for n in names):
            return "finetune"
        return "unknown"


def recorded_args(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint dict's flags: our plain dict, or VideoMAE's argparse.Namespace as a dict; {} when none."""
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return args if isinstance(args, dict) else {}


def read_any_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Any checkpoint PATCHES accepts (see the module docstring) as a :class:`LoadedCheckpoint`; raises
    :class:`CheckpointError` when it does not exist or cannot be used."""
    path = Path(path)
    if path.is_dir() and (path / DEEPSPEED_META).is_file():
        return LoadedCheckpoint(path, "deepspeed", read_pth_checkpoint(path / DEEPSPEED_META))
    if path.is_dir():
        from patches.checkpoints.hf_videomae import read_hf_checkpoint
        return LoadedCheckpoint(path, "transformers", read_hf_checkpoint(path))
    if path.suffix == ".safetensors":
        return LoadedCheckpoint(path, "safetensors", read_safetensors_checkpoint(path))
    return LoadedCheckpoint(path, "pth", read_pth_checkpoint(path))


def read_pth_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A ``torch.save`` file (ours, or VideoMAE's) as the dict that was saved, read with ``weights_only=True``
    and, when it carries one, its tensors checked against their checksum; :class:`CheckpointError` otherwise."""
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


def read_safetensors_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ``.safetensors`` file as a checkpoint dict: {"model"}, plus "grid", "args" and the grid records when
    PATCHES wrote it; :class:`CheckpointError` when it is missing or unreadable."""
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


def checkpoint_fingerprint(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (of a folder: of the files in it), to tell checkpoints apart."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
