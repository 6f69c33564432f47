"""The errors of reading, writing and using checkpoints. Library code raises them; the entry points (and
:func:`patches.train.trainer.launch`) turn them into an ``error:`` line and exit status 1."""
from __future__ import annotations

import errno
from pathlib import Path

from patches.errors import PatchesError


class CheckpointError(PatchesError, ValueError):
    """A file or folder that cannot be used as a checkpoint (missing, corrupt, unsafe, of another grid or model,
    or none to resume from); the message names it. A ValueError too, as it was before the typed errors."""


class CheckpointSaveError(PatchesError, RuntimeError):
    """A checkpoint could not be written; the file it was to replace (if any) is unchanged."""

    def __init__(self, path: Path, cause: OSError) -> None:
        self.path, self.errno = path, cause.errno
        what = "no space left on the device" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else \
            (cause.strerror or str(cause))
        kept = (f"the previous {path.name} is intact" if path.exists()
                else f"nothing was replaced; checkpoints saved earlier in {path.parent} are intact")
        super().__init__(f"could not save checkpoint {path}: {what}; {kept}. Free some space (or choose "
                         f"another --output_dir) and run the same command again to resume")


class ExportError(CheckpointError):
    """A checkpoint that transformers' VideoMAE cannot represent."""


class ExportNeedsFlag(ExportError):
    """An export that needs a flag the checkpoint cannot stand in for (e.g. ``--num_heads``): a usage error."""

    exit_status = 2
