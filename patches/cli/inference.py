"""Classify video files with a fine-tuned checkpoint: the top-k labels with probabilities.

    python run_inference.py VIDEO [VIDEO ...] --checkpoint CKPT [--classes classes.txt] [--json]

VIDEO: video files, folders of videos or frame folders, or list files. CKPT: a fine-tuned checkpoint in any
format PATCHES reads; the model, grid and test views default to those it records. Class names come from
``--classes`` (one per line, in label order), else from the checkpoint (a transformers folder's labels).
Each video's class probabilities are the softmax averaged over its views, as the fine-tuning test does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from patches.utils import cpu_memory  # noqa: F401  (before torch: allocator settings torch reads once, see cpu_memory.py)
import torch
from torch.utils.data import DataLoader

from patches.config import flags as cli_args
from patches.utils.devices import resolve_device
from patches.grid import GridError
from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.models import model_from_checkpoint
from patches.checkpoints.reading import read_any_checkpoint
from patches.eval.features import (VideoViews, apply_checkpoint_defaults, collate_views, find_videos, head_classes, read_class_names)
from patches.eval.predict import CHECKPOINT_FALLBACK, TEST_VIEWS_FALLBACK, class_probabilities, recorded_test_views, top_classes


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PATCHES inference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", help="video files, folders or list files")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned checkpoint (any format PATCHES reads)")
    p.add_argument("--classes", default=None, help="class names, one per line in label order")
    p.add_argument("--json", action="store_true", help="print one JSON object per video instead of a table")
    p.add_argument("--topk", default=5, type=int, help="labels shown per video")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--data_root", default=None, help="folder a list file's paths are relative to")
    cli_args.add_grid_args(p, "vit_base_patch16_224")
    p.add_argument("--sampling_rate", default=None, type=int, help="frame stride (default: the checkpoint's)")
    p.add_argument("--test_num_segment", default=None, type=int, help="temporal clips per video (default: the "
                                                                           "checkpoint's, else 5)")
    p.add_argument("--test_num_crop", default=None, type=int, help="spatial crops per clip (default: the "
                                                                        "checkpoint's, else 3)")
    p.add_argument("--short_side_size", default=None, type=int, help="short side before the crops")
    p.add_argument("--fname_tmpl", default="img_{:05}.jpg", help="frame file names in frame folders")
    p.add_argument("--batch_size", default=4, type=int, help="videos per forward pass (times the views)")
    p.add_argument("--num_workers", default=2, type=int, help="decoding worker processes")
    p.set_defaults(model=None, input_size=None, patch_size=None, num_frames=None, tubelet_size=None, pos_embed=None)
    return p


FALLBACK = {**CHECKPOINT_FALLBACK, **TEST_VIEWS_FALLBACK}


def prepare(args: argparse.Namespace) -> tuple[dict[str, Any], list[str], list]:
    """Every check before the model is built: checkpoint, head, class names, grid, videos."""
    if not Path(args.checkpoint).exists():
        raise SystemExit(f"error: --checkpoint {args.checkpoint} does not exist")
    try:
        ckpt = read_any_checkpoint(args.checkpoint).contents
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    classes = head_classes(ckpt)
    if not classes:
        raise SystemExit(f"error: --checkpoint {args.checkpoint} has no classification head (a pre-training or "
                         f"probe checkpoint?); run_inference.py needs a fine-tuned classifier")
    if args.classes and not Path(args.classes).is_file():
        raise SystemExit(f"error: --classes {args.classes} does not exist")
    names = read_class_names(args.classes, ckpt, args.checkpoint)
    if names is None:
        raise SystemExit(f"error: --checkpoint {args.checkpoint} records no class names: pass --classes FILE, "
                         f"one name per line in label order ({classes} lines)")
    if len(names) != classes:
        raise SystemExit(f"error: {args.classes or args.checkpoint} names {len(names)} classes, the checkpoint's head "
                         f"has {classes}")
    for flag, recorded in zip(("test_num_segment", "test_num_crop"), recorded_test_views(ckpt)):
        if getattr(args, flag) is None:
            setattr(args, flag, recorded)
    try:
        args.grid = apply_checkpoint_defaults(args, ckpt, FALLBACK)
        videos = find_videos(args.videos, args.data_root)
    except (GridError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    return ckpt, names, videos


@torch.no_grad()
def classify(args: argparse.Namespace, names: list[str], videos: list) -> list[dict[str, Any]]:
    """Per video: its path and top-k (label, probability), or the reason it could not be read."""
    device = resolve_device(args.device)
    try:
        model = model_from_checkpoint(args.checkpoint, args.model, args.grid, args.pos_embed,
                                      getattr(args, "use_mean_pooling", None) is not False, num_classes=len(names),
                                      model_key=getattr(args, "model_key", "model|module")).model.to(device)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    dataset = VideoViews(videos, args.grid, args.sampling_rate, args.test_num_segment, args.test_num_crop,
                         args.short_side_size, args.fname_tmpl)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_views)
    results: dict[int, dict[str, Any]] = {}
    for views, indices, unreadable in loader:
        for i, reason in unreadable:
            results[i] = {"video": videos[i].path, "error": reason}
        if views is None:
            continue
        for i, top in zip(indices, top_classes(class_probabilities(model, views), names, args.topk)):
            results[i] = {"video": videos[i].path, "label": videos[i].label, "top": top}
    return [results[i] for i in sorted(results)]


def print_table(results: list[dict[str, Any]], views: str) -> None:
    print(f"| video | top-1 | p | others ({views} views per video) |")
    print("|---|---|---|---|")
    for r in results:
        name = Path(r["video"]).name
        if "error" in r:
            print(f"| {name} | unreadable | | {r['error']} |")
            continue
        best, rest = r["top"][0], r["top"][1:]
        print(f"| {name} | {best['class']} | {best['probability']:.3f} | "
              + ", ".join(f"{o['class']} {o['probability']:.3f}" for o in rest) + " |")


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    _, names, videos = prepare(args)
    results = classify(args, names, videos)
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        print_table(results, f"{args.test_num_segment} x {args.test_num_crop}")
        labelled = [r for r in results if r.get("label") is not None]
        if labelled:  # videos from a list file with labels
            right = sum(r["top"][0]["index"] == r["label"] for r in labelled)
            print(f"\nTop-1 is the listed label for {right} of {len(labelled)} videos "
                  f"({100 * right / len(labelled):.1f}%)")
    return results


def cli() -> None:
    """The console script: flags from the command line."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    cli()
