"""What the ranks agree on at each optimizer update, in one all-reduce read one update late: the micro-steps'
losses, the stop signals any rank received and whether any rank hit an error of its own.

Errors that only one rank sees (too many unreadable videos in its share, a video that cannot be replaced, rank 0's
failed save) are not raised there and then: the other ranks would wait for it in their next collective, up to the
process group's timeout. The rank records the error and keeps taking part in the collectives (reusing its last
batch when it has no new one) until the update's agreement, where every rank raises the same error together.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from patches.checkpoints.errors import CheckpointSaveError
from patches.data.health import TooManyBadVideos
from patches.data.unreadable import UnreadableDataError, unreadable_data_message
from patches.errors import PatchesError
from patches.utils.distributed import get_rank, get_world_size, is_dist

# The errors one rank may hit alone; every rank stops on them together.
RANK_LOCAL_ERRORS = (TooManyBadVideos, UnreadableDataError, CheckpointSaveError)
# The stop signals by priority (as StopSignals.agreed's MAX picks): one count each in the agreement.
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class RankLocalError(PatchesError):
    """The error one rank hit (named with its type and rank), raised on every rank with the same message."""


class RankErrors:
    """The first rank-local error this rank hit; :func:`raise_agreed` raises it on every rank."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def add(self, error: BaseException) -> None:
        """Record ``error`` for the next agreement; in a single process, raise it at once (no peer to wait)."""
        if not is_dist():
            raise error
        if self.error is None:
            self.error = error

    def described(self) -> str | None:
        if self.error is None:
            return None
        text = unreadable_data_message(self.error) if isinstance(self.error, UnreadableDataError) else str(self.error)
        return f"{type(self.error).__name__} on rank {get_rank()}: {text}"


def raise_agreed(errors: RankErrors, count: float) -> None:
    """All ranks, once the agreement says ``count`` ranks hit an error: raise the lowest such rank's error on
    every rank as :class:`RankLocalError`, so that all of them stop together with the same message."""
    if count <= 0:
        return
    gathered: list[Any] = [errors.described()]
    if is_dist():
        gathered = [None] * get_world_size()
        dist.all_gather_object(gathered, errors.described())
    raise RankLocalError(next(m for m in gathered if m is not None)) from errors.error


def agree_on_errors(errors: RankErrors, device: torch.device) -> None:
    """Outside the updates (the end of an epoch): every rank raises the error any rank hit."""
    flag = torch.tensor([float(errors.error is not None)], device=device)
    if is_dist():
        dist.all_reduce(flag)
    raise_agreed(errors, float(flag.item()))


@dataclass(frozen=True)
class Agreed:
    """An update's agreement: the mean losses of its micro-steps, the ``counts`` summed over the ranks, the stop
    signal any rank received (0: none) and the ``meta`` it was sent with."""

    losses: list[float]
    counts: list[float]
    signum: int
    meta: Any


class UpdateSync:
    """Collects an update's micro-step losses (on the device); :meth:`send` starts their all-reduce with this
    rank's stop signal and error flag, :meth:`receive` reads the previous update's result, a copy that is done by
    then (one host read per update, not blocking on the update in flight)."""

    def __init__(self, device: torch.device, errors: RankErrors) -> None:
        self.device, self.errors = device, errors
        self.losses: list[torch.Tensor] = []
        self._pending: tuple[torch.Tensor, Any, Any] | None = None

    def add_loss(self, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach().float().reshape(()))

    def send(self, received_signal: int, meta: Any, counts: list[float] | None = None) -> None:
        """Start the agreement of this update (``meta``: what the loop needs back with it, e.g. positions;
        ``counts``: numbers to sum over the ranks, e.g. unreadable videos)."""
        counts = counts or []
        flags = counts + [float(received_signal == s) for s in SIGNALS] + [float(self.errors.error is not None)]
        flag_values = torch.tensor(flags)
        if self.device.type == "cuda":  # (a pageable host-to-device copy would wait for the stream)
            flag_values = flag_values.pin_memory()
        values = torch.cat([torch.stack(self.losses), flag_values.to(self.device, non_blocking=True)])
        self.losses = []
        if is_dist():
            dist.all_reduce(values)
        event = None
        if values.device.type == "cuda":
            values = values.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._pending = (values, event, meta, len(counts))

    def receive(self) -> Agreed | None:
        """The previous :meth:`send`'s agreement; raises the agreed rank-local error. None when nothing is
        pending."""
        if self._pending is None:
            return None
        values, event, meta, n_counts = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        agreed = values.tolist()
        raise_agreed(self.errors, agreed[-1])
        signals = agreed[-len(SIGNALS) - 1:-1]
        losses, counts = agreed[:-len(SIGNALS) - 1 - n_counts], agreed[-len(SIGNALS) - 1 - n_counts:-len(SIGNALS) - 1]
        signum = next((int(s) for s, c in zip(SIGNALS, signals) if c > 0), 0)
        return Agreed([v / get_world_size() for v in losses], counts, signum, meta)


def batches_or_last(loader: Any, errors: RankErrors, total: int, last: Any = None) -> Iterator[Any]:
    """``loader``'s batches (``total`` of them); after a rank-local error (recorded in ``errors``) its last batch
    again, as many times as batches remain, so that this rank keeps pairing the others' collectives until they
    all stop together. Without a batch to repeat (the error came first) the error is raised at once."""
    given = 0
    try:
        for batch in loader:
            given += 1
            last = batch
            yield batch
    except RANK_LOCAL_ERRORS as error:
        if last is None:
            raise
        errors.add(error)  # (raises in a single process)
        for _ in range(total - given):
            yield last
