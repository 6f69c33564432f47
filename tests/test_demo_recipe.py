"""The demo's recipe (demo_recipe.py): run_demo.py and patch_sweep.py --demo train with the same flags."""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from patches.cli import demo as run_demo
from patches.config.demo_recipe import FINETUNE_EPOCHS, PRETRAIN_EPOCHS
from patches.cli import finetune as run_class_finetuning
from patches.cli import pretrain as run_mae_pretraining
from patches.sweep import patch_sweep

# What the demo sweep sets itself: where it writes, the seed, the grid (--grids) and the masks.
SWEEP_OWN = {"output_dir", "seed", "grids", "input_size", "patch_size", "mask_type"}


def parsed(parser: argparse.ArgumentParser, flags: list[str]) -> dict:
    return vars(parser.parse_args(flags))


def test_the_demo_sweep_pretrains_with_run_demos_recipe_but_its_own_grids_and_masks() -> None:
    demo = argparse.Namespace(pretrain_epochs=PRETRAIN_EPOCHS, finetune_epochs=FINETUNE_EPOCHS, demo_root="data/demo", output_dir="out")
    sweep = patch_sweep.resolve(patch_sweep.get_args_parser().parse_args(["--demo"]))
    parser = run_mae_pretraining.get_args_parser()
    ours = parsed(parser, run_demo.pretrain_flags(demo))
    theirs = parsed(parser, patch_sweep.pretrain_flags(sweep, sweep.grids, 0, Path("out")))
    differ = {k for k in ours if ours[k] != theirs[k]}
    assert differ <= SWEEP_OWN and {"grids", "mask_type"} <= differ, differ
    assert theirs["mask_type"] == patch_sweep.DEMO_MASK_TYPE and theirs["grids"] == patch_sweep.DEMO_GRIDS


def test_the_demo_sweeps_fine_tuning_is_run_demos() -> None:
    demo = argparse.Namespace(pretrain_epochs=PRETRAIN_EPOCHS, finetune_epochs=FINETUNE_EPOCHS, demo_root="data/demo", output_dir="out")
    sweep = patch_sweep.resolve(patch_sweep.get_args_parser().parse_args(["--demo", "--eval", "finetune"]))
    parser = run_class_finetuning.get_args_parser()
    grid = next(g for g in sweep.grids if g.spec != "32/8")
    ours = parsed(parser, run_demo.finetune_flags(demo, "finetune", "ckpt.pth"))
    theirs = parsed(parser, patch_sweep.eval_flags(sweep, grid, 0, "finetune", "ckpt.pth", Path("out")))
    differ = {k for k in ours if ours[k] != theirs[k]}
    assert differ <= {"output_dir", "seed", "input_size", "disable_eval_during_finetuning"}, differ
    assert theirs["input_size"] == [int(grid.spec.split("/")[0])] and theirs["epochs"] == ours["epochs"]
