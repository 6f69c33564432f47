"""Shared plumbing: flags and devices, distributed setup, schedules, logging, progress, unwrapping models."""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist


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


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes bfloat16 natively (Ampere and newer). Asked from its properties, so that no CUDA
    context is made; ``torch.cuda.is_bf16_supported()`` also counts the slow emulation of V100 and T4."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_capability(device)[0] >= 8


def auto_amp(device_type: str, native_bf16: bool) -> str:
    """``--amp auto``: bf16 where the GPU has it natively, fp16 (with the grad scaler) on older GPUs, none on CPU."""
    if device_type != "cuda":
        return "none"
    return "bf16" if native_bf16 else "fp16"


def amp_autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast context for ``--amp`` (a no-op when ``amp_dtype`` is None)."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- distributed

# The ranks wait in collectives while rank 0 writes a checkpoint alone: a ViT-L's weights and optimizer state
# (several GB) on a slow network filesystem can take far longer than torch's default of 10 minutes.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)


def local_device_index(local_rank: int, device_count: int) -> int:
    """This process's GPU among the visible ones. Under ``srun`` with one GPU bound per task each task sees one
    GPU while SLURM_LOCALID counts the node's tasks, so the local rank wraps around the visible devices."""
    if device_count < 1:
        raise RuntimeError("no CUDA device is visible to this process (check CUDA_VISIBLE_DEVICES)")
    return local_rank % device_count


def init_distributed(device: str | None) -> str | None:
    """Join the job's process group when launched as one of several processes; return the device to use.

    torchrun (and the deepspeed launcher) set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
    Under ``srun`` with more than one task, SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID give the rank, the first
    node of the allocation is the master, and the port is derived from the job id (MASTER_PORT overrides).
    The backend is nccl on GPUs (each process on ``cuda:LOCAL_RANK`` modulo the visible GPUs, the device
    returned) and gloo on the CPU. Other ranks' ``print`` output is silenced. Alone, nothing happens and
    ``device`` comes back.
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
    device_id = None
    if use_cuda:
        device_id = torch.device("cuda", local_device_index(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device_id)
        device = str(device_id)
    # device_id binds NCCL to this rank's GPU at once (the first barrier would guess it otherwise).
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://", world_size=world_size,
                            rank=rank, timeout=PROCESS_GROUP_TIMEOUT, device_id=device_id)
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


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # no such pid can exist
        return False
    return True


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


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """``model`` under DDP. Its buffers (the fixed position tables) are the same on every rank and never change,
    so they are not broadcast before every forward."""
    ddp = torch.nn.parallel.DistributedDataParallel
    # torch 2.15 renamed the switch (the old name warns); the older torch of some clusters knows only the old one.
    no_broadcast = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                    else {"broadcast_buffers": False})
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **no_broadcast)


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / get_world_size()


# ---------------------------------------------------------------- schedules

def cosine_scheduler(base_value: float, final_value: float, epochs: int, steps_per_epoch: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0, warmup_steps: int = -1) -> np.ndarray:
    """Per-step values as VideoMAE's ``utils.cosine_scheduler``: a linear warmup from ``start_warmup_value`` that
    reaches ``base_value`` on its last step, then a half-cosine from ``base_value`` down to ``final_value``.

    VideoMAE's scripts never pass ``start_warmup_value`` (their warmup starts at 0, ignoring ``--warmup_lr``);
    PATCHES's run scripts pass ``--warmup_lr``.
    """
    total = epochs * steps_per_epoch
    warmup = warmup_steps if warmup_steps > 0 else warmup_epochs * steps_per_epoch
    warmup = min(warmup, total)
    ramp = np.linspace(start_warmup_value, base_value, warmup) if warmup else np.array([])
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

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        """``purge_step``: on resume, TensorBoard hides the events an earlier attempt wrote at this step and later."""
        from tensorboardX import SummaryWriter
        # The suffix keeps a file of each writer, in order, where two open in the same second (tensorboardX
        # names files by the second; a resumed run's writer would otherwise truncate its predecessor's file).
        self.writer = SummaryWriter(logdir=str(log_dir), purge_step=purge_step, filename_suffix=f".{time.time_ns()}")
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


# ---------------------------------------------------------------- atomic files

def temp_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.{name}.{pid}.tmp`` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the file system allows it)."""
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


def write_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(temporary path)``, then rename it over ``path``: a kill leaves the old file or none, never half of
    one (at worst a stray ``.tmp``; checkpoint_folder.remove_stale_temp_files clears those of checkpoints and
    features)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``log.txt`` (main process only)."""
    if not is_main_process():
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def drop_jsonl_records(path: str | Path, drop: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite the JSON-lines file ``path`` (atomically) without the records ``drop`` selects; returns how many."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not (line.strip() and _parses_to_dict(line) and drop(json.loads(line)))]
    if len(kept) < len(lines):
        write_atomically(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))
    return len(lines) - len(kept)


def _parses_to_dict(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# ---------------------------------------------------------------- models

def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
