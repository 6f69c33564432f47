"""The run scripts' up-front checks: every problem with the flags found before data or model are built.

Each check returns a list of problems (empty when all is well); :func:`fail_if` turns a non-empty list into a
:class:`FlagError`, which the entry points print as ``error: ...`` (exit status 1). Nothing here writes to the
flags: values a check derives (the grid, the precision) are returned.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from patches.config.library_configs import video_lists_config
from patches.data.lists import numbered_pretraining_entries, read_records
from patches.errors import UsageError
from patches.grid import GridError, PatchGrid, grid_from_args
from patches.utils.devices import auto_amp, autocast_dtype, cuda_native_bf16, resolve_device


class FlagError(UsageError):
    """The flags cannot be run: every problem found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n       ".join(problems))
        self.problems = list(problems)


def fail_if(problems: list[str]) -> None:
    """Raise :class:`FlagError` listing ``problems``, if there are any."""
    if problems:
        raise FlagError(problems)


def path_problem(problems: list[str], message: str, dry_run: bool) -> None:
    """A path that does not exist (yet): a problem, or under ``--dry_run``, which reads nothing, a warning."""
    if dry_run:
        print(f"warning: {message}", file=sys.stderr, flush=True)
    else:
        problems.append(message)


def validate_common(args: argparse.Namespace, positive: tuple[str, ...]
                    ) -> tuple[PatchGrid | None, str, list[str]]:
    """Checks both scripts share. Returns the grid, the precision ``--amp`` resolves to (``auto`` made concrete
    for the device) and the problems found (an empty list when all is well)."""
    problems: list[str] = []
    grid = None
    try:
        grid = grid_from_args(args)
    except GridError as e:
        problems.append(str(e))
    problems += _count_problems(args, positive)
    amp, found = _device_problems(args)
    problems += found
    dry_run = getattr(args, "dry_run", False)
    for flag in ("output_dir", "log_dir"):
        folder = getattr(args, flag)
        if folder and dry_run and not Path(folder).is_dir():  # a dry run creates nothing
            path_problem(problems, f"--{flag} {folder} does not exist yet", dry_run)
        elif folder and not dry_run:
            problems += writable_dir_problems(folder, f"--{flag}")
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
    return grid, amp, problems


def _count_problems(args: argparse.Namespace, positive: tuple[str, ...]) -> list[str]:
    """Counts and paths: positive counts, worker and checkpoint counts, --data_root, --resume, DeepSpeed."""
    problems = [f"--{flag} must be at least 1, got {getattr(args, flag)}" for flag in positive
                if getattr(args, flag) < 1]
    if args.num_workers < 0:
        problems.append(f"--num_workers must be 0 or more, got {args.num_workers}")
    dry_run = getattr(args, "dry_run", False)
    if args.data_root is not None and not Path(args.data_root).is_dir():
        path_problem(problems, f"--data_root {args.data_root} is not a folder", dry_run)
    deepspeed = getattr(args, "enable_deepspeed", False)
    if args.resume and not (Path(args.resume).is_file() or (deepspeed and Path(args.resume).is_dir())):
        path_problem(problems, f"--resume {args.resume} does not exist", dry_run)
    for flag in ("save_ckpt_every_steps", "keep_ckpts"):
        if getattr(args, flag, 0) < 0:
            problems.append(f"--{flag} must be 0 or more, got {getattr(args, flag)}")
    if deepspeed:
        import importlib.util
        if importlib.util.find_spec("deepspeed") is None:
            from patches.train.deepspeed_engine import MISSING
            path_problem(problems, MISSING, dry_run)  # a dry run may resolve on a machine without it
    return problems


def _device_problems(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The precision ``--amp`` resolves to on ``--device``, and what the device cannot do."""
    amp, problems = args.amp, []
    try:
        device = resolve_device(args.device)
        native_bf16 = device.type == "cuda" and cuda_native_bf16(device)
        if amp == "auto":
            amp = auto_amp(device.type, native_bf16)
        autocast_dtype(amp, device)
        if amp == "bf16" and device.type == "cuda" and not native_bf16:
            print(f"warning: --amp bf16: {torch.cuda.get_device_name(device)} only emulates bfloat16 (slow, and "
                  f"without flash attention); --amp fp16 is faster there")
        problems += _compile_problems(args.compile, device)
        if getattr(args, "enable_deepspeed", False):
            from patches.train.deepspeed_engine import amp_problem
            problems += [p for p in [amp_problem(getattr(args, "zero_stage", 1), amp)] if p]
    except ValueError as e:
        problems.append(str(e))
    return amp, problems


def _compile_problems(backend: str | None, device: torch.device) -> list[str]:
    if not backend:
        return []
    import torch._dynamo
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        return [f"--compile {backend}: not a torch.compile backend; known: {', '.join(known)}"]
    if backend == "inductor":
        import shutil

        # Inductor builds C++ kernels on the CPU; on CUDA, Triton builds a small C launcher for each kernel.
        var, names, language = (("CXX", ("g++", "c++", "clang++"), "C++") if device.type == "cpu"
                                else ("CC", ("cc", "gcc", "clang"), "C"))
        if not any(shutil.which(c) for c in (os.environ.get(var, ""), *names) if c):
            return [f"--compile: inductor on {device.type.upper()} needs a {language} compiler ({' or '.join(names)}, "
                    f"or ${var}) and none was found; install one, or run without --compile"]
        include = python_include_dir()
        if device.type == "cuda" and not (Path(include) / "Python.h").is_file():
            return [f"--compile: inductor on CUDA needs Python's C headers (Triton's kernel launcher includes "
                    f"Python.h) and {include}/Python.h does not exist; install them (the python3-dev or "
                    f"python3.X-devel package, or a Python that ships them), or run without --compile"]
    return []


def python_include_dir() -> str:
    """Where Triton looks for ``Python.h``: this interpreter's include folder, as ``triton.runtime.build`` finds it."""
    import sysconfig
    scheme = sysconfig.get_default_scheme()
    return sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]


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
