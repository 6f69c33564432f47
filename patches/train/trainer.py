"""The training driver shared by pre-training and fine-tuning: :class:`Trainer`, over its components.

It owns, once for both: the device and precision, the model's wrappers (EMA, ``torch.compile``, DDP or DeepSpeed),
restoring a checkpoint, the epochs and the checkpoint policy. Its components: :mod:`patches.train.launch` (the
process group and the exit status of every way a run ends), :mod:`patches.train.config` (what it needs of the
flags, the schedules), :mod:`patches.train.epoch_loop` (one epoch's steps), :mod:`patches.train.run_logs`
(``log.txt`` and TensorBoard) and :mod:`patches.train.run_record` (where a run stands, what it records). A run
script keeps what is its own: its flags, its data, the loss of a batch and, for fine-tuning, validation, the best
checkpoint and the final test.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from patches.checkpoints.errors import CheckpointSaveError
from patches.checkpoints.folder import FoundCheckpoint, remove_stale_temp_files
from patches.checkpoints.model_state import check_model_state
from patches.checkpoints.resume_state import position_fields, start_position
from patches.checkpoints.run_checkpoints import RunCheckpoints, restore_training_state
from patches.checkpoints.writing import checkpoint_state, print_saved_and_export_safetensors, save_checkpoint
from patches.grid import PatchGrid
from patches.models.attention import configure_attention
from patches.train import compiling
from patches.train.config import Schedule, StepSchedules, TrainerConfig
from patches.train.epoch_loop import EpochLoop, LossFn
from patches.train.launch import launch, record_stop
from patches.train.rng import set_deterministic
from patches.train.run_logs import RunLogs
from patches.train.run_record import Progress, RunRecord
from patches.train.stop_signals import Interrupted, StopChecked, StopRequested, StopSignals
from patches.train.update_sync import agree_on_errors
from patches.train.updater import Updater, check_finite_weights
from patches.utils import cpu_memory
from patches.utils.devices import autocast_dtype, enable_tf32, resolve_device, seed_everything
from patches.utils.distributed import data_parallel, get_rank, is_dist, is_main_process
from patches.utils.progress import TensorboardLogger

__all__ = ["Progress", "RunRecord", "Schedule", "Trainer", "TrainerConfig", "launch", "record_stop"]


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
        enable_tf32(self.device, cfg.deterministic)
        seed_everything(cfg.seed + get_rank())
        self.output_dir = Path(cfg.output_dir)
        self.logs = RunLogs(cfg.output_dir, cfg.log_dir)
        self.model = self.model_without_ddp = self.ema = self.engine = self.updater = None
        self.num_grids = 1
        self.loader = self.checkpoints = self.epoch_loop = None
        self.progress = Progress(epoch=cfg.start_epoch)
        self.last_checkpoint: Path | None = None
        self.stop = StopSignals()  # from entering to leaving: training, validation and testing alike
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
        self.logs.close()
        # RunCheckpoints holds self.state, a cycle that only the garbage collector would break. Until it did, the
        # loader's persistent workers would live on, and they ignore the SIGTERM that interpreter exit sends
        # them (see patches.data.loaders._worker_init): drop the references so that the workers stop now.
        self.checkpoints = self.loader = self.epoch_loop = None

    @property
    def tb(self) -> TensorboardLogger | None:
        """The TensorBoard writer (main process only), opened on first use."""
        return self.logs.tb

    @property
    def log_file(self) -> Path:
        """``log.txt``: one JSON record per epoch, and the final test's."""
        return self.logs.log_file

    def log(self, record: dict[str, Any]) -> None:
        """``record`` as one more line of ``log.txt``."""
        self.logs.append(record)

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

    def prepare_model(self, model: torch.nn.Module, grids: Sequence[PatchGrid] = ()) -> torch.nn.Module:
        """On the device, with the attention kernel, the EMA copy and ``torch.compile`` the flags ask for.
        ``grids``: the grids a flexible run draws from; their tables and matrices are built here, before any
        compiled step (see :mod:`patches.train.compiling`)."""
        cfg = self.cfg
        model = model.to(self.device)
        attention = configure_attention(model, cfg.attn_impl, self.device, self.amp_dtype)
        if cfg.model_ema_decay is not None:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=cfg.model_ema_decay,
                                  device=torch.device("cpu") if cfg.model_ema_force_cpu else None)
        compiling.prepare_grids(model, grids)
        self.num_grids = max(len(grids), 1)
        # in place, so that the state dict keeps its names; after the EMA copy, a plain module
        blocks = cfg.deepspeed_zero_stage is not None
        if cfg.compile:
            compiling.compile_model(model, cfg.compile, self.num_grids, blocks)
        compiled = " (each block)" if blocks else ""
        print(f"Attention: {attention}" + (f"; compiled with {cfg.compile}{compiled}" if cfg.compile else "")
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
        self.optimizer = self.wrap_for_data_parallel(optimizer, micro_batch)
        self.updater = Updater(self.model, self.optimizer, cfg.update_freq, cfg.clip_grad, self.scaler, self.engine,
                               self.ema)
        self.schedules = StepSchedules.of(cfg.schedule, cfg.epochs, self.steps_per_epoch)
        self.checkpoints = RunCheckpoints(cfg.output_dir, self.state, self.batches_per_epoch, cfg.update_freq,
                                          every_steps=cfg.save_ckpt_every_steps, keep=cfg.keep_ckpts,
                                          engine=self.engine)
        self.epoch_loop = EpochLoop(self.model, self.optimizer, self.updater, loader, self.schedules, self.logs,
                                    self.after_update, self.device, cfg.epochs, self.steps_per_epoch,
                                    cfg.update_freq, cfg.print_freq, clips_per_step, self.scaler is not None,
                                    self.stop)

    def wrap_for_data_parallel(self, optimizer: torch.optim.Optimizer, micro_batch: int) -> torch.optim.Optimizer:
        """``self.model`` as DeepSpeed's engine or (several processes) DDP, and ``self.scaler`` for fp16; returns
        the optimizer to step (DeepSpeed's own wrapper of ``optimizer`` under DeepSpeed)."""
        cfg = self.cfg
        self.scaler = None
        if cfg.deepspeed_zero_stage is not None:
            from patches.train import deepspeed_engine as ds_utils
            self.engine, optimizer = ds_utils.initialize(self.model_without_ddp, optimizer, cfg.deepspeed_zero_stage,
                                                         cfg.amp, cfg.clip_grad, micro_batch, cfg.update_freq)
            self.model = self.engine
            return optimizer
        if is_dist():
            self.model = data_parallel(self.model, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        return optimizer

    # ------------------------------------------------------------ checkpoints

    def state(self, epoch: int, next_epoch: int = -1, next_batch: int = 0, full: bool = True) -> dict[str, Any]:
        """The checkpoint dict (a collective call when ``full``: it gathers every rank's RNG states).

        Not ``full``: weights, EMA and the progress extras only, for files that are tested, never resumed.
        Raises :class:`NonFiniteWeightsError` rather than return NaN or infinite weights (same on every rank)."""
        check_finite_weights(self.model_without_ddp)
        if self.ema is not None:
            check_finite_weights(self.ema.module, "the EMA model")
        extra = self.progress.run.checkpoint_fields()
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
        self.progress = Progress(epoch, batch, self.progress.run)
        self.pending_record = state.get("epoch_record") if batch >= self.batches_per_epoch else None
        print(f"Resumed from {found.path} (epoch {state['epoch']}); continuing at epoch {epoch}"
              + (", with its validation" if self.pending_record else f", batch {batch}" if batch else ""))
        self.forget_logs_from(epoch, epoch * self.steps_per_epoch + batch // self.cfg.update_freq)

    def forget_logs_from(self, epoch: int, step: int) -> None:
        """On resume: drop what an earlier attempt logged from ``epoch`` and global ``step`` on (see
        :meth:`RunLogs.forget_from`)."""
        self.logs.forget_from(epoch, step)

    # ------------------------------------------------------------ training

    def fit(self, loss_fn: LossFn, after_epoch: Callable[[int, dict[str, Any]], None] | None = None
            ) -> dict[str, Any]:
        """Train from the current position to ``epochs``. ``loss_fn(model, batch, position)`` is the task's loss
        (``position``: the step's :class:`~patches.data.samplers.StepPosition`, for a loss that draws from where
        the step is); ``after_epoch(epoch, record)`` may validate and add to the epoch's ``log.txt`` record.
        Returns the last epoch's record."""
        cfg, record = self.cfg, {}
        start = time.time()
        for epoch in range(self.progress.epoch, cfg.epochs):
            first = self.progress.batch if epoch == self.progress.epoch else 0
            if first >= self.batches_per_epoch and self.pending_record is not None:
                record, self.pending_record = dict(self.pending_record), None  # trained before a stop in validation
            else:
                self.loader.sampler.set_epoch(epoch, first)
                stats = self.epoch_loop.train_one_epoch(loss_fn, epoch, first)
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
        try:
            path, state = self.checkpoints.end_of_epoch(epoch, epoch_file=due)
        except CheckpointSaveError as error:  # (rank 0's alone: every rank stops with it)
            self.epoch_loop.errors.add(error)
        agree_on_errors(self.epoch_loop.errors, self.device)
        if due:
            self.last_checkpoint = path
            if is_main_process():
                print_saved_and_export_safetensors(path, state, self.grid, self.flags, self.cfg.save_safetensors)
        self.logs.epoch_end(record, self.epoch_step(epoch))
        if not last:
            self.stop_if_requested()

    def stop_if_requested(self) -> None:
        """At an epoch end, after its save: stop now if a signal came in during the epoch's last steps."""
        signum = self.stop.agreed(self.device)
        if signum:
            raise Interrupted(signum, self.checkpoints.latest)

    def after_update(self, epoch: int, batches_done: int, signum: int) -> None:
        """After each optimizer update: on a stop signal the ranks agreed on (``signum``) save ``checkpoint-latest``
        and stop, else save it when ``--save_ckpt_every_steps`` says so. A failed save (on rank 0 alone) stops every
        rank at the next agreement."""
        if signum:
            raise Interrupted(signum, self.checkpoints.save_latest(epoch, batches_done))
        try:
            self.checkpoints.save_if_due(epoch, batches_done)
        except CheckpointSaveError as error:
            self.epoch_loop.errors.add(error)

    def epoch_step(self, epoch: int) -> int:
        """The global step of ``epoch``'s last update: where TensorBoard plots the epoch's figures, on the same
        axis as the per-step ones (and so that a resume's purge of later steps covers them too)."""
        return (epoch + 1) * self.steps_per_epoch - 1
