"""Scoring a classifier: single-view accuracy and loss (:func:`evaluate`, the validation after each epoch), and
the multi-view test: every view's logits into a file per process (:func:`final_test`), then merged into per-video
accuracy (:func:`merge_test_results`)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from patches.utils.devices import amp_autocast
from patches.utils.distributed import is_dist, is_main_process
from patches.utils.files import write_atomically
from patches.utils.progress import ProgressLogger


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have their label among the top-k scores, for each k (k capped at the class count)."""
    return topk_hits(logits, labels, ks).tolist()


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """:func:`topk_correct` as a tensor on the logits' device (nothing read back to the host)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([hits[:, :k].any(1).sum() for k in ks])


@torch.no_grad()
def evaluate(loader: Iterable, model: torch.nn.Module, device: torch.device, amp_dtype: torch.dtype | None = None,
             header: str = "Val", sharded: bool = True) -> dict[str, float]:
    """Single-view accuracy and loss over ``loader``; when distributed and ``sharded`` (each process holds
    its share of the data) summed over processes."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    progress = ProgressLogger(header, print_freq=max(1, len(loader) // 4 if hasattr(loader, "__len__") else 20))
    for batch in progress.log_every(loader):  # summed on the device: no host read per batch
        videos, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        with amp_autocast(device, amp_dtype):
            logits = model(videos).float()
        loss = F.cross_entropy(logits, labels, reduction="sum")
        totals[:3] += torch.cat([loss.double().reshape(1), topk_hits(logits, labels).double()])
        totals[3] += len(labels)
    if sharded and is_dist():
        torch.distributed.all_reduce(totals)
    loss, top1, top5, n = totals.tolist()
    n = max(n, 1)
    stats = {"loss": loss / n, "acc1": 100 * top1 / n, "acc5": 100 * top5 / n, "count": int(n)}
    if is_main_process():
        print(f"{header}: acc@1 {stats['acc1']:.2f}  acc@5 {stats['acc5']:.2f}  loss {stats['loss']:.4f}  "
              f"({stats['count']} clips)")
    return stats


@torch.no_grad()
def final_test(loader: Iterable, model: torch.nn.Module, device: torch.device, out_file: str | Path,
               amp_dtype: torch.dtype | None = None, print_freq: int = 20) -> None:
    """Score every test view and write one JSON line per view: video id, view, label, logits. The file appears
    complete or not at all (written under a temporary name, renamed at the end)."""
    model.eval()
    progress = ProgressLogger("Test", print_freq=print_freq)

    def write(tmp: Path) -> None:  # a stop or an error leaves no partial file
        with open(tmp, "w", encoding="utf-8") as f:
            for videos, labels, video_ids, views in progress.log_every(loader):
                with amp_autocast(device, amp_dtype):
                    logits = model(videos.to(device)).float().cpu()
                for logit, label, vid, view in zip(logits, labels.tolist(), video_ids.tolist(), views.tolist()):
                    f.write(json.dumps({"id": vid, "view": view, "label": label, "logits": logit.tolist()}) + "\n")
    write_atomically(out_file, write)


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
