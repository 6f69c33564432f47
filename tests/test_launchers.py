"""The launchers in scripts/launch/ run for real: two torchrun node agents on this machine train as one node with
two processes, and slurm.sbatch requeues a stopped run whatever status srun reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch_helpers import PRETRAIN, ROOT, assert_same_weights, env, free_port, read_scalars, weights

LAUNCH = ROOT / "scripts" / "launch"


def launcher_env(demo_root: Path, out: Path, **more: str) -> dict[str, str]:
    """The launchers' variables for pre-training on the demo clips, as a user sets them."""
    return dict(env(), DATASET="ucf101", DATA_ROOT=str(demo_root), PRETRAIN_LIST=str(demo_root / "train.csv"),
                PRETRAIN_DIR=str(out), NUM_WORKERS="0", PYTHON=sys.executable, OMP_NUM_THREADS="1", **more)


# The recipe's flags, overridden for a micro model: 16 clips, 2 per process, so 4 steps in 1 epoch.
MICRO = [*PRETRAIN, "--batch_size", "2", "--update_freq", "1", "--epochs", "1", "--save_ckpt_freq", "1"]


@pytest.mark.slow
def test_two_torchrun_nodes_train_like_one_node_with_two_processes(demo_root, tmp_path):
    launcher = ["bash", str(LAUNCH / "torchrun.sh"), "pretrain", *MICRO]
    port = str(free_port())
    nodes = [subprocess.Popen(launcher, env=launcher_env(demo_root, tmp_path / "two_nodes", NNODES="2",
                                                         NODE_RANK=str(rank), GPUS_PER_NODE="1",
                                                         MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    one_node = subprocess.run(launcher, env=launcher_env(demo_root, tmp_path / "one_node", GPUS_PER_NODE="2",
                                                         MASTER_PORT=str(free_port())),
                              capture_output=True, text=True, timeout=300)
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-4000:]
    assert one_node.returncode == 0, one_node.stdout[-3000:] + one_node.stderr[-3000:]
    assert "--nnodes 2 --node_rank 1 --nproc_per_node 1" in logs[1]  # the launcher's own command line

    two, one = tmp_path / "two_nodes", tmp_path / "one_node"
    two_losses, one_losses = read_scalars(two / "tb", "train/loss"), read_scalars(one / "tb", "train/loss")
    print("2 nodes x 1:", two_losses, "\n1 node x 2: ", one_losses)
    assert len(two_losses) == 4 and two_losses == one_losses
    [two_record] = [json.loads(line) for line in (two / "log.txt").read_text().splitlines()]
    [one_record] = [json.loads(line) for line in (one / "log.txt").read_text().splitlines()]
    assert two_record["train_loss"] == one_record["train_loss"]
    assert_same_weights(weights(two / "checkpoint-0.pth"), weights(one / "checkpoint-0.pth"))


STAND_IN_SRUN = """#!/bin/sh
# As srun --kill-on-bad-exit=1 on a stop signal: rank 0 saves and exits 75 (the real code, below), the other
# ranks are killed at once, and srun reports the highest status, 137.
"{python}" -c 'import signal
from patches.train import trainer
from patches.train.stop_signals import Interrupted
def stopped(device):
    raise Interrupted(signal.SIGUSR1, None)
trainer.launch(stopped, "cpu")'
echo "rank 0 exited $?"
exit 137
"""


@pytest.mark.slow
def test_slurm_requeues_a_stopped_run_when_srun_reports_a_killed_rank(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(STAND_IN_SRUN.format(python=sys.executable, root=ROOT))
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.args"}\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    variables = dict(env(), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", DATASET="ucf101",
                     DATA_ROOT=str(tmp_path), SLURM_SUBMIT_DIR=str(tmp_path), PATCHES_ROOT=str(ROOT),
                     PATCHES_STOP_FILE=str(tmp_path / "stop"), SLURM_JOB_ID="4242", SLURM_NTASKS="2")
    result = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), "pretrain"], env=variables, capture_output=True,
                            text=True, timeout=120)
    assert "rank 0 exited 75" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 75, result.stdout[-2000:] + result.stderr[-2000:]
    assert "requeueing job 4242" in result.stdout
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert not (tmp_path / "stop").exists(), "the note is used once"


def stand_in_slurm_tools(bin_dir: Path, record: Path) -> None:
    """srun that writes its arguments to ``record``, one a line, and exits 0; scontrol that does nothing."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    (bin_dir / "scontrol").write_text("#!/bin/sh\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)


@pytest.mark.slow
def test_slurm_passes_cpus_per_task_to_srun_and_runs_the_chosen_python(tmp_path):
    # Slurm 22.05 and later: srun no longer inherits sbatch's --cpus-per-task, so without the flag each task
    # and its decoding workers are bound to one core.
    record = tmp_path / "srun.args"
    stand_in_slurm_tools(tmp_path / "bin", record)
    variables = dict(env(), PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", DATASET="ucf101",
                     DATA_ROOT=str(tmp_path), SLURM_SUBMIT_DIR=str(tmp_path), PATCHES_ROOT=str(ROOT),
                     PATCHES_STOP_FILE=str(tmp_path / "stop"), SLURM_JOB_ID="4242", SLURM_NTASKS="8",
                     PYTHON=sys.executable)
    for cpus in ("10", None):
        run_env = {name: value for name, value in variables.items() if name != "SLURM_CPUS_PER_TASK"}
        if cpus:
            run_env["SLURM_CPUS_PER_TASK"] = cpus
        result = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), "pretrain", "--epochs", "1"], env=run_env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        args = record.read_text().splitlines()
        script = args.index(str(ROOT / "run_mae_pretraining.py"))
        srun_flags, interpreter = args[:script - 2], args[script - 2:script]
        assert interpreter == [sys.executable, "-u"]
        assert srun_flags == ["--kill-on-bad-exit=1", *([f"--cpus-per-task={cpus}"] if cpus else [])]
        assert args[-2:] == ["--epochs", "1"]


@pytest.mark.slow
def test_torchrun_launcher_starts_one_process_per_gpu_torch_sees(tmp_path):
    # nvidia-smi -L lists every GPU of the node; torch counts those CUDA_VISIBLE_DEVICES leaves (none here).
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nfor i in 0 1 2 3 4 5 6 7; do echo \"GPU $i: H100\"; done\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    variables = dict(env(), PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", DRY_RUN="1", DATASET="ucf101",
                     DATA_ROOT=str(tmp_path), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(["bash", str(LAUNCH / "torchrun.sh"), "pretrain"], env=variables, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--nproc_per_node 1 " in result.stdout.splitlines()[-1]


def launched_flags(stdout: str) -> dict[str, list[str]]:
    """The entry script's flags in a launcher's DRY_RUN line: each flag with the values after it."""
    words = stdout.splitlines()[-1].split()
    flags: dict[str, list[str]] = {}
    for word in words[next(i for i, w in enumerate(words) if w.endswith(".py")) + 1:]:
        if word.startswith("--"):
            flags.setdefault(word, [])
            current = flags[word]
        else:
            current.append(word)
    return flags


@pytest.mark.slow
def test_launchers_keep_the_recipe_total_batch_when_the_batch_size_is_overridden(tmp_path):
    # k400_base_800 fine-tuning: VideoMAE's 64 GPUs x 8 = 512 videos per update
    record = tmp_path / "srun.args"
    stand_in_slurm_tools(tmp_path / "bin", record)
    variables = dict(env(), DRY_RUN="1", DATASET="k400", DATA_ROOT=str(tmp_path), PYTHON=sys.executable,
                     GPUS_PER_NODE="8", SLURM_NTASKS="8", PATCHES_ROOT=str(ROOT), SLURM_SUBMIT_DIR=str(tmp_path),
                     PATCHES_STOP_FILE=str(tmp_path / "stop"))

    def launch(launcher: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(LAUNCH / launcher), "finetune", *extra], env=variables,
                              capture_output=True, text=True, timeout=120)

    for launcher in ("torchrun.sh", "slurm.sbatch"):
        result = launch(launcher, "--batch_size", "4", "--epochs", "1")
        assert result.returncode == 0, result.stderr[-2000:]
        flags = launched_flags(result.stdout)
        assert (flags["--batch_size"], flags["--update_freq"]) == (["4"], ["16"]), launcher  # 4 x 16 x 8 = 512
        assert flags["--epochs"] == ["100", "1"]  # other extra flags still come last and win
        flags = launched_flags(launch(launcher, "--update_freq=2").stdout)
        assert (flags["--batch_size"], flags["--update_freq"]) == (["32"], ["2"]), launcher
    refused = launch("torchrun.sh", "--batch_size", "5")
    assert refused.returncode != 0 and refused.stdout == ""
    assert ("VideoMAE's total batch 512 is not a multiple of 8 processes x batch 5; set BATCH_SIZE (or "
            "--batch_size) to a divisor of 64") in refused.stderr
    both = launch("torchrun.sh", "--batch_size", "2", "--update_freq", "1")  # taken as given, said on stderr
    assert both.returncode == 0 and "total batch 16, not VideoMAE's 512" in both.stderr
    assert (launched_flags(both.stdout)["--batch_size"], launched_flags(both.stdout)["--update_freq"]) == (["2"], ["1"])
