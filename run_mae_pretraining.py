"""Masked-autoencoder pre-training on videos (VideoMAE recipe) at any patch grid.

Without --data_path it trains on the built-in demo dataset (generated on first use).
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import cpu_memory  # noqa: F401  (before torch: allocator settings torch reads once, see cpu_memory.py)

import cli_args
import data_health
import utils
from checkpoint_folder import choose_checkpoint
from data_loaders import pretraining_loader
from engine_for_pretraining import MaskedReconstruction
from masking_generator import DECODER_MASK_TYPES, MASK_TYPES, MaskCounts, build_mask_generator, mask_counts
from models import create_video_model
from optim_factory import build_optimizer
from patch_grid import GridError, PatchGrid
from trainer import Trainer, launch


def get_args_parser() -> argparse.ArgumentParser:
    p = cli_args.run_parser("PATCHES masked video pre-training", epochs=800, save_ckpt_freq=50)

    g = cli_args.add_grid_args(p, "pretrain_videomae_base_patch16_224")
    g.add_argument("--decoder_depth", default=4, type=int, help="decoder blocks")
    g.add_argument("--drop_path", default=0.0, type=float, help="stochastic depth rate in the encoder")

    g = p.add_argument_group("masking")
    g.add_argument("--mask_type", default="tube", choices=MASK_TYPES,
                   help="tube: one spatial mask shared by all time slices; random: independent over the clip")
    g.add_argument("--mask_ratio", default=0.75, type=float, help="share of tokens hidden from the encoder")
    g.add_argument("--decoder_mask_type", default="none", choices=DECODER_MASK_TYPES,
                   help="VideoMAE V2 decoder masking: reconstruct only part of the hidden tokens")
    g.add_argument("--decoder_mask_ratio", default=0.0, type=float,
                   help="share of the hidden tokens the decoder does NOT reconstruct")
    g.add_argument("--normlize_target", default=True, type=utils.str2bool, nargs="?", const=True,
                   help="per-patch normalised pixel targets (true/false)")

    cli_args.add_optim_args(p, lr=1.5e-4, min_lr=1e-5, warmup_epochs=40, opt_betas=[0.9, 0.95])
    g = cli_args.add_data_args(p, "list file of 'path' or 'path label' lines, or of frame folders 'folder "
                                  "num_frames label'; default: the built-in demo dataset", num_sample=1)
    g.add_argument("--flip", default=False, type=utils.str2bool, nargs="?", const=True,
                   help="random horizontal flips (VideoMAE pre-trains without; never for data whose classes have a "
                        "left and a right, such as SSV2)")
    cli_args.add_run_args(p, "output/pretrain")
    cli_args.add_scale_args(p)
    return p


def validate_args(args: argparse.Namespace):
    """Every cheap check, before data or model are built. Returns the grid and mask counts."""
    grid, problems = cli_args.validate_common(
        args, ("batch_size", "update_freq", "epochs", "sampling_rate", "num_sample", "save_ckpt_freq", "print_freq"))
    counts = None
    if grid is not None:
        try:
            counts = mask_counts(grid, args.mask_type, args.mask_ratio, args.decoder_mask_type,
                                 args.decoder_mask_ratio)
        except GridError as e:
            problems.append(str(e))
        if args.normlize_target and grid.tubelet_size * grid.patch_size ** 2 < 2:
            problems.append(f"--normlize_target standardises each token's pixels per channel, and with --patch_size "
                            f"{grid.patch_size} --tubelet_size {grid.tubelet_size} a token has one; "
                            f"pass --normlize_target false")
    if args.decoder_mask_type == "none" and args.decoder_mask_ratio:
        problems.append(f"--decoder_mask_ratio {args.decoder_mask_ratio} does nothing with --decoder_mask_type none; "
                        f"add --decoder_mask_type run_cell")
    if args.data_path is not None and not Path(args.data_path).is_file():
        problems.append(f"--data_path {args.data_path} is not a file")
    problems += cli_args.model_problems(args.model, pretraining=True)
    problems += cli_args.pretraining_data_problems(args)
    cli_args.fail_if(problems)
    return grid, counts


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train. Returns the last epoch's ``log.txt`` record (``train_loss``, ...) with ``checkpoint``: the last
    epoch checkpoint written (None when there was nothing left to train)."""
    grid, counts = validate_args(args)
    if args.check_data:
        data_health.run_check_data(cli_args.pretraining_data_config(args), args.num_workers)
    return launch(lambda device: train(args, grid, counts, device), args.device, args.enable_deepspeed)


def train(args: argparse.Namespace, grid: PatchGrid, counts: MaskCounts, device: str | None) -> dict[str, Any]:
    clips_per_step = args.batch_size * args.num_sample * utils.get_world_size()
    print(cli_args.scale_lr(args, utils.get_world_size()))
    with Trainer(cli_args.trainer_config(args, device), grid, args) as trainer:
        print(f"Patch grid: {grid.describe()}")
        print(f"Masking: {args.mask_type} {args.mask_ratio}: {counts.num_visible} visible, {counts.num_masked} "
              f"masked, decoder reconstructs {counts.num_decoded}")
        build_model = functools.partial(create_video_model, args.model, grid=grid, decoder_depth=args.decoder_depth,
                                        drop_path_rate=args.drop_path, pos_embed=args.pos_embed,
                                        use_checkpoint=args.use_checkpoint)
        # another grid or model size is refused before data and model
        found = choose_checkpoint(args.resume, args.auto_resume, args.output_dir, grid, folders=args.enable_deepspeed)
        trainer.refuse_misfit(found, build_model)
        cli_args.use_demo_data_if_no_data_path(args, finetuning=False)
        dataset, loader = pretraining_loader(cli_args.pretraining_data_config(args), cli_args.loader_config(args),
                                             grid, build_mask_generator(args, grid), trainer.device, args.update_freq)
        model = trainer.prepare_model(build_model())
        print(f"Model {args.model}: {trainer.n_parameters / 1e6:.2f} M parameters")
        print(f"{len(dataset)} videos, {loader.sampler.batches_per_epoch // args.update_freq} updates per epoch of "
              f"{clips_per_step * args.update_freq} clips; lr {args.lr:.3g}")
        trainer.setup_training(build_optimizer(cli_args.optimizer_config(args), model), loader,
                               micro_batch=args.batch_size * args.num_sample, clips_per_step=clips_per_step)
        if found is not None:
            trainer.restore(found)
            del found
        record = trainer.fit(MaskedReconstruction(grid, trainer.device, trainer.amp_dtype, args.normlize_target))
        return {**record, "checkpoint": trainer.last_checkpoint}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
