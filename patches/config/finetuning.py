"""Fine-tuning's flags resolved once: the checks and the frozen :class:`FinetuneRunConfig`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from patches.checkpoints.folder import checkpoint_to_evaluate
from patches.config import checks
from patches.config.demo_fallback import demo_data_values
from patches.config.library_configs import (classification_data_config, optimizer_config, trainer_config,
                                            video_lists_config)
from patches.config.lr_scaling import scaled_rates
from patches.config.run_config import ModelConfig, RunConfig, common_fields, scaled_flags, with_values
from patches.config.videomae_flags import refuse_videomae_flags
from patches.data.datasets import ClassificationDataConfig
from patches.data.lists import NB_CLASSES, read_records
from patches.grid import PatchGrid

POSITIVE = ("batch_size", "epochs", "update_freq", "sampling_rate", "num_sample", "save_ckpt_freq", "print_freq",
            "test_num_segment", "test_num_crop")


@dataclass(frozen=True)
class WeightsSource:
    """``--finetune``: the checkpoint a run starts from (any layout, any grid), and how to find its weights."""

    path: str  # "" when none
    model_key: str = "model|module"
    model_prefix: str = ""
    fc_norm_init: str = "fresh"  # --fc_norm_init: "fresh" (VideoMAE's ones/zeros) or "encoder_norm"


@dataclass(frozen=True)
class EvaluationConfig:
    """Validation, the test and the frozen-encoder probes."""

    eval_only: bool  # --eval
    validate: bool  # validation after every epoch (not --disable_eval_during_finetuning)
    dist_eval: bool
    probe: str | None
    knn_k: int
    knn_feature: str
    knn_temperature: float
    test_num_segment: int
    test_num_crop: int
    print_freq: int


@dataclass(frozen=True)
class MixupConfig:
    """Mixup/CutMix and label smoothing (``--mixup --cutmix ... --smoothing``)."""

    mixup: float
    cutmix: float
    cutmix_minmax: tuple[float, float] | None
    prob: float
    switch_prob: float
    mode: str
    smoothing: float


@dataclass(frozen=True)
class FinetuneRunConfig(RunConfig):
    """A fine-tuning (or ``--eval``, or ``--probe``) run, resolved; ``nb_classes``: the class count, from
    ``--nb_classes``, ``--data_set`` or the training list (None only with ``--check_data``, or ``--dry_run`` on a custom data set)."""

    grid: PatchGrid
    nb_classes: int | None
    data: ClassificationDataConfig
    weights: WeightsSource
    evaluation: EvaluationConfig
    mixup: MixupConfig
    layer_decay: float | None  # None for a probe: its parameters are all new
    output_dir: str
    epochs: int
    uses_demo_data: bool


def check_finetuning(args: argparse.Namespace) -> tuple[argparse.Namespace, PatchGrid]:
    """Every cheap check, before data or model are built; raises :class:`checks.FlagError` listing the problems.
    Returns the checked flags (a new namespace, ``--amp`` concrete) and the grid."""
    grid, amp, problems = checks.validate_common(args, POSITIVE)
    flags = with_values(args, {"amp": amp})
    problems += _value_problems(flags)
    dry_run = flags.dry_run
    if flags.finetune and not (Path(flags.finetune).is_file() or Path(flags.finetune).is_dir()):
        checks.path_problem(problems, f"--finetune {flags.finetune} does not exist", dry_run)
    for flag in ("data_path", "eval_data_path"):
        value = getattr(flags, flag)
        if value is not None and not Path(value).exists():
            checks.path_problem(problems, f"--{flag} {value} does not exist", dry_run)
    if flags.data_set in ("UCF101", "HMDB51") and flags.split not in (1, 2, 3):
        problems.append(f"--split must be 1, 2 or 3 for --data_set {flags.data_set}, got {flags.split}")
    if flags.eval and not dry_run and not (flags.resume or flags.finetune or checkpoint_to_evaluate(
            flags.resume, flags.output_dir, flags.enable_deepspeed)):
        problems.append(f"--eval has nothing to test: no --resume, no --finetune and no checkpoint in "
                        f"--output_dir {flags.output_dir}")
    if flags.probe and not flags.finetune:
        problems.append(f"--probe {flags.probe} evaluates a trained encoder, frozen: give its checkpoint with "
                        f"--finetune")
    problems += checks.model_problems(flags.model, pretraining=False)
    if not dry_run:  # a dry run reads no list
        problems += checks.finetuning_data_problems(flags)
    checks.fail_if(problems)
    return flags, grid


def _value_problems(flags: argparse.Namespace) -> list[str]:
    """Fine-tuning's numbers out of their range."""
    problems = []
    if flags.short_side_size is not None and flags.short_side_size < 1:
        problems.append(f"--short_side_size must be at least 1, got {flags.short_side_size}")
    if not 0 < flags.layer_decay <= 1:
        problems.append(f"--layer_decay must be in (0, 1], got {flags.layer_decay}")
    if flags.nb_classes is not None and flags.nb_classes < 2:
        problems.append(f"--nb_classes must be at least 2, got {flags.nb_classes}")
    for flag in ("mixup_prob", "mixup_switch_prob", "reprob", "smoothing"):
        if not 0 <= getattr(flags, flag) <= 1:
            problems.append(f"--{flag} must be in [0, 1], got {getattr(flags, flag)}")
    for flag in ("mixup", "cutmix", "drop", "attn_drop_rate", "fc_drop_rate"):
        if getattr(flags, flag) < 0:
            problems.append(f"--{flag} must be 0 or more, got {getattr(flags, flag)}")
    if not 0 < flags.model_ema_decay < 1:
        problems.append(f"--model_ema_decay must be in (0, 1), got {flags.model_ema_decay}")
    if flags.knn_k < 1 or flags.knn_temperature <= 0:
        problems.append(f"--knn_k must be at least 1 and --knn_temperature positive, got {flags.knn_k} and "
                        f"{flags.knn_temperature}")
    return problems


def class_count(flags: argparse.Namespace) -> int | None:
    """The class count the training list gives (as ``build_dataset("train", ...)`` counts it); with
    ``--check_data`` (which reports the lists' problems itself) or ``--dry_run``, ``--nb_classes``, else the
    count of ``--data_set``, else None."""
    if flags.check_data:
        return flags.nb_classes
    if flags.dry_run:  # a dry run reads no list
        return flags.nb_classes or NB_CLASSES.get(flags.data_set)
    try:
        return read_records("train", video_lists_config(flags))[1]
    except (OSError, ValueError) as e:
        raise checks.FlagError([str(e)]) from None


def resolve_finetuning(args: argparse.Namespace, world_size: int | None = None) -> FinetuneRunConfig:
    """Check ``args`` and resolve them, once, into the run's frozen config. ``world_size``: the processes the
    run will have (default: what the launcher's environment says, as ``init_distributed`` reads it)."""
    refuse_videomae_flags(args)
    world_size = checks.expected_world_size() if world_size is None else world_size
    flags, grid = check_finetuning(args)
    demo = demo_data_values(flags, finetuning=True)
    flags = with_values(flags, demo)
    flags = with_values(flags, {"nb_classes": class_count(flags)})
    rates = scaled_rates(flags, world_size)
    if not flags.eval:  # --eval records its flags as given: nothing is trained
        flags = scaled_flags(flags, rates)
    model = ModelConfig(flags.model, MappingProxyType({
        "grid": grid, "drop_rate": flags.drop, "attn_drop_rate": flags.attn_drop_rate,
        "drop_path_rate": flags.drop_path, "fc_drop_rate": flags.fc_drop_rate, "init_scale": flags.init_scale,
        "use_mean_pooling": flags.use_mean_pooling, "pos_embed": flags.pos_embed,
        "use_checkpoint": flags.use_checkpoint}))
    layer_decay = None if flags.probe else flags.layer_decay
    return FinetuneRunConfig(
        **common_fields(flags, rates, trainer_config(flags, flags.device), optimizer_config(flags, layer_decay),
                        model, world_size),
        grid=grid, nb_classes=flags.nb_classes, data=classification_data_config(flags),
        weights=WeightsSource(flags.finetune, flags.model_key, flags.model_prefix, flags.fc_norm_init),
        evaluation=EvaluationConfig(
            eval_only=flags.eval, validate=not flags.disable_eval_during_finetuning, dist_eval=flags.dist_eval,
            probe=flags.probe, knn_k=flags.knn_k, knn_feature=flags.knn_feature,
            knn_temperature=flags.knn_temperature, test_num_segment=flags.test_num_segment,
            test_num_crop=flags.test_num_crop, print_freq=flags.print_freq),
        mixup=MixupConfig(flags.mixup, flags.cutmix, None if flags.cutmix_minmax is None else
                          tuple(flags.cutmix_minmax), flags.mixup_prob, flags.mixup_switch_prob, flags.mixup_mode,
                          flags.smoothing),
        layer_decay=layer_decay, output_dir=flags.output_dir, epochs=flags.epochs, uses_demo_data=bool(demo))
