"""What the training driver needs of a run's flags (:class:`TrainerConfig`, with its :class:`Schedule`), and the
per-step learning-rate and weight-decay values a schedule makes (:class:`StepSchedules`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patches.train.optim import cosine_scheduler


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


@dataclass(frozen=True)
class StepSchedules:
    """The learning rate and weight decay of every global optimizer step of a run."""

    lr: np.ndarray
    weight_decay: np.ndarray

    @classmethod
    def of(cls, s: Schedule, epochs: int, steps_per_epoch: int) -> "StepSchedules":
        """``s`` over ``epochs`` of ``steps_per_epoch`` steps."""
        lr = cosine_scheduler(s.lr, s.min_lr, epochs, steps_per_epoch, s.warmup_epochs, s.warmup_lr, s.warmup_steps)
        wd_end = s.weight_decay if s.weight_decay_end is None else s.weight_decay_end
        return cls(lr, cosine_scheduler(s.weight_decay, wd_end, epochs, steps_per_epoch))
