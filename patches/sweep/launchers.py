"""Running the patch sweep's stages: in this process (``local``), through scripts/launch/torchrun.sh one after
another, or as sbatch jobs of scripts/launch/slurm.sbatch chained with ``--dependency=afterok``.

OUTPUT_DIR/stages.json holds each stage's command, job id, status and result (written atomically after every
change), so that the same sweep run again skips what is done, reports the jobs still queued or running, and starts
or submits the rest."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from patches.config.recipes import RECIPES
from patches.errors import PatchesError, UsageError
from patches.sweep.config import SweepConfig
from patches.sweep.plan import Stage
from patches.utils.files import write_atomically

ROOT = Path(__file__).resolve().parents[2]  # the repository: scripts/launch/ and the entry scripts
SCRIPTS = {"pretrain": "run_mae_pretraining.py", "finetune": "run_class_finetuning.py"}


class StageFailed(PatchesError):
    """A stage's process ended with a non-zero status; the sweep ends with the same status (75: requeue it)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def launcher_env(config: SweepConfig, stage: Stage) -> dict[str, str]:
    """The variables scripts/launch/ reads for this stage (the flags given after them repeat and win)."""
    from patches.sweep.stage_flags import flag_value

    data = config.data_path or ""
    env = {"DATASET": RECIPES[str(config.recipe)].dataset, "RECIPE": str(config.recipe), "GRID": " ".join(stage.grids),
           "DATA_ROOT": config.data_root or data, "FINETUNE_DATA": data, "PATCHES_ROOT": str(ROOT),
           "PRETRAIN_LIST": config.pretrain_data_path or "", "PYTHON": sys.executable}
    if stage.task == "pretrain":
        env["PRETRAIN_DIR"] = str(stage.out)
    else:
        env.update(FINETUNE_DIR=str(stage.out), FINETUNE_FROM=str(flag_value(stage.flags, "--finetune")))
    if config.launcher == "torchrun":
        env.update(NNODES=str(config.nodes), GPUS_PER_NODE=str(config.gpus_per_node))
    return env


def command(config: SweepConfig, stage: Stage, after: list[str] | None = None) -> list[str]:
    """The stage's command line, run from the repository root (``after``: the sbatch jobs it waits for); torchrun's
    variables are in :func:`launcher_env` (see :func:`printed`)."""
    if config.launcher == "local":
        return ["python", SCRIPTS[stage.script], *stage.flags]
    env = launcher_env(config, stage)
    if config.launcher == "torchrun":
        return ["bash", "scripts/launch/torchrun.sh", stage.script, *stage.flags]
    gpus = str(config.gpus_per_node)
    sbatch = ["sbatch", "--parsable", "--job-name", f"patches-{stage.name.replace('/', '-')}", "--nodes",
              str(config.nodes), "--ntasks-per-node", gpus, "--gpus-per-node", gpus,
              "--output", str(stage.out / "slurm-%j.out"), *shlex.split(config.slurm_args)]
    if after:
        sbatch.append("--dependency=afterok:" + ":".join(after))
    exported = ",".join(f"{k}={v}" for k, v in env.items())
    return [*sbatch, f"--export=ALL,{exported}", "scripts/launch/slurm.sbatch", stage.script, *stage.flags]


class StageRecords:
    """OUTPUT_DIR/stages.json: per stage, its command, job id, status and result."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / "stages.json"
        self.stages: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, stage: Stage) -> dict[str, Any]:
        return self.stages.get(stage.name, {})

    def update(self, stage: Stage, **fields: Any) -> None:
        self.stages[stage.name] = {**self.get(stage), "task": stage.task, "grids": list(stage.grids),
                                   "seed": stage.seed, **fields}
        text = json.dumps(self.stages, indent=1, default=str) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, lambda tmp: tmp.write_text(text))

    def check_flags(self, stage: Stage) -> None:
        """Refuse a stage whose recorded flags differ: the output folder holds another sweep."""
        recorded = self.get(stage).get("flags")
        if recorded is not None and recorded != list(stage.flags):
            raise UsageError(f"{self.path} ran {stage.name} with other flags ({shlex.join(recorded)}); this sweep's "
                             f"are {shlex.join(stage.flags)}: give another --output_dir, or the same flags")


def _last_log_record(out: Path, key: str) -> dict[str, Any] | None:
    path = out / "log.txt"
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return next((r for r in reversed(records) if key in r), None)


def finished_result(stage: Stage) -> dict[str, Any] | None:
    """What a finished stage left in its folder (None: not finished): a pre-training's last epoch record and its
    checkpoint; an evaluation's test figures (``acc1``, ``acc5``)."""
    if stage.task == "pretrain":
        record = _last_log_record(stage.out, "epoch")
        if record is None or not Path(str(stage.checkpoint)).exists():
            return None
        return {**record, "checkpoint": stage.checkpoint}
    record = _last_log_record(stage.out, "test_acc1")
    if record is None:
        return None
    return {**record, "acc1": record["test_acc1"], "acc5": record["test_acc5"]}


def run_in_turn(config: SweepConfig, stages: list[Stage], records: StageRecords) -> dict[str, dict[str, Any]]:
    """torchrun: each stage not done yet, one after another (a stage stopped half-way resumes from its newest
    checkpoint); returns every stage's result."""
    results = {}
    for stage in stages:
        records.check_flags(stage)
        done = records.get(stage)
        if done.get("status") == "done":
            print(f"\n=== {stage.name}: done earlier ({records.path})", flush=True)
            results[stage.name] = done["result"]
            continue
        cmd = command(config, stage)
        line = printed(config, stage, cmd)
        print(f"\n=== {stage.name}\n$ {line}\n", flush=True)
        records.update(stage, flags=list(stage.flags), command=line, status="running", job_id=None)
        start = time.time()
        env = {**os.environ, **launcher_env(config, stage)}
        status = subprocess.run(cmd, env=env, cwd=ROOT).returncode
        result = finished_result(stage) if status == 0 else None
        if result is None:
            records.update(stage, status=f"failed ({status})")
            raise StageFailed(f"{stage.name} ended with status {status}; run the sweep again to resume it",
                              status or 1)
        results[stage.name] = {**result, "stage_s": time.time() - start}
        records.update(stage, status="done", result=results[stage.name])
    return results


def printed(config: SweepConfig, stage: Stage, cmd: list[str]) -> str:
    """The command as a shell line, torchrun's variables first."""
    if config.launcher != "torchrun":
        return shlex.join(cmd)
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in launcher_env(config, stage).items()) + " " + shlex.join(cmd)


def _queued(job_id: str) -> str | None:
    """The job's state while Slurm still holds it (PENDING, RUNNING, ...), else None."""
    found = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    state = found.stdout.strip()
    return state or None


def submit_all(config: SweepConfig, stages: list[Stage], records: StageRecords) -> dict[str, dict[str, Any]]:
    """slurm: every stage not done yet as an sbatch job, after the jobs it waits for (the stage before it, or with
    --parallel only the pre-training it reads); a job Slurm still holds is reported, not submitted again. Returns
    the results of the stages done."""
    results, pending = {}, {}  # pending: stage name -> job id of a job not finished
    previous = None
    for stage in stages:
        records.check_flags(stage)
        record = records.get(stage)
        result = record.get("result") if record.get("status") == "done" else finished_result(stage)
        if result is not None:
            results[stage.name] = result
            if record.get("status") != "done":
                records.update(stage, status="done", result=result)
            continue
        state = _queued(record["job_id"]) if record.get("job_id") else None
        if state:
            print(f"{stage.name}: job {record['job_id']} {state}", flush=True)
            pending[stage.name] = previous = record["job_id"]
            continue
        waits = [pending[stage.needs]] if stage.needs in pending else []
        if not config.parallel and previous and previous not in waits:
            waits.append(previous)
        cmd = command(config, stage, waits)
        stage.out.mkdir(parents=True, exist_ok=True)  # Slurm writes the job's --output there
        submitted = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if submitted.returncode != 0:
            raise StageFailed(f"sbatch refused {stage.name}: {submitted.stderr.strip()}", 1)
        job_id = submitted.stdout.strip().split(";")[0].splitlines()[-1]
        print(f"{stage.name}: submitted job {job_id}\n$ {shlex.join(cmd)}", flush=True)
        records.update(stage, flags=list(stage.flags), command=shlex.join(cmd), status="submitted", job_id=job_id)
        pending[stage.name] = previous = job_id
    return results
