"""Which GPU each process of a node takes, checked on the CPU with simulated launcher variables and stand-in CUDA
counts: under srun with one GPU bound per task the GPU chosen is exported as LOCAL_RANK (DeepSpeed sets its device
from LOCAL_RANK), and a node with more processes than visible GPUs is refused before the process group starts."""
from __future__ import annotations

import builtins

import pytest
import torch
import torch.distributed as dist

from patches.errors import PatchesError
from patches.train import trainer

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR",
                    "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE",
                    "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_JOB_ID", "SLURM_NODELIST",
                    "SLURM_STEP_NODELIST", "CUDA_VISIBLE_DEVICES", "DS_ACCELERATOR")


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n)``: torch sees ``n`` GPUs; set_device and the process group are recorded, not run. The launch
    variables init_distributed writes (RANK, WORLD_SIZE, MASTER_PORT, ...) are put back as they were afterwards:
    left behind, they would make a later in-process run join a process group."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores (or removes) it
        monkeypatch.delenv(name)
    monkeypatch.setattr(builtins, "print", builtins.print)  # rank > 0 silences print: restored afterwards
    calls: dict[str, list] = {"set_device": [], "init_process_group": []}
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(torch.device(d).index))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: calls["init_process_group"].append(kw))
    # the group's store: an in-memory one, so a simulated rank 3 of 16 waits for no rank 0
    monkeypatch.setattr(dist, "rendezvous", lambda url, rank, world_size, **kw: iter([(dist.HashStore(), rank,
                                                                                        world_size)]))
    monkeypatch.setattr(dist, "barrier", lambda *a, **kw: None)

    def see(count: int) -> dict[str, list]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        return calls
    return see


def srun_task(monkeypatch, local_id: int, tasks_per_node: int, nodes: int = 1) -> None:
    """The variables srun sets for task ``local_id`` of the first node (sbatch --ntasks-per-node)."""
    monkeypatch.setenv("SLURM_PROCID", str(local_id))
    monkeypatch.setenv("SLURM_NTASKS", str(tasks_per_node * nodes))
    monkeypatch.setenv("SLURM_LOCALID", str(local_id))
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", str(tasks_per_node))
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")


def launched_device(deepspeed: bool = False) -> tuple[str | None, str]:
    """What trainer.launch hands the run (its device) and what DeepSpeed would read (LOCAL_RANK)."""
    import os
    return trainer.launch(lambda device: (device, os.environ["LOCAL_RANK"]), None, deepspeed=deepspeed)


@pytest.mark.parametrize("deepspeed", [False, True])
def test_srun_with_one_gpu_per_task_exports_the_gpu_it_uses_as_local_rank(fake_gpus, monkeypatch, deepspeed):
    # srun --gpus-per-task=1: task 3 of 8 sees one GPU, its own, as cuda:0. DeepSpeed calls
    # torch.cuda.set_device(LOCAL_RANK): LOCAL_RANK=3 there is "invalid device ordinal".
    calls = fake_gpus(1)
    srun_task(monkeypatch, local_id=3, tasks_per_node=8, nodes=2)
    assert launched_device(deepspeed) == ("cuda:0", "0")
    assert calls["set_device"] == [0] and calls["init_process_group"][0]["rank"] == 3


def test_each_task_of_a_node_takes_its_own_gpu_of_those_all_see(fake_gpus, monkeypatch):
    calls = fake_gpus(8)
    srun_task(monkeypatch, local_id=5, tasks_per_node=8)
    assert launched_device() == ("cuda:5", "5")
    assert calls["set_device"] == [5]


@pytest.mark.parametrize("visible, tasks", [(4, 8), (2, 3)])
def test_srun_with_fewer_visible_gpus_than_tasks_per_node_is_refused_before_the_group_starts(
        fake_gpus, monkeypatch, visible, tasks):
    # 8 tasks on a node whose tasks see 4 GPUs: the modulo put tasks 0 and 4 on cuda:0, and NCCL failed later.
    calls = fake_gpus(visible)
    srun_task(monkeypatch, local_id=tasks - 1, tasks_per_node=tasks)
    with pytest.raises(PatchesError, match=rf"{tasks} processes per node \(SLURM_NTASKS_PER_NODE\) but {visible} "
                                           rf"visible GPUs"):
        launched_device()
    assert calls["init_process_group"] == [] and calls["set_device"] == []


def test_torchrun_with_more_processes_than_gpus_is_refused(fake_gpus, monkeypatch):
    # torchrun --nproc_per_node 2 on a node with one GPU: both processes see it (torchrun binds nothing).
    calls = fake_gpus(1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(PatchesError, match=r"2 processes per node \(LOCAL_WORLD_SIZE\) but 1 visible GPU"):
        launched_device()
    assert calls["init_process_group"] == []


def test_slurm_tasks_per_node_is_read_from_srun_step_counts(fake_gpus, monkeypatch):
    # Without --ntasks-per-node srun still says how many tasks each node runs, e.g. "4(x2)".
    calls = fake_gpus(2)
    srun_task(monkeypatch, local_id=1, tasks_per_node=4, nodes=2)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "4(x2)")
    with pytest.raises(PatchesError, match=r"4 processes per node \(SLURM_STEP_TASKS_PER_NODE\) but 2 visible"):
        launched_device()
    assert calls["init_process_group"] == []


def test_processes_on_the_cpu_need_no_gpu(fake_gpus, monkeypatch):
    calls = fake_gpus(0)
    srun_task(monkeypatch, local_id=1, tasks_per_node=2)
    assert launched_device() == (None, "1")
    assert calls["init_process_group"][0]["backend"] == "gloo"


def test_a_step_with_fewer_tasks_than_the_job_is_judged_by_its_own_count(fake_gpus, monkeypatch):
    # sbatch --ntasks-per-node=8, then `srun --ntasks-per-node 2` on a node whose tasks see 4 GPUs: allowed.
    calls = fake_gpus(4)
    srun_task(monkeypatch, local_id=1, tasks_per_node=8)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "2")
    assert launched_device() == ("cuda:1", "1")
    assert calls["set_device"] == [1]
