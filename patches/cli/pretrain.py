"""Masked-autoencoder pre-training on videos (VideoMAE recipe) at any patch grid.

Without --data_path it trains on the built-in demo dataset (generated on first use).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)

from patches.cli.exits import exits_on_error
from patches.config import flags as cli_args
from patches.config.dry_run import pretraining_summary
from patches.config.flag_types import str2bool
from patches.config.pretraining import resolve_pretraining
from patches.config.videomae_flags import add_videomae_args
from patches.data import health as data_health
from patches.data.masking import DECODER_MASK_TYPES, MASK_TYPES
from patches.train import pretraining
from patches.train.trainer import launch

SCRIPT = "run_mae_pretraining.py"  # the entry script at the repository root, as commands print it


def get_args_parser() -> argparse.ArgumentParser:
    p = cli_args.run_parser("PATCHES masked video pre-training", epochs=800, save_ckpt_freq=50)

    g = cli_args.add_grid_args(p, "pretrain_videomae_base_patch16_224")
    g.add_argument("--decoder_depth", default=4, type=int, help="decoder blocks")
    g.add_argument("--drop_path", default=0.0, type=float, help="stochastic depth rate in the encoder")
    g.add_argument("--grids", default=None, nargs="+", metavar="SIZE/PATCH",
                   help="flexible-grid pre-training: each step trains at one of these grids (e.g. 224/16 288/16 "
                        "216/12 224/32), drawn from --seed and the step; replaces --input_size/--patch_size, needs "
                        "--pos_embed 3d (its default here). Without it: --input_size 224 --patch_size 16 "
                        "--pos_embed 1d unless given. See PRETRAIN.md")
    g.add_argument("--grid_weights", default=None, nargs="+", type=float, metavar="W",
                   help="with --grids: one weight per grid, how often each is drawn (default: all alike); "
                        "scripts/patch_sweep.py --budget flops gives each grid an equal share of the FLOPs with them")
    # unset, so that giving them with --grids can be refused; resolved by config.pretraining.grid_flag_values
    p.set_defaults(input_size=None, patch_size=None, pos_embed=None)

    g = p.add_argument_group("masking")
    g.add_argument("--mask_type", default="tube", choices=MASK_TYPES,
                   help="tube: one spatial mask shared by all time slices; random: independent over the clip")
    g.add_argument("--mask_ratio", default=0.75, type=float, help="share of tokens hidden from the encoder")
    g.add_argument("--decoder_mask_type", default="none", choices=DECODER_MASK_TYPES,
                   help="VideoMAE V2 decoder masking: reconstruct only part of the hidden tokens")
    g.add_argument("--decoder_mask_ratio", default=0.0, type=float,
                   help="share of the hidden tokens the decoder does NOT reconstruct")
    g.add_argument("--normlize_target", default=True, type=str2bool, nargs="?", const=True,
                   help="per-patch normalised pixel targets (true/false)")

    cli_args.add_optim_args(p, lr=1.5e-4, min_lr=1e-5, warmup_epochs=40, opt_betas=[0.9, 0.95])
    g = cli_args.add_data_args(p, "list file of 'path' or 'path label' lines, or of frame folders 'folder "
                                  "num_frames label'; default: the built-in demo dataset", num_sample=1)
    g.add_argument("--decoder", default="pyav", choices=("pyav", "torchcodec"),
                   help="video decoder of the loader workers: PyAV (its own FFmpeg; decord as fallback), or torchcodec "
                        "on the CPU (the system's FFmpeg 4-8; see PERFORMANCE.md)")
    g.add_argument("--flip", default=False, type=str2bool, nargs="?", const=True,
                   help="random horizontal flips (VideoMAE pre-trains without; never for data whose classes have a "
                        "left and a right, such as SSV2)")
    cli_args.add_run_args(p, "output/pretrain")
    cli_args.add_scale_args(p)
    add_videomae_args(p, finetuning=False)
    return p


@exits_on_error
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train (with ``--dry_run``: print and return the resolved run's JSON object). Returns the last epoch's ``log.txt`` record (``train_loss``, ...) with ``checkpoint``: the last
    epoch checkpoint written (None when there was nothing left to train)."""
    run = resolve_pretraining(args)
    if args.dry_run:
        summary = pretraining_summary(run, SCRIPT)
        print(json.dumps(summary, indent=1))
        return summary
    if run.check_data:
        data_health.run_check_data(run.data, run.num_workers)
        raise SystemExit(0)  # a report, no run: an unreadable video ends in DataCheckFailed (status 1)
    return launch(lambda device: pretraining.train(run, device), run.device, run.deepspeed)


def cli() -> None:
    """The console script: flags from the command line."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    cli()
