"""The demo data fallback: without ``--data_path`` a run reads the built-in demo dataset."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def demo_data_values(args: argparse.Namespace, finetuning: bool) -> dict[str, Any]:
    """Without ``--data_path``, the data flags' values that point at the built-in demo dataset (generated on
    first use); with it, nothing (an empty dict). ``args`` is only read.

    Pre-training reads its unlabelled clip list; fine-tuning its train/val/test lists as ``--data_set
    custom``, without flip unless ``--flip`` is given (a mirrored "move left" clip is a "move right" clip).
    """
    if args.data_path is not None:
        return {}
    dry_run = getattr(args, "dry_run", False)
    if dry_run:  # a dry run generates nothing: the paths the demo data will have
        from pathlib import Path
        demo = {"root": Path(args.demo_root), "pretrain": Path(args.demo_root) / "pretrain.csv"}
    else:
        from patches.data.demo import ensure_demo_dataset
        demo = ensure_demo_dataset(args.demo_root)
    print(f"No --data_path: using the demo dataset in {demo['root']}", file=sys.stderr if dry_run else sys.stdout)
    if not finetuning:
        # The labelled training clips and the unlabelled ones: pre-training needs no labels.
        return {"data_path": str(demo["pretrain"]), "data_root": str(demo["root"])}
    values: dict[str, Any] = {"data_path": str(demo["root"]), "data_set": "custom"}
    if args.flip is None:
        values["flip"] = False
    if args.data_root is None:
        values["data_root"] = str(demo["root"])
    return values
