"""Masked-autoencoder pre-training on videos (VideoMAE recipe) at any patch grid.

Without --data_path it trains on the built-in demo dataset (generated on first use).
"""
from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch

import cli_args
import data_health
import utils
from datasets import UnreadableDataError
from engine_for_pretraining import NonFiniteLossError, PretrainStep, train_one_epoch
from masking_generator import DECODER_MASK_TYPES, MASK_TYPES, build_mask_generator, mask_counts
from modeling_finetune import create_video_model
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
    if args.data_path is not None and not Path(args.data_path).is_file():
        problems.append(f"--data_path {args.data_path} is not a file")
    problems += cli_args.model_problems(args.model, pretraining=True)
    problems += cli_args.pretraining_data_problems(args)
    cli_args.fail_if(problems)
    return grid, counts


def build_loader(args: argparse.Namespace, grid, device: torch.device):
    from datasets import CollateWithBad, build_pretraining_dataset, collate_fn_for
    if args.data_path is None:
        from demo_data import ensure_demo_dataset
        demo = ensure_demo_dataset(args.demo_root)
        args.data_path, args.data_root = str(demo["train"]), str(demo["root"])
        print(f"No --data_path: using the demo dataset in {demo['root']}")
    dataset = build_pretraining_dataset(args, grid, build_mask_generator(args, grid))
    dataset.report_bad = True  # unreadable videos travel with the batches to the tracker below
    sampler = (torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=args.seed) if args.distributed
               else torch.utils.data.RandomSampler(dataset))
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem and device.type == "cuda", drop_last=True,
        collate_fn=CollateWithBad(collate_fn_for(args.num_sample)), persistent_workers=args.num_workers > 0)
    loader = data_health.BadVideoTracker(loader, len(dataset), args.max_bad_fraction, args.data_path)
    if len(loader) == 0:
        raise SystemExit(f"error: --batch_size {args.batch_size} x {utils.get_world_size()} processes is larger "
                         f"than the {len(dataset)} videos in {args.data_path}")
    return dataset, sampler, loader


def resume_if_possible(args, model, optimizer, scaler) -> None:
    path = args.resume
    if not path and args.auto_resume:
        found = utils.epoch_checkpoints(args.output_dir)
        path = str(found[-1][1]) if found else ""
    if not path:
        return
    try:
        ckpt = utils.load_checkpoint(path)
    except utils.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    try:
        utils.load_model_state(model, ckpt, path, args.model)
    except utils.CheckpointError as e:
        raise SystemExit(f"error: {e}")
    if "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    args.start_epoch = int(ckpt["epoch"]) + 1
    print(f"Resumed from {path} (epoch {ckpt['epoch']}); continuing at epoch {args.start_epoch}")


def main(args: argparse.Namespace) -> None:
    grid, counts = validate_args(args)
    if args.check_data:
        data_health.run_check_data(args, finetuning=False)
    utils.init_distributed_mode(args)
    device = utils.resolve_device(args.device)
    amp_dtype = utils.autocast_dtype(args.amp, device)
    utils.seed_everything(args.seed + utils.get_rank())
    print(f"Patch grid: {grid.describe()}")
    print(f"Masking: {args.mask_type} {args.mask_ratio}: {counts.num_visible} visible, {counts.num_masked} masked, "
          f"decoder reconstructs {counts.num_decoded}")

    dataset, sampler, loader = build_loader(args, grid, device)
    model = create_video_model(args.model, grid=grid, decoder_depth=args.decoder_depth, drop_path_rate=args.drop_path,
                               pos_embed=args.pos_embed, use_checkpoint=args.use_checkpoint).to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"Model {args.model}: {n_parameters / 1e6:.2f} M parameters")

    world = utils.get_world_size()
    clips_per_step = args.batch_size * args.num_sample * world
    cli_args.scale_lr(args, clips_per_step)
    steps_per_epoch = len(loader)
    print(f"{len(dataset)} videos, {steps_per_epoch} steps per epoch of {clips_per_step} clips; lr {args.lr:.3g}")

    model_without_ddp = model
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(args, model_without_ddp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    lr_schedule = utils.cosine_scheduler(args.lr, args.min_lr, args.epochs, steps_per_epoch,
                                         args.warmup_epochs, args.warmup_lr, args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    wd_schedule = utils.cosine_scheduler(args.weight_decay, wd_end, args.epochs, steps_per_epoch)
    resume_if_possible(args, model, optimizer, scaler)

    log_dir = args.log_dir or os.path.join(args.output_dir, "tb")
    tb_logger = utils.TensorboardLogger(log_dir) if utils.is_main_process() else None
    cfg = PretrainStep(grid=grid, device=device, amp_dtype=amp_dtype, scaler=scaler, clip_grad=args.clip_grad,
                       normalize_target=args.normlize_target)
    start = time.time()
    try:
        for epoch in range(args.start_epoch, args.epochs):
            if args.distributed:
                sampler.set_epoch(epoch)
            stats = train_one_epoch(model, loader, optimizer, epoch, cfg, lr_schedule, wd_schedule,
                                    start_step=epoch * steps_per_epoch, header=f"Epoch [{epoch}/{args.epochs - 1}]",
                                    print_freq=args.print_freq, tb_logger=tb_logger, clips_per_step=clips_per_step)
            data = loader.end_epoch()  # unreadable videos skipped this epoch, over all processes
            last = epoch + 1 == args.epochs
            if utils.is_main_process() and ((epoch + 1) % args.save_ckpt_freq == 0 or last):
                state = utils.checkpoint_state(model_without_ddp, grid, args, epoch, optimizer, scaler)
                path = utils.save_checkpoint(Path(args.output_dir) / f"checkpoint-{epoch}.pth", state)
                print(f"Saved {path}")
                if args.save_safetensors:
                    print(f"Saved {utils.save_safetensors(path.with_suffix('.safetensors'), state['model'], grid, args)}")
            record = {**{f"train_{k}": v for k, v in stats.items()}, **data, "epoch": epoch,
                      "n_parameters": n_parameters}
            utils.append_jsonl(Path(args.output_dir) / "log.txt", record)
            if tb_logger is not None:
                tb_logger.update("epoch", step=epoch, **stats)
                tb_logger.update("data", step=epoch, skipped_videos=data["skipped_videos"],
                                 bad_video_files=data["bad_video_files"])
                tb_logger.flush()
    except (NonFiniteLossError, data_health.TooManyBadVideos, utils.CheckpointSaveError) as e:
        raise SystemExit(f"error: {e}")
    except UnreadableDataError as e:
        raise SystemExit(f"error: {data_health.unreadable_data_message(e)}")
    finally:
        if tb_logger is not None:
            tb_logger.close()
        utils.cleanup_distributed()
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
