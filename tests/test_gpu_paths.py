"""The CUDA paths' decisions, checked on the CPU: the DeepSpeed config, the automatic precision, the GPU of each
rank, the RNG state of fewer GPUs, the C compiler and Python's headers for --compile, DDP's all-reduces while
accumulating, BatchNorm statistics under DDP, TF32 and the loss scale read once per update. What only a GPU can
show is left to scripts/selfcheck.py."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from launch_helpers import ROOT, env, free_port
from patches.checkpoints.resume_state import cuda_state_of_this_device
from patches.config.checks import _compile_problems
from patches.train import deepspeed_engine as ds_utils
from patches.train.updater import Updater
from patches.utils.devices import auto_amp
from patches.utils.distributed import local_device_index

DEEPSPEED_PROBE = """
import sys
import torch
from patches.train import deepspeed_engine as ds_utils
from patches.utils.distributed import cleanup_distributed, init_distributed
ds_utils.prepare_environment("cpu")
init_distributed("cpu")
model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 2), torch.nn.Flatten(), torch.nn.LazyLinear(2))
model(torch.zeros(1, 3, 2, 2, 2))
engine, _ = ds_utils.initialize(model, torch.optim.AdamW(model.parameters()), 2, "bf16", 1.0, micro_batch=1)
from deepspeed.runtime.torch_autocast import get_comm_dtype
print("reduced in", sorted({{str(get_comm_dtype(p)) for p in engine.module.parameters()}}), force=True)
cleanup_distributed()
"""


@pytest.mark.slow
def test_deepspeed_refuses_fp16_under_zero_and_reduces_autocast_gradients_in_fp32():
    for stage in (1, 2):
        with pytest.raises(ValueError, match=f"--zero_stage {stage} with --amp fp16 is refused"):
            ds_utils.build_config(stage, "fp16", 1.0, micro_batch=2)
    # Without ZeRO the engine steps torch's scaler once per update, after unscaling: allowed.
    assert ds_utils.build_config(0, "fp16", 1.0, micro_batch=2)["torch_autocast"]["dtype"] == "float16"
    # A real ZeRO-2 bf16 engine: DeepSpeed would all-reduce the Linear and Conv3d gradients in bf16 by default.
    result = subprocess.run([sys.executable, "-c", DEEPSPEED_PROBE.format(root=str(ROOT))], env=env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "reduced in ['torch.float32']"


def test_auto_amp_is_bf16_only_where_the_gpu_has_it_natively():
    assert auto_amp("cuda", native_bf16=True) == "bf16"  # A100, H100
    assert auto_amp("cuda", native_bf16=False) == "fp16"  # V100, T4: bf16 would be emulated
    assert auto_amp("cpu", native_bf16=False) == "none"


def test_local_rank_wraps_around_the_visible_gpus():
    # srun with one GPU bound per task: each task sees one GPU, SLURM_LOCALID counts the node's 4 tasks.
    assert [local_device_index(r, 1) for r in range(4)] == [0, 0, 0, 0]
    assert [local_device_index(r, 8) for r in range(4)] == [0, 1, 2, 3]
    assert [local_device_index(r, 2) for r in range(4)] == [0, 1, 0, 1]
    with pytest.raises(RuntimeError, match="no CUDA device is visible"):
        local_device_index(0, 0)


def test_resume_restores_this_gpus_rng_state_even_when_fewer_gpus_are_visible():
    states = [torch.full((8,), i, dtype=torch.uint8) for i in range(8)]  # an old checkpoint: all 8 GPUs' states
    assert torch.equal(cuda_state_of_this_device(states, 3), states[3])
    assert cuda_state_of_this_device(states[:1], 3) is None  # recorded on fewer GPUs: left as seeded
    assert torch.equal(cuda_state_of_this_device(states[5], 0), states[5])  # new checkpoints: one state


def test_compile_on_cuda_asks_for_a_c_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    [cuda] = _compile_problems("inductor", torch.device("cuda"))
    assert "inductor on CUDA needs a C compiler" in cuda
    [cpu] = _compile_problems("inductor", torch.device("cpu"))
    assert "inductor on CPU needs a C++ compiler" in cpu
    (tmp_path / "gcc").write_text("#!/bin/sh\n")
    (tmp_path / "gcc").chmod(0o755)
    assert _compile_problems("inductor", torch.device("cuda")) == []


def test_compile_on_cuda_asks_for_pythons_c_headers(tmp_path, monkeypatch):
    import sysconfig
    real = sysconfig.get_paths
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {**real(*a, **k), "include": str(tmp_path)})
    [cuda] = _compile_problems("inductor", torch.device("cuda"))  # Triton's launcher would fail to build
    assert f"{tmp_path}/Python.h does not exist" in cuda and "Python's C headers" in cuda
    assert _compile_problems("inductor", torch.device("cpu")) == []
    assert _compile_problems("aot_eager", torch.device("cuda")) == []
    (tmp_path / "Python.h").write_text("")
    assert _compile_problems("inductor", torch.device("cuda")) == []


def test_fp16_loss_scale_is_read_once_per_update_and_a_resumed_scale_is_no_skip():
    reads = []

    class CountingScaler(torch.amp.GradScaler):
        def get_scale(self) -> float:
            reads.append(1)
            return super().get_scale()

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    scaler = CountingScaler("cpu", init_scale=2.0 ** 16)
    updater = Updater(model, torch.optim.SGD(model.parameters(), lr=0.1), update_freq=2, scaler=scaler)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 2.0 ** 8})  # restored after the updater was made
    updater.start_epoch()
    reads.clear()
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    for i in range(6):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        updater(loss, update=i % 2 == 1)
        assert updater.loss_scale == 2.0 ** 8
    assert len(reads) <= 3, "at most one read per update (the scale is mirrored on the host), none per micro-step"
    assert updater.skipped == 0


DDP_PROBE = """
import sys
import torch, torch.distributed as dist
from patches.train.updater import Updater
from patches.utils.distributed import cleanup_distributed, data_parallel, init_distributed
init_distributed("cpu")
torch.manual_seed(0)
model = data_parallel(torch.nn.Linear(6, 3), torch.device("cpu"))
calls = []
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
def count(state, bucket):
    calls.append(1)
    return allreduce_hook(state, bucket)
model.register_comm_hook(None, count)
updater = Updater(model, torch.optim.SGD(model.parameters(), lr=0.1), update_freq=2)
updater.start_epoch()
torch.manual_seed(1 + dist.get_rank())
for i in range(4):
    update = i % 2 == 1
    with updater.accumulating(update):
        x, y = torch.randn(4, 6), torch.randn(4, 3)
        updater(torch.nn.functional.mse_loss(model(x), y), update)
w = model.module.weight.detach().clone()
others = [torch.zeros_like(w) for _ in range(2)]
dist.all_gather(others, w)
print(f"all-reduces {{len(calls)}} same {{torch.equal(others[0], others[1])}} broadcast {{model.broadcast_buffers}}",
      force=True)
cleanup_distributed()
"""


def run_two_gloo_ranks(probe: str) -> list[str]:
    """``probe`` in 2 gloo processes on localhost; their standard outputs."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", probe.format(root=str(ROOT))],
                              env=dict(env(), RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, textwrap.shorten(err[-3000:], 3000)
    return [o.strip() for o, _ in outputs]


@pytest.mark.slow
def test_ddp_accumulation_all_reduces_once_per_update():
    # 2 gloo processes, update_freq 2, 4 micro-steps: 2 updates, so 2 all-reduces of the one gradient bucket.
    assert run_two_gloo_ranks(DDP_PROBE) == ["all-reduces 2 same True broadcast False"] * 2


DDP_BATCH_NORM_PROBE = """
import torch, torch.distributed as dist
from patches.models.probes import LinearProbe
from patches.utils.distributed import cleanup_distributed, data_parallel, init_distributed
init_distributed("cpu")
torch.manual_seed(0)
probe = LinearProbe(6, 3)
model = data_parallel(probe, torch.device("cpu"))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
torch.manual_seed(1 + dist.get_rank())
for _ in range(3):  # each rank's batches differ, and so would its running statistics
    tokens = torch.randn(4, 5, 6) * (1 + dist.get_rank()) + dist.get_rank()
    model(tokens, None).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
same = []
for name, buffer in probe.bn.named_buffers():
    both = [torch.zeros_like(buffer) for _ in range(2)]
    dist.all_gather(both, buffer)
    same.append(torch.equal(both[0], both[1]))
print(f"batch norm buffers same {{all(same)}} moved {{not torch.equal(probe.bn.running_mean, torch.zeros(6))}}",
      force=True)
cleanup_distributed()
"""


@pytest.mark.slow
def test_ddp_keeps_the_linear_probes_batch_norm_statistics_the_same_on_every_rank():
    assert run_two_gloo_ranks(DDP_BATCH_NORM_PROBE) == ["batch norm buffers same True moved True"] * 2


def test_batch_norms_become_sync_batch_norm_on_cuda():
    from patches.models.probes import LinearProbe
    from patches.utils.distributed import synchronise_batch_norms
    model = synchronise_batch_norms(LinearProbe(6, 3), torch.device("cuda"))
    assert isinstance(model.bn, torch.nn.SyncBatchNorm) and model.bn.running_mean.shape == (6,)
    plain = torch.nn.Linear(6, 3)
    assert synchronise_batch_norms(plain, torch.device("cuda")) is plain


def test_tf32_is_on_for_cuda_unless_deterministic(monkeypatch):
    from patches.utils.devices import concrete_amp, enable_tf32
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert not enable_tf32(torch.device("cpu"), deterministic=False)
    assert not enable_tf32(torch.device("cuda"), deterministic=True)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert enable_tf32(torch.device("cuda"), deterministic=False)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    # Feature extraction defaults to the training precision: --amp auto, none on CPU.
    from patches.cli import extract_features
    flags = extract_features.get_args_parser().parse_args(["--finetune", "x", "--data_path", "y", "--output_dir", "z"])
    assert flags.amp == "auto"
    assert concrete_amp("auto", torch.device("cpu")) == "none"
    assert concrete_amp("bf16", torch.device("cpu")) == "bf16"
