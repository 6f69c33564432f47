"""Command-line flags shared by the pre-training and fine-tuning scripts, and their up-front checks."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import utils
from modeling_finetune import POS_EMBED_TYPES
from patch_grid import GridError, PatchGrid, grid_from_args


def add_grid_args(p: argparse.ArgumentParser, model: str) -> argparse._ArgumentGroup:
    g = p.add_argument_group("model and patch grid")
    g.add_argument("--model", default=model, type=str,
                   help="model name; the grid flags below override the name's 16x224/16 geometry")
    g.add_argument("--input_size", default=[224], type=int, nargs="+", metavar="SIZE",
                   help="frame size in pixels: one value (square) or H W")
    g.add_argument("--patch_size", default=16, type=int, help="patch side in pixels")
    g.add_argument("--num_frames", default=16, type=int, help="frames per clip")
    g.add_argument("--tubelet_size", default=2, type=int, help="frames per token (temporal patch size)")
    g.add_argument("--pos_embed", default="1d", choices=POS_EMBED_TYPES,
                   help="position table: VideoMAE's 1-D sin-cos over the token index, a factorised "
                        "time/height/width 3-D sin-cos table, or a learned table")
    g.add_argument("--use_checkpoint", action="store_true",
                   help="activation checkpointing (less memory, about a third slower)")
    return g


def add_optim_args(p: argparse.ArgumentParser, lr: float, min_lr: float, warmup_epochs: int,
                   opt_betas: list[float] | None) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--opt", default="adamw", type=str, help="optimizer (any timm optimizer name)")
    g.add_argument("--opt_eps", default=1e-8, type=float, help="optimizer epsilon")
    g.add_argument("--opt_betas", default=opt_betas, type=float, nargs=2, help="AdamW betas")
    g.add_argument("--clip_grad", default=None, type=float, help="clip the gradient norm to this value")
    g.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    g.add_argument("--weight_decay", default=0.05, type=float, help="weight decay at the start")
    g.add_argument("--weight_decay_end", default=None, type=float,
                   help="weight decay at the end of a cosine schedule (default: constant)")
    g.add_argument("--lr", default=lr, type=float,
                   help="base learning rate for a total batch of 256; scaled by total batch / 256")
    g.add_argument("--warmup_lr", default=1e-6, type=float, help="learning rate at the start of warmup")
    g.add_argument("--min_lr", default=min_lr, type=float, help="learning rate at the end of the cosine")
    g.add_argument("--warmup_epochs", default=warmup_epochs, type=int, help="linear warmup epochs")
    g.add_argument("--warmup_steps", default=-1, type=int, help="warmup steps (overrides --warmup_epochs when > 0)")
    g.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                   help="mixed precision: auto = bf16 on CUDA, none on CPU; fp16 needs CUDA")


def add_data_args(p: argparse.ArgumentParser, data_path_help: str, num_sample: int) -> argparse._ArgumentGroup:
    g = p.add_argument_group("data")
    g.add_argument("--data_path", default=None, type=str, help=data_path_help)
    g.add_argument("--data_root", default=None, type=str, help="folder the list files' video paths are relative to")
    g.add_argument("--demo_root", default="data/demo", type=str,
                   help="where the built-in demo dataset is generated when --data_path is not given")
    g.add_argument("--sampling_rate", default=4, type=int, help="frame stride inside a clip")
    g.add_argument("--num_sample", default=num_sample, type=int,
                   help="clips cut from each decoded video (repeated augmentation)")
    g.add_argument("--num_workers", default=10, type=int, help="data loader worker processes")
    g.add_argument("--pin_mem", default=True, type=utils.str2bool, nargs="?", const=True,
                   help="pin host memory for faster copies to the GPU")
    return g


def add_run_args(p: argparse.ArgumentParser, output_dir: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default=output_dir, type=str, help="checkpoints and log.txt go here")
    g.add_argument("--log_dir", default=None, type=str, help="TensorBoard folder (default: OUTPUT_DIR/tb)")
    g.add_argument("--device", default=None, type=str, help="cuda or cpu (default: cuda when present)")
    g.add_argument("--seed", default=0, type=int, help="random seed")
    g.add_argument("--resume", default="", type=str, help="checkpoint to resume from")
    g.add_argument("--auto_resume", default=True, type=utils.str2bool, nargs="?", const=True,
                   help="resume from the newest checkpoint in --output_dir")
    g.add_argument("--no_auto_resume", action="store_false", dest="auto_resume", help="start fresh")
    g.add_argument("--start_epoch", default=0, type=int, help="first epoch (set by resuming)")
    g.add_argument("--print_freq", default=10, type=int, help="print a progress line every N steps")
    g.add_argument("--save_safetensors", action="store_true",
                   help="also write the model weights alone as checkpoint-N.safetensors next to each .pth")
    g.add_argument("--local_rank", "--local-rank", default=-1, type=int, help=argparse.SUPPRESS)


def validate_common(args: argparse.Namespace, positive: tuple[str, ...]) -> tuple[PatchGrid, list[str]]:
    """Checks both scripts share. Returns the grid and the problems found (an empty list when all is well)."""
    problems: list[str] = []
    grid = None
    try:
        grid = grid_from_args(args)
    except GridError as e:
        problems.append(str(e))
    for flag in positive:
        if getattr(args, flag) < 1:
            problems.append(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.num_workers < 0:
        problems.append(f"--num_workers must be 0 or more, got {args.num_workers}")
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
    return grid, problems


def fail_if(problems: list[str]) -> None:
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))


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


def scale_lr(args: argparse.Namespace, clips_per_step: int) -> None:
    """VideoMAE's linear scaling rule: the LR flags are for a total batch of 256."""
    for name in ("lr", "min_lr", "warmup_lr"):
        setattr(args, name, getattr(args, name) * clips_per_step / 256)
