"""Deterministic kernels (``--deterministic``); the RNG states saved with checkpoints are
patches.checkpoints.resume_state's."""
from __future__ import annotations

import os

import torch


def set_deterministic(enabled: bool) -> None:
    """``--deterministic``: deterministic kernels where torch has them (a warning names any op without one)."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible matmuls
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
