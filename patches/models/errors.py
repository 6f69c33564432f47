"""The error the model code raises for what a user chose."""
from __future__ import annotations

from patches.errors import UsageError


class ModelError(UsageError, ValueError):
    """A model that the flags, the grid or a checkpoint ask for and that cannot be built or run: an unknown model,
    attention kernel, position table or probe, or a position table used at a grid it cannot serve. (Still a
    ValueError, as it always was.)"""
