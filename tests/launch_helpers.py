"""Starting the entry scripts as real processes (python or torchrun) for the distributed and resume tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# A micro model on 4 frames of 32x32: a few steps take seconds on a CPU.
GRID = ["--input_size", "32", "--patch_size", "8", "--num_frames", "4", "--sampling_rate", "2"]
PRETRAIN = ["--model", "pretrain_videomae_micro_patch16_224", "--decoder_depth", "1", *GRID, "--device", "cpu",
            "--print_freq", "1", "--warmup_epochs", "1", "--lr", "1e-3", "--deterministic"]
FINETUNE = ["--model", "vit_micro_patch16_224", "--data_set", "custom", *GRID, "--device", "cpu", "--print_freq", "1",
            "--warmup_epochs", "1", "--flip", "false", "--num_sample", "1", "--test_num_segment", "2",
            "--test_num_crop", "2", "--deterministic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(name, None)
    return e


def command(script: str, flags: list[str], nproc: int = 1) -> list[str]:
    """``python script flags``, or torchrun with ``nproc`` processes on a free port."""
    if nproc == 1:
        return [sys.executable, str(ROOT / script), *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), str(ROOT / script), *flags]


def run(script: str, flags: list[str], nproc: int = 1, check: bool = True, timeout: int = 600
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(command(script, flags, nproc), capture_output=True, text=True, env=env(), timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def run_and_signal(script: str, flags: list[str], marker: str, sig: int, nproc: int = 1,
                   timeout: int = 600) -> tuple[int, str]:
    """Start the command, send ``sig`` (to the whole process group for SIGKILL) as soon as a line containing
    ``marker`` is printed, and return the exit status and everything printed."""
    proc = subprocess.Popen(command(script, flags, nproc), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env(), start_new_session=True)
    lines, sent = [], False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not sent and marker in line:
                if sig == signal.SIGKILL:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
                sent = True
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = "".join(lines)
    assert sent, f"never saw {marker!r} in:\n{text[-3000:]}"
    return proc.returncode, text


def read_scalars(event_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def weights(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    from patches.checkpoints.reading import read_pth_checkpoint
    return read_pth_checkpoint(path)[key]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if atol == 0.0:
            assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max().item()}"
        else:
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)
