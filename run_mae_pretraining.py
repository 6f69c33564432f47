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

import utils
from engine_for_pretraining import NonFiniteLossError, PretrainStep, train_one_epoch
from masking_generator import DECODER_MASK_TYPES, MASK_TYPES, build_mask_generator, mask_counts
from modeling_finetune import POS_EMBED_TYPES, create_video_model
from optim_factory import build_optimizer
from patch_grid import GridError, grid_from_args


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PATCHES masked video pre-training", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch_size", default=64, type=int, help="clips per process per step (before --num_sample)")
    p.add_argument("--epochs", default=800, type=int, help="training epochs")
    p.add_argument("--save_ckpt_freq", default=50, type=int, help="save a checkpoint every N epochs (and at the end)")
    p.add_argument("--print_freq", default=10, type=int, help="print a progress line every N steps")

    g = p.add_argument_group("model and patch grid")
    g.add_argument("--model", default="pretrain_videomae_base_patch16_224", type=str,
                   help="model name; the grid flags below override the name's 16x224/16 geometry")
    g.add_argument("--input_size", default=[224], type=int, nargs="+", metavar="SIZE",
                   help="frame size in pixels: one value (square) or H W")
    g.add_argument("--patch_size", default=16, type=int, help="patch side in pixels")
    g.add_argument("--num_frames", default=16, type=int, help="frames per clip")
    g.add_argument("--tubelet_size", default=2, type=int, help="frames per token (temporal patch size)")
    g.add_argument("--pos_embed", default="1d", choices=POS_EMBED_TYPES,
                   help="position table: VideoMAE's 1-D sin-cos over the token index, a factorised "
                        "time/height/width 3-D sin-cos table, or a learned table")
    g.add_argument("--decoder_depth", default=4, type=int, help="decoder blocks")
    g.add_argument("--drop_path", default=0.0, type=float, help="stochastic depth rate in the encoder")
    g.add_argument("--use_checkpoint", action="store_true", help="activation checkpointing (less memory, ~30%% slower)")

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

    g = p.add_argument_group("optimisation")
    g.add_argument("--opt", default="adamw", type=str, help="optimizer (any timm name)")
    g.add_argument("--opt_eps", default=1e-8, type=float, help="optimizer epsilon")
    g.add_argument("--opt_betas", default=[0.9, 0.95], type=float, nargs=2, help="AdamW betas")
    g.add_argument("--clip_grad", default=None, type=float, help="clip the gradient norm to this value")
    g.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    g.add_argument("--weight_decay", default=0.05, type=float, help="weight decay at the start")
    g.add_argument("--weight_decay_end", default=None, type=float,
                   help="weight decay at the end of a cosine schedule (default: constant)")
    g.add_argument("--lr", default=1.5e-4, type=float,
                   help="base learning rate for a total batch of 256; scaled by total batch / 256")
    g.add_argument("--warmup_lr", default=1e-6, type=float, help="learning rate at the start of warmup")
    g.add_argument("--min_lr", default=1e-5, type=float, help="learning rate at the end of the cosine")
    g.add_argument("--warmup_epochs", default=40, type=int, help="linear warmup epochs")
    g.add_argument("--warmup_steps", default=-1, type=int, help="warmup steps (overrides --warmup_epochs when > 0)")
    g.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                   help="mixed precision: auto = bf16 on CUDA, none on CPU")

    g = p.add_argument_group("data")
    g.add_argument("--data_path", default=None, type=str,
                   help="list file of 'path' or 'path label' lines; default: the built-in demo dataset")
    g.add_argument("--data_root", default=None, type=str, help="folder the list file's paths are relative to")
    g.add_argument("--demo_root", default="data/demo", type=str, help="where the demo dataset is generated")
    g.add_argument("--sampling_rate", default=4, type=int, help="frame stride inside a clip")
    g.add_argument("--num_sample", default=1, type=int,
                   help="clips cut from each decoded video (repeated augmentation, VideoMAE V2)")
    g.add_argument("--num_workers", default=10, type=int, help="data loader worker processes")
    g.add_argument("--pin_mem", default=True, type=utils.str2bool, nargs="?", const=True,
                   help="pin host memory for faster copies to the GPU")

    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="output/pretrain", type=str, help="checkpoints and log.txt go here")
    g.add_argument("--log_dir", default=None, type=str, help="TensorBoard folder (default: OUTPUT_DIR/tb)")
    g.add_argument("--device", default=None, type=str, help="cuda or cpu (default: cuda when present)")
    g.add_argument("--seed", default=0, type=int, help="random seed")
    g.add_argument("--resume", default="", type=str, help="checkpoint to resume from")
    g.add_argument("--auto_resume", default=True, type=utils.str2bool, nargs="?", const=True,
                   help="resume from the newest checkpoint in --output_dir")
    g.add_argument("--no_auto_resume", action="store_false", dest="auto_resume", help="start fresh")
    g.add_argument("--start_epoch", default=0, type=int, help="first epoch (set by resuming)")
    g.add_argument("--local_rank", "--local-rank", default=-1, type=int, help=argparse.SUPPRESS)
    return p


def validate_args(args: argparse.Namespace):
    """Every cheap check, before data or model are built. Returns the grid and mask counts."""
    try:
        grid = grid_from_args(args)
        counts = mask_counts(grid, args.mask_type, args.mask_ratio, args.decoder_mask_type, args.decoder_mask_ratio)
    except GridError as e:
        raise SystemExit(f"error: {e}")
    problems = []
    for flag in ("batch_size", "epochs", "sampling_rate", "num_sample", "save_ckpt_freq", "print_freq"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.num_workers < 0:
        problems.append(f"--num_workers must be 0 or more, got {args.num_workers}")
    if args.data_path is not None and not Path(args.data_path).is_file():
        problems.append(f"--data_path {args.data_path} is not a file")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        problems.append(f"--data_root {args.data_root} is not a folder")
    if args.resume and not Path(args.resume).is_file():
        problems.append(f"--resume {args.resume} does not exist")
    try:
        device = utils.resolve_device(args.device)
        if args.amp == "auto":
            args.amp = "bf16" if device.type == "cuda" else "none"
        utils.autocast_dtype(args.amp, device)
    except ValueError as e:
        problems.append(str(e))
    problems += writable_dir_problems(args.output_dir, "--output_dir")
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))
    return grid, counts


def writable_dir_problems(folder: str, flag: str) -> list[str]:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return [f"{flag} {folder} is not writable ({e.strerror or e})"]
    return []


def build_loader(args: argparse.Namespace, grid, device: torch.device):
    from datasets import build_pretraining_dataset, multiple_samples_collate
    if args.data_path is None:
        from demo_data import ensure_demo_dataset
        demo = ensure_demo_dataset(args.demo_root)
        args.data_path, args.data_root = str(demo["train"]), str(demo["root"])
        print(f"No --data_path: using the demo dataset in {demo['root']}")
    dataset = build_pretraining_dataset(args, grid, build_mask_generator(args, grid))
    sampler = (torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=args.seed) if args.distributed
               else torch.utils.data.RandomSampler(dataset))
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem and device.type == "cuda", drop_last=True,
        collate_fn=multiple_samples_collate if args.num_sample > 1 else None,
        persistent_workers=args.num_workers > 0)
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
    ckpt = utils.load_checkpoint(path)
    missing, unexpected = utils.unwrap_model(model).load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise SystemExit(f"error: {path} does not fit --model {args.model} at this grid "
                         f"(missing {len(missing)} keys, e.g. {missing[:3]}; unexpected {unexpected[:3]})")
    if "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    args.start_epoch = int(ckpt["epoch"]) + 1
    print(f"Resumed from {path} (epoch {ckpt['epoch']}); continuing at epoch {args.start_epoch}")


def main(args: argparse.Namespace) -> None:
    grid, counts = validate_args(args)
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
    args.lr = args.lr * clips_per_step / 256
    args.min_lr = args.min_lr * clips_per_step / 256
    args.warmup_lr = args.warmup_lr * clips_per_step / 256
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
            last = epoch + 1 == args.epochs
            if utils.is_main_process() and ((epoch + 1) % args.save_ckpt_freq == 0 or last):
                state = utils.checkpoint_state(model_without_ddp, grid, args, epoch, optimizer, scaler)
                path = utils.save_checkpoint(Path(args.output_dir) / f"checkpoint-{epoch}.pth", state)
                print(f"Saved {path}")
            record = {**{f"train_{k}": v for k, v in stats.items()}, "epoch": epoch, "n_parameters": n_parameters}
            utils.append_jsonl(Path(args.output_dir) / "log.txt", record)
            if tb_logger is not None:
                tb_logger.update("epoch", step=epoch, **stats)
                tb_logger.flush()
    except NonFiniteLossError as e:
        raise SystemExit(f"error: {e}")
    finally:
        if tb_logger is not None:
            tb_logger.close()
        utils.cleanup_distributed()
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
