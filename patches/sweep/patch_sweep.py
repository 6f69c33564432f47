"""The PATCHES experiment: how does the number of patches per frame change accuracy and cost?

Two modes, the same outputs:

- ``--mode fixed``: the faithful experiment. For each grid ("SIZE/PATCH": frames of SIZE x SIZE pixels cut
  into PATCH x PATCH patches) and seed, one pre-training at that grid, then its evaluation at that grid.
- ``--mode flexible`` (default): for each seed ONE pre-training over every grid (run_mae_pretraining.py
  --grids; each step draws one grid), then each grid evaluated from that one checkpoint. One pre-training
  instead of one per grid; what it answers is how a model trained on all grids does at each (see README).

Every pre-training gets the same --pretrain_epochs, so a fixed model and the flexible one have the same
pre-training budget. Each seed (--seeds, default 0 1) is a whole pre-training + evaluation run with --seed;
--eval names how a pre-trained encoder is scored (one or more of finetune, linear, attentive, knn: the last
three are probes of the frozen encoder, run_class_finetuning.py --probe). Both modes use --pos_embed 3d, so
they differ only in the pre-training. The cost columns come from scripts/benchmark.py at each grid (one
pre-training step in its own process). The sweep writes, in OUTPUT_DIR,

    sweep.json  one row per (grid, mode, eval): per-seed top1/top5/pretrain_loss and the grid's step_s,
                clips_per_s, gflop_per_step, peak_mem_gb; rows of the other mode already there are kept
    sweep.md    the table: top-1 per evaluation as mean ± half the min-max range over seeds, and the costs
    sweep.png   top-1 with its spread against patches per frame (log x), one line per mode and evaluation,
                and the cost panels; --plot_only re-plots an existing sweep.json (e.g. one holding both modes)

On the demo data (2 CPU cores; the commands README's "The patch question" ran):

    python scripts/patch_sweep.py --demo                  # flexible, 2 seeds
    python scripts/patch_sweep.py --demo --mode fixed     # one pre-training per grid and seed

On real data (every stage is an ordinary run of run_mae_pretraining.py / run_class_finetuning.py, printed
so it can be re-run alone; re-running the sweep resumes: finished stages are read back from their results):

    python scripts/patch_sweep.py --model base --data_path k400 --data_set Kinetics-400 \\
        --pretrain_data_path k400/train.csv --grids 224/16 288/16 216/12 224/32 --eval finetune knn \\
        --pretrain_epochs 800 --finetune_epochs 75 --output_dir output/sweep_k400 \\
        --pretrain_args "--batch_size 32 --num_workers 10" --finetune_args "--batch_size 8 --layer_decay 0.75"
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patches.cli.exits import exits_on_error
from patches.cli.stages import run_stage
from patches.config import demo_recipe  # run_demo.py's recipe: the demo preset trains as the demo does
from patches.errors import PatchesError, UsageError
from patches.grid import GridError, PatchGrid, grids_from_specs
from patches.perf import benchmark  # scripts/benchmark.py: step time and peak memory, one process per configuration
from patches.sweep import report as sweep_report

MODES = ("fixed", "flexible")
DEFAULT_GRIDS = ["224/16", "288/16", "216/12", "224/32"]
# Demo scale (the 64x64 demo videos, read at SIZE): 9, 36 and 81 patches per frame, the 9x range of the real
# default's 49..324. Grids of 4 patches per frame (16/8, 32/16) stay at chance with this recipe and budget.
DEMO_GRIDS = ["24/8", "48/8", "72/8"]
# The demo preset pre-trains with run_demo.py's recipe but random masks: with tube masks the grids of 9 or fewer
# patches per frame reconstruct without learning the motion (k-NN near chance, README "The patch question").
DEMO_MASK_TYPE = "random"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="flexible", choices=MODES,
                   help="fixed: one pre-training per grid; flexible: one pre-training over all grids (default)")
    p.add_argument("--demo", action="store_true",
                   help=f"the demo preset: demo data, micro model, grids {' '.join(DEMO_GRIDS)}, "
                        f"{demo_recipe.PRETRAIN_EPOCHS} pre-training epochs of run_demo.py's recipe with {DEMO_MASK_TYPE} "
                        "masks, k-NN evaluation")
    p.add_argument("--grids", nargs="+", default=None, metavar="SIZE/PATCH",
                   help=f"grids to compare (default: {' '.join(DEFAULT_GRIDS)}; with --demo: {' '.join(DEMO_GRIDS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1],
                   help="one whole pre-training + evaluation per seed (--seed); the table gives mean and spread")
    p.add_argument("--eval", nargs="+", default=None, choices=sweep_report.EVALS,
                   help="how each grid's pre-trained encoder is scored, one top-1 column each: fine-tuned, or frozen "
                        "with a linear or attentive probe or k-NN (run_class_finetuning.py --probe; much cheaper) "
                        "(default: finetune; demo: knn)")
    p.add_argument("--model", default=None, help="ViT size: micro tiny small base large huge (default: base; demo: micro)")
    p.add_argument("--num_frames", type=int, default=None, help="frames per clip (default 16; demo 8)")
    p.add_argument("--tubelet_size", type=int, default=2)
    p.add_argument("--sampling_rate", type=int, default=None, help="frame stride (default 4)")
    p.add_argument("--pretrain_epochs", type=int, default=None,
                   help=f"epochs of every pre-training (default: the script's, 800; demo {demo_recipe.PRETRAIN_EPOCHS})")
    p.add_argument("--finetune_epochs", type=int, default=None,
                   help="epochs of fine-tuning or probe training (default: the script's, 30; demo "
                        f"{demo_recipe.FINETUNE_EPOCHS})")
    p.add_argument("--data_path", default=None,
                   help="fine-tuning data: folder with train.csv/val.csv/test.csv (default: the demo data)")
    p.add_argument("--data_set", default=None, help="fine-tuning --data_set (e.g. Kinetics-400, SSV2)")
    p.add_argument("--data_root", default=None, help="folder the list files' video paths are relative to")
    p.add_argument("--pretrain_data_path", default=None,
                   help="pre-training list file (default: DATA_PATH/train.csv, or the demo's pretrain.csv)")
    p.add_argument("--demo_root", default="data/demo", help="where the demo videos are (generated on first use)")
    p.add_argument("--pretrain_args", default="", help="extra flags for run_mae_pretraining.py, one quoted string")
    p.add_argument("--finetune_args", default="", help="extra flags for run_class_finetuning.py, one quoted string")
    p.add_argument("--bench_batch_size", type=int, default=None,
                   help="clips per benchmarked step (default: the pre-training --batch_size x --num_sample)")
    p.add_argument("--bench_iters", type=int, default=5, help="timed benchmark steps (median reported)")
    p.add_argument("--device", default=None, help="cuda or cpu for every stage (default: cuda when present)")
    p.add_argument("--output_dir", default=None, help="default: output/patch_sweep (demo: output/patch_sweep_demo)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every stage and the benchmark (default: torch's; demo: 1, which on a "
                        "shared 2-core machine leaves the other core to the data loader and is much faster)")
    p.add_argument("--skip_training", action="store_true", help="only benchmark (no accuracy columns)")
    p.add_argument("--plot_only", action="store_true",
                   help="only remake sweep.md and sweep.png from OUTPUT_DIR/sweep.json (e.g. one holding both modes)")
    return p


@dataclass(frozen=True)
class SweepConfig:
    """A sweep's flags, resolved: the defaults that depend on ``--demo`` filled in, the grids parsed."""

    mode: str
    demo: bool
    grids: tuple[PatchGrid, ...]
    seeds: tuple[int, ...]
    eval: tuple[str, ...]
    model: str
    num_frames: int
    tubelet_size: int
    sampling_rate: int
    pretrain_epochs: int | None
    finetune_epochs: int | None
    data_path: str | None
    data_set: str | None
    data_root: str | None
    pretrain_data_path: str | None
    demo_root: str
    pretrain_args: str
    finetune_args: str
    bench_batch_size: int | None
    bench_iters: int
    device: str | None
    output_dir: Path
    threads: int | None
    skip_training: bool
    plot_only: bool


def resolve(args: argparse.Namespace) -> SweepConfig:
    """The sweep's frozen config: the defaults that depend on --demo; a bad --grids entry refused by name
    (:class:`UsageError`) before any work. ``args`` is only read."""
    demo = args.demo
    num_frames = args.num_frames or (8 if demo else 16)
    try:
        grids = grids_from_specs(args.grids or (DEMO_GRIDS if demo else DEFAULT_GRIDS), num_frames, args.tubelet_size)
    except GridError as e:
        raise UsageError(f"--grids: {e}") from None
    if args.mode == "flexible" and len(grids) < 2 and not args.skip_training:
        raise UsageError("--mode flexible pre-trains over several grids: give at least two in --grids")
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds lists a seed twice: {args.seeds}")
    epochs = {"pretrain_epochs": args.pretrain_epochs, "finetune_epochs": args.finetune_epochs}
    if demo:
        epochs = {"pretrain_epochs": args.pretrain_epochs or demo_recipe.PRETRAIN_EPOCHS,
                  "finetune_epochs": args.finetune_epochs or demo_recipe.FINETUNE_EPOCHS}
    given = {name: getattr(args, name) for name in SweepConfig.__dataclass_fields__}
    return SweepConfig(**{
        **given, **epochs, "grids": tuple(grids), "seeds": tuple(args.seeds), "num_frames": num_frames,
        "model": args.model or ("micro" if demo else "base"), "sampling_rate": args.sampling_rate or 4,
        "threads": args.threads or (1 if demo else None),
        "eval": tuple(dict.fromkeys(args.eval or (["knn"] if demo else ["finetune"]))),
        "output_dir": Path(args.output_dir or ("output/patch_sweep_demo" if demo else "output/patch_sweep")),
        "pretrain_data_path": args.pretrain_data_path or (str(Path(args.data_path) / "train.csv")
                                                          if args.data_path else None)})


def _flag_value(flags: list[str], name: str) -> str | None:
    """The last value given to ``name`` in a flag list (argparse's rule: the last one wins)."""
    value = None
    for i, f in enumerate(flags[:-1]):
        if f == name:
            value = flags[i + 1]
    return value


def _common(config: SweepConfig, seed: int) -> list[str]:
    flags = ["--num_frames", str(config.num_frames), "--tubelet_size", str(config.tubelet_size),
             "--sampling_rate", str(config.sampling_rate), "--pos_embed", "3d", "--seed", str(seed)]
    if config.device:
        flags += ["--device", config.device]
    if config.data_root:
        flags += ["--data_root", config.data_root]
    return flags


def _epoch_flags(epochs: int | None) -> list[str]:
    """--epochs, and a checkpoint at the last one; nothing (the script's default) when ``epochs`` is None."""
    return ["--epochs", str(epochs), "--save_ckpt_freq", str(epochs)] if epochs else []


def _grid_flags(grid: PatchGrid) -> list[str]:
    size, patch = grid.spec.split("/")
    return ["--input_size", size, "--patch_size", patch]


def pretrain_flags(config: SweepConfig, grids: list[PatchGrid], seed: int, out: Path) -> list[str]:
    """One pre-training: at ``grids[0]`` when it is the only one, else over all of them (--grids)."""
    where = _grid_flags(grids[0]) if len(grids) == 1 else ["--grids", *(g.spec for g in grids)]
    recipe = (demo_recipe.pretrain_recipe(config.pretrain_epochs, config.demo_root, DEMO_MASK_TYPE) if config.demo
              else _epoch_flags(config.pretrain_epochs))
    flags = ["--model", f"pretrain_videomae_{config.model}_patch16_224", *where, *recipe, *_common(config, seed)]
    if config.pretrain_data_path:
        flags += ["--data_path", config.pretrain_data_path]
    return flags + [*shlex.split(config.pretrain_args), "--output_dir", str(out)]


def eval_flags(config: SweepConfig, grid: PatchGrid, seed: int, how: str, checkpoint: str, out: Path
               ) -> list[str]:
    """Fine-tuning and test, or a probe (``how``), of ``checkpoint``'s encoder at ``grid``."""
    epochs = None if how == "knn" else config.finetune_epochs  # k-NN trains nothing
    recipe = ([*demo_recipe.finetune_recipe(epochs or 1, config.demo_root), "--disable_eval_during_finetuning"]
              if config.demo else _epoch_flags(epochs))
    flags = ["--model", f"vit_{config.model}_patch16_224", *_grid_flags(grid), *recipe, *_common(config, seed)]
    if config.data_path:
        flags += ["--data_path", config.data_path]
    if config.data_set:
        flags += ["--data_set", config.data_set]
    probe = [] if how == "finetune" else ["--probe", how]
    return flags + [*probe, *shlex.split(config.finetune_args), "--finetune", checkpoint, "--output_dir", str(out)]


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
    batch = config.bench_batch_size or (int(_flag_value(pre_flags, "--batch_size") or 2)
                                      * int(_flag_value(pre_flags, "--num_sample") or 1))
    return dict(task="pretrain", attn_impl="auto", compile=None, model=config.model, size=size, patch=patch,
                num_frames=config.num_frames,
                dtype="bf16" if device.startswith("cuda") else "fp32", decoder_mask="none",
                mask_ratio=float(_flag_value(pre_flags, "--mask_ratio") or 0.75),
                decoder_depth=int(_flag_value(pre_flags, "--decoder_depth") or 4), batch_size=batch,
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
            "data": config.data_path or "demo", "pretrain_epochs": config.pretrain_epochs,
            "seeds": [], "top1": [], "top5": [], "pretrain_loss": [], "pretrain_s": [], "eval_s": []}


def _grid_loss(record: dict[str, Any], grid: PatchGrid) -> float | None:
    """The last epoch's loss at ``grid``: a flexible run's per-grid entry (None if its last epoch never drew the
    grid), a fixed run's loss."""
    flexible = any(k.startswith("train_loss_") for k in record)
    value = record.get(f"train_loss_{grid.spec}") if flexible else record.get("train_loss")
    return None if value is None else float(value)


def evaluate_seed(config: SweepConfig, grid: PatchGrid, seed: int, pre: dict[str, Any], out: Path,
                  rows: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Every --eval of one pre-trained checkpoint at ``grid``, added to that grid's rows as seed ``seed``."""
    from patches.cli import finetune as run_class_finetuning

    for how in config.eval:
        flags = eval_flags(config, grid, seed, how, str(pre["checkpoint"]), out / how)
        what = "fine-tuning and test" if how == "finetune" else f"{how} probe of the frozen encoder"
        test = run_once(f"{config.mode} seed {seed}, {grid.spec}: {what}", run_class_finetuning, flags, out / how)
        row = rows[(grid.spec, how)]
        row["seeds"].append(seed)
        row["top1"].append(float(test["acc1"]))
        row["top5"].append(float(test["acc5"]))
        row["pretrain_loss"].append(_grid_loss(pre, grid))
        row["pretrain_s"].append(pre["stage_s"])
        row["eval_s"].append(test["stage_s"])


def pretrain(config: SweepConfig, grids: list[PatchGrid], seed: int, out: Path) -> dict[str, Any]:
    from patches.cli import pretrain as run_mae_pretraining

    where = grids[0].spec if len(grids) == 1 else "grids " + " ".join(g.spec for g in grids)
    pre = run_once(f"{config.mode} seed {seed}: masked pre-training at {where}", run_mae_pretraining,
                   pretrain_flags(config, grids, seed, out), out)
    if pre.get("checkpoint") is None:
        raise PatchesError(f"pre-training wrote no checkpoint in {out}")
    return pre


def run_sweep(config: SweepConfig, save) -> list[dict[str, Any]]:
    """Every seed's pre-training(s) and evaluations in ``config.mode``; ``save(rows)`` after each seed."""
    rows = {(g.spec, how): new_row(config, g, how) for g in config.grids for how in config.eval}
    for g in config.grids:
        cost = grid_cost(config, g)
        for how in config.eval:
            rows[(g.spec, how)].update(cost)
    if config.skip_training:
        return list(rows.values())
    for seed in config.seeds:
        base = config.output_dir / config.mode / f"seed{seed}"
        flexible = pretrain(config, config.grids, seed, base / "pretrain") if config.mode == "flexible" else None
        for g in config.grids:
            out = base / f"grid_{g.spec.replace('/', '_')}"
            pre = flexible or pretrain(config, [g], seed, out / "pretrain")
            evaluate_seed(config, g, seed, pre, out, rows)
        save(list(rows.values()))  # partial results survive a stop
    return list(rows.values())


def title_of(config: SweepConfig, rows: list[dict[str, Any]]) -> str:
    modes = "/".join(sorted({r["mode"] for r in rows}))
    epochs = sorted({r.get("pretrain_epochs") or "default" for r in rows}, key=str)
    first = rows[0]
    return (f"PATCHES sweep ({modes}): ViT-{first.get('model', config.model)}, "
            f"{first.get('num_frames', config.num_frames)} frames, {'/'.join(map(str, epochs))} pre-training epochs, "
            f"data: {first.get('data', 'demo')}")


@exits_on_error
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the sweep (or with --plot_only remake its reports); returns the rows of sweep.json."""
    config = resolve(get_args_parser().parse_args(argv))
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

        def save(new: list[dict[str, Any]]) -> None:
            rows = sweep_report.merge_rows(earlier, new)
            sweep_report.write_reports(rows, config.output_dir, title_of(config, rows))

        rows = sweep_report.merge_rows(earlier, run_sweep(config, save))
    table = sweep_report.write_reports(rows, config.output_dir, title_of(config, rows))
    print(f"\n{table}\n\nWrote {config.output_dir / 'sweep.md'}, {config.output_dir / 'sweep.png'} and {json_path} "
          f"in {(time.time() - start) / 60:.1f} min")
    return rows


if __name__ == "__main__":
    main()
