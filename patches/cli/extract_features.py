"""Extract per-video features with a trained encoder: pooled features, and optionally the token map.

    python extract_features.py --finetune CKPT --data_path LIST_OR_FOLDER [--data_root DIR] --output_dir DIR

CKPT: any checkpoint PATCHES reads (pre-training, fine-tuning, .safetensors, a transformers folder); the model
and grid default to those it records. LIST_OR_FOLDER: a list file (``path [label]`` lines, or VideoMAE's
``folder num_frames label``), a folder of videos, or a folder of frame folders. The output folder gets
``shard-NNNNN.safetensors`` (or ``.npy``) files of ``--shard_size`` videos, each with a ``.json`` record,
and ``index.json`` naming every video's shard and row and listing the unreadable videos. A rerun skips
finished shards; under torchrun the ranks share the shards (on a rerun, those left) evenly.

Exit status: 0 when every video's features are written; 1 when some videos could not be read (each named on
stderr and in ``index.json``; the others are written); 2 for a usage error.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from patches.checkpoints.folder import remove_stale_temp_files
from patches.checkpoints.models import model_from_checkpoint
from patches.checkpoints.reading import read_any_checkpoint
from patches.cli.exits import exits_on_error
from patches.config import checks
from patches.config import flags as cli_args
from patches.config.checkpoint_defaults import checkpoint_flag_values
from patches.errors import SomeInputsFailed, UsageError
from patches.eval.features import (FEATURES_KEY, VideoViews, check_feature_folder, collate_views, encode_views,
                                   encoder_reference, find_videos, inputs_digest, patient_group, shards_left,
                                   share_of_shards, write_index, write_shard)
from patches.eval.predict import CHECKPOINT_FALLBACK
from patches.grid import GridError, PatchGrid
from patches.train.trainer import launch
from patches.utils.devices import autocast_dtype, concrete_amp, enable_tf32, resolve_device
from patches.utils.distributed import is_main_process
from patches.utils.files import write_atomically


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
    p.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                   help="autocast dtype; auto: the training default (bf16 on GPUs that have it, fp16 on older GPUs, "
                        "none on CPU)")
    p.add_argument("--model_key", default="model|module", help="key(s) of the state dict in the checkpoint")
    # Grid and model: unset means the checkpoint's (see config.checkpoint_defaults.checkpoint_flag_values).
    p.set_defaults(model=None, input_size=None, patch_size=None, num_frames=None, tubelet_size=None, pos_embed=None)
    return p


FALLBACK = CHECKPOINT_FALLBACK


@dataclass(frozen=True)
class ExtractionConfig:
    """One extraction, resolved: the flags with the checkpoint's model and grid filled in, and the grid."""

    finetune: str
    output_dir: str
    device: str | None
    model: str
    pos_embed: str
    use_mean_pooling: bool | None
    model_key: str
    grid: PatchGrid
    sampling_rate: int
    test_num_segment: int
    test_num_crop: int
    short_side_size: int | None
    fname_tmpl: str
    save_tokens: bool
    format: str
    shard_size: int
    batch_size: int
    num_workers: int
    amp: str


class FeatureFolderError(UsageError):
    """``--output_dir`` holds another extraction's features."""


def prepare(args: argparse.Namespace) -> tuple[ExtractionConfig, list, dict[str, Any]]:
    """Checks before any heavy work: the checkpoint, the grid, the videos, the output folder. Returns the resolved
    extraction, the videos and the key that names the features."""
    problems = [f"--{f} must be at least 1, got {getattr(args, f)}" for f in
                ("test_num_segment", "test_num_crop", "shard_size", "batch_size") if getattr(args, f) < 1]
    problems += checks.writable_dir_problems(args.output_dir, "--output_dir")
    if not Path(args.finetune).exists():
        problems.append(f"--finetune {args.finetune} does not exist")
    checks.fail_if(problems)
    ckpt = read_any_checkpoint(args.finetune).contents
    try:
        values, grid = checkpoint_flag_values(args, ckpt, FALLBACK)
        videos = find_videos(args.data_path, args.data_root)
    except (GridError, ValueError) as e:
        raise checks.FlagError([str(e)]) from None
    flags = {**vars(args), **values}
    resolved = {"grid": grid, "use_mean_pooling": flags.get("use_mean_pooling")}
    run = ExtractionConfig(**{name: resolved[name] if name in resolved else flags[name]
                              for name in ExtractionConfig.__dataclass_fields__})
    key = {"encoder": encoder_reference(run.finetune), "model": run.model, "grid": grid.to_dict(),
           "sampling_rate": run.sampling_rate, "views": [run.test_num_segment, run.test_num_crop],
           "short_side_size": run.short_side_size, "tokens": run.save_tokens, "format": run.format,
           "shard_size": run.shard_size, "inputs": inputs_digest(videos)}
    try:
        check_feature_folder(Path(run.output_dir), key)
    except ValueError as e:
        raise FeatureFolderError(str(e)) from None
    return run, videos, key


@exits_on_error
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Extract; returns the index (what ``index.json`` holds). Raises :class:`SomeInputsFailed` (exit status 1),
    once every other video's features are written, when some videos could not be read."""
    run, videos, key = prepare(args)
    index = launch(lambda device: extract(run, videos, key, device), run.device)
    if index.get("unreadable"):
        raise SomeInputsFailed([(u["path"], u["reason"]) for u in index["unreadable"]],
                               index["videos"] + len(index["unreadable"]))
    return index


def extract(run: ExtractionConfig, videos: list, key: dict[str, Any], device: str | None) -> dict[str, Any]:
    """Every shard this process owns, then (on the main process) the index."""
    out, device, grid = Path(run.output_dir), resolve_device(device), run.grid
    model = model_from_checkpoint(run.finetune, run.model, grid, run.pos_embed, run.use_mean_pooling is not False,
                                  num_classes=0, model_key=run.model_key, verbose=is_main_process()).model.to(device)
    amp = autocast_dtype(concrete_amp(run.amp, device), device)
    enable_tf32(device, deterministic=False)
    shards = (len(videos) + run.shard_size - 1) // run.shard_size
    patient = patient_group()
    if is_main_process():
        count, _ = remove_stale_temp_files(out)  # of a killed run's unfinished shard
        if count:
            print(f"Removed {count} temporary files an interrupted run left in {out}")
        write_atomically(out / FEATURES_KEY, lambda tmp: tmp.write_text(json.dumps(key, indent=1)))
    left = shards_left(out, shards, patient)
    todo = share_of_shards(left)
    print(f"{len(videos)} videos at {grid.describe()}, {run.test_num_segment} x {run.test_num_crop} views: "
          f"{shards} shards, {shards - len(left)} already done")
    total = sum(len(videos[n * run.shard_size:(n + 1) * run.shard_size]) for n in todo)
    with tqdm(total=total, unit="video", disable=not is_main_process()) as bar:
        for n in todo:
            extract_shard(run, model, videos[n * run.shard_size:(n + 1) * run.shard_size], n, grid, amp, bar)
    if patient is not None:
        torch.distributed.barrier(group=patient)  # a rank done first waits here without a timeout to reach
    index = write_index(out, key, shards) if is_main_process() else {}
    if is_main_process():
        print(f"Wrote {index['videos']} videos' features to {out} ({len(index['unreadable'])} unreadable, listed in "
              f"index.json)")
    return index


def extract_shard(run: ExtractionConfig, model: torch.nn.Module, videos: list, number: int, grid: PatchGrid,
                  amp: torch.dtype | None, bar: Any) -> None:
    """One shard: every view of its videos through the encoder, written atomically with its record."""
    dataset = VideoViews(videos, grid, run.sampling_rate, run.test_num_segment, run.test_num_crop,
                         run.short_side_size, run.fname_tmpl)
    loader = DataLoader(dataset, batch_size=run.batch_size, num_workers=run.num_workers, collate_fn=collate_views)
    pooled, tokens, rows, bad = [], [], [], []
    for views, indices, unreadable in loader:
        bad += [{"path": videos[i].path, "reason": reason} for i, reason in unreadable]
        if views is not None:
            p, t = encode_views(model, views, amp)
            pooled.append(p.cpu().numpy())
            if run.save_tokens:
                tokens.append(t.cpu().numpy())
            rows += indices
        bar.update(len(indices) + len(unreadable))
    views_count, dim = run.test_num_segment * run.test_num_crop, model.embed_dim
    arrays = {"pooled": np.concatenate(pooled) if pooled else np.zeros((0, views_count, dim), np.float32)}
    if run.save_tokens:
        per_view = grid.shape if model.cls_token is None else (grid.num_tokens + 1,)  # a cls token: kept flat
        shape = (-1, views_count, *per_view, dim)
        arrays["tokens"] = (np.concatenate(tokens) if tokens else np.zeros((0, views_count, grid.num_tokens, dim),
                                                                          np.float32)).reshape(shape)
    for i in bad:
        print(f"warning: unreadable, left out: {i['path']} ({i['reason']})")
    write_shard(Path(run.output_dir), number, arrays, {"videos": [videos[i].path for i in rows],
                                                        "labels": [videos[i].label for i in rows],
                                                        "unreadable": bad}, run.format)


def cli() -> None:
    """The console script: flags from the command line."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    cli()
