"""PATCHES: masked-autoencoder video pre-training (VideoMAE's recipe) and fine-tuning at any patch grid.

The Python API (:mod:`patches.api`) is importable from here: ``patches.load(path)``, ``patches.create_model``.
They are looked up on first use, so that ``import patches`` stays light and does not import torch (the CPU
allocator settings in :mod:`patches.utils.cpu_memory` must come before torch).
"""
from __future__ import annotations

__all__ = ["load", "create_model", "VideoModel", "Preprocessing", "NotAClassifierError", "VideoInputError"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from patches import api
        return getattr(api, name)
    raise AttributeError(f"module 'patches' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
