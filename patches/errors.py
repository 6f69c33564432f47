"""The errors PATCHES raises on purpose: library code raises them, and only the entry points turn them into a
message and an exit status (:func:`patches.cli.exits.exit_status`, :func:`patches.train.launch.launch`).

Each class carries its exit status, the same in every tool: 1 for a failure (some inputs failed, a checkpoint
that cannot be read, a loss that went NaN, ...), 2 for a usage error (a flag, input path or output folder that
cannot be used, refused before the work it would spoil), as argparse's own refusals."""
from __future__ import annotations

from typing import Sequence


class PatchesError(Exception):
    """Something the user can act on (a file, a flag, a checkpoint); the message names it. Exit status 1."""

    exit_status = 1


class UsageError(PatchesError):
    """A flag, an input path or an output folder that cannot be used: refused before heavy work. Exit status 2,
    as argparse's own refusals."""

    exit_status = 2


class SomeInputsFailed(PatchesError):
    """A tool did its work on every input it could read, and wrote it, but some inputs failed; the message names
    each one with its reason. Exit status 1."""

    def __init__(self, failures: Sequence[tuple[str, str]], total: int, what: str = "videos") -> None:
        self.failures = list(failures)
        lines = [f"{len(self.failures)} of {total} {what} failed (the others are done):"]
        super().__init__("\n".join(lines + [f"  {path}: {reason}" for path, reason in self.failures]))
