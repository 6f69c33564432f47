"""The training driver shared by pre-training and fine-tuning.

It owns, once for both: the process group and the exit status of every way a run can end (:func:`launch`),
the device and precision, the model's wrappers (EMA, ``torch.compile``, DDP or DeepSpeed), restoring a
checkpoint, the schedules, the epoch loop, the checkpoint policy, and the TensorBoard / ``log.txt`` logs
(:class:`Trainer`). A run script keeps what is its own: its flags, its data, the loss of a batch and, for
fine-tuning, validation, the best checkpoint and the final test.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from patches.utils import cpu_memory
from patches.data import health as data_health
from patches.train.optim import cosine_scheduler
from patches.train.rng import set_deterministic
from patches.train.stop_signals import EXIT_CTRL_C
from patches.utils.devices import autocast_dtype, resolve_device, seed_everything
from patches.utils.distributed import all_reduce_mean, cleanup_distributed, data_parallel, get_rank, init_distributed, is_dist, is_main_process
from patches.utils.files import append_jsonl, drop_jsonl_records, write_atomically
from patches.utils.progress import ProgressLogger, TensorboardLogger
from patches.models.attention import configure_attention
from patches.checkpoints.errors import CheckpointError, CheckpointSaveError
from patches.checkpoints.folder import FoundCheckpoint, remove_stale_temp_files
from patches.checkpoints.model_state import check_model_state
from patches.checkpoints.resume_state import position_fields, start_position
from patches.checkpoints.run_checkpoints import RunCheckpoints, restore_training_state
from patches.checkpoints.writing import checkpoint_state, print_saved_and_export_safetensors, save_checkpoint
from patches.train.deepspeed_engine import DeepSpeedUnavailableError
from patches.data.datasets import UnreadableDataError
from patches.train.optim import apply_schedules
from patches.grid import PatchGrid
from patches.train.stop_signals import Interrupted, StopChecked, StopRequested, StopSignals
from patches.data.samplers import StepPosition
from patches.train.updater import NonFiniteLossError, Updater

T = TypeVar("T")


def launch(body: Callable[[str | None], T], device: str | None, deepspeed: bool = False) -> T:
    """Run ``body(device)`` in this process's share of the job, and leave the process group on every path.

    ``device`` comes back as ``cuda:LOCAL_RANK`` (modulo the visible GPUs) under torchrun on GPUs. Every way a
    run ends maps to one exit status: SIGTERM or SIGUSR1, in any phase, after saving -> 75 (the launchers
    requeue on it, see :func:`record_stop`); a first Ctrl-C after saving, or a second one at once -> 130, without
    a traceback; a known failure -> an ``error:`` line and 1; success -> ``body``'s result.
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
    except (NonFiniteLossError, data_health.TooManyBadVideos, CheckpointSaveError, CheckpointError,
            DeepSpeedUnavailableError) as e:
        raise SystemExit(f"error: {e}") from None
    except UnreadableDataError as e:
        raise SystemExit(f"error: {data_health.unreadable_data_message(e)}") from None
    finally:
        # On an error a peer may never reach the barrier: only leave through it when all ranks agree.
        cleanup_distributed(barrier=clean)


def record_stop(exit_status: int) -> None:
    """Rank 0 writes ``exit_status`` to $PATCHES_STOP_FILE when the launcher set one. srun reports the highest
    status of its tasks, and with --kill-on-bad-exit the peers of the first rank to exit 75 are killed (137):
    scripts/launch/slurm.sbatch requeues on this file, not on srun's status."""
    path = os.environ.get("PATCHES_STOP_FILE")
    if path and is_main_process():
        write_atomically(path, lambda tmp: tmp.write_text(f"{exit_status}\n"))


@dataclass(frozen=True)
class Schedule:
    """Per-step learning rate and weight decay: linear warmup, then half-cosine (LRs already scaled)."""

    lr: float
    min_lr: float
    warmup_lr: float = 1e-6
    warmup_epochs: int = 0
    warmup_steps: int = -1
    weight_decay: float = 0.05
    weight_decay_end: float | None = None


@dataclass(frozen=True)
class TrainerConfig:
    """What the driver needs of a run's flags."""

    output_dir: str
    model_name: str
    device: str | None
    amp: str
    epochs: int
    schedule: Schedule
    log_dir: str | None = None
    seed: int = 0
    deterministic: bool = False
    start_epoch: int = 0
    update_freq: int = 1
    clip_grad: float | None = None
    print_freq: int = 10
    save_ckpt_freq: int = 1
    save_ckpt_every_steps: int = 0
    keep_ckpts: int = 0
    save_safetensors: bool = False
    attn_impl: str = "auto"
    compile: str | None = None
    model_ema_decay: float | None = None  # None: no EMA
    model_ema_force_cpu: bool = False
    deepspeed_zero_stage: int | None = None  # None: no DeepSpeed


@dataclass
class Progress:
    """Where training stands, saved with every checkpoint and restored on resume."""

    epoch: int = 0
    batch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """One training run. Use as a context manager, so the logs are closed on every path:

    ``with Trainer(cfg, grid, flags) as t: model = t.prepare_model(model); t.setup_training(...); t.fit(loss_fn)``
    """

    def __init__(self, cfg: TrainerConfig, grid: PatchGrid, flags: argparse.Namespace) -> None:
        # ``flags`` are only recorded in checkpoints, as they are at each save (after LR scaling, class count).
        self.cfg, self.grid, self.flags = cfg, grid, flags
        self.device = resolve_device(cfg.device)
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        set_deterministic(cfg.deterministic)
        seed_everything(cfg.seed + get_rank())
        self.output_dir = Path(cfg.output_dir)
        self.log_file = self.output_dir / "log.txt"
        self._tb: TensorboardLogger | None = None
        self.model = self.model_without_ddp = self.ema = self.engine = self.updater = None
        self.loader = self.checkpoints = None
        self.progress = Progress(epoch=cfg.start_epoch)
        self.last_checkpoint: Path | None = None
        self.stop = StopSignals()  # from entering to leaving: training, validation and testing alike
        self._purge_step: int | None = None
        self.pending_record: dict[str, Any] | None = None  # a trained epoch's record, awaiting its validation
        if is_main_process():
            count, size = remove_stale_temp_files(self.output_dir)
            if count:
                print(f"Removed {count} temporary files ({size / 1e6:.1f} MB) that interrupted saves left in "
                      f"{self.output_dir}")

    def __enter__(self) -> "Trainer":
        self.stop.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.__exit__()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        # RunCheckpoints holds self.state, a cycle that only the garbage collector would break. Until it did, the
        # loader's persistent workers would live on, and they ignore the SIGTERM that interpreter exit sends
        # them (see data_loaders._worker_init): drop the references so that the workers stop now.
        self.checkpoints = self.loader = None

    @property
    def tb(self) -> TensorboardLogger | None:
        """The TensorBoard writer (main process only), opened on first use."""
        if self._tb is None and is_main_process():
            self._tb = TensorboardLogger(self.cfg.log_dir or os.path.join(self.cfg.output_dir, "tb"),
                                               purge_step=self._purge_step)
        return self._tb

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.log_file, record)

    def stoppable(self, loader: Any) -> StopChecked:
        """``loader`` checked for a stop signal before each batch: for validation, testing, feature extraction."""
        return StopChecked(loader, self.stop, self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A phase after training (``name``: "the final test", ...): a stop signal in it ends the run as
        :class:`Interrupted`, pointing at ``checkpoint-latest`` when training saved one."""
        try:
            yield
        except StopRequested as e:
            saved = self.checkpoints.latest if self.checkpoints is not None else None
            raise Interrupted(e.signum, saved, name) from None

    # ------------------------------------------------------------ model

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """On the device, with the attention kernel, the EMA copy and ``torch.compile`` the flags ask for."""
        cfg = self.cfg
        model = model.to(self.device)
        attention = configure_attention(model, cfg.attn_impl, self.device, self.amp_dtype)
        if cfg.model_ema_decay is not None:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=cfg.model_ema_decay,
                                  device=torch.device("cpu") if cfg.model_ema_force_cpu else None)
        if cfg.compile:  # in place, so that the state dict keeps its names; after the EMA copy, a plain module
            model.compile(backend=cfg.compile)
        print(f"Attention: {attention}" + (f"; compiled with {cfg.compile}" if cfg.compile else "")
              + (f"; CPU allocator: {cpu_memory.allocator_settings()}" if self.device.type == "cpu" else ""))
        self.model = self.model_without_ddp = model
        return model

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model_without_ddp.parameters() if p.requires_grad)

    def setup_training(self, optimizer: torch.optim.Optimizer, loader: Any, micro_batch: int,
                       clips_per_step: int) -> None:
        """Wrap the prepared model for data parallelism (DDP or DeepSpeed) and set up the updates, schedules and
        checkpoints. ``loader``: the training loader (its sampler's ``batches_per_epoch`` sets the schedule);
        ``micro_batch``: clips per process per step; ``clips_per_step``: over all processes."""
        cfg = self.cfg
        self.loader, self.clips_per_step = loader, clips_per_step
        self.batches_per_epoch = loader.sampler.batches_per_epoch
        self.steps_per_epoch = self.batches_per_epoch // cfg.update_freq
        scaler = None
        if cfg.deepspeed_zero_stage is not None:
            from patches.train import deepspeed_engine as ds_utils
            self.engine, optimizer = ds_utils.initialize(self.model_without_ddp, optimizer, cfg.deepspeed_zero_stage,
                                                         cfg.amp, cfg.clip_grad, micro_batch, cfg.update_freq)
            self.model = self.engine
        else:
            if is_dist():
                self.model = data_parallel(self.model, self.device)
            scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.optimizer, self.scaler = optimizer, scaler
        self.updater = Updater(self.model, optimizer, cfg.update_freq, cfg.clip_grad, scaler, self.engine, self.ema)
        s = cfg.schedule
        self.lr_schedule = cosine_scheduler(s.lr, s.min_lr, cfg.epochs, self.steps_per_epoch, s.warmup_epochs,
                                                  s.warmup_lr, s.warmup_steps)
        wd_end = s.weight_decay if s.weight_decay_end is None else s.weight_decay_end
        self.wd_schedule = cosine_scheduler(s.weight_decay, wd_end, cfg.epochs, self.steps_per_epoch)
        self.checkpoints = RunCheckpoints(cfg.output_dir, self.state, self.batches_per_epoch, cfg.update_freq,
                                          every_steps=cfg.save_ckpt_every_steps, keep=cfg.keep_ckpts,
                                          engine=self.engine)

    # ------------------------------------------------------------ checkpoints

    def state(self, epoch: int, next_epoch: int = -1, next_batch: int = 0, full: bool = True) -> dict[str, Any]:
        """The checkpoint dict (a collective call when ``full``: it gathers every rank's RNG states).

        Not ``full``: weights, EMA and the progress extras only, for files that are tested, never resumed."""
        extra = dict(self.progress.extra)
        if self.ema is not None:
            extra["model_ema"] = self.ema.module.state_dict()
        if not full:
            return checkpoint_state(self.model_without_ddp, self.grid, self.flags, epoch, **extra)
        extra.update(position_fields(next_epoch, next_batch, self.batches_per_epoch, self.cfg.update_freq))
        return checkpoint_state(self.model_without_ddp, self.grid, self.flags, epoch,
                                None if self.engine else self.optimizer, self.scaler,
                                deepspeed=self.engine is not None, **extra)

    def save_weights(self, name: str, epoch: int) -> None:
        """``name`` in the output folder with the weights and progress extras only (main process)."""
        if is_main_process():
            state = self.state(epoch, full=False)
            path = save_checkpoint(self.output_dir / name, state)
            print_saved_and_export_safetensors(path, state, self.grid, self.flags, self.cfg.save_safetensors)

    def refuse_misfit(self, found: FoundCheckpoint | None, build_model: Callable[[], torch.nn.Module]) -> None:
        """Before any data or model is built: raise :class:`CheckpointError` unless ``found``'s weights fit the
        model ``build_model`` makes, built on the meta device (shapes only, no memory, no initialisation)."""
        if found is None or "model" not in found.state:  # (a DeepSpeed folder's weights are checked on loading)
            return
        with torch.device("meta"):
            skeleton = build_model()
        check_model_state(skeleton, found.state, found.path, self.cfg.model_name)

    def restore(self, found: FoundCheckpoint) -> None:
        """Continue from ``found``: weights, EMA, optimizer and scaler, RNG states and position."""
        state = found.state
        restore_training_state(found, self.model_without_ddp, self.cfg.model_name, self.optimizer, self.scaler,
                               self.ema, self.engine)
        epoch, batch = start_position(found.path, state, self.batches_per_epoch)
        self.progress = Progress(epoch, batch, self.progress.extra)
        self.pending_record = state.get("epoch_record") if batch >= self.batches_per_epoch else None
        print(f"Resumed from {found.path} (epoch {state['epoch']}); continuing at epoch {epoch}"
              + (", with its validation" if self.pending_record else f", batch {batch}" if batch else ""))
        self.forget_logs_from(epoch, epoch * self.steps_per_epoch + batch // self.cfg.update_freq)

    def forget_logs_from(self, epoch: int, step: int) -> None:
        """On resume: drop what an earlier attempt logged from ``epoch`` (``log.txt``) and global ``step``
        (TensorBoard's per-step scalars) on, so that the resumed run logs each epoch once."""
        if not is_main_process():
            return
        dropped = drop_jsonl_records(self.log_file, lambda r: r.get("epoch", -1) >= epoch)
        if dropped:
            print(f"Dropped {dropped} records of epoch {epoch} on from {self.log_file}: the resumed run logs them "
                  f"again")
        self._purge_step = step

    # ------------------------------------------------------------ training

    def fit(self, loss_fn: Callable[..., torch.Tensor],
            after_epoch: Callable[[int, dict[str, Any]], None] | None = None,
            with_position: bool = False) -> dict[str, Any]:
        """Train from the current position to ``epochs``. ``loss_fn(model, batch)`` is the task's loss (with
        ``with_position``: ``loss_fn(model, batch, StepPosition)``, for a loss that draws from where the step is);
        ``after_epoch(epoch, record)`` may validate and add to the epoch's ``log.txt`` record. Returns the last
        epoch's record."""
        cfg, record = self.cfg, {}
        start = time.time()
        for epoch in range(self.progress.epoch, cfg.epochs):
            first = self.progress.batch if epoch == self.progress.epoch else 0
            if first >= self.batches_per_epoch and self.pending_record is not None:
                record, self.pending_record = dict(self.pending_record), None  # trained before a stop in validation
            else:
                self.loader.sampler.set_epoch(epoch, first)
                stats = self.train_one_epoch(loss_fn, epoch, first, with_position)
                record = {**{f"train_{k}": v for k, v in stats.items()}, **self.loader.end_epoch(), "epoch": epoch,
                          "n_parameters": self.n_parameters}
            if after_epoch is not None:
                self.validate(after_epoch, epoch, record)
            self.end_epoch(epoch, record)
        print(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")
        if is_dist():
            torch.distributed.barrier()  # rank 0's last saves are on disk before any rank reads them
        return record

    def validate(self, after_epoch: Callable[[int, dict[str, Any]], None], epoch: int, record: dict[str, Any]
                 ) -> None:
        """``after_epoch``; on a stop signal during it (see :meth:`stoppable`), save the trained epoch with its
        record so far, and stop: the rerun validates the epoch again before going on."""
        try:
            after_epoch(epoch, record)
        except StopRequested as e:
            train_only = {k: v for k, v in record.items() if not k.startswith("val_")}
            path = self.checkpoints.save_latest(epoch, self.batches_per_epoch, epoch_record=train_only)
            raise Interrupted(e.signum, path, f"the validation of epoch {epoch}") from None

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """The epoch's checkpoint (``checkpoint-N`` when due, ``checkpoint-latest`` always), logs, and a stop
        if a signal came in during the epoch's last steps."""
        last = epoch + 1 == self.cfg.epochs
        due = (epoch + 1) % self.cfg.save_ckpt_freq == 0 or last
        path, state = self.checkpoints.end_of_epoch(epoch, epoch_file=due)
        if due:
            self.last_checkpoint = path
            if is_main_process():
                print_saved_and_export_safetensors(path, state, self.grid, self.flags, self.cfg.save_safetensors)
        self.log(record)
        if self.tb is not None:
            step = self.epoch_step(epoch)
            self.tb.update("epoch", step=step, **{k[len("train_"):]: v for k, v in record.items()
                                                  if k.startswith("train_")})
            self.tb.update("data", step=step, skipped_videos=record["skipped_videos"],
                           bad_video_files=record["bad_video_files"])
            self.tb.flush()
        if not last:
            self.stop_if_requested()

    def stop_if_requested(self) -> None:
        """At an epoch end, after its save: stop now if a signal came in during the epoch's last steps."""
        signum = self.stop.agreed(self.device)
        if signum:
            raise Interrupted(signum, self.checkpoints.latest)

    def after_update(self, epoch: int, batches_done: int) -> None:
        """After each optimizer update: on a stop signal save ``checkpoint-latest`` and stop, else save it when
        ``--save_ckpt_every_steps`` says so."""
        signum = self.stop.agreed(self.device)
        if signum:
            raise Interrupted(signum, self.checkpoints.save_latest(epoch, batches_done))
        self.checkpoints.save_if_due(epoch, batches_done)

    def epoch_step(self, epoch: int) -> int:
        """The global step of ``epoch``'s last update: where TensorBoard plots the epoch's figures, on the same
        axis as the per-step ones (and so that a resume's purge of later steps covers them too)."""
        return (epoch + 1) * self.steps_per_epoch - 1

    def train_one_epoch(self, loss_fn: Callable[..., torch.Tensor], epoch: int, first_batch: int,
                        with_position: bool = False) -> dict[str, float]:
        """One pass over the loader from local batch ``first_batch`` (the batches before it were trained
        before a resume). Every ``update_freq`` batches make one optimizer update."""
        cfg = self.cfg
        self.model.train()
        progress = ProgressLogger(f"Epoch [{epoch + 1}/{cfg.epochs}]", cfg.print_freq, self.clips_per_step)
        self.updater.start_epoch()
        for i, batch in enumerate(progress.log_every(self.loader), start=first_batch):
            step = epoch * self.steps_per_epoch + i // cfg.update_freq
            if i % cfg.update_freq == 0:
                apply_schedules(self.optimizer, float(self.lr_schedule[step]), float(self.wd_schedule[step]))
            update = (i + 1) % cfg.update_freq == 0
            with self.updater.accumulating(update):
                loss = loss_fn(self.model, batch, StepPosition(epoch, i)) if with_position else loss_fn(self.model, batch)
                grad_norm = self.updater(loss, update)
            loss_value = self.global_loss(loss, epoch, i, step)
            self.log_step(progress, step, loss_value, grad_norm)
            if update:
                self.after_update(epoch, i + 1)
        stats = progress.averages()
        if self.scaler is not None:
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
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        progress.update(loss=loss, lr=max(lrs), grad_norm=grad_norm)
        if self.tb is not None:
            self.tb.set_step(step)
            self.tb.update("train", loss=loss, lr=max(lrs), min_lr=min(lrs),
                           weight_decay=float(self.wd_schedule[step]), grad_norm=grad_norm,
                           loss_scale=self.updater.loss_scale, skipped_updates=self.updater.skipped)
