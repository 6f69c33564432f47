"""How an entry point ends on an error: the one place that maps PATCHES's typed errors to a message and an
exit status.

Statuses, the same in every tool: 0 success; 1 a known failure (an ``error:`` line on stderr, no traceback),
some inputs failed included (:class:`patches.errors.SomeInputsFailed`, each named); 2 a usage error: a command
line argparse cannot parse (argparse exits itself) or a flag, input path or output folder refused
(:class:`patches.errors.UsageError`); 75 stopped by SIGTERM/SIGUSR1 after saving, to be requeued, and 130
Ctrl-C, both set by :func:`patches.train.launch.launch`. The status of an error is its class's
``exit_status``.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

from patches.errors import PatchesError

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2


def exit_status(error: PatchesError) -> tuple[int, str]:
    """The exit status and the stderr message for a typed error that reached an entry point."""
    status = getattr(error, "exit_status", EXIT_FAILURE)
    return status, f"error: {error}"


def exits_on_error(main: Callable[..., T]) -> Callable[..., T]:
    """``main`` with its typed errors turned into :class:`SystemExit`: the message on stderr and the status of
    :func:`exit_status` (status 1 keeps Python's own ``SystemExit(message)``, as the scripts always raised it)."""

    @functools.wraps(main)
    def entry_point(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except PatchesError as e:
            status, message = exit_status(e)
            if status == EXIT_FAILURE:
                raise SystemExit(message) from None
            print(message, file=sys.stderr, flush=True)
            raise SystemExit(status) from None

    return entry_point
