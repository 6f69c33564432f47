"""Fine-tuning epochs, validation, and multi-view testing with per-rank result files."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

import utils
from engine_for_pretraining import NonFiniteLossError, clip_and_step, report_skipped, scaler_skipped_step
from optim_factory import apply_schedules


@dataclass
class FinetuneStep:
    """What a fine-tuning step needs besides the batch."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    clip_grad: float | None = None
    update_freq: int = 1
    mixup_fn: Callable | None = None
    model_ema: Any = None
    deepspeed: bool = False  # the model is a DeepSpeed engine: it does backward, accumulation, clipping and step


def train_one_epoch(model: torch.nn.Module, criterion: torch.nn.Module, loader: Iterable,
                    optimizer: torch.optim.Optimizer, epoch: int, cfg: FinetuneStep, lr_schedule: np.ndarray,
                    wd_schedule: np.ndarray, start_step: int, header: str, print_freq: int = 10,
                    tb_logger: utils.TensorboardLogger | None = None, clips_per_step: int = 1,
                    first_batch: int = 0, on_update: Callable[[int], None] | None = None) -> dict[str, float]:
    """One epoch; ``start_step`` is the global optimizer step of the first update of the epoch.

    ``first_batch``: batches of the epoch already trained before a resume (a multiple of ``update_freq``;
    the loader starts after them). ``on_update(batches_done)`` runs after every optimizer update.
    """
    model.train()
    progress = utils.ProgressLogger(header, print_freq, clips_per_step)
    skipped = 0
    if not cfg.deepspeed:
        optimizer.zero_grad(set_to_none=True)
    for i, (videos, labels) in enumerate(progress.log_every(loader), start=first_batch):
        step = start_step + i // cfg.update_freq
        if i % cfg.update_freq == 0:
            apply_schedules(optimizer, float(lr_schedule[step]), float(wd_schedule[step]))
        non_blocking = cfg.device.type == "cuda"
        videos = videos.to(cfg.device, non_blocking=non_blocking)
        labels = labels.to(cfg.device, non_blocking=non_blocking)
        if cfg.mixup_fn is not None:
            videos, labels = cfg.mixup_fn(videos, labels)
        loss = classification_loss(model, criterion, videos, labels, cfg)
        update = (i + 1) % cfg.update_freq == 0
        scale_before = cfg.scaler.get_scale() if cfg.scaler is not None and update else None
        grad_norm = backward_and_update(loss, model, optimizer, cfg, update)
        if scale_before is not None and scaler_skipped_step(scale_before, cfg.scaler.get_scale()):
            skipped += 1  # fp16 overflow: the scaler skipped this update and lowered its scale
        loss_value = utils.all_reduce_mean(loss.item(), cfg.device)  # global batch's loss; all ranks stop together
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, step {i} of the epoch; stopping "
                                     f"without saving, the last checkpoint on disk is intact")
        lrs = [g["lr"] for g in optimizer.param_groups]
        progress.update(loss=loss_value, lr=max(lrs), grad_norm=grad_norm)
        if tb_logger is not None:
            tb_logger.set_step(step)
            tb_logger.update("train", loss=loss_value, lr=max(lrs), min_lr=min(lrs),
                             weight_decay=float(wd_schedule[step]), grad_norm=grad_norm)
        if update and on_update is not None:
            on_update(i + 1)
    stats = progress.averages()
    report_skipped(stats, header, cfg.scaler, skipped, unit="updates")
    return stats


def classification_loss(model: torch.nn.Module, criterion: torch.nn.Module, videos: torch.Tensor,
                        labels: torch.Tensor, cfg: FinetuneStep) -> torch.Tensor:
    """The model under autocast; the loss in fp32."""
    with utils.amp_autocast(cfg.device, cfg.amp_dtype):
        logits = model(videos)
    return criterion(logits.float(), labels)


def backward_and_update(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        cfg: FinetuneStep, update: bool) -> float | None:
    """Accumulate ``loss``'s gradient; on ``update`` also clip, step, and update the EMA. Returns the grad norm."""
    if cfg.deepspeed:
        # DeepSpeed divides by its gradient_accumulation_steps (= update_freq) and steps on the boundary.
        model.set_gradient_accumulation_boundary(update)
        model.backward(loss)
        model.step()
        if not update:
            return None
        if cfg.model_ema is not None:
            cfg.model_ema.update(utils.unwrap_model(model))
        norm = model.get_global_grad_norm() if cfg.clip_grad else None
        return None if norm is None else float(norm)
    scaled = loss / cfg.update_freq
    scaled = cfg.scaler.scale(scaled) if cfg.scaler is not None else scaled
    scaled.backward()
    if not update:
        return None
    grad_norm = clip_and_step(model, optimizer, cfg.scaler, cfg.clip_grad)
    optimizer.zero_grad(set_to_none=True)
    if cfg.model_ema is not None:
        cfg.model_ema.update(model)
    return None if grad_norm is None else float(grad_norm)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have their label among the top-k scores, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(1).sum()) for k in ks]


@torch.no_grad()
def evaluate(loader: Iterable, model: torch.nn.Module, device: torch.device, amp_dtype: torch.dtype | None = None,
             header: str = "Val", sharded: bool = True) -> dict[str, float]:
    """Single-view accuracy and loss over ``loader``; when distributed and ``sharded`` (each process holds
    its share of the data) summed over processes."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    progress = utils.ProgressLogger(header, print_freq=max(1, len(loader) // 4 if hasattr(loader, "__len__") else 20))
    for batch in progress.log_every(loader):
        videos, labels = batch[0].to(device), batch[1].to(device)
        with utils.amp_autocast(device, amp_dtype):
            logits = model(videos).float()
        top1, top5 = topk_correct(logits, labels)
        totals += torch.tensor([F.cross_entropy(logits, labels, reduction="sum").item(), top1, top5, len(labels)],
                               dtype=torch.float64, device=device)
    if sharded and utils.is_dist():
        torch.distributed.all_reduce(totals)
    loss, top1, top5, n = totals.tolist()
    n = max(n, 1)
    stats = {"loss": loss / n, "acc1": 100 * top1 / n, "acc5": 100 * top5 / n, "count": int(n)}
    if utils.is_main_process():
        print(f"{header}: acc@1 {stats['acc1']:.2f}  acc@5 {stats['acc5']:.2f}  loss {stats['loss']:.4f}  "
              f"({stats['count']} clips)")
    return stats


@torch.no_grad()
def final_test(loader: Iterable, model: torch.nn.Module, device: torch.device, out_file: str | Path,
               amp_dtype: torch.dtype | None = None) -> None:
    """Score every test view and write one JSON line per view: video id, view, label, logits."""
    model.eval()
    progress = utils.ProgressLogger("Test", print_freq=20)
    with open(out_file, "w", encoding="utf-8") as f:
        for videos, labels, video_ids, views in progress.log_every(loader):
            with utils.amp_autocast(device, amp_dtype):
                logits = model(videos.to(device)).float().cpu()
            for logit, label, vid, view in zip(logits, labels.tolist(), video_ids.tolist(), views.tolist()):
                f.write(json.dumps({"id": vid, "view": view, "label": label, "logits": logit.tolist()}) + "\n")


def merge_test_results(files: Iterable[str | Path]) -> dict[str, float]:
    """Average softmax over each video's views (views seen twice, e.g. from padded samplers, count once)."""
    per_video: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    labels: dict[int, int] = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                rec = json.loads(line)
                logits = np.asarray(rec["logits"], dtype=np.float64)
                probs = np.exp(logits - logits.max())
                per_video[rec["id"]][rec["view"]] = probs / probs.sum()
                labels[rec["id"]] = rec["label"]
    if not per_video:
        raise ValueError("no test results to merge")
    scores = torch.tensor(np.stack([np.mean(list(v.values()), axis=0) for v in per_video.values()]))
    targets = torch.tensor([labels[i] for i in per_video])
    top1, top5 = topk_correct(scores, targets)
    n = len(per_video)
    return {"acc1": 100 * top1 / n, "acc5": 100 * top5 / n, "videos": n,
            "views_per_video": float(np.mean([len(v) for v in per_video.values()]))}
