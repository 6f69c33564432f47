"""One epoch of training: the scheduled learning rate and weight decay, the task's loss at each step's position,
the optimizer updates, the loss check across processes, and the per-step progress and TensorBoard scalars."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from patches.data.samplers import StepPosition
from patches.train.config import StepSchedules
from patches.train.optim import apply_schedules
from patches.train.run_logs import RunLogs
from patches.train.stop_signals import StopSignals
from patches.train.update_sync import Agreed, RankErrors, UpdateSync, batches_or_last
from patches.train.updater import NonFiniteGradientError, NonFiniteLossError, Updater
from patches.utils.progress import ProgressLogger

# The task's loss of a batch: ``loss_fn(model, batch, position)``, ``position`` the step's place in the run (a
# loss that draws at random draws from it, so that a resumed run draws alike).
LossFn = Callable[[torch.nn.Module, Any, StepPosition], torch.Tensor]


@dataclass(frozen=True)
class UpdateDone:
    """Where an update was and the figures it logs, until its agreement is read (one update later)."""

    epoch: int
    batches_done: int  # of the epoch, this update's included
    step: int  # global
    grad_norm: float | None
    lr: float
    min_lr: float
    loss_scale: float | None
    skipped: int


@dataclass
class EpochLoop:
    """Trains ``model`` over one epoch of ``loader``; every ``update_freq`` batches make one optimizer update,
    after which ``after_update(epoch, batches_done, signum)`` runs (the checkpoint policy's hook: stop on the agreed
    stop signal ``signum``, or save). The ranks agree once per update, in one all-reduce read one update late (see
    :class:`~patches.train.update_sync.UpdateSync`), on the losses, the stop signals and rank-local errors."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    updater: Updater
    loader: Any
    schedules: StepSchedules
    logs: RunLogs
    after_update: Callable[[int, int, int], None]
    device: torch.device
    epochs: int
    steps_per_epoch: int
    update_freq: int = 1
    print_freq: int = 10
    clips_per_step: int = 1
    fp16_scaling: bool = False  # report the updates fp16 overflow skipped
    stop: StopSignals | None = None
    errors: RankErrors = field(default_factory=RankErrors)
    last_batch: Any = None  # what a rank repeats after a rank-local error, until every rank stops together

    def train_one_epoch(self, loss_fn: LossFn, epoch: int, first_batch: int) -> dict[str, float]:
        """VideoMAE's ``train_one_epoch``: one pass over the loader from local batch ``first_batch`` (the batches
        before it were trained before a resume). Returns the epoch's averages (``loss``, ``lr``, ``grad_norm``,
        ...)."""
        self.model.train()
        progress = ProgressLogger(f"Epoch [{epoch + 1}/{self.epochs}]", self.print_freq, self.clips_per_step)
        self.updater.start_epoch()
        sync = UpdateSync(self.device, self.errors)
        end = self.steps_per_epoch * self.update_freq
        batches = batches_or_last(self.loader, self.errors, end - first_batch, self.last_batch)
        for i, batch in enumerate(progress.log_every(batches, end - first_batch), start=first_batch):
            step = epoch * self.steps_per_epoch + i // self.update_freq
            if i % self.update_freq == 0:
                apply_schedules(self.optimizer, float(self.schedules.lr[step]),
                                float(self.schedules.weight_decay[step]))
            update = (i + 1) % self.update_freq == 0
            with self.updater.accumulating(update), self.at_step(epoch, i, step):
                loss = loss_fn(self.model, batch, StepPosition(epoch, i))
                grad_norm = self.updater(loss, update)
            sync.add_loss(loss)
            self.last_batch = batch
            if update:
                self.agree(sync, progress, self.figures(epoch, i + 1, step, grad_norm), i + 1 == end)
        return self.epoch_stats(progress)

    def agree(self, sync: UpdateSync, progress: ProgressLogger, done: UpdateDone, last: bool) -> None:
        """After an update: start its agreement and act on the previous one's (log its losses; stop on an agreed
        signal or save when due, ``after_update``); at the epoch's last update, on its own too, at once."""
        previous = sync.receive()
        unmerged = getattr(self.loader, "unmerged", None)  # (unreadable videos: a BadVideoTracker's)
        # (always one count: every rank's all-reduce has the same size)
        sync.send(self.stop.received if self.stop is not None else 0, done,
                  [float(unmerged()) if unmerged is not None else 0.0])
        signum = self.log_agreed(progress, previous)
        if last:
            signum = max(signum, self.log_agreed(progress, sync.receive()))  # (SIGTERM first, as StopSignals)
        self.after_update(done.epoch, done.batches_done, signum)

    def log_agreed(self, progress: ProgressLogger, agreed: Agreed | None) -> int:
        """An agreed update's losses and unreadable videos, checked, and its losses logged; returns its agreed stop
        signal (0: none)."""
        if agreed is None:
            return 0
        losses, done = agreed.losses, agreed.meta
        if hasattr(self.loader, "check_agreed"):
            self.loader.check_agreed(int(agreed.counts[0]))
        first = done.batches_done - len(losses)
        for k, value in enumerate(losses):
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss is {value} at epoch {done.epoch}, step {first + k} of the epoch "
                                         f"(global step {done.step}); stopping without saving, the last "
                                         f"checkpoint on disk is intact")
            self.log_step(progress, done, value)
        return agreed.signum

    def figures(self, epoch: int, batches_done: int, step: int, grad_norm: float | None) -> UpdateDone:
        """What an update's progress lines and TensorBoard show, as they were at the update."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        return UpdateDone(epoch, batches_done, step, grad_norm, max(lrs), min(lrs), self.updater.loss_scale,
                          self.updater.skipped)

    @contextlib.contextmanager
    def at_step(self, epoch: int, batch: int, step: int) -> Iterator[None]:
        """Name the step where the loss or the gradients became non-finite."""
        try:
            yield
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e} at epoch {epoch}, step {batch} of the epoch (global step {step}); "
                                     f"stopping without saving, the last checkpoint on disk is intact") from None
        except NonFiniteGradientError as e:
            raise NonFiniteGradientError(f"{e} at epoch {epoch}, step {batch} of the epoch (global step {step}); "
                                         f"not applied, stopping without saving: the last checkpoint on disk is "
                                         f"intact (lower --lr, set --clip_grad, or use --amp fp16 to skip such "
                                         f"updates)") from None

    def epoch_stats(self, progress: ProgressLogger) -> dict[str, float]:
        """The epoch's averages, with the updates fp16 overflow skipped (said aloud when there were any)."""
        stats = progress.averages()
        if self.fp16_scaling:
            stats["skipped_steps"] = self.updater.skipped
            if self.updater.skipped:
                print(f"{progress.header}: {self.updater.skipped} skipped updates (fp16 gradient overflow; the "
                      f"scaler lowered the loss scale to {self.updater.loss_scale:g})", flush=True)
        return stats

    def log_step(self, progress: ProgressLogger, done: UpdateDone, loss: float) -> None:
        """A step's figures into the progress lines and TensorBoard."""
        progress.update(loss=loss, lr=done.lr, grad_norm=done.grad_norm)
        tb = self.logs.tb
        if tb is not None:
            tb.set_step(done.step)
            tb.update("train", loss=loss, lr=done.lr, min_lr=done.min_lr,
                      weight_decay=float(self.schedules.weight_decay[done.step]), grad_norm=done.grad_norm,
                      loss_scale=done.loss_scale, skipped_updates=done.skipped)
