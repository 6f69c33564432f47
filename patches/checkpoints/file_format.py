"""What a PATCHES checkpoint file is: its format tags, names, the checksum of its tensors, and flags as plain
values.

A checkpoint is a dict saved with ``torch.save`` and read with ``weights_only=True``: weights, training
state, the flags as plain values and the patch grid. ``--save_safetensors`` writes the weights beside it as
safetensors (grid and flags in the metadata). Epoch checkpoints are ``checkpoint-N.pth`` (or, with DeepSpeed,
``checkpoint-N/`` folders, see deepspeed_folder.py), the newest state is ``checkpoint-latest``.
"""
from __future__ import annotations

import argparse
import hashlib
import re
from typing import Any

import torch

CHECKPOINT_FORMAT = "patches-checkpoint-v1"
SAFETENSORS_FORMAT = "patches-safetensors-v1"
LATEST = "checkpoint-latest"
BEST = "checkpoint-best.pth"
DEEPSPEED_META = "checkpoint.pth"  # our own file inside a DeepSpeed checkpoint folder, written last
# What a flexible-grid pre-training adds beside "grid": the grids trained on, and the 3-D table's reference.
GRID_RECORDS = ("grids", "pos_reference")
CHECKSUM = "tensor_checksum"  # the key of a checkpoint's own checksum, see tensor_checksum()
# What save_checkpoint, save_safetensors and link_atomically write first: ".{name}.{pid}.tmp".
# Temporary files of checkpoints, and of extract_features.py's shards and index.
TEMP_FILE = re.compile(r"^\.(checkpoint[^/]*\.(?:pth|safetensors)|shard-\d+(?:\.\w+)?\.(?:safetensors|npy|json)|"
                       r"(?:index|features)\.json)\.(\d+)\.tmp$")


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
