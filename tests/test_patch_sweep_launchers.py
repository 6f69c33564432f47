"""The patch sweep with one of VideoMAE's recipes (scripts/patch_sweep.py --recipe): the dry run's commands and
GPU-hours, the FLOPs budget, and the CPU rehearsal of the cluster path: in fixed mode through
scripts/launch/torchrun.sh with 2 gloo processes (killed once mid-stage and resumed to the same sweep.json), and
in flexible mode as sbatch jobs of scripts/launch/slurm.sbatch with stand-in sbatch/srun/scontrol/squeue that run
the jobs here."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_helpers import env, free_port
from patches.config import recipes
from patches.data.samplers import StepPosition
from patches.sweep import patch_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, str(ROOT / "scripts" / "patch_sweep.py")]


def dry_run(capsys: pytest.CaptureFixture, tmp_path: Path, *flags: str) -> str:
    assert patch_sweep.main([*flags, "--dry_run", "--output_dir", str(tmp_path / "out")]) == []
    assert not (tmp_path / "out").exists()  # nothing written, nothing run
    return capsys.readouterr().out


def commands(text: str, what: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in text.splitlines() if line.startswith("$ ") and what in line]


def flags_after(command: list[str], launcher_script: str) -> list[str]:
    return command[command.index(launcher_script) + 2:]


def test_a_recipes_dry_run_on_slurm_prints_each_job_with_videomaes_flags_and_its_gpu_hours(capsys, tmp_path):
    text = dry_run(capsys, tmp_path, "--recipe", "k400_base_800", "--grids", "224/16", "288/16", "--mode",
                   "flexible", "--launcher", "slurm", "--seeds", "0")
    pre, *evals = commands(text, "sbatch ")
    assert len(evals) == 2 and "--dependency=afterok:JOB_OF_flexible-seed0-pretrain" in evals[0]
    pre_flags = flags_after(pre, "scripts/launch/slurm.sbatch")
    assert pre[pre.index("scripts/launch/slurm.sbatch") + 1] == "pretrain"
    line = " ".join(pre_flags)
    for part in ("--mask_type tube --mask_ratio 0.9", "--decoder_depth 4", "--batch_size 32", "--epochs 801",
                 "--warmup_epochs 40", "--update_freq 8", "--grids 224/16 288/16", "--seed 0"):
        assert part in line, part
    # VideoMAE's LR rule on its total batch: 8 GPUs x 32 x --update_freq 8 is the recipe's 64 x 32
    ours = recipes.effective_values("k400_base_800", "pretrain", 8, pre_flags)
    theirs = recipes.effective_values("k400_base_800", "pretrain")
    assert (ours["lr"], ours["total_batch"], ours["epochs"]) == (theirs["lr"], theirs["total_batch"], 801)
    for grid, command in zip(("224", "288"), evals):
        flags = flags_after(command, "scripts/launch/slurm.sbatch")
        line = " ".join(flags)
        assert f"--input_size {grid} --short_side_size {grid}" in line and "--lr 1e-3 --epochs 100" in line
        assert "--finetune output" not in line and "/flexible/seed0/pretrain/checkpoint-799.pth" in line
        assert recipes.effective_values("k400_base_800", "finetune", 8, flags)["total_batch"] == 512
    hours = [float(r.split("|")[6].replace(",", "")) for r in text.splitlines() if r.startswith("| flexible/")]
    assert len(hours) == 3 and hours[2] > hours[1] > 0 and hours[0] > 0  # 288/16 costs more than 224/16
    assert f"Total: {sum(hours):,.1f} GPU-hours" in text


def test_a_flops_budget_gives_the_cheaper_grid_more_pretraining_epochs(capsys, tmp_path):
    text = dry_run(capsys, tmp_path, "--recipe", "k400_base_800", "--grids", "224/16", "288/16", "--mode", "fixed",
                   "--budget", "flops", "--launcher", "torchrun", "--gpus_per_node", "8", "--seeds", "0")
    rows = {r.split("|")[1].strip(): r.split("|") for r in text.splitlines() if r.startswith("| fixed/")}
    e224, e288 = (int(rows[f"fixed/seed0/grid_{g}/pretrain"][3]) for g in ("224_16", "288_16"))
    g224, g288 = (float(rows[f"fixed/seed0/grid_{g}/pretrain"][4]) for g in ("224_16", "288_16"))
    assert e224 == 800 and e288 < e224 and abs(e288 * g288 - e224 * g224) <= g288  # the same FLOPs, to an epoch
    [pre224, pre288] = commands(text, "torchrun.sh pretrain")
    assert "--epochs 800" in " ".join(pre224) and f"--epochs {e288}" in " ".join(pre288)
    assert "GRID=288/16" in pre288 and "GPUS_PER_NODE=8" in pre288
    flexible = dry_run(capsys, tmp_path, "--recipe", "k400_base_800", "--grids", "224/16", "288/16", "--budget",
                       "flops", "--seeds", "0")
    [pre] = commands(flexible, "run_mae_pretraining.py")
    weights = [float(w) for w in pre[pre.index("--grid_weights") + 1:][:2]]
    assert weights[0] / weights[1] == pytest.approx(g288 / g224, rel=1e-3)  # each grid the same share of FLOPs


def test_flexible_pretraining_draws_grids_in_the_given_proportions():
    import torch

    from patches.grid import grids_from_specs
    from patches.train.reconstruction import FlexibleReconstruction, MaskedReconstruction
    grids = grids_from_specs(["32/16", "32/8"], 4, 2)
    settings = MaskedReconstruction(grids[0], torch.device("cpu"), None, True)
    positions = [StepPosition(e, b) for e in range(4) for b in range(500)]
    alike = FlexibleReconstruction(grids, [None, None], settings, seed=3)
    weighted = FlexibleReconstruction(grids, [None, None], settings, seed=3, weights=[1, 3])
    draws = [weighted.grid_index(p) for p in positions]
    assert sum(draws) / len(draws) == pytest.approx(0.75, abs=0.03)
    assert [alike.grid_index(p) for p in positions[:50]] == [int(p.rng(3).integers(2)) for p in positions[:50]]


# --- the CPU rehearsal: tiny settings over UCF101's recipe, on the 16 demo clips, k-NN (no training) -----------------

def tiny(demo_root: Path, out: Path, mode: str, epochs: int, *more: str) -> list[str]:
    """The rehearsal's sweep: the recipe's flags with a micro model on 4 frames of 32x32 (the overrides come last and
    win), 2 grids, 1 seed; pre-training saves checkpoint-latest every 2 steps (4 steps per epoch on 2 processes)."""
    return [*SWEEP, "--recipe", "ucf101_base_3200", "--mode", mode, "--grids", "32/16", "32/8", "--num_frames", "4",
            "--seeds", "0", "--eval", "knn", "--pretrain_epochs", str(epochs), "--device", "cpu", "--threads", "1",
            "--data_path", str(demo_root), "--data_root", str(demo_root), "--data_set", "custom", "--bench_iters", "1",
            "--bench_batch_size", "2", "--output_dir", str(out), *more,
            "--pretrain_args", "--model pretrain_videomae_micro_patch16_224 --batch_size 2 --update_freq 1 "
            "--decoder_depth 1 --sampling_rate 2 --num_workers 0 --warmup_epochs 0 --print_freq 1 --lr 1e-3 "
            "--deterministic --save_ckpt_every_steps 2",
            "--finetune_args", "--model vit_micro_patch16_224 --nb_classes 8 --batch_size 8 --update_freq 1 "
            "--sampling_rate 2 --num_workers 0 --test_num_segment 1 --test_num_crop 1 --knn_k 5 --deterministic"]


def sweep_env(**more: str) -> dict[str, str]:
    return dict(env(), MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", **more)


def run_tiny(cmd: list[str], **more: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=sweep_env(**more), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


TIMINGS = ("pretrain_s", "eval_s")


def without_timings(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in json.loads((out / "sweep.json").read_text())]


def check_rows(out: Path, mode: str, epochs: int) -> list[dict]:
    rows = json.loads((out / "sweep.json").read_text())
    assert [(r["grid"], r["mode"], r["eval"], r["recipe"], r["model"]) for r in rows] == [
        ("32/16", mode, "knn", "ucf101_base_3200", "micro"), ("32/8", mode, "knn", "ucf101_base_3200", "micro")]
    for r in rows:
        assert r["seeds"] == [0] and 0 <= r["top1"][0] <= 100 and r["pretrain_loss"][0] > 0
        assert r["pretrain_epochs"] == epochs and r["pretrain_flops"] > 0
    stages = json.loads((out / "stages.json").read_text())
    assert {s["status"] for s in stages.values()} == {"done"}
    assert all("bash scripts/launch/torchrun.sh" in s["command"] and "GPUS_PER_NODE=2" in s["command"]
               for s in stages.values())
    return rows


@pytest.mark.slow
def test_the_rehearsal_through_torchrun_resumes_after_a_kill_to_the_same_json(demo_root, tmp_path):
    """Fixed mode (a pre-training per grid) through torchrun; flexible mode runs as Slurm jobs below."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    fixed = ["--launcher", "torchrun", "--gpus_per_node", "2"]
    result = run_tiny(tiny(demo_root, whole, "fixed", 1, *fixed))
    rows = check_rows(whole, "fixed", 1)
    assert rows[1]["pretrain_flops"] > rows[0]["pretrain_flops"]  # 4x the tokens, the same epochs
    assert result.stdout.count("bash scripts/launch/torchrun.sh pretrain") == 2
    shutil.copytree(whole / "bench", killed / "bench")  # the benchmark's cache: only training is compared

    sweep = subprocess.Popen(tiny(demo_root, killed, "fixed", 1, *fixed), cwd=ROOT, env=sweep_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = killed / "fixed" / "seed0" / "grid_32_16" / "pretrain" / "checkpoint-latest.pth"
    deadline = time.time() + 400
    while not latest.exists() and sweep.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep, the launcher, torchrun and both ranks
    sweep.wait()
    stages = json.loads((killed / "stages.json").read_text())
    assert latest.exists() and stages["fixed/seed0/grid_32_16/pretrain"]["status"] == "running"  # killed mid-stage

    again = run_tiny(tiny(demo_root, killed, "fixed", 1, *fixed))
    assert "Resum" in again.stdout + again.stderr
    assert without_timings(killed) == without_timings(whole)
    report = run_tiny(tiny(demo_root, killed, "fixed", 1, *fixed))  # every stage done: only the report
    assert report.stdout.count("done earlier") == 4 and "torchrun.sh" not in report.stdout


STAND_INS = {
    "sbatch": r'''#!/bin/bash
# Stand-in sbatch: runs the job here and now (as Slurm would once its dependencies are met); prints its id.
jobs=$STANDIN_JOBS; id=$(( $(cat "$jobs/last" 2>/dev/null || echo 100) + 1 )); echo $id > "$jobs/last"
echo "$@" > "$jobs/$id.args"
vars=(SLURM_JOB_ID=$id SLURM_NTASKS=1 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_SUBMIT_DIR=$PWD
      PATCHES_STOP_FILE=$jobs/stop-$id)
while [[ "$1" == -* ]]; do
  case "$1" in
    --export=*) IFS=',' read -ra pairs <<< "${1#--export=ALL,}"; vars+=("${pairs[@]}") ;;
    --dependency=*) for d in $(echo "${1#--dependency=afterok:}" | tr ':' ' '); do
                      [ "$(cat "$jobs/$d.state")" = COMPLETED ] || { echo CANCELLED > "$jobs/$id.state"; echo $id; exit 0; }
                    done ;;
    --output) out=${2//%j/$id}; shift ;;
    --job-name|--nodes|--ntasks-per-node|--gpus-per-node) shift ;;
  esac
  shift
done
printf '%q ' env "${vars[@]}" bash "$@" > "$jobs/$id.run"
bash "$jobs/$id.run" >> "$out" 2>&1
status=$?
[ -e "$jobs/$id.requeued" ] && status=$(cat "$jobs/$id.requeued")
[ "$status" = 0 ] && echo COMPLETED > "$jobs/$id.state" || echo FAILED > "$jobs/$id.state"
echo $id
''',
    "scontrol": r'''#!/bin/bash
# Stand-in scontrol requeue ID: runs the job again, as a restart.
echo "$@" >> "$STANDIN_JOBS/scontrol.log"
SLURM_RESTART_COUNT=1 bash "$STANDIN_JOBS/$2.run"
echo $? > "$STANDIN_JOBS/$2.requeued"
''',
    "srun": r'''#!/bin/bash
# Stand-in srun: the command as the one task; the first pre-training gets SIGUSR1 once it trains (exit 75).
while [[ "$1" == --* ]]; do shift; done
if [[ "$*" == *run_mae_pretraining.py* ]] && [ ! -e "$STANDIN_JOBS/stopped" ]; then
  touch "$STANDIN_JOBS/stopped"
  "$@" > "$STANDIN_JOBS/first.log" 2>&1 &
  pid=$!
  until grep -q "Epoch \[1/" "$STANDIN_JOBS/first.log" || ! kill -0 $pid 2>/dev/null; do sleep 0.05; done
  kill -USR1 $pid; wait $pid; status=$?
  cat "$STANDIN_JOBS/first.log"; exit $status
fi
exec "$@"
''',
    "squeue": "#!/bin/sh\n# Stand-in squeue: every job has ended (the stand-in sbatch runs them at once).\n",
}


@pytest.mark.slow
def test_the_rehearsal_as_slurm_jobs_chains_them_and_requeues_a_stopped_one(demo_root, tmp_path):
    bin_dir, jobs, out = tmp_path / "bin", tmp_path / "jobs", tmp_path / "slurm"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, text in STAND_INS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    variables = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STANDIN_JOBS": str(jobs)}
    cmd = tiny(demo_root, out, "flexible", 2, "--launcher", "slurm", "--gpus_per_node", "1")
    first = run_tiny(cmd, **variables)
    assert first.stdout.count("submitted job") == 3 and "Run the same command again to report" in first.stdout
    args = [(jobs / f"{i}.args").read_text() for i in (101, 102, 103)]
    assert "--dependency" not in args[0] and "scripts/launch/slurm.sbatch pretrain" in args[0]
    # one after another (and each evaluation after the pre-training it reads)
    assert "--dependency=afterok:101 " in args[1] and "--dependency=afterok:101:102 " in args[2]
    assert (jobs / "scontrol.log").read_text() == "requeue 101\n"  # the pre-training stopped with 75, requeued
    log = (out / "flexible" / "seed0" / "pretrain" / "slurm-101.out").read_text()
    assert "requeueing job 101" in log and "restart 1" in log
    assert [(jobs / f"{i}.state").read_text().strip() for i in (101, 102, 103)] == ["COMPLETED"] * 3

    report = run_tiny(cmd, **variables)  # the jobs have ended: their results read back, the table written
    assert "submitted job" not in report.stdout and "| 32/8 | 16 | 32 | flexible |" in report.stdout
    stages = json.loads((out / "stages.json").read_text())
    assert [s["job_id"] for s in stages.values()] == ["101", "102", "103"]
    assert {s["status"] for s in stages.values()} == {"done"}
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["seeds"] for r in rows] == [[0], [0]] and all(r["pretrain_epochs"] == 2 for r in rows)
    # one pre-training for both grids: each point is charged all of it, and its own grid's share is less
    assert rows[0]["pretrain_flops"] == rows[1]["pretrain_flops"] > rows[1]["pretrain_flops_at_grid"]


def test_the_report_gives_each_points_pretraining_flops_and_plots_accuracy_against_them(tmp_path):
    from patches.sweep import report as sweep_report

    rows = [{"grid": grid, "patches_per_frame": ppf, "tokens": ppf * 8, "mode": "fixed", "eval": "finetune",
             "seeds": [0], "top1": [top1], "pretrain_loss": [0.5], "step_s": 0.1, "clips_per_s": 10.0,
             "gflop_per_step": 1.0, "peak_mem_gb": 1.0, "bench_batch": 2, "pretrain_epochs": epochs,
             "pretrain_flops": 4.85e19} for grid, ppf, top1, epochs in (("224/16", 196, 80.0, 800),
                                                                        ("288/16", 324, 81.0, 419))]
    table = sweep_report.write_reports(rows, tmp_path, "test")
    assert "| pre-train epochs | pre-train PFLOP |" in table and "| 288/16 | 324 | 2592 | fixed | 81.0 ± 0.0 | 419 | " \
        "4.85e+04 |" in table
    from PIL import Image
    with Image.open(tmp_path / "sweep.png") as png:  # top-1 against patches per frame and against FLOPs, 3 costs
        assert png.size[0] == 80 * 4.2 * 5


@pytest.mark.parametrize("flags, message", [
    (["--launcher", "slurm"], "--launcher slurm runs the launchers' recipes: give --recipe"),
    (["--recipe", "k400_base_800", "--parallel"], "--parallel is for --launcher slurm"),
    (["--budget", "flops", "--budget_grid", "320/16"], "--budget_grid 320/16: without --recipe"),
])
def test_flags_that_cannot_work_together_are_refused_by_name(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as ended:
        patch_sweep.main([*flags, "--dry_run", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert ended.value.code == 2 and err.startswith("error: ") and message in err  # a usage error


def test_grid_weights_need_one_positive_weight_per_grid(demo_root, tmp_path):
    from patches.cli import pretrain as run_mae_pretraining
    from patches.config.checks import FlagError
    from patches.config.pretraining import resolve_pretraining

    base = ["--model", "pretrain_videomae_micro_patch16_224", "--grids", "32/16", "32/8", "--num_frames", "4",
            "--batch_size", "2",
            "--data_path", str(demo_root / "train.csv"), "--data_root", str(demo_root), "--device", "cpu",
            "--output_dir", str(tmp_path / "out")]
    parse = run_mae_pretraining.get_args_parser().parse_args
    assert resolve_pretraining(parse([*base, "--grid_weights", "1", "3"]), 1).grid_weights == (1.0, 3.0)
    assert resolve_pretraining(parse(base), 1).grid_weights is None
    for weights in (["1"], ["1", "0"]):
        with pytest.raises(FlagError, match="--grid_weights needs one positive weight per grid of --grids"):
            resolve_pretraining(parse([*base, "--grid_weights", *weights]), 1)
