"""What the ranks agree on at each optimizer update, in one all-reduce read once, before the optimizer step: the
micro-steps' losses, the gradient norm, the stop signals any rank received and whether any rank hit an error of
its own.

Read when it is made, not one update late: the gradient norm has to reach the host before the step anyway, so the
agreement rides on that one read for free, and a stop signal or an error is acted on at the update it came in (a
late read stops one update later, from a position whose last losses are still in flight).

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
    """An update's agreement: the mean losses of its micro-steps, the mean gradient norm (None: not sent), the
    ``counts`` summed over the ranks and the stop signal any rank received (0: none)."""

    losses: list[float]
    grad_norm: float | None
    counts: list[float]
    signum: int


class UpdateSync:
    """Collects an update's micro-step losses (on the device); :meth:`agree` all-reduces them once per update with
    the gradient norm, this rank's stop signal, error flag and counts, and reads the result: the update's one
    blocking host read, made before the optimizer step (non-finite gradients must never reach the weights)."""

    def __init__(self, device: torch.device, errors: RankErrors) -> None:
        self.device, self.errors = device, errors
        self.losses: list[torch.Tensor] = []

    def add_loss(self, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach().float().reshape(()))

    def agree(self, grad_norm: torch.Tensor | None, received_signal: int, counts: list[float] | None = None
              ) -> Agreed:
        """The ranks' agreement on this update; raises the agreed rank-local error on every rank. ``counts``:
        numbers to sum over the ranks (e.g. unreadable videos); every rank sends as many."""
        counts = counts or []
        flags = counts + [float(received_signal == s) for s in SIGNALS] + [float(self.errors.error is not None)]
        flag_values = torch.tensor(flags)
        if self.device.type == "cuda":  # (a pageable host-to-device copy would wait for the stream)
            flag_values = flag_values.pin_memory()
        norm = torch.zeros(1, device=self.device) if grad_norm is None else grad_norm.detach().float().reshape(1)
        values = torch.cat([torch.stack(self.losses).to(self.device), norm.to(self.device),
                            flag_values.to(self.device, non_blocking=True)])
        n_losses, self.losses = len(self.losses), []
        if is_dist():
            dist.all_reduce(values)
        agreed = values.tolist()  # the update's one blocking host read
        raise_agreed(self.errors, agreed[-1])
        world = get_world_size()
        signals = agreed[-len(SIGNALS) - 1:-1]
        signum = next((int(s) for s, c in zip(SIGNALS, signals) if c > 0), 0)
        return Agreed([v / world for v in agreed[:n_losses]],
                      None if grad_norm is None else agreed[n_losses] / world,
                      agreed[n_losses + 1:n_losses + 1 + len(counts)], signum)


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
