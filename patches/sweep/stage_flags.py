"""The flags of each stage of the patch sweep: a pre-training (at one grid, or over all of them) and an evaluation
of its checkpoint at one grid, with the demo's recipe, the scripts' defaults, or one of VideoMAE's recipes
(``--recipe``, scripts/recipes.py) in which the grid, the seed and the epochs are all the sweep changes."""
from __future__ import annotations

import shlex
from pathlib import Path

from patches.config import demo_recipe
from patches.config.recipes import RECIPES, launcher_flags
from patches.grid import PatchGrid
from patches.sweep.config import DEMO_MASK_TYPE, SweepConfig

DEFAULT_EPOCHS = 800  # run_mae_pretraining.py's --epochs


def flag_value(flags: list[str] | tuple[str, ...], name: str) -> str | None:
    """The last value given to ``name`` in a flag list (argparse's rule: the last one wins)."""
    value = None
    for i, f in enumerate(flags[:-1]):
        if f == name:
            value = flags[i + 1]
    return value


def set_flag(flags: list[str], name: str, *values: str) -> list[str]:
    """``flags`` with ``name``'s values replaced (a one-value flag), or ``name values`` added at the end."""
    if name in flags and len(values) == 1:
        i = flags.index(name)
        return [*flags[:i + 1], values[0], *flags[i + 2:]]
    return [*flags, name, *values]


def _common(config: SweepConfig, seed: int) -> list[str]:
    flags = ["--num_frames", str(config.num_frames), "--tubelet_size", str(config.tubelet_size),
             "--sampling_rate", str(config.sampling_rate), "--pos_embed", "3d", "--seed", str(seed)]
    return flags + _placement(config)


def _placement(config: SweepConfig) -> list[str]:
    flags = ["--device", config.device] if config.device else []
    return flags + (["--data_root", config.data_root] if config.data_root else [])


def _epoch_flags(epochs: int | None) -> list[str]:
    """--epochs, and a checkpoint at the last one; nothing (the script's default) when ``epochs`` is None."""
    return ["--epochs", str(epochs), "--save_ckpt_freq", str(epochs)] if epochs else []


def _grid_flags(grid: PatchGrid) -> list[str]:
    size, patch = grid.spec.split("/")
    return ["--input_size", size, "--patch_size", patch]


def checkpoint_epoch(config: SweepConfig, epochs: int | None) -> int:
    """The pre-training epoch whose checkpoint the evaluations read: VideoMAE's choice with its recipe's epochs,
    else the last epoch (always saved)."""
    if config.recipe and epochs is None:
        return RECIPES[config.recipe].checkpoint_epoch
    return (epochs or DEFAULT_EPOCHS) - 1


def recipe_epochs(config: SweepConfig) -> int:
    """The pre-training epochs before any budget: --pretrain_epochs, the recipe's trained epochs, or the script's."""
    if config.pretrain_epochs:
        return config.pretrain_epochs
    return RECIPES[config.recipe].checkpoint_epoch + 1 if config.recipe else DEFAULT_EPOCHS


def pretrain_flags(config: SweepConfig, grids: list[PatchGrid], seed: int, out: Path, epochs: int | None = None,
                   weights: list[float] | None = None) -> list[str]:
    """One pre-training: at ``grids[0]`` when it is the only one, else over all of them (--grids, drawn with
    ``weights`` when given). ``epochs``: the budget's (default: --pretrain_epochs)."""
    epochs = epochs or config.pretrain_epochs
    if config.recipe:
        flags = _recipe_pretrain(config, grids, seed, epochs)
    else:
        where = _grid_flags(grids[0]) if len(grids) == 1 else ["--grids", *(g.spec for g in grids)]
        recipe = (demo_recipe.pretrain_recipe(epochs, config.demo_root, DEMO_MASK_TYPE) if config.demo
                  else _epoch_flags(epochs))
        flags = ["--model", f"pretrain_videomae_{config.model}_patch16_224", *where, *recipe, *_common(config, seed)]
    if weights:
        flags += ["--grid_weights", *(f"{w:.6g}" for w in weights)]
    if config.pretrain_data_path:
        flags += ["--data_path", config.pretrain_data_path]
    return flags + [*shlex.split(config.pretrain_args), "--output_dir", str(out)]


def _recipe_pretrain(config: SweepConfig, grids: list[PatchGrid], seed: int, epochs: int | None) -> list[str]:
    flags = launcher_flags(config.recipe, "pretrain", config.world, " ".join(g.spec for g in grids))
    if len(grids) == 1:
        flags = set_flag(flags, "--pos_embed", "3d")  # as flexible pre-training: the modes differ only in it
    if config.given_frames:
        flags = set_flag(flags, "--num_frames", str(config.num_frames))
    if epochs:
        flags = set_flag(flags, "--epochs", str(epochs))
    return set_flag(flags, "--seed", str(seed)) + _placement(config)


def eval_flags(config: SweepConfig, grid: PatchGrid, seed: int, how: str, checkpoint: str, out: Path
               ) -> list[str]:
    """Fine-tuning and test, or a probe (``how``), of ``checkpoint``'s encoder at ``grid``."""
    epochs = None if how == "knn" else config.finetune_epochs  # k-NN trains nothing
    if config.recipe:
        flags = set_flag(launcher_flags(config.recipe, "finetune", config.world, grid.spec), "--pos_embed", "3d")
        if config.given_frames:
            flags = set_flag(flags, "--num_frames", str(config.num_frames))
        flags = set_flag(flags, "--epochs", str(epochs)) if epochs else flags
        flags = set_flag(flags, "--seed", str(seed)) + _placement(config)
    else:
        recipe = ([*demo_recipe.finetune_recipe(epochs or 1, config.demo_root), "--disable_eval_during_finetuning"]
                  if config.demo else _epoch_flags(epochs))
        flags = ["--model", f"vit_{config.model}_patch16_224", *_grid_flags(grid), *recipe, *_common(config, seed)]
    if config.data_path:
        flags += ["--data_path", config.data_path]
    if config.data_set:
        flags += ["--data_set", config.data_set]
    probe = [] if how == "finetune" else ["--probe", how]
    return flags + [*probe, *shlex.split(config.finetune_args), "--finetune", checkpoint, "--output_dir", str(out)]
