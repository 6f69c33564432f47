"""Pre-training's flags resolved once: the checks, the grid or grids, and the frozen :class:`PretrainRunConfig`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from patches.config import checks
from patches.config.demo_fallback import demo_data_values
from patches.config.library_configs import optimizer_config, pretraining_data_config, trainer_config
from patches.config.lr_scaling import scaled_rates
from patches.config.run_config import ModelConfig, RunConfig, common_fields, scaled_flags, with_values
from patches.config.videomae_flags import refuse_videomae_flags
from patches.data.datasets import PretrainingDataConfig
from patches.data.masking import MaskCounts, mask_counts
from patches.grid import GridError, PatchGrid, base_grid, grids_from_specs, position_reference

POSITIVE = ("batch_size", "update_freq", "epochs", "sampling_rate", "num_sample", "save_ckpt_freq", "print_freq")


@dataclass(frozen=True)
class MaskingConfig:
    """The encoder's and the decoder's masks (the attribute names of ``build_mask_generator``'s flags)."""

    mask_type: str
    mask_ratio: float
    decoder_mask_type: str = "none"
    decoder_mask_ratio: float = 0.0


@dataclass(frozen=True)
class PretrainRunConfig(RunConfig):
    """A pre-training run, resolved. ``grids``: the grids trained at (``--grids`` as listed, else the one of
    ``--input_size/--patch_size``), with their ``mask_counts``; ``flexible``: ``--grids`` was given."""

    grids: tuple[PatchGrid, ...]
    mask_counts: tuple[MaskCounts, ...]
    flexible: bool
    data: PretrainingDataConfig
    masking: MaskingConfig
    normlize_target: bool
    seed: int
    grid_weights: tuple[float, ...] | None = None  # --grid_weights: how often each of ``grids`` is drawn

    @property
    def grid(self) -> PatchGrid:
        """The model's grid: the base grid of ``--grids`` (see :func:`patches.grid.base_grid`), else the one."""
        return base_grid(list(self.grids))


def grid_flag_values(args: argparse.Namespace) -> tuple[dict[str, Any], list[PatchGrid]]:
    """The values ``--input_size/--patch_size/--pos_embed`` resolve to, and the grids of ``--grids`` (an empty
    list without it), refusing a bad entry at once, naming it.

    Without ``--grids``: their defaults where unset; with it, the base grid's (see :func:`patches.grid.base_grid`)
    and 3d, so that the checks, the recorded flags and resuming see the grid the model is built at."""
    if args.grids is None:
        defaults = {"input_size": [224], "patch_size": 16, "pos_embed": "1d"}
        return {flag: value for flag, value in defaults.items() if getattr(args, flag) is None}, []
    problems = [f"--grids replaces --{flag}: give one or the other" for flag in ("input_size", "patch_size")
                if getattr(args, flag) is not None]
    if args.pos_embed in ("1d", "learned"):
        problems.append(f"--grids needs --pos_embed 3d, not {args.pos_embed}: a {args.pos_embed} table gives a "
                        f"token's place in the token sequence, which is another place in the frame at each grid")
    grids: list[PatchGrid] = []
    try:
        grids = grids_from_specs(args.grids, args.num_frames, args.tubelet_size)
    except GridError as e:
        problems.append(f"--grids: {e}")
    checks.fail_if(problems)
    base = base_grid(grids)
    return {"input_size": [base.input_size[0]], "patch_size": base.patch_size, "pos_embed": "3d"}, grids


def grid_problems(grid: PatchGrid, args: argparse.Namespace) -> tuple[MaskCounts | None, list[str]]:
    """The masks' token counts at ``grid`` and what the masking and target flags cannot do there."""
    problems, counts = [], None
    at = f"--grids {grid.spec}: " if args.grids else ""
    try:
        counts = mask_counts(grid, args.mask_type, args.mask_ratio, args.decoder_mask_type, args.decoder_mask_ratio)
    except GridError as e:
        problems.append(f"{at}{e}")
    if args.normlize_target and grid.tubelet_size * grid.patch_size ** 2 < 2:
        problems.append(f"{at}--normlize_target standardises each token's pixels per channel, and with --patch_size "
                        f"{grid.patch_size} --tubelet_size {grid.tubelet_size} a token has one; "
                        f"pass --normlize_target false")
    return counts, problems


def check_pretraining(args: argparse.Namespace) -> tuple[argparse.Namespace, list[PatchGrid], list[MaskCounts]]:
    """Every cheap check, before data or model are built; raises :class:`checks.FlagError` listing the problems.
    Returns the checked flags (a new namespace: grid flags filled in, ``--amp`` concrete), the grids trained at
    and their mask counts."""
    values, flexible = grid_flag_values(args)
    flags = with_values(args, values)
    grid, amp, problems = checks.validate_common(flags, POSITIVE)
    flags = with_values(flags, {"amp": amp})
    grids = flexible or ([grid] if grid is not None else [])
    counts = []
    for g in grids:
        c, found = grid_problems(g, flags)
        counts.append(c)
        problems += found
    weights = getattr(flags, "grid_weights", None)
    if weights is not None and (len(weights) != len(flexible) or min(weights) <= 0):
        problems.append(f"--grid_weights needs one positive weight per grid of --grids ({len(flexible)}), got "
                        f"{' '.join(map(str, weights))}")
    if flags.decoder_mask_type == "none" and flags.decoder_mask_ratio:
        problems.append(f"--decoder_mask_ratio {flags.decoder_mask_ratio} does nothing with --decoder_mask_type "
                        f"none; add --decoder_mask_type run_cell")
    if flags.data_path is not None and not Path(flags.data_path).is_file():
        checks.path_problem(problems, f"--data_path {flags.data_path} is not a file", flags.dry_run)
    problems += checks.model_problems(flags.model, pretraining=True)
    if not flags.dry_run:  # a dry run reads no list
        problems += checks.pretraining_data_problems(flags)
    checks.fail_if(problems)
    return flags, grids, counts


def resolve_pretraining(args: argparse.Namespace, world_size: int | None = None) -> PretrainRunConfig:
    """Check ``args`` and resolve them, once, into the run's frozen config. ``world_size``: the processes the
    run will have (default: what the launcher's environment says, as ``init_distributed`` reads it)."""
    refuse_videomae_flags(args)
    world_size = checks.expected_world_size() if world_size is None else world_size
    flags, grids, counts = check_pretraining(args)
    flags = with_values(flags, demo_data_values(flags, finetuning=False))
    rates = scaled_rates(flags, world_size)
    flags = scaled_flags(flags, rates)
    grid = base_grid(grids)
    model = ModelConfig(flags.model, MappingProxyType({
        "grid": grid, "decoder_depth": flags.decoder_depth, "drop_path_rate": flags.drop_path,
        "pos_embed": flags.pos_embed, "pos_reference": position_reference(grids) if flags.grids else None,
        "use_checkpoint": flags.use_checkpoint}))
    return PretrainRunConfig(
        **common_fields(flags, rates, trainer_config(flags, flags.device), optimizer_config(flags), model,
                        world_size),
        grids=tuple(grids), mask_counts=tuple(counts), flexible=bool(flags.grids),
        data=pretraining_data_config(flags),
        masking=MaskingConfig(flags.mask_type, flags.mask_ratio, flags.decoder_mask_type, flags.decoder_mask_ratio),
        normlize_target=flags.normlize_target, seed=flags.seed,
        grid_weights=tuple(flags.grid_weights) if getattr(flags, "grid_weights", None) else None)
