"""Masked-autoencoder pre-training on videos (VideoMAE recipe) at any patch grid.

Without --data_path it trains on the built-in demo dataset (generated on first use).
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from patches.utils import cpu_memory  # noqa: F401  (before torch: allocator settings torch reads once, see cpu_memory.py)

from patches.config import flags as cli_args
from patches.data import health as data_health
from patches.config.flag_types import str2bool
from patches.utils.distributed import get_rank, get_world_size
from patches.checkpoints.folder import FoundCheckpoint, choose_checkpoint
from patches.data.loaders import pretraining_loader
from patches.train.reconstruction import FlexibleReconstruction, MaskedReconstruction
from patches.data.masking import (DECODER_MASK_TYPES, MASK_TYPES, MaskCounts, build_mask_generator, mask_counts, no_masks)
from patches.models.factory import create_video_model
from patches.train.optim import build_optimizer
from patches.grid import GridError, PatchGrid, base_grid, grids_from_specs, position_reference
from patches.train.trainer import Trainer, launch


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
    # unset, so that giving them with --grids can be refused; filled in by resolve_grid_flags
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
    g.add_argument("--flip", default=False, type=str2bool, nargs="?", const=True,
                   help="random horizontal flips (VideoMAE pre-trains without; never for data whose classes have a "
                        "left and a right, such as SSV2)")
    cli_args.add_run_args(p, "output/pretrain")
    cli_args.add_scale_args(p)
    return p


def resolve_grid_flags(args: argparse.Namespace) -> list[PatchGrid]:
    """The grids of ``--grids`` (an empty list without it), refusing a bad entry at once, naming it.

    Fills in ``--input_size/--patch_size/--pos_embed``: their defaults without ``--grids``; with it, the base
    grid's (see :func:`patch_grid.base_grid`) and 3d, so that the checks, the recorded flags and resuming see
    the grid the model is built at."""
    if args.grids is None:
        for flag, default in (("input_size", [224]), ("patch_size", 16), ("pos_embed", "1d")):
            if getattr(args, flag) is None:
                setattr(args, flag, default)
        return []
    problems = [f"--grids replaces --{flag}: give one or the other" for flag in ("input_size", "patch_size")
                if getattr(args, flag) is not None]
    if args.pos_embed in ("1d", "learned"):
        problems.append(f"--grids needs --pos_embed 3d, not {args.pos_embed}: a {args.pos_embed} table gives a "
                        f"token's place in the token sequence, which is another place in the frame at each grid")
    try:
        grids = grids_from_specs(args.grids, args.num_frames, args.tubelet_size)
    except GridError as e:
        problems.append(f"--grids: {e}")
    cli_args.fail_if(problems)
    base = base_grid(grids)
    args.input_size, args.patch_size, args.pos_embed = [base.input_size[0]], base.patch_size, "3d"
    return grids


def grid_problems(grid: PatchGrid, args: argparse.Namespace) -> tuple[MaskCounts | None, list[str]]:
    """The masks' token counts at ``grid`` and what the masking and target flags cannot do there."""
    problems, counts = [], None
    at = f"--grids {grid.spec}: " if args.grids else ""
    try:
        counts = mask_counts(grid, args.mask_type, args.mask_ratio, args.decoder_mask_type, args.decoder_mask_ratio)
    except GridError as e:
        problems.append(f"{at}{e}")
    if args.normlize_target and grid.tubelet_size * grid.patch_size ** 2 < 2:
        problems.append(f"{at}--normlize_target standardises each token's pixels per channel, and with --patch_size "
                        f"{grid.patch_size} --tubelet_size {grid.tubelet_size} a token has one; "
                        f"pass --normlize_target false")
    return counts, problems


def validate_args(args: argparse.Namespace) -> tuple[list[PatchGrid], list[MaskCounts]]:
    """Every cheap check, before data or model are built. Returns the grids trained at (those of ``--grids``
    as listed, else the one of ``--input_size/--patch_size``) and their mask counts."""
    flexible = resolve_grid_flags(args)
    grid, problems = cli_args.validate_common(
        args, ("batch_size", "update_freq", "epochs", "sampling_rate", "num_sample", "save_ckpt_freq", "print_freq"))
    grids = flexible or ([grid] if grid is not None else [])
    counts = []
    for g in grids:
        c, found = grid_problems(g, args)
        counts.append(c)
        problems += found
    if args.decoder_mask_type == "none" and args.decoder_mask_ratio:
        problems.append(f"--decoder_mask_ratio {args.decoder_mask_ratio} does nothing with --decoder_mask_type none; "
                        f"add --decoder_mask_type run_cell")
    if args.data_path is not None and not Path(args.data_path).is_file():
        problems.append(f"--data_path {args.data_path} is not a file")
    problems += cli_args.model_problems(args.model, pretraining=True)
    problems += cli_args.pretraining_data_problems(args)
    cli_args.fail_if(problems)
    return grids, counts


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Pre-train. Returns the last epoch's ``log.txt`` record (``train_loss``, ...) with ``checkpoint``: the last
    epoch checkpoint written (None when there was nothing left to train)."""
    grids, counts = validate_args(args)
    if args.check_data:  # a report, no run: status 0 when every video reads, else an error line and 1
        try:
            data_health.run_check_data(cli_args.pretraining_data_config(args), args.num_workers)
        except data_health.DataCheckFailed as e:
            raise SystemExit(f"error: {e}") from None
        raise SystemExit(0)
    return launch(lambda device: train(args, grids, counts, device), args.device, args.enable_deepspeed)


def print_grids(args: argparse.Namespace, grids: list[PatchGrid], counts: list[MaskCounts]) -> None:
    """The grids trained at and their masks; with ``--grids`` also which is the base grid."""
    for grid, c in zip(grids, counts):
        masks = (f"{args.mask_type} {args.mask_ratio}: {c.num_visible} visible, {c.num_masked} masked, decoder "
                 f"reconstructs {c.num_decoded}")
        if not args.grids:
            print(f"Patch grid: {grid.describe()}\nMasking: {masks}")
        else:
            print(f"  {grid.spec:>9}: {grid.shape[0]} x {grid.h} x {grid.w} = {grid.num_tokens} tokens "
                  f"({grid.patches_per_frame} per frame); masking {masks}")
    if args.grids:
        (h, w), base = largest_size(grids).input_size, base_grid(grids)
        print(f"Flexible grids: one of these {len(grids)} per step, drawn from --seed and the step. Base grid "
              f"(the model's, with the largest patch; its kernel is resized to the others): {base.describe()}; "
              f"clips are loaded at {h}x{w} px and resized on the device")


def largest_size(grids: list[PatchGrid]) -> PatchGrid:
    """The grid with the largest frames: the loader's clips come at its size."""
    return max(grids, key=lambda g: g.input_size[0] * g.input_size[1])


def warn_if_other_grids(found: FoundCheckpoint | None, grids: list[PatchGrid]) -> None:
    """A flexible checkpoint resumed with another ``--grids`` list: allowed (the weights fit), but the steps from
    here on draw from the new list, so the run is no longer the one it would have been."""
    recorded = found.state.get("grids") if found is not None else None
    if recorded is not None and recorded != [g.to_dict() for g in grids]:
        specs = " ".join(PatchGrid.from_dict(g).spec for g in recorded)
        print(f"warning: {found.path} was trained at --grids {specs}; this run draws from "
              f"{' '.join(g.spec for g in grids)} from here on")


def train(args: argparse.Namespace, grids: list[PatchGrid], counts: list[MaskCounts], device: str | None
          ) -> dict[str, Any]:
    grid = base_grid(grids)  # the model's grid (the only one without --grids)
    clips_per_step = args.batch_size * args.num_sample * get_world_size()
    print(cli_args.scale_lr(args, get_world_size()))
    with Trainer(cli_args.trainer_config(args, device), grid, args) as trainer:
        print_grids(args, grids, counts)
        build_model = functools.partial(create_video_model, args.model, grid=grid, decoder_depth=args.decoder_depth,
                                        drop_path_rate=args.drop_path, pos_embed=args.pos_embed,
                                        pos_reference=position_reference(grids) if args.grids else None,
                                        use_checkpoint=args.use_checkpoint)
        # another grid or model size is refused before data and model
        found = choose_checkpoint(args.resume, args.auto_resume, args.output_dir, grid, folders=args.enable_deepspeed)
        trainer.refuse_misfit(found, build_model)
        warn_if_other_grids(found, grids)
        cli_args.use_demo_data_if_no_data_path(args, finetuning=False)
        masks = no_masks if args.grids else build_mask_generator(args, grid)  # flexible: drawn per step
        dataset, loader = pretraining_loader(cli_args.pretraining_data_config(args), cli_args.loader_config(args),
                                             largest_size(grids), masks, trainer.device, args.update_freq)
        model = trainer.prepare_model(build_model())
        print(f"Model {args.model}: {trainer.n_parameters / 1e6:.2f} M parameters")
        print(f"{len(dataset)} videos, {loader.sampler.batches_per_epoch // args.update_freq} updates per epoch of "
              f"{clips_per_step * args.update_freq} clips; lr {args.lr:.3g}")
        trainer.setup_training(build_optimizer(cli_args.optimizer_config(args), model), loader,
                               micro_batch=args.batch_size * args.num_sample, clips_per_step=clips_per_step)
        if found is not None:
            trainer.restore(found)
            del found
        settings = MaskedReconstruction(grid, trainer.device, trainer.amp_dtype, args.normlize_target)
        if not args.grids:
            record = trainer.fit(settings)
        else:
            loss = FlexibleReconstruction(grids, [build_mask_generator(args, g) for g in grids], settings, args.seed,
                                          get_rank())
            # every checkpoint records the grids beside "grid", the base (and, as for every 3d model, its
            # "pos_reference": here the finest grid's token rows and columns)
            trainer.progress.run.grids = [g.to_dict() for g in grids]
            record = trainer.fit(loss, lambda epoch, r: r.update({f"train_{k}": v for k, v in
                                                                   loss.epoch_record().items()}))
        return {**record, "checkpoint": trainer.last_checkpoint}


def cli() -> None:
    """The console script: flags from the command line."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    cli()
