"""VideoMAE's ``optim_factory``: optimizers and their schedules, over :mod:`patches.train.optim`."""
from __future__ import annotations

from patches.train.optim import (OptimizerConfig, build_optimizer, fast_update_kwargs, apply_schedules,
                                 cosine_scheduler)
