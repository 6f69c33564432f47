"""VideoMAE's linear learning-rate scaling rule, as a pure function of the flags and the process count."""
from __future__ import annotations

import argparse
from dataclasses import dataclass


def total_batch_size(args: argparse.Namespace, world_size: int) -> int:
    """Videos per optimizer update over all processes, as VideoMAE counts them: batch x accumulation x processes."""
    return args.batch_size * getattr(args, "update_freq", 1) * world_size


@dataclass(frozen=True)
class ScaledRates:
    """The learning rates a run uses: ``--lr``, ``--min_lr`` and ``--warmup_lr`` after scaling."""

    lr: float
    min_lr: float
    warmup_lr: float
    total_batch: int  # videos per optimizer update over all processes
    report: str  # the lines to print, in VideoMAE's words


def scaled_rates(args: argparse.Namespace, world_size: int) -> ScaledRates:
    """VideoMAE's linear scaling rule: ``--lr``, ``--min_lr`` and ``--warmup_lr`` are for a total batch of 256
    and are multiplied by total batch / 256 (``--lr_scale_by clips``: by total clips / 256). Checkpoints record
    the scaled rates, the ones the run used."""
    total = total_batch_size(args, world_size)
    counted = total * (args.num_sample if args.lr_scale_by == "clips" else 1)
    lr, min_lr, warmup_lr = (getattr(args, name) * counted / 256 for name in ("lr", "min_lr", "warmup_lr"))
    report = (f"LR = {lr:.8f} (--lr {args.lr:g} x {counted} / 256, counting the {args.lr_scale_by}); "
              f"min_lr = {min_lr:.8g}, warmup_lr = {warmup_lr:.8g}\n"
              f"Batch size = {total} ({args.batch_size} x update_freq {getattr(args, 'update_freq', 1)} x "
              f"{world_size} processes; {total * args.num_sample} clips per update)")
    return ScaledRates(lr=lr, min_lr=min_lr, warmup_lr=warmup_lr, total_batch=total, report=report)
