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


@dataclass
class EpochLoop:
    """Trains ``model`` over one epoch of ``loader``; every ``update_freq`` batches make one optimizer update,
    after which ``after_update(epoch, batches_done, signum)`` runs (the checkpoint policy's hook: stop on the agreed
    stop signal ``signum``, or save). The ranks agree once per update, in one all-reduce read before the optimizer
    step (see :class:`~patches.train.update_sync.UpdateSync`), on the losses, the gradient norm, the stop signals
    and rank-local errors."""

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
            agreed: list[Agreed] = []
            with self.updater.accumulating(update), self.at_step(epoch, i, step):
                loss = loss_fn(self.model, batch, StepPosition(epoch, i))
                sync.add_loss(loss)
                grad_norm = self.updater(loss, update, lambda norm: self.agree(sync, norm, agreed))
            self.last_batch = batch
            if update:
                for k, value in enumerate(agreed[0].losses, start=1):
                    self.log_step(progress, step, value, grad_norm if k == len(agreed[0].losses) else None)
                self.after_update(epoch, i + 1, agreed[0].signum)
        return self.epoch_stats(progress)

    def agree(self, sync: UpdateSync, grad_norm: torch.Tensor | None, agreed: list[Agreed]) -> float | None:
        """The ranks' agreement on an update (appended to ``agreed``), before its optimizer step: raises the
        agreed rank-local error, too many unreadable videos over all ranks, or a non-finite loss; returns the
        gradient norm."""
        unmerged = getattr(self.loader, "unmerged", None)  # (unreadable videos: a BadVideoTracker's)
        # (always one count: every rank's all-reduce has the same size)
        agreement = sync.agree(grad_norm, self.stop.received if self.stop is not None else 0,
                               [float(unmerged()) if unmerged is not None else 0.0])
        if hasattr(self.loader, "check_agreed"):
            self.loader.check_agreed(int(agreement.counts[0]))
        bad = [k for k, value in enumerate(agreement.losses) if not math.isfinite(value)]
        if bad:
            n = len(agreement.losses)
            micro = f" (micro-step {bad[0] + 1} of the update's {n})" if n > 1 else ""
            raise NonFiniteLossError(f"loss is {agreement.losses[bad[0]]}{micro}")
        agreed.append(agreement)
        return agreement.grad_norm

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

    def log_step(self, progress: ProgressLogger, step: int, loss: float, grad_norm: float | None) -> None:
        """A step's figures into the progress lines and TensorBoard."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        progress.update(loss=loss, lr=max(lrs), grad_norm=grad_norm)
        tb = self.logs.tb
        if tb is not None:
            tb.set_step(step)
            tb.update("train", loss=loss, lr=max(lrs), min_lr=min(lrs),
                      weight_decay=float(self.schedules.weight_decay[step]), grad_norm=grad_norm,
                      loss_scale=self.updater.loss_scale, skipped_updates=self.updater.skipped)
