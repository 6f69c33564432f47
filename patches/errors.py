"""The errors PATCHES raises on purpose: library code raises them, and only the entry points turn them into a
message and an exit status (:func:`patches.cli.exits.exit_status`)."""
from __future__ import annotations


class PatchesError(Exception):
    """Something the user can act on (a file, a flag, a checkpoint); the message names it."""


class UsageError(PatchesError):
    """A flag, an input path or an output folder that cannot be used: refused before heavy work (exit 1, as every
    failure the scripts name; argparse's own refusals exit 2)."""
