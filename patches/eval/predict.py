"""A classifier's answer for a video: what a checkpoint falls back to when it records no model or views, the
class probabilities averaged over a video's test views, and the top-k classes. Shared by run_inference.py and
the Python API (:mod:`patches.api`)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

# What extract_features.py, run_inference.py and patches.load assume of a checkpoint that records no model,
# grid or frame stride (VideoMAE's own files): VideoMAE's ViT-B at 16 x 224/16.
CHECKPOINT_FALLBACK: dict[str, Any] = {"model": "vit_base_patch16_224", "input_size": [224], "patch_size": 16,
                                       "num_frames": 16, "tubelet_size": 2, "pos_embed": "1d", "sampling_rate": 4}
# The test views a classifier is asked with when its checkpoint records none: VideoMAE's 5 clips x 3 crops.
TEST_VIEWS_FALLBACK: dict[str, int] = {"test_num_segment": 5, "test_num_crop": 3}


def recorded_test_views(ckpt: dict[str, Any]) -> tuple[int, int]:
    """(segments, crops) of the test the checkpoint's run recorded, else :data:`TEST_VIEWS_FALLBACK`'s."""
    recorded = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    return (int(recorded.get("test_num_segment", TEST_VIEWS_FALLBACK["test_num_segment"])),
            int(recorded.get("test_num_crop", TEST_VIEWS_FALLBACK["test_num_crop"])))


@torch.no_grad()
def class_probabilities(model: torch.nn.Module, views: torch.Tensor) -> torch.Tensor:
    """Views [B, V, C, T, H, W] -> [B, classes] on the CPU: each view's softmax, averaged over the video's views
    (as the fine-tuning test does)."""
    device = next(model.parameters()).device
    logits = model(views.flatten(0, 1).to(device)).float().view(*views.shape[:2], -1)
    return logits.softmax(-1).mean(1).cpu()


def top_classes(probs: torch.Tensor, names: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row of ``probs`` [B, classes]: the ``k`` likeliest as ``{"class", "index", "probability"}`` (6 digits)."""
    top = probs.topk(min(k, len(names)), dim=1)
    return [[{"class": names[c], "index": c, "probability": round(q, 6)} for c, q in zip(row_k, row_p)]
            for row_p, row_k in zip(top.values.tolist(), top.indices.tolist())]
