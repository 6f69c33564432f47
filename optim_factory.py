"""VideoMAE's ``optim_factory``: optimizers and their schedules, over :mod:`patches.train.optim`."""
from __future__ import annotations

from patches.train.optim import OptimizerConfig, apply_schedules, build_optimizer, cosine_scheduler, fast_update_kwargs
