"""A training run's checkpoints: when and where they are saved (``checkpoint-N`` at epoch ends,
``checkpoint-latest`` at every save and every ``every_steps`` updates, pruning to ``keep``), as ``.pth`` files
or, with a DeepSpeed engine, folders; and putting a resumed run's weights, EMA, optimizer, scaler and RNG
states back. The driver (patches.train.trainer.Trainer) decides when an epoch ends and when a stop signal
ends the run; this module only handles the files."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from patches.checkpoints.file_format import LATEST
from patches.checkpoints.folder import FoundCheckpoint, link_atomically, prune_epoch_checkpoints
from patches.checkpoints.model_state import apply_pos_reference, load_model_state
from patches.checkpoints.resume_state import restore_rng_states
from patches.checkpoints.writing import save_checkpoint
from patches.utils.distributed import is_main_process


class RunCheckpoints:
    """A run's saves in ``output_dir``.

    ``make_state(epoch, next_epoch, next_batch)`` builds the checkpoint dict on every rank (it gathers RNG
    states, a collective). With a DeepSpeed ``engine`` checkpoints are folders (see deepspeed_folder.py).
    """

    def __init__(self, output_dir: str | Path, make_state: Callable[[int, int, int], dict[str, Any]],
                 batches_per_epoch: int, update_freq: int = 1, every_steps: int = 0, keep: int = 0,
                 engine: Any = None) -> None:
        self.output_dir, self.make_state = Path(output_dir), make_state
        self.batches_per_epoch, self.update_freq = batches_per_epoch, update_freq
        self.steps_per_epoch = batches_per_epoch // update_freq
        self.every_steps, self.keep, self.engine = every_steps, keep, engine

    def _write(self, name: str, state: dict[str, Any]) -> Path:
        if self.engine is not None:
            from patches.checkpoints.deepspeed_folder import save_folder
            return save_folder(self.engine, self.output_dir, name, state)
        path = self.output_dir / f"{name}.pth"
        if is_main_process():
            save_checkpoint(path, state)
        return path

    def _link_latest(self, src: Path) -> None:
        if self.engine is not None:
            from patches.checkpoints.deepspeed_folder import link_folder
            link_folder(self.output_dir, src.name, LATEST)
        elif is_main_process():
            link_atomically(src, self.output_dir / f"{LATEST}.pth")

    @property
    def latest(self) -> Path:
        """Where ``checkpoint-latest`` is (a file, or a DeepSpeed folder)."""
        return self.output_dir / (LATEST if self.engine is not None else f"{LATEST}.pth")

    def save_latest(self, epoch: int, batches_done: int, **fields: Any) -> Path:
        """``checkpoint-latest`` at ``batches_done`` batches into ``epoch``, with ``fields`` added."""
        state = {**self.make_state(epoch, epoch, batches_done), **fields}
        return self._write(LATEST, state)

    def end_of_epoch(self, epoch: int, epoch_file: bool) -> tuple[Path, dict[str, Any]]:
        """Save after a finished epoch: ``checkpoint-{epoch}`` when ``epoch_file``, ``checkpoint-latest`` always."""
        state = self.make_state(epoch, epoch + 1, 0)
        if not epoch_file:
            return self._write(LATEST, state), state
        path = self._write(f"checkpoint-{epoch}", state)
        self._link_latest(path)
        if is_main_process():
            for p in prune_epoch_checkpoints(self.output_dir, self.keep):
                print(f"Removed {p} (--keep_ckpts {self.keep})")
        return path, state

    def save_if_due(self, epoch: int, batches_done: int) -> Path | None:
        """After an optimizer update: ``checkpoint-latest`` when ``every_steps`` updates have passed mid-epoch."""
        step = epoch * self.steps_per_epoch + batches_done // self.update_freq
        if not (self.every_steps and step % self.every_steps == 0 and batches_done < self.batches_per_epoch):
            return None
        path = self.save_latest(epoch, batches_done)
        print(f"Saved {path} (epoch {epoch}, batch {batches_done}, step {step})")
        return path


def restore_training_state(found: FoundCheckpoint, model: torch.nn.Module, model_name: str,
                           optimizer: torch.optim.Optimizer | None = None, scaler: Any = None, ema: Any = None,
                           engine: Any = None) -> None:
    """Put ``found``'s weights (exactly, see model_state.py), EMA, optimizer, scaler and this rank's RNG states
    back; with a DeepSpeed ``engine`` its folder's partitions. Raises :class:`CheckpointError` when they do not
    fit. (Where training continues is resume_state.start_position's.)"""
    state = found.state
    if engine is not None:
        from patches.checkpoints.deepspeed_folder import load_folder
        load_folder(engine, found.path.parent)
        apply_pos_reference(model, state)
    else:
        load_model_state(model, state, found.path, model_name)
        if optimizer is not None and "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    if ema is not None and "model_ema" in state:
        ema.module.load_state_dict(state["model_ema"])
        apply_pos_reference(ema.module, state)
    restore_rng_states(state)
