"""The fine-tuning loss, validation, and multi-view testing with per-rank result files."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

import utils


@dataclass(frozen=True)
class Classification:
    """The fine-tuning loss of a batch ``(videos, labels)``: mixup/cutmix when set, the model under autocast,
    ``criterion`` in fp32."""

    criterion: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None = None
    mixup_fn: Callable | None = None

    def __call__(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        non_blocking = self.device.type == "cuda"
        videos = batch[0].to(self.device, non_blocking=non_blocking)
        labels = batch[1].to(self.device, non_blocking=non_blocking)
        if self.mixup_fn is not None:
            videos, labels = self.mixup_fn(videos, labels)
        with utils.amp_autocast(self.device, self.amp_dtype):
            logits = model(videos)
        return self.criterion(logits.float(), labels)


def video_mixup(mixup: float, cutmix: float, cutmix_minmax: list[float] | None, prob: float, switch_prob: float,
                mode: str, smoothing: float, num_classes: int) -> Callable | None:
    """timm's Mixup/CutMix for clips (``--mixup --cutmix --cutmix_minmax --mixup_prob ...``), None when off."""
    if not (mixup > 0 or cutmix > 0 or cutmix_minmax is not None):
        return None
    from timm.data import Mixup

    mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, cutmix_minmax=cutmix_minmax, prob=prob,
                switch_prob=switch_prob, mode=mode, label_smoothing=smoothing, num_classes=num_classes)

    def mix_video(videos: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # timm's Mixup expects images: fold time into channels so cutmix cuts the same box from every frame.
        b, c, t, h, w = videos.shape
        mixed, soft = mix(videos.reshape(b, c * t, h, w), labels)
        return mixed.reshape(b, c, t, h, w), soft
    return mix_video


def classification_criterion(mixup_fn: Callable | None, smoothing: float) -> torch.nn.Module:
    """Soft-target cross-entropy after mixup, else label smoothing, else plain cross-entropy."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixup_fn is not None:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return torch.nn.CrossEntropyLoss()


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
               amp_dtype: torch.dtype | None = None, print_freq: int = 20) -> None:
    """Score every test view and write one JSON line per view: video id, view, label, logits. The file appears
    complete or not at all (written under a temporary name, renamed at the end)."""
    model.eval()
    progress = utils.ProgressLogger("Test", print_freq=print_freq)

    def write(tmp: Path) -> None:  # a stop or an error leaves no partial file
        with open(tmp, "w", encoding="utf-8") as f:
            for videos, labels, video_ids, views in progress.log_every(loader):
                with utils.amp_autocast(device, amp_dtype):
                    logits = model(videos.to(device)).float().cpu()
                for logit, label, vid, view in zip(logits, labels.tolist(), video_ids.tolist(), views.tolist()):
                    f.write(json.dumps({"id": vid, "view": view, "label": label, "logits": logit.tolist()}) + "\n")
    utils.write_atomically(out_file, write)


def merge_test_results(files: Iterable[str | Path], views_per_video: int | None = None) -> dict[str, Any]:
    """Average softmax over each video's views (views seen twice, e.g. from padded samplers, count once).

    With ``views_per_video`` only videos with all their views are scored; ``incomplete`` lists the ids of the
    others (some views unreadable)."""
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
    incomplete = sorted(i for i, v in per_video.items() if views_per_video and len(v) != views_per_video)
    for i in incomplete:
        del per_video[i]
    if not per_video:
        raise ValueError("no test results to merge")
    scores = torch.tensor(np.stack([np.mean(list(v.values()), axis=0) for v in per_video.values()]))
    targets = torch.tensor([labels[i] for i in per_video])
    top1, top5 = topk_correct(scores, targets)
    n = len(per_video)
    return {"acc1": 100 * top1 / n, "acc5": 100 * top5 / n, "videos": n,
            "views_per_video": float(np.mean([len(v) for v in per_video.values()])), "incomplete": incomplete}
