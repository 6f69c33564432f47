"""DataLoaders: training (resumable order, per-item seeds), evaluation (sharded without padding) and
pre-training, each wrapped in a :class:`data_health.BadVideoTracker` that reports unreadable videos."""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from patches.data.datasets import (MaskGenerator, PretrainingDataConfig, VideoMAEPretrainDataset,
                                   build_pretraining_dataset, collate_fn_for)
from patches.data.device_transforms import CollateCrops
from patches.data.health import BadVideoTracker
from patches.data.samplers import ResumableSampler, SeededItems, ShardSampler
from patches.data.unreadable import CollateWithBad
from patches.errors import UsageError
from patches.grid import PatchGrid
from patches.train.stop_signals import STOP_SIGNALS
from patches.utils.distributed import get_rank, get_world_size


class BatchLargerThanData(UsageError):
    """One global batch (``--batch_size`` x ``--update_freq`` x processes) holds more than all the videos."""


@dataclass(frozen=True)
class LoaderConfig:
    """``batch_size`` items per process and batch, ``num_workers`` worker processes, ``pin_memory`` (used on
    CUDA only), the ``seed`` of the training order and items, and ``max_bad_fraction``: the share of the
    videos that may be unreadable before the run stops."""

    batch_size: int
    num_workers: int
    pin_memory: bool
    seed: int
    max_bad_fraction: float


def _worker_init(_: int) -> None:
    # Slurm signals every process of a job step, DataLoader workers included: the main process
    # decides when to stop, a worker killed by the signal would crash it before it can save.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def train_loader(dataset: Dataset, config: LoaderConfig, collate_fn: Callable | None, device: torch.device,
                 batches_multiple: int = 1, persistent_workers: bool = False) -> DataLoader:
    """The training DataLoader: :class:`resume.SeededItems` in :class:`resume.ResumableSampler` order,
    ``config.batch_size`` items per process. The loader has its own generator, so iterating it never draws
    from torch's global RNG."""
    sampler = ResumableSampler(len(dataset), config.batch_size, get_world_size(),  # type: ignore[arg-type]
                               get_rank(), seed=config.seed, batches_multiple=batches_multiple)
    return DataLoader(SeededItems(dataset, config.seed), sampler=sampler, batch_size=config.batch_size,
                      num_workers=config.num_workers, pin_memory=config.pin_memory and device.type == "cuda",
                      drop_last=True, collate_fn=collate_fn, worker_init_fn=_worker_init,
                      generator=torch.Generator().manual_seed(config.seed),
                      persistent_workers=persistent_workers and config.num_workers > 0)


def classification_train_loader(dataset: Dataset, config: LoaderConfig, num_sample: int, device: torch.device,
                                update_freq: int, source: str) -> BadVideoTracker:
    """The training loader of a classification dataset (``dataset.records``), in whole optimizer updates of
    ``update_freq`` batches; unreadable videos are reported as those of ``source``."""
    dataset.report_bad = True  # type: ignore[attr-defined]
    loader = train_loader(dataset, config, CollateWithBad(collate_fn_for(num_sample)), device,
                          batches_multiple=update_freq)
    return BadVideoTracker(loader, len(dataset.records), config.max_bad_fraction, source)  # type: ignore[attr-defined]


def evaluation_loader(dataset: Dataset, config: LoaderConfig, device: torch.device, sharded: bool,
                      source: str) -> BadVideoTracker:
    """Every item of a classification dataset once, in order; with ``sharded`` each process takes its share
    (:class:`resume.ShardSampler`). Unreadable videos are left out of the batches (never replaced) and reported
    as those of ``source``; they never stop the run (the figures say how many were left out)."""
    dataset.report_bad = True  # type: ignore[attr-defined]
    dataset.replace_unreadable = False  # type: ignore[attr-defined]
    if sharded:
        sampler = ShardSampler(len(dataset), get_world_size(), get_rank())  # type: ignore[arg-type]
    else:
        sampler = torch.utils.data.SequentialSampler(dataset)  # type: ignore[assignment]
    loader = DataLoader(dataset, sampler=sampler, batch_size=config.batch_size, num_workers=config.num_workers,
                        pin_memory=config.pin_memory and device.type == "cuda",
                        collate_fn=CollateWithBad(collate_fn_for(1)))
    return BadVideoTracker(loader, len(dataset.records), 1.0, source, sharded=sharded,  # type: ignore[attr-defined]
                           fate="left out of the figures")


def pretraining_loader(data: PretrainingDataConfig, config: LoaderConfig, grid: PatchGrid,
                       mask_generator: MaskGenerator, device: torch.device, update_freq: int = 1,
                       crops_to_device: bool | None = None) -> tuple[VideoMAEPretrainDataset, BadVideoTracker]:
    """The pre-training dataset of ``data`` and its training loader, in whole updates of ``update_freq`` batches.
    On CUDA (or with ``crops_to_device``: the loader bench's ``device`` pipeline) its batches' clips are
    :class:`device_transforms.YuvCrops` (the step converts and resizes them there).

    Raises :class:`BatchLargerThanData` when one global batch (``batch_size`` x processes) holds more than all
    the videos.
    """
    dataset = build_pretraining_dataset(data, grid, mask_generator)
    dataset.report_bad = True  # unreadable videos travel with the batches to the tracker below
    # on CUDA the workers only decode and cut: crops are resized and normalised batched on the device
    dataset.crops_to_device = device.type == "cuda" if crops_to_device is None else crops_to_device
    collate = CollateCrops(grid.input_size) if dataset.crops_to_device else collate_fn_for(data.num_sample)
    loader = train_loader(dataset, config, CollateWithBad(collate), device, batches_multiple=update_freq,
                          persistent_workers=True)
    tracker = BadVideoTracker(loader, len(dataset), config.max_bad_fraction, data.data_path)
    if tracker.sampler.batches_per_epoch == 0:
        accumulation = f"--update_freq {update_freq} x " if update_freq > 1 else ""
        raise BatchLargerThanData(f"--batch_size {config.batch_size} x {accumulation}{get_world_size()} "
                                  f"processes is larger than the {len(dataset)} videos in {data.data_path}")
    return dataset, tracker
