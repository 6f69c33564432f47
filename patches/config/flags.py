"""Command-line flags shared by the pre-training and fine-tuning scripts: the parser groups both build on.

Checks live in :mod:`patches.config.checks`, resolution in :mod:`patches.config.run_config`."""
from __future__ import annotations

import argparse

from patches.config.flag_types import str2bool
from patches.models.attention import ATTN_IMPLS
from patches.models.layers import POS_EMBED_TYPES

LR_SCALE_BY = ("batch", "clips")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not after a help text that states it, nor for on/off switches and unset
    (None) values, whose help says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.nargs == 0 or action.default is None:
            return text
        return super()._get_help_string(action)


def run_parser(prog: str, epochs: int, save_ckpt_freq: int) -> argparse.ArgumentParser:
    """A run script's parser, opening with the flags both scripts have first: batch, accumulation, epochs,
    epoch checkpoints."""
    p = argparse.ArgumentParser(prog, add_help=True, formatter_class=HelpFormatter)
    p.add_argument("--batch_size", default=64, type=int,
                   help="videos per process per step (each gives --num_sample clips)")
    p.add_argument("--update_freq", default=1, type=int,
                   help="gradient accumulation: steps per optimizer update (total batch = batch_size x update_freq "
                        "x processes, as in VideoMAE)")
    p.add_argument("--epochs", default=epochs, type=int, help="training epochs")
    p.add_argument("--save_ckpt_freq", default=save_ckpt_freq, type=int,
                   help="save a checkpoint every N epochs (and at the end)")
    return p


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
                   help="activation checkpointing: less memory, more compute (each block's forward runs again "
                        "in the backward pass)")
    g.add_argument("--attn_impl", default="auto", choices=ATTN_IMPLS,
                   help="attention kernel: sdpa (torch's fused scaled_dot_product_attention), math (matmul + "
                        "softmax), or auto: sdpa on CUDA in bf16/fp16, untimed; otherwise both timed on the run's "
                        "shapes at start and the faster kept (the choice is cached per machine and shape)")
    g.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the model (backend inductor unless named; the first steps are slow while "
                        "it compiles, and inductor on CPU needs a C++ compiler; see PERFORMANCE.md)")
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
                   help="base learning rate for a total batch of 256; --lr, --min_lr and --warmup_lr are scaled by "
                        "total batch / 256")
    g.add_argument("--lr_scale_by", default="batch", choices=LR_SCALE_BY,
                   help="what the linear scaling rule counts: batch = batch_size x update_freq x processes "
                        "(VideoMAE), clips = that x num_sample")
    g.add_argument("--warmup_lr", default=1e-6, type=float, help="learning rate at the start of warmup")
    g.add_argument("--min_lr", default=min_lr, type=float, help="learning rate at the end of the cosine")
    g.add_argument("--warmup_epochs", default=warmup_epochs, type=int, help="linear warmup epochs")
    g.add_argument("--warmup_steps", default=-1, type=int, help="warmup steps (overrides --warmup_epochs when > 0)")
    g.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                   help="mixed precision: auto = bf16 on GPUs that compute it natively (Ampere and newer), fp16 on "
                        "older GPUs, none on CPU; fp16 needs CUDA")


def add_data_args(p: argparse.ArgumentParser, data_path_help: str, num_sample: int) -> argparse._ArgumentGroup:
    g = p.add_argument_group("data")
    g.add_argument("--data_path", default=None, type=str, help=data_path_help)
    g.add_argument("--data_root", default=None, type=str, help="folder the list files' video paths are relative to")
    g.add_argument("--demo_root", default="data/demo", type=str,
                   help="where the built-in demo dataset is generated when --data_path is not given")
    g.add_argument("--sampling_rate", default=4, type=int, help="frame stride inside a clip")
    g.add_argument("--num_sample", default=num_sample, type=int,
                   help="clips cut from each decoded video (repeated augmentation)")
    g.add_argument("--fname_tmpl", default="img_{:05}.jpg", type=str,
                   help="frame file names inside frame folders ('folder num_frames label' list lines)")
    g.add_argument("--num_workers", default=10, type=int, help="data loader worker processes")
    g.add_argument("--pin_mem", default=True, type=str2bool, nargs="?", const=True,
                   help="pin host memory for faster copies to the GPU")
    g.add_argument("--max_bad_fraction", default=0.05, type=float,
                   help="unreadable videos are skipped (each replaced by another, reported once); stop the run "
                        "when more than this share of the videos cannot be read (0: stop at the first)")
    g.add_argument("--check_data", action="store_true",
                   help="only check the data: open every listed video, decode its first and last frame, report "
                        "every bad list line and unreadable video, exit 0 when all is well (no model is built)")
    return g


def add_run_args(p: argparse.ArgumentParser, output_dir: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default=output_dir, type=str, help="checkpoints and log.txt go here")
    g.add_argument("--log_dir", default=None, type=str, help="TensorBoard folder (default: OUTPUT_DIR/tb)")
    g.add_argument("--device", default=None, type=str, help="cuda or cpu (default: cuda when present)")
    g.add_argument("--seed", default=0, type=int, help="random seed")
    g.add_argument("--resume", default="", type=str, help="checkpoint to resume from")
    g.add_argument("--auto_resume", default=True, type=str2bool, nargs="?", const=True,
                   help="resume from the newest checkpoint in --output_dir")
    g.add_argument("--no_auto_resume", action="store_false", dest="auto_resume", help="start fresh")
    g.add_argument("--start_epoch", default=0, type=int, help="first epoch (set by resuming)")
    g.add_argument("--print_freq", default=10, type=int, help="print a progress line every N steps")
    g.add_argument("--save_safetensors", action="store_true",
                   help="also write the model weights alone as checkpoint-N.safetensors next to each .pth")
    g.add_argument("--local_rank", "--local-rank", default=-1, type=int, help=argparse.SUPPRESS)
    g.add_argument("--dry_run", action="store_true",
                   help="only resolve the flags as the run would (process count from torchrun's or Slurm's "
                        "environment, no process group joined) and print the run as one JSON object: scaled "
                        "LRs, total batch, epochs, grid, masking, sampling, augmentation; reads no data and no "
                        "checkpoint (missing paths are warnings on stderr), exits 0")


def add_scale_args(p: argparse.ArgumentParser) -> None:
    """Flags for many processes, DeepSpeed, and checkpoints that survive kills and preemption."""
    g = p.add_argument_group("scaling out and resuming")
    g.add_argument("--save_ckpt_every_steps", default=0, type=int, metavar="K",
                   help="also save checkpoint-latest every K optimizer steps inside an epoch (0: only at epoch ends)")
    g.add_argument("--keep_ckpts", default=0, type=int, metavar="N",
                   help="keep only the newest N checkpoint-EPOCH files (0: keep all); best and latest are never "
                        "deleted")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms, no cuDNN autotuning), so that "
                        "a resumed run repeats an uninterrupted one bit for bit; can be slower")
    g.add_argument("--enable_deepspeed", action="store_true",
                   help="train through DeepSpeed (config generated from --zero_stage, --amp, --clip_grad and "
                        "--update_freq); checkpoints become folders checkpoint-N/")
    g.add_argument("--zero_stage", default=1, type=int, choices=[0, 1, 2],
                   help="DeepSpeed ZeRO stage: 0 plain data parallel, 1 shards optimizer states, 2 also gradients")
