"""The patch sweep as a list of stages, known before anything runs: each pre-training and evaluation with its
flags, the stage it reads, its epochs and its cost (FLOPs per clip, clips per epoch, GPU-hours)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from patches.config import recipes
from patches.grid import PatchGrid
from patches.sweep import costs
from patches.sweep.config import SweepConfig
from patches.sweep.stage_flags import checkpoint_epoch, eval_flags, flag_value, pretrain_flags, recipe_epochs


@dataclass(frozen=True)
class Stage:
    """One run of run_mae_pretraining.py (``task`` "pretrain") or run_class_finetuning.py (an --eval)."""

    name: str  # its folder under OUTPUT_DIR, e.g. fixed/seed0/grid_224_16/pretrain
    task: str
    grids: tuple[str, ...]  # pre-training: the grids trained at; an evaluation: its grid
    seed: int
    flags: tuple[str, ...]
    needs: str | None = None  # the pre-training whose checkpoint an evaluation reads
    checkpoint: str | None = None  # pre-training: the checkpoint the evaluations read
    epochs: int | None = None
    gflop_per_clip: float | None = None  # mean over the draw for flexible pre-training
    clips_per_epoch: int | None = None
    gpu_hours: float | None = None

    @property
    def script(self) -> str:
        return "pretrain" if self.task == "pretrain" else "finetune"

    @property
    def out(self) -> Path:
        return Path(str(flag_value(self.flags, "--output_dir")))

    @property
    def flops(self) -> float | None:
        """The stage's training FLOPs (None where not estimated)."""
        if None in (self.gflop_per_clip, self.clips_per_epoch, self.epochs):
            return None
        return self.gflop_per_clip * 1e9 * self.clips_per_epoch * self.epochs


@dataclass(frozen=True)
class Budget:
    """Each pre-training's epochs and, in flexible mode, its draw weights (None: today's uniform draw)."""

    epochs: dict[str, int | None]  # fixed: per grid; flexible: under the key "flexible"
    weights: dict[str, float] | None
    pretrain_flops: dict[str, float]  # FLOPs per clip per grid, where known


def grid_pretrain_flops(config: SweepConfig, cost_rows: dict[str, dict] | None = None) -> dict[str, float]:
    """FLOPs per pre-training clip at each grid (and the budget grid): counted for a recipe, else the benchmark's."""
    specs = list(dict.fromkeys([*(g.spec for g in config.grids), config.budget_grid]))
    if config.recipe:
        args = recipes.parsed_args(config.recipe, "pretrain", pretrain_flags(config, [config.grids[0]], 0, Path(".")))
        return {s: costs.clip_flops("pretrain", args.model, s, args.mask_ratio, args.decoder_depth, config.output_dir)
                for s in specs}
    rows = cost_rows or {}
    return {s: rows[s]["gflop_per_step"] * 1e9 / rows[s]["bench_batch"] for s in specs if s in rows}


def budget(config: SweepConfig, flops: dict[str, float]) -> Budget:
    """--budget epochs: --pretrain_epochs (or the recipe's) everywhere; flops: see :mod:`patches.sweep.costs`."""
    specs = [g.spec for g in config.grids]
    if config.budget == "epochs":
        return Budget({s: config.pretrain_epochs for s in [*specs, "flexible"]}, None, flops)
    epochs = recipe_epochs(config)
    grid_flops = {s: flops[s] for s in specs}
    if config.mode == "fixed":
        return Budget(dict(costs.fixed_budget_epochs(grid_flops, config.budget_grid, epochs)), None, flops)
    weights = costs.equal_share_weights(grid_flops)
    flexible = costs.flexible_budget_epochs(grid_flops, weights, flops[config.budget_grid], epochs)
    return Budget({"flexible": flexible}, weights, flops)


def _costed(config: SweepConfig, stage: Stage, grid_flops: dict[str, float], weights: dict[str, float] | None
            ) -> Stage:
    """``stage`` with its epochs, FLOPs per clip, clips per epoch and GPU-hours (recipes only; probes: epochs)."""
    args = recipes.parsed_args(config.recipe, stage.script, list(stage.flags)) if config.recipe else None
    if args is None:
        flops = costs.mean_flops({g: grid_flops[g] for g in stage.grids}, weights) if (
            stage.task == "pretrain" and all(g in grid_flops for g in stage.grids)) else None
        return Stage(**{**stage.__dict__, "gflop_per_clip": flops and flops / 1e9})
    world = config.world
    values = recipes.effective_values(config.recipe, stage.script, world, list(stage.flags))
    clips = _clips_per_epoch(config, values)
    if stage.task == "pretrain":
        flops = costs.mean_flops({g: grid_flops[g] for g in stage.grids}, weights)
    elif stage.task == "finetune":
        flops = costs.clip_flops("finetune", args.model, stage.grids[0], None, None, config.output_dir)
    else:
        return Stage(**{**stage.__dict__, "epochs": args.epochs})
    hours = costs.stage_gpu_hours(flops, clips, args.epochs, config.tflops)
    return Stage(**{**stage.__dict__, "epochs": args.epochs, "gflop_per_clip": flops / 1e9,
                    "clips_per_epoch": clips, "gpu_hours": hours})


def _clips_per_epoch(config: SweepConfig, values: dict) -> int:
    """Clips per epoch on the pre-training list when it is here, else on the data set's official training list."""
    path = Path(config.pretrain_data_path or "")
    if not path.is_file():
        return values["clips_per_epoch"]
    videos = sum(1 for line in path.read_text().splitlines() if line.strip())
    return videos // values["total_batch"] * values["total_batch"] * values["num_sample"]


def build_plan(config: SweepConfig, flops: dict[str, float]) -> tuple[list[Stage], Budget]:
    """Every stage of the sweep in running order: per seed, the pre-training(s), each followed by its evaluations."""
    plan_budget = budget(config, flops)
    weights = plan_budget.weights
    stages: list[Stage] = []
    for seed in config.seeds:
        base = config.output_dir / config.mode / f"seed{seed}"
        shared = (_pretrain_stage(config, list(config.grids), seed, base / "pretrain",
                                  plan_budget.epochs["flexible"], weights)
                  if config.mode == "flexible" else None)
        stages += [shared] if shared else []
        for g in config.grids:
            out = base / f"grid_{g.spec.replace('/', '_')}"
            pre = shared or _pretrain_stage(config, [g], seed, out / "pretrain", plan_budget.epochs[g.spec], None)
            stages += [] if shared else [pre]
            stages += [_eval_stage(config, g, seed, how, pre, out / how) for how in config.eval]
    return [_costed(config, s, flops, weights) for s in stages], plan_budget


def _name(config: SweepConfig, out: Path) -> str:
    return out.relative_to(config.output_dir).as_posix()


def _pretrain_stage(config: SweepConfig, grids: list[PatchGrid], seed: int, out: Path, epochs: int | None,
                    weights: dict[str, float] | None) -> Stage:
    ordered = [weights[g.spec] for g in grids] if weights else None
    flags = pretrain_flags(config, grids, seed, out, epochs, ordered)
    epochs = epochs or config.pretrain_epochs
    return Stage(_name(config, out), "pretrain", tuple(g.spec for g in grids), seed, tuple(flags),
                 checkpoint=str(out / f"checkpoint-{checkpoint_epoch(config, epochs)}.pth"), epochs=epochs)


def _eval_stage(config: SweepConfig, grid: PatchGrid, seed: int, how: str, pre: Stage, out: Path) -> Stage:
    flags = eval_flags(config, grid, seed, how, str(pre.checkpoint), out)
    return Stage(_name(config, out), how, (grid.spec,), seed, tuple(flags), needs=pre.name)
