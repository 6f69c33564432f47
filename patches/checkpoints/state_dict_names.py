"""Finding a checkpoint's state dict and putting its tensor names in our classifier's terms: wrappers
(``_orig_mod.``, ``module.``), trunk prefixes (``encoder.``, ``backbone.``) and ``--model_prefix`` stripped,
pre-training-only tensors (decoder, ``encoder_to_decoder``, ``mask_token``) dropped."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.load_report import LoadReport

WRAPPER_PREFIXES = ("_orig_mod.", "module.")
TRUNK_PREFIXES = ("encoder.", "backbone.")
PRETRAIN_ONLY_PREFIXES = ("decoder.", "encoder_to_decoder.")
PRETRAIN_ONLY_KEYS = ("mask_token", "decoder_pos_embed")


def select_state_dict(ckpt: dict[str, Any], model_key: str, path: Path) -> tuple[dict[str, Any], str]:
    """The state dict under the first of ``model_key``'s '|'-separated keys that holds one (else the checkpoint
    itself when it is a plain state dict) and where it was; :class:`CheckpointError` when there is none."""
    keys = [k for k in model_key.split("|") if k]
    for k in keys:
        if isinstance(ckpt.get(k), dict):
            return ckpt[k], f"checkpoint[{k!r}]"
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, "the file's top-level dict"
    held = ", ".join(sorted(map(str, ckpt))[:12])
    raise CheckpointError(f"{path}: none of --model_key {model_key!r} is in the checkpoint and it is not a "
                          f"plain state dict; it holds: {held}")


def _normalise_name(name: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def normalise_state_dict(raw: dict[str, Any], model_prefix: str, report: LoadReport) -> dict[str, torch.Tensor]:
    """Normalised names -> tensors, pre-training-only and non-tensor entries moved to ``dropped``."""
    if model_prefix and not model_prefix.endswith("."):
        model_prefix += "."
    prefixes = WRAPPER_PREFIXES + ((model_prefix,) if model_prefix else ()) + TRUNK_PREFIXES
    sd: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = _normalise_name(str(key), prefixes)
        if not isinstance(value, torch.Tensor):
            report.dropped.append(f"{name} (not a tensor)")
        elif name.startswith(PRETRAIN_ONLY_PREFIXES) or name in PRETRAIN_ONLY_KEYS:
            report.dropped.append(f"{name} (pre-training only)")
        elif name in sd:
            report.dropped.append(f"{name} (duplicate name after stripping prefixes: {key})")
        else:
            sd[name] = value
    return sd
