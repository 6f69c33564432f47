"""Extract per-video features with a trained encoder: pooled features, and optionally the token map.

    python extract_features.py --finetune CKPT --data_path LIST_OR_FOLDER [--data_root DIR] --output_dir DIR

CKPT: any checkpoint PATCHES reads (pre-training, fine-tuning, .safetensors, a transformers folder); the model
and grid default to those it records. LIST_OR_FOLDER: a list file (``path [label]`` lines, or VideoMAE's
``folder num_frames label``), a folder of videos, or a folder of frame folders. The output folder gets
``shard-NNNNN.safetensors`` (or ``.npy``) files of ``--shard_size`` videos, each with a ``.json`` record,
and ``index.json`` naming every video's shard and row and listing the unreadable videos. A rerun skips
finished shards; under torchrun each rank writes its own shards.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from patches.utils import cpu_memory  # noqa: F401  (before torch: allocator settings torch reads once, see cpu_memory.py)
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from patches.config import flags as cli_args
from patches.utils.devices import autocast_dtype, resolve_device
from patches.utils.distributed import get_rank, get_world_size, is_dist, is_main_process
from patches.utils.files import write_atomically
from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.folder import remove_stale_temp_files
from patches.checkpoints.models import model_from_checkpoint
from patches.checkpoints.reading import read_any_checkpoint
from patches.grid import GridError, PatchGrid
from patches.train.trainer import launch
from patches.eval.predict import CHECKPOINT_FALLBACK
from patches.eval.features import (FEATURES_KEY, VideoViews, apply_checkpoint_defaults, check_feature_folder, collate_views, encode_views, encoder_reference, find_videos, inputs_digest, shard_done, write_index, write_shard)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PATCHES feature extraction", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--finetune", required=True, help="the encoder's checkpoint (any format PATCHES reads)")
    p.add_argument("--data_path", required=True, nargs="+", help="list file(s), video folder(s) or video files")
    p.add_argument("--data_root", default=None, help="folder the list files' paths are relative to")
    p.add_argument("--output_dir", required=True, help="where the shards and index.json go")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    cli_args.add_grid_args(p, "vit_base_patch16_224")
    p.add_argument("--sampling_rate", default=None, type=int, help="frame stride (default: the checkpoint's, else 4)")
    p.add_argument("--test_num_segment", default=1, type=int, help="temporal clips per video")
    p.add_argument("--test_num_crop", default=1, type=int, help="spatial crops per clip")
    p.add_argument("--short_side_size", default=None, type=int, help="short side before the crops")
    p.add_argument("--fname_tmpl", default="img_{:05}.jpg", help="frame file names in frame folders")
    p.add_argument("--save_tokens", action="store_true", help="also store every view's token map")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "npy"], help="shard file format")
    p.add_argument("--shard_size", default=1000, type=int, help="videos per shard")
    p.add_argument("--batch_size", default=8, type=int, help="videos per forward pass (times the views)")
    p.add_argument("--num_workers", default=4, type=int, help="decoding worker processes")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast dtype")
    p.add_argument("--model_key", default="model|module", help="key(s) of the state dict in the checkpoint")
    # Grid and model: unset means the checkpoint's (see video_features.apply_checkpoint_defaults).
    p.set_defaults(model=None, input_size=None, patch_size=None, num_frames=None, tubelet_size=None, pos_embed=None)
    return p


FALLBACK = CHECKPOINT_FALLBACK


def prepare(args: argparse.Namespace) -> tuple[dict[str, Any], PatchGrid, list, dict[str, Any]]:
    """Checks before any heavy work: the checkpoint, the grid, the videos, the output folder."""
    problems = [f"--{f} must be at least 1, got {getattr(args, f)}" for f in
                ("test_num_segment", "test_num_crop", "shard_size", "batch_size") if getattr(args, f) < 1]
    problems += cli_args.writable_dir_problems(args.output_dir, "--output_dir")
    if not Path(args.finetune).exists():
        problems.append(f"--finetune {args.finetune} does not exist")
    cli_args.fail_if(problems)
    try:
        ckpt = read_any_checkpoint(args.finetune).contents
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        grid = apply_checkpoint_defaults(args, ckpt, FALLBACK)
        videos = find_videos(args.data_path, args.data_root)
    except (GridError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    key = {"encoder": encoder_reference(args.finetune), "model": args.model, "grid": grid.to_dict(),
           "sampling_rate": args.sampling_rate, "views": [args.test_num_segment, args.test_num_crop],
           "short_side_size": args.short_side_size, "tokens": args.save_tokens, "format": args.format,
           "shard_size": args.shard_size, "inputs": inputs_digest(videos)}
    try:
        check_feature_folder(Path(args.output_dir), key)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return ckpt, grid, videos, key


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Extract; returns the index (what ``index.json`` holds)."""
    _, grid, videos, key = prepare(args)
    return launch(lambda device: run(args, grid, videos, key, device), args.device)


def run(args: argparse.Namespace, grid: PatchGrid, videos: list, key: dict[str, Any], device: str | None
        ) -> dict[str, Any]:
    out, device = Path(args.output_dir), resolve_device(device)
    model = model_from_checkpoint(args.finetune, args.model, grid, args.pos_embed,
                                  getattr(args, "use_mean_pooling", None) is not False, num_classes=0,
                                  model_key=args.model_key, verbose=is_main_process()).model.to(device)
    amp = autocast_dtype(args.amp, device)
    shards = (len(videos) + args.shard_size - 1) // args.shard_size
    if is_main_process():
        count, _ = remove_stale_temp_files(out)  # of a killed run's unfinished shard
        if count:
            print(f"Removed {count} temporary files an interrupted run left in {out}")
        write_atomically(out / FEATURES_KEY, lambda tmp: tmp.write_text(json.dumps(key, indent=1)))
    mine = [n for n in range(get_rank(), shards, get_world_size())]
    todo = [n for n in mine if not shard_done(out, n)]
    print(f"{len(videos)} videos at {grid.describe()}, {args.test_num_segment} x {args.test_num_crop} views: "
          f"{shards} shards, {len(mine) - len(todo)} already done")
    total = sum(len(videos[n * args.shard_size:(n + 1) * args.shard_size]) for n in todo)
    with tqdm(total=total, unit="video", disable=not is_main_process()) as bar:
        for n in todo:
            extract_shard(args, model, videos[n * args.shard_size:(n + 1) * args.shard_size], n, grid, amp, bar)
    if is_dist():
        torch.distributed.barrier()
    index = write_index(out, key, shards) if is_main_process() else {}
    if is_main_process():
        print(f"Wrote {index['videos']} videos' features to {out} ({len(index['unreadable'])} unreadable, listed in "
              f"index.json)")
    return index


def extract_shard(args: argparse.Namespace, model: torch.nn.Module, videos: list, number: int, grid: PatchGrid,
                  amp: torch.dtype | None, bar: Any) -> None:
    """One shard: every view of its videos through the encoder, written atomically with its record."""
    dataset = VideoViews(videos, grid, args.sampling_rate, args.test_num_segment, args.test_num_crop,
                         args.short_side_size, args.fname_tmpl)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_views)
    pooled, tokens, rows, bad = [], [], [], []
    for views, indices, unreadable in loader:
        bad += [{"path": videos[i].path, "reason": reason} for i, reason in unreadable]
        if views is not None:
            p, t = encode_views(model, views, amp)
            pooled.append(p.cpu().numpy())
            if args.save_tokens:
                tokens.append(t.cpu().numpy())
            rows += indices
        bar.update(len(indices) + len(unreadable))
    views_count, dim = args.test_num_segment * args.test_num_crop, model.embed_dim
    arrays = {"pooled": np.concatenate(pooled) if pooled else np.zeros((0, views_count, dim), np.float32)}
    if args.save_tokens:
        per_view = grid.shape if model.cls_token is None else (grid.num_tokens + 1,)  # a cls token: kept flat
        shape = (-1, views_count, *per_view, dim)
        arrays["tokens"] = (np.concatenate(tokens) if tokens else np.zeros((0, views_count, grid.num_tokens, dim),
                                                                          np.float32)).reshape(shape)
    for i in bad:
        print(f"warning: unreadable, left out: {i['path']} ({i['reason']})")
    write_shard(Path(args.output_dir), number, arrays, {"videos": [videos[i].path for i in rows],
                                                        "labels": [videos[i].label for i in rows],
                                                        "unreadable": bad}, args.format)


def cli() -> None:
    """The console script: flags from the command line."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    cli()
