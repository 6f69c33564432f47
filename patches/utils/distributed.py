"""The process group: joining it under torchrun or Slurm (one GPU per process), rank and world size, leaving it,
DDP wrapping, the mean of a figure over processes, and the bare model inside its wrappers."""
from __future__ import annotations

import datetime
import inspect
import os
import re
from collections.abc import MutableMapping
from typing import Any

import torch
import torch.distributed as dist

from patches.errors import PatchesError

# The ranks wait in collectives while rank 0 writes a checkpoint alone: a ViT-L's weights and optimizer state
# (several GB) on a slow network filesystem can take far longer than torch's default of 10 minutes.
# PATCHES_PROCESS_GROUP_TIMEOUT (seconds) overrides it: tests of hangs set a few seconds.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("PATCHES_PROCESS_GROUP_TIMEOUT", 3600)))


def local_device_index(local_rank: int, device_count: int) -> int:
    """This process's GPU among the visible ones. Under ``srun`` with one GPU bound per task each task sees one
    GPU while SLURM_LOCALID counts the node's tasks, so the local rank wraps around the visible devices."""
    if device_count < 1:
        raise RuntimeError("no CUDA device is visible to this process (check CUDA_VISIBLE_DEVICES)")
    return local_rank % device_count


class DeviceLayoutError(PatchesError):
    """A node runs more processes than the GPUs they see: two ranks would share a GPU and NCCL fail later."""


def processes_per_node(env: MutableMapping[str, str]) -> tuple[int, str] | None:
    """How many processes this node runs and the variable that says so: torchrun's LOCAL_WORLD_SIZE (the
    deepspeed launcher's LOCAL_SIZE), else Slurm's, the step's count before the job's (``4(x2),3``: the largest)."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE",
                 "SLURM_TASKS_PER_NODE"):
        counts = re.findall(r"(\d+)(?:\(x\d+\))?", env.get(name, ""))
        if counts:
            return max(int(c) for c in counts), name
    return None


def bind_local_device(local_rank: int, device_count: int, env: MutableMapping[str, str] = os.environ) -> int:
    """This process's GPU among the ``device_count`` it sees, exported as LOCAL_RANK: DeepSpeed calls
    ``torch.cuda.set_device(LOCAL_RANK)``, and under srun with one GPU per task SLURM_LOCALID is no index here.

    Refuses (:class:`DeviceLayoutError`) a node whose processes outnumber the GPUs they see, except srun tasks that
    each see exactly one (srun binds one GPU per task; torchrun binds none)."""
    layout = processes_per_node(env)
    if layout is not None:
        count, name = layout
        bound_by_srun = device_count == 1 and name.startswith("SLURM_")
        if count > device_count and not bound_by_srun:
            raise DeviceLayoutError(
                f"{count} processes per node ({name}) but {device_count} visible GPU"
                f"{'s' if device_count != 1 else ''} (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}"
                f"): two ranks would share a GPU; start one process per GPU (torchrun --nproc_per_node, sbatch "
                f"--ntasks-per-node), or let srun bind one GPU per task (--gpus-per-task=1)")
    index = local_device_index(local_rank, device_count)
    env["LOCAL_RANK"] = str(index)
    return index


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
        device_id = torch.device("cuda", bind_local_device(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device_id)
        device = str(device_id)
    # torchrun keeps one store for every restart of a job (--max_restarts): a restarted group reading the last
    # attempt's keys would connect to dead workers' addresses and hang, so each attempt has keys of its own.
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT))
    store = dist.PrefixStore(f"attempt-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    # device_id binds NCCL to this rank's GPU at once (the first barrier would guess it otherwise).
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=store, world_size=world_size,
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
    so they are not broadcast before every forward; BatchNorm's running statistics, which training changes, are
    kept the same on every rank by :func:`synchronise_batch_norms`."""
    ddp = torch.nn.parallel.DistributedDataParallel
    model = synchronise_batch_norms(model, device)
    # torch 2.15 renamed the switch (the old name warns); the older torch of some clusters knows only the old one.
    no_broadcast = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                    else {"broadcast_buffers": False})
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **no_broadcast)


def synchronise_batch_norms(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The BatchNorms of ``model`` (the linear probe's) with the same running statistics on every rank. On CUDA they
    become SyncBatchNorm (statistics of the global batch); elsewhere, where SyncBatchNorm cannot run, every
    training forward averages the ranks' running statistics."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return model
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for norm in norms:
        norm.register_forward_hook(_average_running_stats)
    return model


def _average_running_stats(norm: torch.nn.Module, inputs: Any, output: Any) -> None:
    if not (norm.training and is_dist()):
        return
    with torch.no_grad():
        for stat in (norm.running_mean, norm.running_var):
            dist.all_reduce(stat)
            stat.div_(get_world_size())


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / get_world_size()


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
