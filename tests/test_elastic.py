"""Elastic restarts: a 2-process pre-training under ``torchrun --max_restarts 3`` loses a worker to SIGKILL at three
seeded random steps, one of them inside a checkpoint save, restarts in place each time (auto-resume from its
output folder) and ends with the weights of an uninterrupted run, bit for bit."""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import launch_helpers as lh
from patches.checkpoints.reading import read_pth_checkpoint
from patches.checkpoints.writing import KILL_IN_SAVE_VARIABLE

EPOCHS, STEPS_PER_EPOCH, KILLS = 3, 4, 3
SEED = 33  # kills rank 1 after update 3, rank 0 in the save of update 4 (an epoch's file), rank 0 after update 10
STEP_LINE = re.compile(r"Epoch \[(\d+)/\d+\] \[(\d+)/\d+\]")  # a resumed epoch counts from where it resumed
RESUMED_LINE = re.compile(r"continuing at epoch (\d+), batch (\d+)")


def pretrain_flags(demo_root: Path, out: Path) -> list[str]:
    # 16 videos, 2 per process a step: 4 steps an epoch; checkpoint-latest after every step.
    return [*lh.PRETRAIN, "--data_path", str(demo_root / "train.csv"), "--data_root", str(demo_root),
            "--batch_size", "2", "--epochs", str(EPOCHS), "--save_ckpt_every_steps", "1", "--save_ckpt_freq", "1",
            "--keep_ckpts", "1", "--num_workers", "0", "--output_dir", str(out)]


def torchrun(flags: list[str], max_restarts: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max_restarts",
            str(max_restarts), "--monitor_interval", "0.2", "--master_addr", "127.0.0.1", "--master_port",
            str(lh.free_port()), str(lh.ROOT / "run_mae_pretraining.py"), *flags]


def kill_plan(seed: int) -> tuple[dict[int, int], int]:
    """({update: rank} for the kills from outside, the update whose checkpoint save rank 0 is killed in)."""
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(1, EPOCHS * STEPS_PER_EPOCH), KILLS))
    in_save = rng.choice(steps)
    return {s: rng.randrange(2) for s in steps if s != in_save}, in_save


def worker_pid(agent: int, rank: int) -> int:
    """The pid of the torchrun agent's worker of ``rank``."""
    for task in Path(f"/proc/{agent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return int(pid)
    raise AssertionError(f"torchrun (pid {agent}) has no worker of rank {rank}")


def printed_update(line: str, resumed_at: tuple[int, int]) -> int | None:
    """The update count a progress line reports, given where the attempt resumed (epoch, batch)."""
    match = STEP_LINE.search(line)
    if not match:
        return None
    epoch, batch = int(match[1]) - 1, int(match[2])
    return epoch * STEPS_PER_EPOCH + batch + (resumed_at[1] if epoch == resumed_at[0] else 0)


def run_with_kills(flags: list[str], outside: dict[int, int], armed: Path) -> tuple[int, str, int]:
    """The job under torchrun, a worker SIGKILLed as rank 0 prints each update of ``outside`` for the first time;
    returns torchrun's exit status, what it printed and how many kills were sent from here."""
    env = dict(lh.env(), **{KILL_IN_SAVE_VARIABLE: str(armed)})
    agent = subprocess.Popen(torchrun(flags, KILLS), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, start_new_session=True)
    watchdog = threading.Timer(600, agent.terminate)  # torchrun then stops its workers
    watchdog.start()
    lines, sent, pending, resumed_at = [], 0, dict(outside), (0, 0)
    log = open(Path(flags[flags.index("--output_dir") + 1]).parent / "torchrun.log", "w")
    try:
        assert agent.stdout is not None
        for line in agent.stdout:
            lines.append(line)
            log.write(line)
            log.flush()
            if match := RESUMED_LINE.search(line):
                resumed_at = int(match[1]), int(match[2])
            step = printed_update(line, resumed_at)
            if step is not None and step in pending and step == min(pending):
                os.kill(worker_pid(agent.pid, pending.pop(step)), signal.SIGKILL)
                sent += 1
        agent.wait(timeout=60)
    finally:
        watchdog.cancel()
        log.close()
        if agent.poll() is None:
            agent.terminate()
            agent.wait(timeout=60)
    return agent.returncode, "".join(lines), sent


@pytest.mark.slow
def test_a_job_killed_three_times_once_mid_save_restarts_in_place_to_the_uninterrupted_weights(demo_root, tmp_path):
    outside, in_save = kill_plan(SEED)
    armed = tmp_path / "kill-in-save"
    armed.write_text(str(in_save))
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:  # the uninterrupted run alongside
        reference = pool.submit(subprocess.run, torchrun(pretrain_flags(demo_root, tmp_path / "reference"), 0),
                                capture_output=True, text=True, env=lh.env(), timeout=900)
        status, text, sent = run_with_kills(pretrain_flags(demo_root, tmp_path / "out"), outside, armed)
        ref = reference.result()
    took = time.monotonic() - started
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    assert status == 0, text[-6000:]

    assert sent == len(outside) and not armed.exists(), "every planned kill landed"
    assert "Removed 1 temporary files" in text, "the kill mid-save left half a checkpoint, cleared on restart"
    assert text.count("failed (exitcode: -9)") == KILLS, "each restart followed a SIGKILL"
    survived = text.count("Resumed from ")
    print(f"survived {survived} SIGKILLs (after updates {sorted(outside)} from outside, in the save of update "
          f"{in_save}) in {took:.0f} s, the uninterrupted run alongside")
    assert survived >= KILLS

    out, ref_out = tmp_path / "out", tmp_path / "reference"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == sorted(p.name for p in ref_out.glob("checkpoint-*"))
    last = f"checkpoint-{EPOCHS - 1}.pth"
    mine, theirs = read_pth_checkpoint(out / last), read_pth_checkpoint(ref_out / last)
    assert mine["global_step"] == theirs["global_step"] == EPOCHS * STEPS_PER_EPOCH
    lh.assert_same_weights(mine["model"], theirs["model"])
    for key in theirs["optimizer"]["state"]:
        lh.assert_same_weights(mine["optimizer"]["state"][key], theirs["optimizer"]["state"][key])
