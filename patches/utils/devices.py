"""The device and precision of a run: ``--device`` and ``--amp`` checked against the machine
(:class:`DeviceError` when it cannot run them), autocast, and seeding every global RNG."""
from __future__ import annotations

import random

import numpy as np
import torch

from patches.errors import UsageError


class DeviceError(UsageError, ValueError):
    """A ``--device`` or ``--amp`` this machine cannot run (still a ValueError, as it always was)."""


def resolve_device(name: str | None) -> torch.device:
    """``--device``: cuda when present unless told otherwise."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``--amp`` -> the autocast dtype, refusing combinations the device cannot run."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise DeviceError(f"--amp fp16 needs a CUDA device (got --device {device}); use --amp bf16 on CPU")
        return torch.float16
    raise DeviceError(f"--amp must be none, bf16 or fp16, got {amp!r}")


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes bfloat16 natively (Ampere and newer). Asked from its properties, so that no CUDA
    context is made; ``torch.cuda.is_bf16_supported()`` also counts the slow emulation of V100 and T4."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_capability(device)[0] >= 8


def auto_amp(device_type: str, native_bf16: bool) -> str:
    """``--amp auto``: bf16 where the GPU has it natively, fp16 (with the grad scaler) on older GPUs, none on CPU."""
    if device_type != "cuda":
        return "none"
    return "bf16" if native_bf16 else "fp16"


def concrete_amp(amp: str, device: torch.device) -> str:
    """``--amp`` with ``auto`` made concrete for ``device`` (:func:`auto_amp`); other values as given."""
    if amp != "auto":
        return amp
    return auto_amp(device.type, device.type == "cuda" and cuda_native_bf16(device))


def enable_tf32(device: torch.device, deterministic: bool) -> bool:
    """TF32 for fp32 matmuls and convolutions on CUDA (about 8 times the fp32 rate on an H100), unless
    ``--deterministic`` asks for plain fp32. Returns whether it is on; CPU runs are left alone."""
    if device.type != "cuda" or deterministic:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def amp_autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast context for ``--amp`` (a no-op when ``amp_dtype`` is None)."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
