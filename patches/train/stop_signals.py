"""Stopping a run on a signal at a step boundary: SIGTERM and SIGUSR1 (Slurm's warnings) and a first Ctrl-C are
recorded (:class:`StopSignals`), every rank agrees on them at the next step, and the run saves and ends as
:class:`Interrupted` with exit status 75 (requeue) or 130 (Ctrl-C); a second Ctrl-C stops at once."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from patches.utils.distributed import is_dist

# Exit status of a run stopped by SIGTERM/SIGUSR1 after saving checkpoint-latest: EX_TEMPFAIL from
# sysexits.h ("try again later"); the sbatch launchers requeue the job when they see it.
EXIT_REQUEUE = 75
# Exit status after a Ctrl-C (SIGINT): 128 + 2, what shells report for a command stopped by it.
EXIT_CTRL_C = 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Interrupted(Exception):
    """The run stopped on a signal during ``phase``, after saving ``path`` (None: nothing needed saving)."""

    def __init__(self, signum: int, path: Path | None, phase: str = "training") -> None:
        saved = f"after saving {path}" if path is not None else "with nothing new to save"
        during = "" if phase == "training" else f" during {phase}"
        super().__init__(f"stopped by {signal.Signals(signum).name}{during} {saved}")
        self.signum, self.path, self.phase = signum, path, phase

    @property
    def exit_status(self) -> int:
        return EXIT_CTRL_C if self.signum == signal.SIGINT else EXIT_REQUEUE


class StopRequested(Exception):
    """A stop signal came in between two batches of a phase that has nothing of its own to save (see
    :class:`StopChecked`); the driver turns it into :class:`Interrupted` after saving what it holds."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Record SIGTERM, SIGUSR1 and a first Ctrl-C (SIGINT) instead of dying; :meth:`agreed` tells every rank
    whether any rank got one. A second Ctrl-C stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.received:
                raise KeyboardInterrupt
            # os.write: print could re-enter a buffered write that the signal interrupted
            os.write(2, b"\nCtrl-C: stopping at the next step boundary (training saves checkpoint-latest first); "
                        b"press Ctrl-C again to stop at once, losing what was not saved\n")
        self.received = self.received or signum

    def agreed(self, device: torch.device) -> int:
        """The signal any rank received (0 if none): all ranks stop at the same step."""
        if not is_dist():
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


class StopChecked:
    """``loader``'s batches, with a check for a stop signal before each (:class:`StopRequested` when any rank got
    one): evaluation and testing stop as promptly as training does.

    Evaluation shards may differ by a batch between ranks: every rank checks as often as the longest shard has
    batches, so that the collective checks pair up. Other attributes are the loader's."""

    def __init__(self, loader: Any, stop: StopSignals, device: torch.device) -> None:
        self.loader, self.stop, self.device = loader, stop, device

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        own = len(self.loader)
        checks = own
        if is_dist():
            count = torch.tensor([own], dtype=torch.int64, device=self.device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            checks = int(count.item())
        batches = iter(self.loader)
        for _ in range(checks):
            signum = self.stop.agreed(self.device)
            if signum:
                raise StopRequested(signum)
            batch = next(batches, _END)  # (a loader may yield fewer: batches of unreadable videos only)
            if batch is not _END:
                yield batch


_END = object()
