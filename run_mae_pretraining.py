"""Masked-autoencoder pre-training on videos (VideoMAE recipe) at any patch grid.

Without --data_path it trains on the built-in demo dataset (generated on first use).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import time
from pathlib import Path
from typing import Any

import cpu_memory  # (before torch: allocator settings torch reads once, see cpu_memory.py)
import torch

import cli_args
import data_health
import data_loaders
import resume
import utils
from datasets import UnreadableDataError
from engine_for_pretraining import NonFiniteLossError, PretrainStep, train_one_epoch
from masking_generator import DECODER_MASK_TYPES, MASK_TYPES, build_mask_generator, mask_counts
from modeling_finetune import configure_attention, create_video_model
from optim_factory import build_optimizer
from patch_grid import GridError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PATCHES masked video pre-training", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch_size", default=64, type=int, help="clips per process per step (before --num_sample)")
    p.add_argument("--epochs", default=800, type=int, help="training epochs")
    p.add_argument("--save_ckpt_freq", default=50, type=int, help="save a checkpoint every N epochs (and at the end)")

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
    cli_args.add_data_args(p, "list file of 'path' or 'path label' lines; default: the built-in demo dataset",
                           num_sample=1)
    cli_args.add_run_args(p, "output/pretrain")
    cli_args.add_scale_args(p)
    return p


def validate_args(args: argparse.Namespace):
    """Every cheap check, before data or model are built. Returns the grid and mask counts."""
    grid, problems = cli_args.validate_common(
        args, ("batch_size", "epochs", "sampling_rate", "num_sample", "save_ckpt_freq", "print_freq"))
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


def build_loader(args: argparse.Namespace, grid, device: torch.device):
    cli_args.use_demo_data_if_no_data_path(args, finetuning=False)
    return data_loaders.pretraining_loader(cli_args.pretraining_data_config(args), cli_args.loader_config(args), grid,
                                           build_mask_generator(args, grid), device)


def restore(found: tuple[Path, dict[str, Any]], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: Any, engine: Any, args: argparse.Namespace) -> None:
    """Load a checkpoint's weights and optimizer state (from the DeepSpeed folder when ``engine`` is set)."""
    path, ckpt = found
    if engine is not None:
        import ds_utils
        ds_utils.load_folder(engine, path.parent)
        return
    try:
        utils.load_model_state(model, ckpt, path, args.model)
    except utils.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    if "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])


def main(args: argparse.Namespace) -> None:
    grid, counts = validate_args(args)
    if args.check_data:
        data_health.run_check_data(cli_args.pretraining_data_config(args), args.num_workers)
    if args.enable_deepspeed:
        import ds_utils
        ds_utils.prepare_environment(args.device)
    utils.init_distributed_mode(args)
    clean = False
    try:
        train(args, grid, counts)
        clean = True
    except resume.Interrupted as e:
        print(f"{e}; exiting with status {resume.EXIT_REQUEUE}: run the same command again to resume")
        clean = True
        raise SystemExit(resume.EXIT_REQUEUE) from None
    finally:
        # On an error a peer may never reach the barrier: only leave through it when all ranks agree.
        utils.cleanup_distributed(barrier=clean)


def train(args: argparse.Namespace, grid, counts) -> None:
    device = utils.resolve_device(args.device)
    amp_dtype = utils.autocast_dtype(args.amp, device)
    resume.set_deterministic(args.deterministic)
    utils.seed_everything(args.seed + utils.get_rank())
    print(f"Patch grid: {grid.describe()}")
    print(f"Masking: {args.mask_type} {args.mask_ratio}: {counts.num_visible} visible, {counts.num_masked} masked, "
          f"decoder reconstructs {counts.num_decoded}")

    found = resume.choose_checkpoint(args, grid, folders=args.enable_deepspeed)  # refused before data and model
    dataset, loader = build_loader(args, grid, device)
    model = create_video_model(args.model, grid=grid, decoder_depth=args.decoder_depth, drop_path_rate=args.drop_path,
                               pos_embed=args.pos_embed, use_checkpoint=args.use_checkpoint).to(device)
    attention = configure_attention(model, args.attn_impl, device, amp_dtype)
    if args.compile:  # in place, so the state dict keeps its names
        model.compile(backend=args.compile)
    print(f"Attention: {attention}" + (f"; compiled with {args.compile}" if args.compile else "")
          + (f"; CPU allocator: {cpu_memory.allocator_settings()}" if device.type == "cpu" else ""))
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"Model {args.model}: {n_parameters / 1e6:.2f} M parameters")

    world = utils.get_world_size()
    clips_per_step = args.batch_size * args.num_sample * world
    cli_args.scale_lr(args, clips_per_step)
    steps_per_epoch = loader.sampler.batches_per_epoch
    print(f"{len(dataset)} videos, {steps_per_epoch} steps per epoch of {clips_per_step} clips; lr {args.lr:.3g}")

    model_without_ddp = model
    optimizer = build_optimizer(args, model_without_ddp)
    scaler = None
    engine = None
    if args.enable_deepspeed:
        import ds_utils
        engine, optimizer = ds_utils.initialize(args, model_without_ddp, optimizer,
                                                micro_batch=args.batch_size * args.num_sample)
        model = engine
    else:
        if args.distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    lr_schedule = utils.cosine_scheduler(args.lr, args.min_lr, args.epochs, steps_per_epoch,
                                         args.warmup_epochs, args.warmup_lr, args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    wd_schedule = utils.cosine_scheduler(args.weight_decay, wd_end, args.epochs, steps_per_epoch)

    start_epoch, start_batch = args.start_epoch, 0
    if found is not None:
        restore(found, model, optimizer, scaler, engine, args)
        start_epoch, start_batch = resume.start_position(found[0], found[1], steps_per_epoch)
        print(f"Resumed from {found[0]} (epoch {found[1]['epoch']}); continuing at epoch {start_epoch}"
              + (f", batch {start_batch}" if start_batch else ""))

    def make_state(epoch: int, next_epoch: int, next_batch: int) -> dict[str, Any]:
        return utils.checkpoint_state(model_without_ddp, grid, args, epoch, None if engine else optimizer, scaler,
                                      deepspeed=engine is not None,
                                      **resume.position_fields(next_epoch, next_batch, steps_per_epoch))

    log_dir = args.log_dir or os.path.join(args.output_dir, "tb")
    tb_logger = utils.TensorboardLogger(log_dir) if utils.is_main_process() else None
    cfg = PretrainStep(grid=grid, device=device, amp_dtype=amp_dtype, scaler=scaler, clip_grad=args.clip_grad,
                       normalize_target=args.normlize_target, deepspeed=engine is not None)
    checkpoints = resume.Checkpointing(args.output_dir, make_state, steps_per_epoch,
                                       every_steps=args.save_ckpt_every_steps, keep=args.keep_ckpts, device=device,
                                       engine=engine)
    if found is not None:
        resume.restore_rng_states(found[1])
        del found
    start = time.time()
    try:
        with checkpoints.stop:
            for epoch in range(start_epoch, args.epochs):
                first = start_batch if epoch == start_epoch else 0
                loader.sampler.set_epoch(epoch, first)
                stats = train_one_epoch(model, loader, optimizer, epoch, cfg, lr_schedule, wd_schedule,
                                        start_step=epoch * steps_per_epoch, header=f"Epoch [{epoch}/{args.epochs - 1}]",
                                        print_freq=args.print_freq, tb_logger=tb_logger, clips_per_step=clips_per_step,
                                        first_batch=first, on_update=functools.partial(checkpoints.after_update, epoch))
                data = loader.end_epoch()  # unreadable videos skipped this epoch, over all processes
                last = epoch + 1 == args.epochs
                due = (epoch + 1) % args.save_ckpt_freq == 0 or last
                path, state = checkpoints.end_of_epoch(epoch, epoch_file=due)
                if due and utils.is_main_process():
                    utils.announce_saved(path, state, grid, args)
                record = {**{f"train_{k}": v for k, v in stats.items()}, **data, "epoch": epoch,
                          "n_parameters": n_parameters}
                utils.append_jsonl(Path(args.output_dir) / "log.txt", record)
                if tb_logger is not None:
                    tb_logger.update("epoch", step=epoch, **stats)
                    tb_logger.update("data", step=epoch, skipped_videos=data["skipped_videos"],
                                     bad_video_files=data["bad_video_files"])
                    tb_logger.flush()
                if not last:
                    checkpoints.stop_if_requested()
    except (NonFiniteLossError, data_health.TooManyBadVideos, utils.CheckpointSaveError) as e:
        raise SystemExit(f"error: {e}")
    except UnreadableDataError as e:
        raise SystemExit(f"error: {data_health.unreadable_data_message(e)}")
    finally:
        if tb_logger is not None:
            tb_logger.close()
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
