"""The patch sweep's flags (scripts/patch_sweep.py) and :class:`SweepConfig`, the frozen config they resolve to."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from patches.config import demo_recipe  # run_demo.py's recipe: the demo preset trains as the demo does
from patches.config.recipes import RECIPES
from patches.errors import UsageError
from patches.grid import GridError, PatchGrid, grids_from_specs
from patches.sweep import report as sweep_report

MODES = ("fixed", "flexible")
LAUNCHERS = ("local", "torchrun", "slurm")
BUDGETS = ("epochs", "flops")
DEFAULT_GRIDS = ["224/16", "288/16", "216/12", "224/32"]
# Demo scale (the 64x64 demo videos, read at SIZE): 9, 36 and 81 patches per frame, the 9x range of the real
# default's 49..324. Grids of 4 patches per frame (16/8, 32/16) stay at chance with this recipe and budget.
DEMO_GRIDS = ["24/8", "48/8", "72/8"]
# The demo preset pre-trains with run_demo.py's recipe but random masks: with tube masks the grids of 9 or fewer
# patches per frame reconstruct without learning the motion (k-NN near chance, README "The patch question").
DEMO_MASK_TYPE = "random"
RECIPE_GRID = "224/16"  # the grid VideoMAE's recipes train at: the FLOPs budget's reference with --recipe


def get_args_parser(description: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="flexible", choices=MODES,
                   help="fixed: one pre-training per grid; flexible: one pre-training over all grids (default)")
    p.add_argument("--demo", action="store_true",
                   help=f"the demo preset: demo data, micro model, grids {' '.join(DEMO_GRIDS)}, "
                        f"{demo_recipe.PRETRAIN_EPOCHS} pre-training epochs of run_demo.py's recipe with {DEMO_MASK_TYPE} "
                        "masks, k-NN evaluation")
    p.add_argument("--recipe", default=None, choices=list(RECIPES),
                   help="every stage with this VideoMAE recipe (scripts/recipes.py) at each grid: its pre-training and "
                        "fine-tuning flags, its total batch kept on NODES x GPUS_PER_NODE processes; the grid and "
                        "--seed are the only changes (and the epochs with --pretrain_epochs or --budget flops)")
    p.add_argument("--grids", nargs="+", default=None, metavar="SIZE/PATCH",
                   help=f"grids to compare (default: {' '.join(DEFAULT_GRIDS)}; with --demo: {' '.join(DEMO_GRIDS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1],
                   help="one whole pre-training + evaluation per seed (--seed); the table gives mean and spread")
    p.add_argument("--eval", nargs="+", default=None, choices=sweep_report.EVALS,
                   help="how each grid's pre-trained encoder is scored, one top-1 column each: fine-tuned, or frozen "
                        "with a linear or attentive probe or k-NN (run_class_finetuning.py --probe; much cheaper) "
                        "(default: finetune; demo: knn)")
    p.add_argument("--budget", default="epochs", choices=BUDGETS,
                   help="epochs: every pre-training gets the same epochs; flops: every grid the same pre-training "
                        "FLOPs (fixed: epochs scaled by each grid's FLOPs per clip; flexible: grids drawn with weights "
                        "giving each an equal share of the run's FLOPs)")
    p.add_argument("--budget_grid", default=None, metavar="SIZE/PATCH",
                   help=f"--budget flops: the grid that gets the pre-training epochs; the others get its FLOPs "
                        f"(default: {RECIPE_GRID} with --recipe, else the first of --grids)")
    p.add_argument("--model", default=None, help="ViT size: micro tiny small base large huge (default: base; demo: micro)")
    p.add_argument("--num_frames", type=int, default=None, help="frames per clip (default 16; demo 8)")
    p.add_argument("--tubelet_size", type=int, default=2)
    p.add_argument("--sampling_rate", type=int, default=None, help="frame stride (default 4)")
    p.add_argument("--pretrain_epochs", type=int, default=None,
                   help=f"epochs of every pre-training (default: the script's, 800; with --recipe the recipe's; demo "
                        f"{demo_recipe.PRETRAIN_EPOCHS})")
    p.add_argument("--finetune_epochs", type=int, default=None,
                   help="epochs of fine-tuning or probe training (default: the script's, 30; with --recipe the "
                        f"recipe's; demo {demo_recipe.FINETUNE_EPOCHS})")
    p.add_argument("--data_path", default=None,
                   help="fine-tuning data: folder with train.csv/val.csv/test.csv (default: the demo data; with "
                        "--recipe data/DATASET, e.g. data/k400)")
    p.add_argument("--data_set", default=None, help="fine-tuning --data_set (e.g. Kinetics-400, SSV2)")
    p.add_argument("--data_root", default=None, help="folder the list files' video paths are relative to")
    p.add_argument("--pretrain_data_path", default=None,
                   help="pre-training list file (default: DATA_PATH/train.csv, or the demo's pretrain.csv)")
    p.add_argument("--demo_root", default="data/demo", help="where the demo videos are (generated on first use)")
    p.add_argument("--pretrain_args", default="", help="extra flags for run_mae_pretraining.py, one quoted string")
    p.add_argument("--finetune_args", default="", help="extra flags for run_class_finetuning.py, one quoted string")
    g = p.add_argument_group("launching (with --recipe)")
    g.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local: each stage in this process (default); torchrun: each through "
                        "scripts/launch/torchrun.sh, one after another; slurm: each an sbatch job of "
                        "scripts/launch/slurm.sbatch, chained with --dependency=afterok")
    g.add_argument("--nodes", type=int, default=1, help="nodes per stage (NNODES / sbatch --nodes)")
    g.add_argument("--gpus_per_node", type=int, default=None,
                   help="processes per node (default: slurm 8; otherwise the GPUs torch sees, else 1)")
    g.add_argument("--parallel", action="store_true",
                   help="slurm: a job waits only for the pre-training it reads, so independent stages run at once "
                        "(default: every job waits for the one before)")
    g.add_argument("--slurm_args", default="", help="extra sbatch flags, one quoted string (e.g. \"--partition gpu\")")
    g.add_argument("--dry_run", action="store_true",
                   help="print every stage's command and GPU-hours and the total, run nothing (no data or GPU needed)")
    g.add_argument("--tflops", type=float, default=100.0,
                   help="sustained training TFLOP/s per GPU for the GPU-hours (as scripts/recipes.py)")
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
    recipe: str | None = None
    budget: str = "epochs"
    budget_grid: str | None = None
    launcher: str = "local"
    nodes: int = 1
    gpus_per_node: int = 1
    parallel: bool = False
    slurm_args: str = ""
    dry_run: bool = False
    tflops: float = 100.0
    given_frames: bool = False  # --num_frames given: with --recipe it overrides the recipe's

    @property
    def world(self) -> int:
        """Processes of every stage."""
        return self.nodes * self.gpus_per_node


def _launch_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.launcher != "local" and not args.recipe:
        problems.append(f"--launcher {args.launcher} runs the launchers' recipes: give --recipe")
    if args.recipe and args.demo:
        problems.append("--recipe and --demo are two recipes: give one")
    if args.parallel and args.launcher != "slurm":
        problems.append("--parallel is for --launcher slurm (torchrun runs one stage at a time)")
    if args.nodes < 1 or (args.gpus_per_node is not None and args.gpus_per_node < 1):
        problems.append("--nodes and --gpus_per_node must be at least 1")
    return problems


def _gpus_per_node(args: argparse.Namespace) -> int:
    if args.gpus_per_node:
        return args.gpus_per_node
    if args.launcher == "slurm":
        return 8  # slurm.sbatch's #SBATCH --gpus-per-node
    import torch
    return max(1, torch.cuda.device_count())


def resolve(args: argparse.Namespace) -> SweepConfig:
    """The sweep's frozen config: the defaults that depend on --demo; a bad --grids entry refused by name
    (:class:`UsageError`) before any work. ``args`` is only read."""
    demo = args.demo
    num_frames = args.num_frames or (8 if demo else 16)
    problems = _launch_problems(args)
    try:
        grids = grids_from_specs(args.grids or (DEMO_GRIDS if demo else DEFAULT_GRIDS), num_frames, args.tubelet_size)
        budget_grid = args.budget_grid or (RECIPE_GRID if args.recipe else grids[0].spec)
        grids_from_specs([budget_grid], num_frames, args.tubelet_size)
    except GridError as e:
        raise UsageError(f"--grids: {e}") from None
    if args.mode == "flexible" and len(grids) < 2 and not args.skip_training:
        problems.append("--mode flexible pre-trains over several grids: give at least two in --grids")
    if args.budget == "flops" and not args.recipe and budget_grid not in [g.spec for g in grids]:
        problems.append(f"--budget_grid {budget_grid}: without --recipe its FLOPs come from the benchmark of --grids; "
                        "give one of them")
    if len(set(args.seeds)) != len(args.seeds):
        problems.append(f"--seeds lists a seed twice: {args.seeds}")
    if problems:
        raise UsageError("; ".join(problems))
    epochs = {"pretrain_epochs": args.pretrain_epochs, "finetune_epochs": args.finetune_epochs}
    if demo:
        epochs = {"pretrain_epochs": args.pretrain_epochs or demo_recipe.PRETRAIN_EPOCHS,
                  "finetune_epochs": args.finetune_epochs or demo_recipe.FINETUNE_EPOCHS}
    # With a recipe the data is the launchers' launcher-ready folder (DATASET.md): data/k400 and so on by default.
    data_path = args.data_path or (f"data/{RECIPES[args.recipe].dataset}" if args.recipe else None)
    given = {name: getattr(args, name) for name in SweepConfig.__dataclass_fields__ if hasattr(args, name)}
    return SweepConfig(**{
        **given, **epochs, "grids": tuple(grids), "seeds": tuple(args.seeds), "num_frames": num_frames,
        "model": args.model or ("micro" if demo else "base"), "sampling_rate": args.sampling_rate or 4,
        "threads": args.threads or (1 if demo else None), "budget_grid": budget_grid,
        "gpus_per_node": _gpus_per_node(args), "given_frames": args.num_frames is not None,
        "eval": tuple(dict.fromkeys(args.eval or (["knn"] if demo else ["finetune"]))),
        "output_dir": Path(args.output_dir or ("output/patch_sweep_demo" if demo else "output/patch_sweep")),
        "data_path": data_path, "pretrain_data_path": args.pretrain_data_path or (
            str(Path(data_path) / "train.csv") if data_path else None)})
