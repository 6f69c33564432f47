"""The driver's launch: a run in its share of the process group, and the exit status of every way it ends."""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

from patches.data.unreadable import UnreadableDataError, unreadable_data_message
from patches.errors import PatchesError
from patches.train.stop_signals import EXIT_CTRL_C, Interrupted
from patches.utils.distributed import cleanup_distributed, init_distributed, is_main_process
from patches.utils.files import write_atomically

T = TypeVar("T")

# The known failures: an ``error:`` line and the error's status (1; 2 for a usage error), no traceback.
KNOWN_FAILURES = (PatchesError,)


def launch(body: Callable[[str | None], T], device: str | None, deepspeed: bool = False) -> T:
    """Run ``body(device)`` in this process's share of the job, and leave the process group on every path.

    ``device`` comes back as ``cuda:LOCAL_RANK`` (modulo the visible GPUs) under torchrun on GPUs. Every way a
    run ends maps to one exit status: SIGTERM or SIGUSR1, in any phase, after saving -> 75 (the launchers
    requeue on it, see :func:`record_stop`); a first Ctrl-C after saving, or a second one at once -> 130, without
    a traceback; a known failure (:class:`patches.errors.PatchesError`) -> an ``error:`` line and its class's
    status (1, or 2 for a :class:`patches.errors.UsageError`); success -> ``body``'s result.
    """
    if deepspeed:
        from patches.train import deepspeed_engine as ds_utils
        ds_utils.prepare_environment(device)
    device = init_distributed(device)
    clean = False
    try:
        result = body(device)
        clean = True
        return result
    except Interrupted as e:
        print(f"{e}; exiting with status {e.exit_status}: run the same command again to resume", flush=True)
        clean = True
        record_stop(e.exit_status)
        raise SystemExit(e.exit_status) from None
    except KeyboardInterrupt:
        print("\nstopped at once by Ctrl-C; what was saved before is intact (run the same command again to resume "
              "from it)", flush=True)
        raise SystemExit(EXIT_CTRL_C) from None
    except KNOWN_FAILURES as e:
        if e.exit_status == 1:
            raise SystemExit(f"error: {error_message(e)}") from None  # (SystemExit with a message: status 1)
        print(f"error: {error_message(e)}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_status) from None  # a usage error found once the run started: 2
    finally:
        # On an error a peer may never reach the barrier: only leave through it when all ranks agree.
        cleanup_distributed(barrier=clean)


def error_message(error: Exception) -> str:
    """What the ``error:`` line says of ``error``: its message (for unreadable data, without the traceback a
    DataLoader worker put in it)."""
    return unreadable_data_message(error) if isinstance(error, UnreadableDataError) else str(error)


def record_stop(exit_status: int) -> None:
    """Rank 0 writes ``exit_status`` to $PATCHES_STOP_FILE when the launcher set one. srun reports the highest
    status of its tasks, and with --kill-on-bad-exit the peers of the first rank to exit 75 are killed (137):
    scripts/launch/slurm.sbatch requeues on this file, not on srun's status."""
    path = os.environ.get("PATCHES_STOP_FILE")
    if path and is_main_process():
        write_atomically(path, lambda tmp: tmp.write_text(f"{exit_status}\n"))
