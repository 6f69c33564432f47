"""One epoch of masked-video pre-training."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_pretrain import mask_to_index, pixel_targets
from optim_factory import apply_schedules
from patch_grid import PatchGrid
from utils import ProgressLogger, TensorboardLogger, all_reduce_mean, amp_autocast
from video_transforms import normalize_batch

PIXEL_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN)
PIXEL_STD = torch.tensor(IMAGENET_DEFAULT_STD)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops before saving anything from this state."""


@dataclass
class PretrainStep:
    """What a pre-training step needs besides the batch."""

    grid: PatchGrid
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: Any = None  # torch.amp.GradScaler for fp16
    clip_grad: float | None = None
    normalize_target: bool = True
    deepspeed: bool = False  # the model is a DeepSpeed engine: it does backward, clipping, scaling and step


def prepare_batch(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips to the device and normalised there (uint8 from the loader; float clips are taken as already
    normalised), masks to indices on the host (no device sync), then to the device."""
    videos, enc_mask, dec_mask = batch
    visible = mask_to_index(enc_mask, select=False)
    target = mask_to_index(dec_mask, select=True)
    non_blocking = device.type == "cuda"
    videos = videos.to(device, non_blocking=non_blocking)
    if videos.dtype == torch.uint8:
        videos = normalize_batch(videos)
    return videos, visible.to(device, non_blocking=non_blocking), target.to(device, non_blocking=non_blocking)


def reconstruction_loss(model: torch.nn.Module, videos: torch.Tensor, visible: torch.Tensor, target: torch.Tensor,
                        cfg: PretrainStep) -> torch.Tensor:
    """Mean squared error between predicted and true pixels of the decoded tokens (in fp32)."""
    with torch.no_grad():
        targets = pixel_targets(videos, cfg.grid, PIXEL_MEAN, PIXEL_STD, cfg.normalize_target, index=target)
    with amp_autocast(cfg.device, cfg.amp_dtype):
        prediction = model(videos, visible, target)
    return F.mse_loss(prediction.float(), targets)


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   cfg: PretrainStep) -> torch.Tensor | None:
    """Backward, optional clipping, step. Returns the gradient norm when clipping."""
    if cfg.deepspeed:
        model.backward(loss)
        model.step()
        return model.get_global_grad_norm() if cfg.clip_grad else None
    optimizer.zero_grad(set_to_none=True)
    (cfg.scaler.scale(loss) if cfg.scaler is not None else loss).backward()
    return clip_and_step(model, optimizer, cfg.scaler, cfg.clip_grad)


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                  clip_grad: float | None) -> torch.Tensor | None:
    """After backward: optional gradient clipping (unscaled first under fp16), then the optimizer step.

    Returns the gradient norm when clipping. Shared by pre-training and fine-tuning.
    """
    grad_norm = None
    if scaler is not None:
        if clip_grad:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip_grad:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
    return grad_norm


def report_skipped(stats: dict[str, float], header: str, scaler: Any, skipped: int, unit: str = "steps") -> None:
    """Add an fp16 run's count of skipped optimizer steps to the epoch's stats, and say so when there were any."""
    if scaler is None:
        return
    stats["skipped_steps"] = skipped
    if skipped:
        print(f"{header}: {skipped} skipped {unit} (fp16 gradient overflow; the scaler lowered the loss scale "
              f"to {scaler.get_scale():g})", flush=True)


def scaler_skipped_step(scale_before: float, scale_after: float) -> bool:
    """Whether an fp16 GradScaler step was skipped: it lowers the loss scale exactly when the gradients held
    inf or NaN (and it then leaves the weights alone); a clean step keeps or raises the scale."""
    return scale_after < scale_before


def train_one_epoch(model: torch.nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, epoch: int,
                    cfg: PretrainStep, lr_schedule: np.ndarray, wd_schedule: np.ndarray, start_step: int,
                    header: str, print_freq: int = 10, tb_logger: TensorboardLogger | None = None,
                    clips_per_step: int = 1, first_batch: int = 0,
                    on_update: Callable[[int], None] | None = None) -> dict[str, float]:
    """Train over ``loader`` once; ``start_step`` is the global step of the epoch's first batch.

    ``first_batch``: batches of the epoch already trained before a resume (the loader starts after them).
    ``on_update(batches_done)`` runs after every update (checkpointing, stop signals).
    """
    model.train()
    progress = ProgressLogger(header, print_freq, clips_per_step)
    skipped = 0
    for i, batch in enumerate(progress.log_every(loader), start=first_batch):
        step = start_step + i
        apply_schedules(optimizer, float(lr_schedule[step]), float(wd_schedule[step]))
        videos, visible, target = prepare_batch(batch, cfg.device)
        loss = reconstruction_loss(model, videos, visible, target, cfg)
        scale_before = cfg.scaler.get_scale() if cfg.scaler is not None else None
        grad_norm = optimizer_step(loss, model, optimizer, cfg)
        # One host sync per step, after the update is queued: a bad value stops the run before any save.
        # Averaged over processes: the logged loss is the global batch's, and all ranks stop together.
        loss_value = all_reduce_mean(loss.item(), cfg.device)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, step {i} of the epoch (global step "
                                     f"{step}); stopping without saving, the last checkpoint on disk is intact")
        lrs = [g["lr"] for g in optimizer.param_groups]
        metrics = dict(loss=loss_value, lr=max(lrs), min_lr=min(lrs), weight_decay=float(wd_schedule[step]),
                       grad_norm=None if grad_norm is None else float(grad_norm),
                       loss_scale=cfg.scaler.get_scale() if cfg.scaler is not None else None)
        if scale_before is not None:
            # fp16 overflow is expected now and then (the scaler backs off); count it rather than stop
            metrics["skipped_step"] = float(scaler_skipped_step(scale_before, metrics["loss_scale"]))
            skipped += int(metrics["skipped_step"])
        progress.update(loss=loss_value, lr=metrics["lr"], grad_norm=metrics["grad_norm"])
        if tb_logger is not None:
            tb_logger.set_step(step)
            tb_logger.update("train", **metrics)
        if on_update is not None:
            on_update(i + 1)
    stats = progress.averages()
    report_skipped(stats, header, cfg.scaler, skipped)
    return stats
