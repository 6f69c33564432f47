"""One frozen configuration per run, resolved once from the parsed flags.

:func:`patches.config.pretraining.resolve_pretraining` and :func:`patches.config.finetuning.resolve_finetuning`
check the flags and derive, once, everything a run computes from them: the grid or grids, the precision, the
demo data fallback, the scaled learning rates, the class count. The result is a frozen :class:`RunConfig`
holding the library's small configs. The parsed ``args`` are only read: nothing writes to them.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from patches.config.library_configs import loader_config
from patches.config.lr_scaling import ScaledRates
from patches.data.loaders import LoaderConfig
from patches.errors import PatchesError
from patches.train.optim import OptimizerConfig
from patches.train.trainer import TrainerConfig


def with_values(args: argparse.Namespace, values: Mapping[str, Any]) -> argparse.Namespace:
    """A new namespace: ``args``' flags with ``values`` in place of theirs (``args`` is left as it is)."""
    return argparse.Namespace(**{**vars(args), **values})


def frozen_flags(flags: argparse.Namespace) -> Mapping[str, Any]:
    """A read-only copy of resolved flags: what the run's checkpoints record."""
    return MappingProxyType(dict(vars(flags)))


@dataclass(frozen=True)
class ResumeConfig:
    """Where a run looks for a checkpoint to resume from."""

    resume: str  # --resume: a file (a folder under DeepSpeed), or ""
    auto_resume: bool  # the newest checkpoint in output_dir
    output_dir: str
    folders: bool  # DeepSpeed's checkpoint folders instead of files


@dataclass(frozen=True)
class ModelConfig:
    """The model to build: a registered name and the keyword arguments of ``create_video_model``."""

    name: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class RunConfig:
    """What both run scripts resolve. ``flags``: every flag after resolution, read-only, as checkpoints record
    them (the grid flags filled in, ``--amp`` concrete, the LRs scaled, the demo data's paths)."""

    flags: Mapping[str, Any]
    trainer: TrainerConfig
    optimizer: OptimizerConfig
    loader: LoaderConfig
    rates: ScaledRates
    resume: ResumeConfig
    model: ModelConfig
    world_size: int
    batch_size: int
    num_sample: int
    update_freq: int
    device: str | None  # --device as given; launch picks the process's own
    deepspeed: bool
    check_data: bool
    num_workers: int

    def recorded_flags(self) -> argparse.Namespace:
        """A fresh namespace of the resolved flags, for the driver to record in checkpoints."""
        return argparse.Namespace(**self.flags)

    def check_world_size(self, processes: int) -> None:
        """The LRs were scaled for ``world_size`` processes, read from the launcher's environment before the
        process group existed: refuse a process group of another size rather than train at other rates."""
        if processes != self.world_size:
            raise PatchesError(f"the run was resolved for {self.world_size} processes but its process group has "
                               f"{processes}")

    @property
    def clips_per_step(self) -> int:
        """Clips per forward pass over all processes."""
        return self.batch_size * self.num_sample * self.world_size


def common_fields(flags: argparse.Namespace, rates: ScaledRates, trainer: TrainerConfig,
                  optimizer: OptimizerConfig, model: ModelConfig, world_size: int) -> dict[str, Any]:
    """The :class:`RunConfig` fields both scripts fill the same way from their resolved ``flags``."""
    return dict(
        flags=frozen_flags(flags), trainer=trainer, optimizer=optimizer, loader=loader_config(flags), rates=rates,
        resume=ResumeConfig(flags.resume, flags.auto_resume, flags.output_dir, flags.enable_deepspeed),
        model=model, world_size=world_size, batch_size=flags.batch_size, num_sample=flags.num_sample,
        update_freq=flags.update_freq, device=flags.device, deepspeed=flags.enable_deepspeed,
        check_data=flags.check_data, num_workers=flags.num_workers)


def scaled_flags(flags: argparse.Namespace, rates: ScaledRates) -> argparse.Namespace:
    """``flags`` with the scaled learning rates, as the run uses and records them."""
    return with_values(flags, {"lr": rates.lr, "min_lr": rates.min_lr, "warmup_lr": rates.warmup_lr})
