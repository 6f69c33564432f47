"""One epoch of training: the scheduled learning rate and weight decay, the task's loss at each step's position,
the optimizer updates, the loss check across processes, and the per-step progress and TensorBoard scalars."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from patches.data.samplers import StepPosition
from patches.train.config import StepSchedules
from patches.train.optim import apply_schedules
from patches.train.run_logs import RunLogs
from patches.train.updater import NonFiniteLossError, Updater
from patches.utils.distributed import all_reduce_mean
from patches.utils.progress import ProgressLogger

# The task's loss of a batch: ``loss_fn(model, batch, position)``, ``position`` the step's place in the run (a
# loss that draws at random draws from it, so that a resumed run draws alike).
LossFn = Callable[[torch.nn.Module, Any, StepPosition], torch.Tensor]


@dataclass
class EpochLoop:
    """Trains ``model`` over one epoch of ``loader``; every ``update_freq`` batches make one optimizer update,
    after which ``after_update(epoch, batches_done)`` runs (the checkpoint policy's hook: stop or save)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    updater: Updater
    loader: Any
    schedules: StepSchedules
    logs: RunLogs
    after_update: Callable[[int, int], None]
    device: torch.device
    epochs: int
    steps_per_epoch: int
    update_freq: int = 1
    print_freq: int = 10
    clips_per_step: int = 1
    fp16_scaling: bool = False  # report the updates fp16 overflow skipped

    def train_one_epoch(self, loss_fn: LossFn, epoch: int, first_batch: int) -> dict[str, float]:
        """VideoMAE's ``train_one_epoch``: one pass over the loader from local batch ``first_batch`` (the batches
        before it were trained before a resume). Returns the epoch's averages (``loss``, ``lr``, ``grad_norm``,
        ...)."""
        self.model.train()
        progress = ProgressLogger(f"Epoch [{epoch + 1}/{self.epochs}]", self.print_freq, self.clips_per_step)
        self.updater.start_epoch()
        for i, batch in enumerate(progress.log_every(self.loader), start=first_batch):
            step = epoch * self.steps_per_epoch + i // self.update_freq
            if i % self.update_freq == 0:
                apply_schedules(self.optimizer, float(self.schedules.lr[step]),
                                float(self.schedules.weight_decay[step]))
            update = (i + 1) % self.update_freq == 0
            with self.updater.accumulating(update):
                loss = loss_fn(self.model, batch, StepPosition(epoch, i))
                grad_norm = self.updater(loss, update)
            self.log_step(progress, step, self.global_loss(loss, epoch, i, step), grad_norm)
            if update:
                self.after_update(epoch, i + 1)
        return self.epoch_stats(progress)

    def epoch_stats(self, progress: ProgressLogger) -> dict[str, float]:
        """The epoch's averages, with the updates fp16 overflow skipped (said aloud when there were any)."""
        stats = progress.averages()
        if self.fp16_scaling:
            stats["skipped_steps"] = self.updater.skipped
            if self.updater.skipped:
                print(f"{progress.header}: {self.updater.skipped} skipped updates (fp16 gradient overflow; the "
                      f"scaler lowered the loss scale to {self.updater.loss_scale:g})", flush=True)
        return stats

    def global_loss(self, loss: torch.Tensor, epoch: int, batch: int, step: int) -> float:
        """The loss averaged over processes (one host sync per step, after the update is queued); a NaN or
        infinite loss stops every rank before anything is saved from this state."""
        value = all_reduce_mean(loss.item(), self.device)
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss is {value} at epoch {epoch}, step {batch} of the epoch (global step "
                                     f"{step}); stopping without saving, the last checkpoint on disk is intact")
        return value

    def log_step(self, progress: ProgressLogger, step: int, loss: float, grad_norm: float | None) -> None:
        """The step's figures into the progress lines and TensorBoard."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        progress.update(loss=loss, lr=max(lrs), grad_norm=grad_norm)
        tb = self.logs.tb
        if tb is not None:
            tb.set_step(step)
            tb.update("train", loss=loss, lr=max(lrs), min_lr=min(lrs),
                      weight_decay=float(self.schedules.weight_decay[step]), grad_norm=grad_norm,
                      loss_scale=self.updater.loss_scale, skipped_updates=self.updater.skipped)
