"""The PATCHES experiment: how does the number of patches per frame change accuracy and cost?

Two modes, the same outputs:

- ``--mode fixed``: the faithful experiment. For each grid ("SIZE/PATCH": frames of SIZE x SIZE pixels cut
  into PATCH x PATCH patches) and seed, one pre-training at that grid, then its evaluation at that grid.
- ``--mode flexible`` (default): for each seed ONE pre-training over every grid (run_mae_pretraining.py
  --grids; each step draws one grid), then each grid evaluated from that one checkpoint. One pre-training
  instead of one per grid; what it answers is how a model trained on all grids does at each (see README).

With --budget epochs (default) every pre-training gets the same --pretrain_epochs, so a fixed model and the
flexible one have the same pre-training epochs; with --budget flops every grid gets the same pre-training FLOPs
(fixed: a grid of fewer FLOPs per clip trains more epochs; flexible: grids drawn with weights giving each an equal
share of the run's FLOPs, the run's total that of one fixed point at --budget_grid). Each seed (--seeds,
default 0 1) is a whole pre-training + evaluation run with --seed; --eval names how a pre-trained encoder is scored (one or more of finetune, linear, attentive, knn: the last
three are probes of the frozen encoder, run_class_finetuning.py --probe). Both modes use --pos_embed 3d, so
they differ only in the pre-training. The cost columns come from scripts/benchmark.py at each grid (one
pre-training step in its own process). The sweep writes, in OUTPUT_DIR,

    sweep.json  one row per (grid, mode, eval): per-seed top1/top5/pretrain_loss and the grid's step_s,
                clips_per_s, gflop_per_step, peak_mem_gb; with --recipe also pretrain_epochs, pretrain_flops
                (the whole pre-training the point's checkpoint came from), pretrain_flops_at_grid and
                gpu_hours_per_seed; rows of the other mode already there are kept
    sweep.md    the table: top-1 per evaluation as mean ± half the min-max range over seeds, and the costs
    sweep.png   top-1 with its spread against patches per frame (log x), one line per mode and evaluation,
                (and against total pre-training FLOPs), and the cost panels; --plot_only re-plots an existing sweep.json (e.g. one holding both modes)

On the demo data (2 CPU cores; the commands PATCH_QUESTION.md ran):

    python scripts/patch_sweep.py --demo                  # flexible, 2 seeds
    python scripts/patch_sweep.py --demo --mode fixed     # one pre-training per grid and seed

With one of VideoMAE's recipes on a cluster (PATCH_QUESTION.md, "On real data, on a cluster"): every stage runs that recipe at its grid,
through scripts/launch/torchrun.sh or as chained sbatch jobs of scripts/launch/slurm.sbatch; --dry_run prints
every command and its GPU-hours first; OUTPUT_DIR/stages.json records each stage's command, job id, status and
result, so the same command run again reports, resumes, and at the end writes the table:

    python scripts/patch_sweep.py --recipe k400_base_800 --grids 224/16 288/16 --mode fixed --launcher slurm \\
        --nodes 8 --data_path data/k400 --output_dir output/sweep_k400 --dry_run

Without a recipe (every stage is an ordinary run of run_mae_pretraining.py / run_class_finetuning.py, printed
so it can be re-run alone; re-running the sweep resumes: finished stages are read back from their results):

    python scripts/patch_sweep.py --model base --data_path k400 --data_set Kinetics-400 \\
        --pretrain_data_path k400/train.csv --grids 224/16 288/16 216/12 224/32 --eval finetune knn \\
        --pretrain_epochs 800 --finetune_epochs 75 --output_dir output/sweep_k400 \\
        --pretrain_args "--batch_size 32 --num_workers 10" --finetune_args "--batch_size 8 --layer_decay 0.75"
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from patches.cli.exits import exits_on_error
from patches.cli.stages import run_stage
from patches.config import recipes
from patches.errors import PatchesError, UsageError
from patches.grid import PatchGrid
from patches.perf import benchmark  # scripts/benchmark.py: step time and peak memory, one process per configuration
from patches.sweep import launchers
from patches.sweep import report as sweep_report
from patches.sweep.config import (DEFAULT_GRIDS, DEMO_GRIDS, DEMO_MASK_TYPE, MODES, SweepConfig,  # noqa: F401
                                  get_args_parser, resolve)
from patches.sweep.plan import Budget, Stage, build_plan, grid_pretrain_flops
from patches.sweep.stage_flags import eval_flags, flag_value, pretrain_flags  # noqa: F401  (the sweep's flags)


def run_once(title: str, script: Any, flags: list[str], out: Path) -> dict[str, Any]:
    """``run_stage``, or the result a finished earlier run left in ``out/sweep_stage.json`` (resuming a sweep)."""
    from patches.utils.files import write_atomically

    done = out / "sweep_stage.json"
    if done.exists():
        result = json.loads(done.read_text())
        print(f"\n=== {title}: done earlier ({done})", flush=True)
        return result
    result, seconds = run_stage(title, script, flags)
    result = {**json.loads(json.dumps(result, default=str)), "stage_s": seconds}
    write_atomically(done, lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    return result


def bench_config(config: SweepConfig, grid: PatchGrid, pre_flags: list[str]) -> dict[str, Any]:
    """A scripts/benchmark.py configuration matching the pre-training run at this grid."""
    import torch
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size, patch = (int(x) for x in grid.spec.split("/"))
    # One optimizer step of the pre-training run sees batch_size x num_sample clips.
    batch = config.bench_batch_size or (int(flag_value(pre_flags, "--batch_size") or 2)
                                      * int(flag_value(pre_flags, "--num_sample") or 1))
    return dict(task="pretrain", attn_impl="auto", compile=None, model=config.model, size=size, patch=patch,
                num_frames=config.num_frames,
                dtype="bf16" if device.startswith("cuda") else "fp32", decoder_mask="none",
                mask_ratio=float(flag_value(pre_flags, "--mask_ratio") or 0.75),
                decoder_depth=int(flag_value(pre_flags, "--decoder_depth") or 4), batch_size=batch,
                warmup=2, iters=config.bench_iters, device=device, matmul_ceiling=False)


def grid_cost(config: SweepConfig, grid: PatchGrid) -> dict[str, Any]:
    """Step time, clips/s, FLOPs and peak memory of one pre-training step at ``grid`` (cached in OUTPUT_DIR/bench)."""
    from patches.utils.files import write_atomically

    path = config.output_dir / "bench" / f"grid_{grid.spec.replace('/', '_')}.json"
    if not path.exists():
        cfg = bench_config(config, grid, pretrain_flags(config, [grid], 0, config.output_dir))
        print(f"\n=== {grid.spec}: benchmark of one pre-training step ({cfg['batch_size']} clips, "
              f"{cfg['dtype']}, {cfg['device']})", flush=True)
        bench = benchmark.run_isolated(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        cost = dict(step_s=bench["step_s"], clips_per_s=bench["clips_per_s"], gflop_per_step=bench["gflop_per_step"],
                    peak_mem_gb=bench["peak_mem_gb"], bench_batch=cfg["batch_size"], bench_device=cfg["device"])
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(cost, indent=2)))
    return json.loads(path.read_text())


def new_row(config: SweepConfig, grid: PatchGrid, how: str) -> dict[str, Any]:
    return {"grid": grid.spec, "patches_per_frame": grid.patches_per_frame, "tokens": grid.num_tokens,
            "mode": config.mode, "eval": how, "model": config.model, "num_frames": config.num_frames,
            "data": config.data_path or "demo", "pretrain_epochs": config.pretrain_epochs, "budget": config.budget,
            "recipe": config.recipe, "seeds": [], "top1": [], "top5": [], "pretrain_loss": [], "pretrain_s": [],
            "eval_s": []}


def _grid_loss(record: dict[str, Any], grid: str) -> float | None:
    """The last epoch's loss at ``grid``: a flexible run's per-grid entry (None if its last epoch never drew the
    grid), a fixed run's loss."""
    flexible = any(k.startswith("train_loss_") for k in record)
    value = record.get(f"train_loss_{grid}") if flexible else record.get("train_loss")
    return None if value is None else float(value)


def run_local(config: SweepConfig, stages: list[Stage], records: launchers.StageRecords) -> dict[str, dict]:
    """Each stage in this process, as run_demo.py chains them; a stage done earlier is read back."""
    from patches.cli import finetune as run_class_finetuning
    from patches.cli import pretrain as run_mae_pretraining

    results: dict[str, dict[str, Any]] = {}
    for stage in stages:
        where = " ".join(stage.grids) if len(stage.grids) == 1 else "grids " + " ".join(stage.grids)
        if stage.task == "pretrain":
            title, script = f"{config.mode} seed {stage.seed}: masked pre-training at {where}", run_mae_pretraining
        else:
            what = "fine-tuning and test" if stage.task == "finetune" else f"{stage.task} probe of the frozen encoder"
            title, script = f"{config.mode} seed {stage.seed}, {where}: {what}", run_class_finetuning
        result = run_once(title, script, list(stage.flags), stage.out)
        if stage.task == "pretrain" and result.get("checkpoint") is None:
            raise PatchesError(f"pre-training wrote no checkpoint in {stage.out}")
        results[stage.name] = result
        records.update(stage, flags=list(stage.flags), command=launchers.printed(
            config, stage, launchers.command(config, stage)), status="done", job_id=None, result=result)
    return results


def point_flops(stage: Stage, grid: str, plan_budget: Budget) -> dict[str, Any]:
    """A point's pre-training FLOPs: the whole run its checkpoint came from, and (flexible) the share at ``grid``."""
    total = stage.flops
    if total is None or len(stage.grids) == 1:
        return {"pretrain_flops": total, "pretrain_flops_at_grid": total}
    weights = plan_budget.weights or {g: 1 / len(stage.grids) for g in stage.grids}
    flops = plan_budget.pretrain_flops
    share = weights[grid] * flops[grid] / sum(weights[g] * flops[g] for g in stage.grids)
    return {"pretrain_flops": total, "pretrain_flops_at_grid": total * share}


def build_rows(config: SweepConfig, plan: list[Stage], plan_budget: Budget, results: dict[str, dict],
               costs: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per grid and evaluation: per-seed figures from the stages' results, the costs, the budget."""
    grids = {g.spec: g for g in config.grids}
    rows = {(g, how): {**new_row(config, grids[g], how), **costs.get(g, {})} for g in grids for how in config.eval}
    by_name = {s.name: s for s in plan}
    model = flag_value(plan[0].flags, "--model") if plan else None  # a recipe's, or --pretrain_args' size
    for row in rows.values():
        row["model"] = model.split("_")[-3] if config.recipe and model else config.model
    for stage in plan:
        if stage.task == "pretrain" or stage.name not in results or stage.needs not in results:
            continue
        pre, pre_stage, test = results[stage.needs], by_name[str(stage.needs)], results[stage.name]
        row = rows[(stage.grids[0], stage.task)]
        hours = [h for h in (pre_stage.gpu_hours, stage.gpu_hours) if h is not None]
        row.update(pretrain_epochs=pre_stage.epochs, gpu_hours_per_seed=sum(hours) if hours else None,
                   **point_flops(pre_stage, stage.grids[0], plan_budget))
        row["seeds"].append(stage.seed)
        row["top1"].append(float(test["acc1"]))
        row["top5"].append(float(test["acc5"]))
        row["pretrain_loss"].append(_grid_loss(pre, stage.grids[0]))
        row["pretrain_s"].append(pre.get("stage_s"))
        row["eval_s"].append(test.get("stage_s"))
    return list(rows.values())


def dry_run_table(config: SweepConfig, plan: list[Stage]) -> str:
    """Every stage's command and GPU-hours, and the sweep's total."""
    lines = [f"Dry run: {len(plan)} stages, {config.launcher} launcher, {config.nodes} x {config.gpus_per_node} "
             f"GPUs each; GPU-hours at the slower of {config.tflops:g} TFLOP/s per GPU and the loader on "
             f"{recipes.CORES_PER_GPU} cores per GPU at {recipes.LOADER_CLIPS_PER_CORE_S:g} clips/s each "
             f"(scripts/recipes.py's cost model)", "",
             "| stage | grids | epochs | GFLOP/clip | clips/epoch | GPU-hours |", "|---|---|---|---|---|---|"]
    for s in plan:
        lines.append(f"| {s.name} | {' '.join(s.grids)} | {s.epochs or 'default'} | "
                     f"{'-' if s.gflop_per_clip is None else f'{s.gflop_per_clip:.1f}'} | "
                     f"{'-' if s.clips_per_epoch is None else f'{s.clips_per_epoch:,}'} | "
                     f"{'-' if s.gpu_hours is None else f'{s.gpu_hours:,.1f}'} |")
    for i, s in enumerate(plan):
        waits = [s.needs] if s.needs and config.parallel else ([plan[i - 1].name] if i else [])
        after = [f"JOB_OF_{w.replace('/', '-')}" for w in waits] if config.launcher == "slurm" else None
        lines += ["", f"# {s.name}", "$ " + launchers.printed(config, s, launchers.command(config, s, after))]
    hours = [s.gpu_hours for s in plan if s.gpu_hours is not None]
    pre = sum(s.gpu_hours or 0 for s in plan if s.task == "pretrain")
    lines += ["", f"Total: {sum(hours):,.1f} GPU-hours (pre-training {pre:,.1f}, evaluation {sum(hours) - pre:,.1f})"
              + ("" if len(hours) == len(plan) else f"; {len(plan) - len(hours)} stages not estimated (k-NN and "
                 "probes, or no --recipe)")]
    return "\n".join(lines)


def grid_costs(config: SweepConfig) -> dict[str, dict[str, Any]]:
    """The benchmark's figures per grid; none for a dry run or Slurm (the submitting machine is not a node)."""
    if config.dry_run or config.launcher == "slurm":
        return {}
    return {g.spec: grid_cost(config, g) for g in config.grids}


def run_sweep(config: SweepConfig) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The plan, then (unless --dry_run) every stage with the launcher: (rows, None) when every stage is done,
    else (None, what to print: the dry run, or the jobs still queued)."""
    costs = grid_costs(config)
    if config.budget == "flops" and not config.recipe and not costs:
        raise UsageError("--budget flops without --recipe takes each grid's FLOPs from the benchmark: not with "
                         "--dry_run or --launcher slurm")
    flops = grid_pretrain_flops(config, costs) if (config.recipe or config.budget == "flops") else {}
    plan, plan_budget = build_plan(config, flops)
    if config.dry_run:
        return None, dry_run_table(config, plan)
    if config.skip_training:
        return build_rows(config, plan, plan_budget, {}, costs), None
    records = launchers.StageRecords(config.output_dir)
    run = {"local": run_local, "torchrun": launchers.run_in_turn, "slurm": launchers.submit_all}[config.launcher]
    results = run(config, plan, records)
    missing = [s.name for s in plan if s.name not in results]
    if missing:
        return None, (f"{len(plan) - len(missing)} of {len(plan)} stages done; waiting for {', '.join(missing)}. "
                      f"Run the same command again to report (OUTPUT_DIR/stages.json: {records.path}).")
    return build_rows(config, plan, plan_budget, results, costs), None


def title_of(config: SweepConfig, rows: list[dict[str, Any]]) -> str:
    modes = "/".join(sorted({r["mode"] for r in rows}))
    epochs = sorted({r.get("pretrain_epochs") or "default" for r in rows}, key=str)
    first = rows[0]
    recipe = f"recipe {first['recipe']}, " if first.get("recipe") else ""
    return (f"PATCHES sweep ({modes}): {recipe}ViT-{first.get('model', config.model)}, "
            f"{first.get('num_frames', config.num_frames)} frames, {'/'.join(map(str, epochs))} pre-training epochs "
            f"({first.get('budget', 'epochs')} budget), data: {first.get('data', 'demo')}")


@exits_on_error
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the sweep (or with --plot_only remake its reports, with --dry_run print its plan); returns the rows of
    sweep.json (none while Slurm jobs are still to finish, or for a dry run)."""
    config = resolve(get_args_parser(__doc__).parse_args(argv))
    if config.dry_run:
        plan, text = run_sweep(config)
        print(text)
        return []
    config.output_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        import torch
        torch.set_num_threads(config.threads)
        os.environ["OMP_NUM_THREADS"] = str(config.threads)  # inherited by the benchmark's processes
    start = time.time()
    json_path = config.output_dir / "sweep.json"
    earlier = sweep_report.read_rows(json_path)
    if config.plot_only:
        if not earlier:
            raise UsageError(f"--plot_only: no {json_path}")
        rows = earlier
    else:
        if config.demo:
            from patches.data.demo import ensure_demo_dataset
            ensure_demo_dataset(config.demo_root)
        new, waiting = run_sweep(config)
        if new is None:
            print(waiting)
            return []
        rows = sweep_report.merge_rows(earlier, new)
    table = sweep_report.write_reports(rows, config.output_dir, title_of(config, rows))
    print(f"\n{table}\n\nWrote {config.output_dir / 'sweep.md'}, {config.output_dir / 'sweep.png'} and {json_path} "
          f"in {(time.time() - start) / 60:.1f} min")
    return rows


if __name__ == "__main__":
    main()
