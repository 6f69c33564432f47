"""Shared plumbing: devices, distributed setup, schedules, logging, progress, checkpoints."""
from __future__ import annotations

import argparse
import datetime
import errno
import json
import math
import os
import re
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from patch_grid import GridError, PatchGrid, recorded_grid

CHECKPOINT_FORMAT = "patches-checkpoint-v1"


# ---------------------------------------------------------------- flags and devices

def str2bool(value: str | bool) -> bool:
    """argparse type for on/off flags that, unlike ``type=bool``, reads 'False' as False."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on", "y", "t"):
        return True
    if lowered in ("0", "false", "no", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def resolve_device(name: str | None) -> torch.device:
    """``--device``: cuda when present unless told otherwise."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``--amp`` -> the autocast dtype, refusing combinations the device cannot run."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError(f"--amp fp16 needs a CUDA device (got --device {device}); use --amp bf16 on CPU")
        return torch.float16
    raise ValueError(f"--amp must be none, bf16 or fp16, got {amp!r}")


def amp_autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast context for ``--amp`` (a no-op when ``amp_dtype`` is None)."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- distributed

def init_distributed(device: str | None) -> str | None:
    """Join the job's process group when launched as one of several processes; return the device to use.

    torchrun (and the deepspeed launcher) set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
    Under ``srun`` with more than one task, SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID give the rank, the first
    node of the allocation is the master, and the port is derived from the job id (MASTER_PORT overrides).
    The backend is nccl on GPUs (each process on ``cuda:LOCAL_RANK``, the device returned) and gloo on the
    CPU. Other ranks' ``print`` output is silenced. Alone, nothing happens and ``device`` comes back.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world_size, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        rank, world_size = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        env.setdefault("MASTER_ADDR", _slurm_master_addr())
        # Two jobs sharing a node must not share a port: derive it from the job id.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "9500")) % 20000))
        env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = str(rank), str(world_size), str(local_rank)
    else:
        return device
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://", world_size=world_size,
                            rank=rank)
    dist.barrier()
    _print_on_main_only(rank == 0)
    return device


def _print_on_main_only(is_main: bool) -> None:
    """Silence ``print`` on the other ranks (``print(..., force=True)`` still prints), as VideoMAE does."""
    import builtins

    builtin_print = getattr(builtins.print, "_patches_original", builtins.print)

    def print_main(*a: Any, force: bool = False, **kw: Any) -> None:
        if is_main or force:
            builtin_print(*a, **kw)

    print_main._patches_original = builtin_print  # type: ignore[attr-defined]
    builtins.print = print_main


def _slurm_master_addr() -> str:
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_NODELIST", "localhost")
    import subprocess
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        # "node[01-04]" -> "node01" without scontrol
        head = nodes.split(",")[0]
        if "[" in head:
            prefix, rest = head.split("[", 1)
            return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
        return head


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def cleanup_distributed(barrier: bool = True) -> None:
    """Leave the process group. Pass ``barrier=False`` on error paths: a failed rank must not wait for
    peers that may never arrive."""
    if is_dist():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / get_world_size()


# ---------------------------------------------------------------- schedules

def cosine_scheduler(base_value: float, final_value: float, epochs: int, steps_per_epoch: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0, warmup_steps: int = -1) -> np.ndarray:
    """Per-step values: linear warmup to ``base_value``, then half-cosine down to ``final_value``."""
    total = epochs * steps_per_epoch
    warmup = warmup_steps if warmup_steps > 0 else warmup_epochs * steps_per_epoch
    warmup = min(warmup, total)
    ramp = np.linspace(start_warmup_value, base_value, warmup, endpoint=False) if warmup else np.array([])
    steps = np.arange(total - warmup)
    decay = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(math.pi * steps / max(1, len(steps))))
    return np.concatenate([ramp, decay])


# ---------------------------------------------------------------- logging and progress

class SmoothedValue:
    """Running window and global average of a scalar."""

    def __init__(self, window: int = 20):
        self.values: list[float] = []
        self.window = window
        self.total, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.values = (self.values + [value])[-self.window:]
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / max(1, self.count)

    @property
    def last(self) -> float:
        return self.values[-1] if self.values else float("nan")


class ProgressLogger:
    """Wraps an iterable; every ``print_freq`` steps prints metrics, clips/s and the epoch's ETA."""

    def __init__(self, header: str, print_freq: int = 10, clips_per_step: int = 1):
        self.header = header
        self.print_freq = max(1, print_freq)
        self.clips_per_step = clips_per_step
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)

    def update(self, **values: float) -> None:
        for name, value in values.items():
            if value is not None:
                self.meters[name].update(float(value))

    def averages(self) -> dict[str, float]:
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def log_every(self, iterable: Iterable[Any], total: int | None = None) -> Iterator[Any]:
        total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        start = last = time.time()
        for i, item in enumerate(iterable):
            yield item
            done = i + 1
            if done % self.print_freq == 0 or done == total:
                now = time.time()
                steps = self.print_freq if done % self.print_freq == 0 else done % self.print_freq
                rate = steps * self.clips_per_step / max(now - last, 1e-9)
                eta = (now - start) / done * (total - done)
                last = now
                metrics = "  ".join(f"{k} {m.last:.4g} ({m.global_avg:.4g})" if k == "loss" else f"{k} {m.last:.3g}"
                                    for k, m in self.meters.items())
                if is_main_process():
                    print(f"{self.header} [{done}/{total}]  {metrics}  clips/s {rate:.1f}  "
                          f"eta {datetime.timedelta(seconds=int(eta))}", flush=True)
        if is_main_process():
            elapsed = time.time() - start
            print(f"{self.header} done in {datetime.timedelta(seconds=int(elapsed))} "
                  f"({elapsed / max(1, total):.3f} s/step)", flush=True)


class TensorboardLogger:
    """tensorboardX writer with a global step, on the main process only."""

    def __init__(self, log_dir: str | Path):
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(logdir=str(log_dir))
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    def update(self, head: str = "scalar", step: int | None = None, **values: float) -> None:
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"{head}/{name}", float(value), self.step if step is None else step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``log.txt`` (main process only)."""
    if not is_main_process():
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------- checkpoints

def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as plain values, so a checkpoint loads with ``weights_only=True``."""
    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return str(v)
    return {k: plain(v) for k, v in vars(args).items()}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically: temporary file in the same folder, fsync, then rename over the target.

    A crash or kill while saving leaves the previous file untouched (at worst a stray ``.tmp``). A
    write that fails (no space left on the device, quota, I/O error) removes the temporary file and
    raises :class:`CheckpointSaveError` saying so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = _os_error_in_chain(e)
        if cause is not None:
            raise CheckpointSaveError(path, cause) from e
        raise
    _fsync_dir(path.parent)
    return path


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the file it was to replace (if any) is unchanged."""

    def __init__(self, path: Path, cause: OSError) -> None:
        self.path, self.errno = path, cause.errno
        what = "no space left on the device" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else \
            (cause.strerror or str(cause))
        kept = (f"the previous {path.name} is intact" if path.exists()
                else f"nothing was replaced; checkpoints saved earlier in {path.parent} are intact")
        super().__init__(f"could not save checkpoint {path}: {what}; {kept}. Free some space (or choose "
                         f"another --output_dir) and run the same command again to resume")


def _os_error_in_chain(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch.save reports a failed write as a RuntimeError whose context it is."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` (no code from the file ever runs); clear message on bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # VideoMAE's own checkpoints store their flags as an argparse.Namespace: a plain attribute holder,
        # safe to rebuild, so it is the one class allowed beyond tensors and plain values.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # a file of another pickle protocol is refused below with our message; torch's warning adds nothing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for bad files
        raise CheckpointError(_load_failure_message(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def _load_failure_message(path: Path, e: BaseException) -> str:
    """Why torch.load refused ``path``, in words (its own messages are long and suggest unsafe loading)."""
    text = str(e)
    name = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)
    if name or "Unsupported global" in text:
        what = f" ({name.group(1)})" if name else ""
        return (f"refused to load {path}: it refers to Python code or classes{what} that unpickling would run; "
                f"checkpoints are loaded with torch.load(weights_only=True), which accepts only tensors and "
                f"plain values, and nothing from the file was run. Re-save the weights from a trusted source")
    size = path.stat().st_size
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save's archive format
    if size == 0 or zipped:
        reason = text.splitlines()[0].split(". ")[0][:160] if text else type(e).__name__
        return (f"{path} is truncated or corrupt ({size} bytes{'' if size == 0 else '; ' + reason}); was it saved "
                f"or copied completely?")
    return (f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle of tensors and plain "
            f"values that weights_only loading accepts); nothing from it was run")


def check_checkpoint_grid(ckpt: dict[str, Any], grid: PatchGrid, path: str | Path, remedy: str = "") -> None:
    """Raise :class:`CheckpointError` when ``ckpt`` records a patch grid other than ``grid``.

    Resuming and evaluating keep a checkpoint's grid. Without this check, a change of input size or frame
    count would load silently, because the fixed position tables are not saved and no tensor changes shape.
    Files with no record of their grid (VideoMAE's own) are left to the shape check of :func:`load_model_state`.
    """
    try:
        theirs = recorded_grid(ckpt)
    except GridError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if theirs is None:
        return
    differences = theirs.differences(grid)
    if differences:
        raise CheckpointError(f"{path} was made at another patch grid than this run's "
                              f"({'; '.join(differences)}: the file's value first)." + (f" {remedy}" if remedy else ""))


def load_model_state(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path, model_name: str) -> None:
    """Load ``ckpt["model"]`` into ``model`` exactly, or raise :class:`CheckpointError` saying what does not fit
    (no state dict, tensors of another shape, missing or unexpected names) before anything is changed."""
    sd = ckpt.get("model")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds no 'model' state dict (keys: {sorted(ckpt)[:8]})")
    own = unwrap_model(model).state_dict()
    reshaped = [k for k, v in sd.items() if k in own and tuple(getattr(v, "shape", ())) != tuple(own[k].shape)]
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if reshaped or missing or unexpected:
        details = []
        if reshaped:
            k = reshaped[0]
            details.append(f"{len(reshaped)} tensors of another shape, e.g. {k} {tuple(sd[k].shape)} in the file vs "
                           f"{tuple(own[k].shape)} in the model")
        if missing:
            details.append(f"{len(missing)} missing, e.g. {missing[:3]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}")
        raise CheckpointError(f"{path} does not fit --model {model_name} at this grid ({'; '.join(details)}); "
                              f"is it from another model size or grid?")
    unwrap_model(model).load_state_dict(sd)


def checkpoint_state(model: torch.nn.Module, grid: PatchGrid, args: argparse.Namespace, epoch: int,
                     optimizer: torch.optim.Optimizer | None = None, scaler: Any = None,
                     **extra: Any) -> dict[str, Any]:
    """Everything a checkpoint holds: weights, training state, flags and the patch grid."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap_model(model).state_dict(),
        "epoch": epoch,
        "args": plain_args(args),
        "grid": grid.to_dict(),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    state.update(extra)
    return state


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def epoch_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``checkpoint-N.pth`` files in a folder, sorted by epoch."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*.pth"):
        stem = p.stem.split("-", 1)[1]
        if stem.isdigit():
            found.append((int(stem), p))
    return sorted(found)


# ---------------------------------------------------------------- safetensors

SAFETENSORS_FORMAT = "patches-safetensors-v1"


def announce_saved(path: Path, state: dict[str, Any], grid: PatchGrid, args: argparse.Namespace) -> None:
    """Print a saved checkpoint's path; with ``--save_safetensors`` also write its weights beside it."""
    print(f"Saved {path}")
    if getattr(args, "save_safetensors", False):
        print(f"Saved {save_safetensors(path.with_suffix('.safetensors'), state['model'], grid, args)}")


def save_safetensors(path: str | Path, state_dict: dict[str, torch.Tensor], grid: PatchGrid,
                     args: argparse.Namespace | dict[str, Any]) -> Path:
    """Model weights only, as safetensors, with the grid and the flags as JSON in the metadata; atomic."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = plain_args(args) if isinstance(args, argparse.Namespace) else plain_args(argparse.Namespace(**args))
    metadata = {"format": "pt", "patches_format": SAFETENSORS_FORMAT, "grid": json.dumps(grid.to_dict()),
                "args": json.dumps(flags)}
    # safetensors refuses views into shared storage; plain contiguous CPU copies are what it stores anyway.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """A .safetensors file as a checkpoint dict: {"model"}, plus "grid" and "args" when ours wrote it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        ckpt: dict[str, Any] = {"model": dict(load_file(str(path), device="cpu"))}
        for key in ("grid", "args"):
            if key in metadata:
                ckpt[key] = json.loads(metadata[key])
    except (OSError, ValueError, SafetensorError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason})") from None
    return ckpt
