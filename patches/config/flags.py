"""Command-line flags shared by the pre-training and fine-tuning scripts, and their up-front checks."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch

from patches.config.flag_types import str2bool
from patches.utils.devices import auto_amp, autocast_dtype, cuda_native_bf16, resolve_device
from patches.models.attention import ATTN_IMPLS
from patches.data.loaders import LoaderConfig
from patches.data.datasets import ClassificationDataConfig, PretrainingDataConfig
from patches.models.layers import POS_EMBED_TYPES
from patches.train.optim import OptimizerConfig
from patches.grid import GridError, PatchGrid, grid_from_args
from patches.train.trainer import Schedule, TrainerConfig
from patches.data.lists import VideoListsConfig, numbered_pretraining_entries, read_records

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
                        "softmax), or auto: math for bf16/fp16 on CPU, where it is faster, sdpa elsewhere")
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
    deepspeed = getattr(args, "enable_deepspeed", False)
    if args.resume and not (Path(args.resume).is_file() or (deepspeed and Path(args.resume).is_dir())):
        problems.append(f"--resume {args.resume} does not exist")
    for flag in ("save_ckpt_every_steps", "keep_ckpts"):
        if getattr(args, flag, 0) < 0:
            problems.append(f"--{flag} must be 0 or more, got {getattr(args, flag)}")
    if deepspeed:
        import importlib.util
        if importlib.util.find_spec("deepspeed") is None:
            from patches.train.deepspeed_engine import MISSING
            problems.append(MISSING)
    try:
        device = resolve_device(args.device)
        native_bf16 = device.type == "cuda" and cuda_native_bf16(device)
        if args.amp == "auto":
            args.amp = auto_amp(device.type, native_bf16)
        autocast_dtype(args.amp, device)
        if args.amp == "bf16" and device.type == "cuda" and not native_bf16:
            print(f"warning: --amp bf16: {torch.cuda.get_device_name(device)} only emulates bfloat16 (slow, and "
                  f"without flash attention); --amp fp16 is faster there")
        problems += _compile_problems(args.compile, device)
        if deepspeed:
            from patches.train.deepspeed_engine import amp_problem
            problems += [p for p in [amp_problem(getattr(args, "zero_stage", 1), args.amp)] if p]
    except ValueError as e:
        problems.append(str(e))
    problems += writable_dir_problems(args.output_dir, "--output_dir")
    if args.log_dir:
        problems += writable_dir_problems(args.log_dir, "--log_dir")
    problems += _optim_problems(args)
    if args.warmup_steps <= 0 and args.warmup_epochs > args.epochs:
        # a warning, not a refusal: short trial runs (--epochs 1) keep fine-tuning's default warmup of 5
        print(f"warning: --warmup_epochs {args.warmup_epochs} is longer than the run's --epochs {args.epochs}: the "
              f"warmup is cut to the run, so the learning rate rises all run long and never decays")
    if not 0 <= args.max_bad_fraction <= 1:
        problems.append(f"--max_bad_fraction must be in [0, 1], got {args.max_bad_fraction}")
    if args.check_data and args.data_path is None:
        problems.append("--check_data checks the videos of --data_path: give one")
    if args.start_epoch < 0:
        problems.append(f"--start_epoch must be 0 or more, got {args.start_epoch}")
    if not 0 <= args.drop_path < 1:
        problems.append(f"--drop_path must be in [0, 1), got {args.drop_path}")
    return grid, problems


def _compile_problems(backend: str | None, device: torch.device) -> list[str]:
    if not backend:
        return []
    import torch._dynamo
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        return [f"--compile {backend}: not a torch.compile backend; known: {', '.join(known)}"]
    if backend == "inductor":
        import os
        import shutil
        # Inductor builds C++ kernels on the CPU; on CUDA, Triton builds a small C launcher for each kernel.
        var, names, language = (("CXX", ("g++", "c++", "clang++"), "C++") if device.type == "cpu"
                                else ("CC", ("cc", "gcc", "clang"), "C"))
        if not any(shutil.which(c) for c in (os.environ.get(var, ""), *names) if c):
            return [f"--compile: inductor on {device.type.upper()} needs a {language} compiler ({' or '.join(names)}, "
                    f"or ${var}) and none was found; install one, or run without --compile"]
    return []


def _optim_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    for flag in ("lr", "min_lr", "warmup_lr", "weight_decay", "weight_decay_end", "clip_grad"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            problems.append(f"--{flag} must be a finite number, got {value}")
    if args.lr <= 0:
        problems.append(f"--lr must be positive, got {args.lr}")
    for flag in ("min_lr", "warmup_lr", "weight_decay", "warmup_epochs"):
        if getattr(args, flag) < 0:
            problems.append(f"--{flag} must be 0 or more, got {getattr(args, flag)}")
    if args.min_lr > args.lr > 0:
        problems.append(f"--min_lr {args.min_lr:g} is above --lr {args.lr:g}: the cosine would raise the learning "
                        f"rate; give a --min_lr below --lr")
    if args.weight_decay_end is not None and args.weight_decay_end < 0:
        problems.append(f"--weight_decay_end must be 0 or more, got {args.weight_decay_end}")
    if args.clip_grad is not None and args.clip_grad < 0:
        problems.append(f"--clip_grad must be positive (0 or left out: no clipping), got {args.clip_grad}")
    if args.opt_eps is not None and args.opt_eps <= 0:
        problems.append(f"--opt_eps must be positive, got {args.opt_eps}")
    from timm.optim import list_optimizers
    known = list_optimizers()
    # timm also accepts "fused"/"lookahead_" prefixes before the name
    if args.opt.lower().split("_")[-1] not in known and args.opt.lower() not in known:
        problems.append(f"--opt {args.opt!r} is not a timm optimizer (e.g. adamw, sgd, lamb)")
    return problems


def model_problems(name: str, pretraining: bool) -> list[str]:
    """``--model`` must name a registered PATCHES model of the script's kind."""
    import timm

    from patches.models import factory as models  # noqa: F401  (registers the model names)
    if pretraining:
        if not (name.startswith("pretrain_videomae_") and timm.is_model(name)):
            known = ", ".join(timm.list_models("pretrain_videomae_*"))
            return [f"--model {name!r} is not a pre-training model; known: {known}"]
        return []
    full = "video_" + name if name.startswith("vit_") else name
    if not (full.startswith("video_vit_") and timm.is_model(full)):
        known = ", ".join(n.removeprefix("video_") for n in timm.list_models("video_vit_*"))
        return [f"--model {name!r} is not a classifier; known: {known}"]
    return []


def expected_world_size() -> int:
    """The process count init_distributed will set up, read from the same environment."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_NTASKS"])
    return 1


def batch_problems(args: argparse.Namespace, num_videos: int, source: str, update_freq: int = 1) -> list[str]:
    """One optimizer update must fit in an epoch (the last, partial batch of each epoch is dropped)."""
    world = expected_world_size()
    per_update = args.batch_size * update_freq * world
    if per_update <= num_videos:
        return []
    parts = [f"--batch_size {args.batch_size}"] + ([f"--update_freq {update_freq}"] if update_freq > 1 else [])
    return [f"{' x '.join(parts)} x {world} processes = {per_update} videos per update, more than the "
            f"{num_videos} videos of {source}"]


def pretraining_data_problems(args: argparse.Namespace) -> list[str]:
    """``--data_path``'s list file parses, and holds at least one batch of videos."""
    if args.data_path is None or not Path(args.data_path).is_file() or args.check_data:
        return []  # no list (the demo data), already reported, or --check_data reports it all
    errors: list[str] = []
    try:
        entries = numbered_pretraining_entries(args.data_path, args.data_root, errors=errors)
    except (OSError, ValueError) as e:
        return [str(e)]
    if errors:
        return list_problems(errors)
    return batch_problems(args, len(entries), args.data_path, args.update_freq)


def finetuning_data_problems(args: argparse.Namespace) -> list[str]:
    """The train/validation/test lists the run will read parse, their labels fit the class count, and the
    training list holds at least one update's worth of videos."""
    if args.data_path is None or not Path(args.data_path).exists() or args.check_data:
        return []  # the demo data, already reported, or --check_data reports it all
    if args.eval:
        modes = ["test"]
    else:
        modes = ["train"] + ([] if args.disable_eval_during_finetuning else ["validation"]) + ["test"]
    if args.eval_data_path is not None and not Path(args.eval_data_path).exists():
        modes = [m for m in modes if m == "train"]  # the missing folder is reported already
    errors: list[str] = []
    lists = video_lists_config(args)
    counts = {mode: len(read_records(mode, lists, errors)[0]) for mode in modes}
    if errors:
        return list_problems(list(dict.fromkeys(errors)))  # validation may read the test list again
    if "train" in counts:
        return batch_problems(args, counts["train"], f"the training list in {args.data_path}", args.update_freq)
    return []


def list_problems(errors: list[str], limit: int = 10) -> list[str]:
    """Bad list lines as problems, the first ``limit`` of them and a count of the rest."""
    shown = errors[:limit]
    if len(errors) > limit:
        shown.append(f"... and {len(errors) - limit} more bad lines (--check_data lists them all)")
    return shown


def fail_if(problems: list[str]) -> None:
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))


def writable_dir_problems(folder: str, flag: str) -> list[str]:
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return [f"{flag} {folder} is a file, not a folder"]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return [f"{flag} {folder} is not writable ({e.strerror or e})"]
    return []


def total_batch_size(args: argparse.Namespace, world_size: int) -> int:
    """Videos per optimizer update over all processes, as VideoMAE counts them: batch x accumulation x processes."""
    return args.batch_size * getattr(args, "update_freq", 1) * world_size


def scale_lr(args: argparse.Namespace, world_size: int) -> str:
    """VideoMAE's linear scaling rule: ``--lr``, ``--min_lr`` and ``--warmup_lr`` are for a total batch of 256
    and are multiplied by total batch / 256 (``--lr_scale_by clips``: by total clips / 256). The flags change in
    place, so that checkpoints record the rates the run used. Returns the lines to print, in VideoMAE's words."""
    total = total_batch_size(args, world_size)
    counted = total * (args.num_sample if args.lr_scale_by == "clips" else 1)
    base = args.lr
    for name in ("lr", "min_lr", "warmup_lr"):
        setattr(args, name, getattr(args, name) * counted / 256)
    return (f"LR = {args.lr:.8f} (--lr {base:g} x {counted} / 256, counting the {args.lr_scale_by}); "
            f"min_lr = {args.min_lr:.8g}, warmup_lr = {args.warmup_lr:.8g}\n"
            f"Batch size = {total} ({args.batch_size} x update_freq {getattr(args, 'update_freq', 1)} x "
            f"{world_size} processes; {total * args.num_sample} clips per update)")


# ---------------------------------------------------------------- data flags -> data configs

def use_demo_data_if_no_data_path(args: argparse.Namespace, finetuning: bool) -> None:
    """Without ``--data_path``, point the data flags at the built-in demo dataset (generated on first use).

    Pre-training reads its unlabelled clip list; fine-tuning its train/val/test lists as ``--data_set
    custom``, without flip unless ``--flip`` is given (a mirrored "move left" clip is a "move right" clip).
    """
    if args.data_path is not None:
        return
    from patches.data.demo import ensure_demo_dataset
    demo = ensure_demo_dataset(args.demo_root)
    if finetuning:
        args.data_path, args.data_set = str(demo["root"]), "custom"
        if args.flip is None:
            args.flip = False
        if args.data_root is None:
            args.data_root = str(demo["root"])
    else:
        # The labelled training clips and the unlabelled ones: pre-training needs no labels.
        args.data_path, args.data_root = str(demo["pretrain"]), str(demo["root"])
    print(f"No --data_path: using the demo dataset in {demo['root']}")


def video_lists_config(args: argparse.Namespace) -> VideoListsConfig:
    """Where the fine-tuning flags say the videos are listed."""
    return VideoListsConfig(data_set=args.data_set, data_path=args.data_path, eval_data_path=args.eval_data_path,
                            data_root=args.data_root, split=args.split, nb_classes=args.nb_classes)


def classification_data_config(args: argparse.Namespace) -> ClassificationDataConfig:
    """The fine-tuning flags' datasets (``--nb_classes`` as it is now: the run sets it once it is known)."""
    return ClassificationDataConfig(
        lists=video_lists_config(args), sampling_rate=args.sampling_rate, num_sample=args.num_sample, aa=args.aa,
        train_crop_scale=_pair(args.train_crop_scale), flip=args.flip, train_interpolation=args.train_interpolation,
        reprob=args.reprob, remode=args.remode, recount=args.recount, short_side_size=args.short_side_size,
        test_num_segment=args.test_num_segment, test_num_crop=args.test_num_crop, fname_tmpl=args.fname_tmpl,
        sampling=args.sampling)


def _pair(values: list[float] | None) -> tuple[float, float] | None:
    return None if values is None else (values[0], values[1])


def pretraining_data_config(args: argparse.Namespace) -> PretrainingDataConfig:
    """The pre-training flags' dataset."""
    return PretrainingDataConfig(data_path=args.data_path, sampling_rate=args.sampling_rate, data_root=args.data_root,
                                 num_sample=args.num_sample, flip=args.flip, fname_tmpl=args.fname_tmpl)


def loader_config(args: argparse.Namespace) -> LoaderConfig:
    """The DataLoader settings of either script's flags."""
    return LoaderConfig(batch_size=args.batch_size, num_workers=args.num_workers, pin_memory=args.pin_mem,
                        seed=args.seed, max_bad_fraction=args.max_bad_fraction)


# ---------------------------------------------------------------- flags -> driver and optimizer configs

def optimizer_config(args: argparse.Namespace, layer_decay: float | None = None) -> OptimizerConfig:
    return OptimizerConfig(opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, eps=args.opt_eps,
                           betas=None if args.opt_betas is None else tuple(args.opt_betas), momentum=args.momentum,
                           layer_decay=layer_decay)


def trainer_config(args: argparse.Namespace, device: str | None) -> TrainerConfig:
    """The driver's settings from the flags (after :func:`scale_lr`); ``device``: what ``launch`` chose."""
    schedule = Schedule(lr=args.lr, min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
                        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                        weight_decay_end=args.weight_decay_end)
    return TrainerConfig(
        output_dir=args.output_dir, model_name=args.model, device=device, amp=args.amp, epochs=args.epochs,
        schedule=schedule,
        log_dir=args.log_dir, seed=args.seed, deterministic=args.deterministic, start_epoch=args.start_epoch,
        update_freq=args.update_freq, clip_grad=args.clip_grad, print_freq=args.print_freq,
        save_ckpt_freq=args.save_ckpt_freq, save_ckpt_every_steps=args.save_ckpt_every_steps,
        keep_ckpts=args.keep_ckpts, save_safetensors=args.save_safetensors, attn_impl=args.attn_impl,
        compile=args.compile, model_ema_decay=args.model_ema_decay if getattr(args, "model_ema", False) else None,
        model_ema_force_cpu=getattr(args, "model_ema_force_cpu", False),
        deepspeed_zero_stage=args.zero_stage if args.enable_deepspeed else None)
