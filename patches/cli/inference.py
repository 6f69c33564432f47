"""Classify video files with a fine-tuned checkpoint: the top-k labels with probabilities.

    python run_inference.py VIDEO [VIDEO ...] --checkpoint CKPT [--classes classes.txt] [--json]

VIDEO: video files, folders of videos or frame folders, or list files. CKPT: a fine-tuned checkpoint in any
format PATCHES reads; the model, grid and test views default to those it records. Class names come from
``--classes`` (one per line, in label order), else from the checkpoint (a transformers folder's labels).
Each video's class probabilities are the softmax averaged over its views, as the fine-tuning test does.

Exit status: 0 when every video was classified; 1 when some could not be read (each named on stderr, the others
printed); 2 for a usage error (a flag, the checkpoint, the class names).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
import torch
from torch.utils.data import DataLoader

from patches.checkpoints.models import model_from_checkpoint
from patches.checkpoints.reading import read_any_checkpoint
from patches.cli.exits import exits_on_error
from patches.config import flags as cli_args
from patches.config.checkpoint_defaults import checkpoint_flag_values
from patches.config.checks import FlagError
from patches.errors import SomeInputsFailed
from patches.eval.features import VideoViews, collate_views, find_videos, head_classes, read_class_names
from patches.eval.predict import (CHECKPOINT_FALLBACK, TEST_VIEWS_FALLBACK, class_probabilities, recorded_test_views,
                                  top_classes)
from patches.grid import GridError, PatchGrid
from patches.utils.devices import resolve_device


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


@dataclass(frozen=True)
class InferenceConfig:
    """One inference run, resolved: the flags with the checkpoint's model, grid and test views filled in."""

    checkpoint: str
    device: str | None
    model: str
    pos_embed: str
    use_mean_pooling: bool | None
    grid: PatchGrid
    sampling_rate: int
    test_num_segment: int
    test_num_crop: int
    short_side_size: int | None
    fname_tmpl: str
    batch_size: int
    num_workers: int
    topk: int
    json: bool


def check_checkpoint(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The checkpoint, its head and the class names, refused with a :class:`FlagError` naming what is wrong."""
    if not Path(args.checkpoint).exists():
        raise FlagError([f"--checkpoint {args.checkpoint} does not exist"])
    ckpt = read_any_checkpoint(args.checkpoint).contents
    classes = head_classes(ckpt)
    if not classes:
        raise FlagError([f"--checkpoint {args.checkpoint} has no classification head (a pre-training or probe "
                         f"checkpoint?); run_inference.py needs a fine-tuned classifier"])
    if args.classes and not Path(args.classes).is_file():
        raise FlagError([f"--classes {args.classes} does not exist"])
    names = read_class_names(args.classes, ckpt, args.checkpoint)
    if names is None:
        raise FlagError([f"--checkpoint {args.checkpoint} records no class names: pass --classes FILE, one name "
                         f"per line in label order ({classes} lines)"])
    if len(names) != classes:
        raise FlagError([f"{args.classes or args.checkpoint} names {len(names)} classes, the checkpoint's head "
                         f"has {classes}"])
    return ckpt, names


def prepare(args: argparse.Namespace) -> tuple[InferenceConfig, list[str], list]:
    """Every check before the model is built: checkpoint, head, class names, grid, videos. Returns the resolved
    run, the class names and the videos."""
    ckpt, names = check_checkpoint(args)
    views = {flag: recorded for flag, recorded in zip(("test_num_segment", "test_num_crop"), recorded_test_views(ckpt))
             if getattr(args, flag) is None}
    try:
        values, grid = checkpoint_flag_values(args, ckpt, FALLBACK)
        videos = find_videos(args.videos, args.data_root)
    except (GridError, ValueError) as e:
        raise FlagError([str(e)]) from None
    flags = {**vars(args), **views, **values}
    resolved = {"grid": grid, "use_mean_pooling": flags.get("use_mean_pooling")}
    run = InferenceConfig(**{name: resolved[name] if name in resolved else flags[name]
                             for name in InferenceConfig.__dataclass_fields__})
    return run, names, videos


@torch.no_grad()
def classify(run: InferenceConfig, names: list[str], videos: list) -> list[dict[str, Any]]:
    """Per video: its path and top-k (label, probability), or the reason it could not be read."""
    device = resolve_device(run.device)
    model = model_from_checkpoint(run.checkpoint, run.model, run.grid, run.pos_embed, run.use_mean_pooling is not False,
                                  num_classes=len(names)).model.to(device)
    dataset = VideoViews(videos, run.grid, run.sampling_rate, run.test_num_segment, run.test_num_crop,
                         run.short_side_size, run.fname_tmpl)
    loader = DataLoader(dataset, batch_size=run.batch_size, num_workers=run.num_workers, collate_fn=collate_views)
    results: dict[int, dict[str, Any]] = {}
    for views, indices, unreadable in loader:
        for i, reason in unreadable:
            results[i] = {"video": videos[i].path, "error": reason}
        if views is None:
            continue
        for i, top in zip(indices, top_classes(class_probabilities(model, views), names, run.topk)):
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


@exits_on_error
def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Classify; returns each video's top-k, as printed. Raises :class:`SomeInputsFailed` (exit status 1), after
    printing the others, when some videos could not be read."""
    run, names, videos = prepare(args)
    results = classify(run, names, videos)
    if run.json:
        for r in results:
            print(json.dumps(r))
    else:
        print_table(results, f"{run.test_num_segment} x {run.test_num_crop}")
        labelled = [r for r in results if r.get("label") is not None]
        if labelled:  # videos from a list file with labels
            right = sum(r["top"][0]["index"] == r["label"] for r in labelled)
            print(f"\nTop-1 is the listed label for {right} of {len(labelled)} videos "
                  f"({100 * right / len(labelled):.1f}%)")
    failed = [(r["video"], r["error"]) for r in results if "error" in r]
    if failed:
        raise SomeInputsFailed(failed, len(results))
    return results


def cli() -> None:
    """The console script: flags from the command line."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    cli()
