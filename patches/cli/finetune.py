"""Fine-tune and test a video action classifier, from any checkpoint, at any patch grid.

Without --data_path it trains on the built-in demo dataset (generated on first use).
"""
from __future__ import annotations

import argparse
import functools
import os
import uuid
from pathlib import Path
from typing import Any

from patches.utils import cpu_memory  # noqa: F401  (before torch: allocator settings torch reads once, see cpu_memory.py)
import torch

from patches.config import flags as cli_args
from patches.data import health as data_health
from patches.config.flag_types import str2bool
from patches.utils.distributed import get_rank, get_world_size, is_dist, is_main_process
from patches.checkpoints.files import (CheckpointError, apply_pos_reference, check_checkpoint_grid, load_checkpoint, load_model_state)
from patches.checkpoints.folder import FoundCheckpoint, choose_checkpoint, epoch_checkpoint_files
from patches.data.clip_sampling import SAMPLINGS
from patches.data.loaders import classification_train_loader, evaluation_loader
from patches.data.datasets import VideoClsEvalDataset, build_dataset
from patches.train.classification import Classification, classification_criterion, video_mixup
from patches.eval.testing import evaluate, final_test, merge_test_results
from patches.models.factory import create_video_model
from patches.train.optim import build_optimizer
from patches.grid import PatchGrid, recorded_grid
from patches.models.probes import KNN_FEATURES, PROBES, FrozenEncoderProbe, build_probe, fit_knn
from patches.train.trainer import RunRecord, Trainer, launch
from patches.eval.features import encoder_reference
from patches.data.lists import DATA_SETS, class_names, read_records


FINETUNE_HINT = " To fine-tune from its weights at this run's grid, pass it to --finetune instead."


def get_args_parser() -> argparse.ArgumentParser:
    p = cli_args.run_parser("PATCHES fine-tuning and testing", epochs=30, save_ckpt_freq=100)

    g = cli_args.add_grid_args(p, "vit_base_patch16_224")
    g.add_argument("--nb_classes", default=None, type=int,
                   help="classes; checked against the labels found (default: from --data_set, or inferred)")
    g.add_argument("--drop", default=0.0, type=float, help="dropout after attention projection and MLP")
    g.add_argument("--attn_drop_rate", default=0.0, type=float, help="attention dropout")
    g.add_argument("--drop_path", default=0.1, type=float, help="stochastic depth rate")
    g.add_argument("--fc_drop_rate", default=0.0, type=float, help="dropout before the classification head")
    g.add_argument("--init_scale", default=0.001, type=float, help="scale of the new head's initial weights")
    g.add_argument("--use_mean_pooling", action="store_true", default=True,
                   help="classify the mean of all tokens through fc_norm (default)")
    g.add_argument("--use_cls", action="store_false", dest="use_mean_pooling",
                   help="classify a cls token instead of mean pooling")
    g.add_argument("--model_ema", action="store_true", help="keep an exponential moving average of the weights")
    g.add_argument("--model_ema_decay", default=0.9999, type=float, help="EMA decay per update")
    g.add_argument("--model_ema_force_cpu", action="store_true", help="keep the EMA copy on the CPU")

    g = p.add_argument_group("weights")
    g.add_argument("--finetune", default="", type=str,
                   help="start from this checkpoint (ours, or VideoMAE's release layout; grids may differ)")
    g.add_argument("--model_key", default="model|module", type=str,
                   help="key(s) of the state dict inside the checkpoint, '|'-separated, first found wins")
    g.add_argument("--model_prefix", default="", type=str, help="prefix to strip from the checkpoint's keys")

    cli_args.add_optim_args(p, lr=1e-3, min_lr=1e-6, warmup_epochs=5, opt_betas=[0.9, 0.999])
    p.add_argument("--layer_decay", default=0.75, type=float,
                   help="layer-wise LR decay: block i of L gets lr * layer_decay^(L - i)")

    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--aa", default="rand-m7-n4-mstd0.5-inc1", type=str,
                   help="video RandAugment policy (timm syntax), the same op on every frame; 'none' to disable")
    g.add_argument("--train_crop_scale", default=[0.08, 1.0], type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="area range of the training random resized crop, as a share of the frame")
    g.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")
    g.add_argument("--train_interpolation", default="bilinear", type=str,
                   help="RandAugment's interpolation for rotations and shears: bilinear or nearest (bicubic, "
                        "VideoMAE's default, is accepted and runs as bilinear on tensors)")
    g.add_argument("--reprob", default=0.25, type=float, help="random erasing probability")
    g.add_argument("--remode", default="pixel", type=str, help="random erasing mode")
    g.add_argument("--recount", default=1, type=int, help="random erasing count")
    g.add_argument("--mixup", default=0.8, type=float, help="mixup alpha (0 disables)")
    g.add_argument("--cutmix", default=1.0, type=float, help="cutmix alpha (0 disables)")
    g.add_argument("--cutmix_minmax", default=None, type=float, nargs=2, help="cutmix box ratio range")
    g.add_argument("--mixup_prob", default=1.0, type=float, help="probability of mixup or cutmix per batch")
    g.add_argument("--mixup_switch_prob", default=0.5, type=float, help="probability of cutmix when both are on")
    g.add_argument("--mixup_mode", default="batch", choices=["batch", "pair", "elem"], help="how mixup draws lambda")

    g = cli_args.add_data_args(p, "folder with train.csv, val.csv and test.csv ('path label' lines); "
                                  "default: the built-in demo dataset", num_sample=2)
    g.add_argument("--data_set", default="Kinetics-400", choices=DATA_SETS, help="dataset kind")
    g.add_argument("--eval_data_path", default=None, type=str, help="folder with val.csv/test.csv if not --data_path")
    g.add_argument("--split", default=1, type=int, help="official split (UCF101, HMDB51)")
    g.add_argument("--short_side_size", default=None, type=int,
                   help="short side of the resize before validation/test crops (default: the smaller input side)")
    g.add_argument("--flip", default=None, type=str2bool, nargs="?", const=True,
                   help="horizontal flip in training (default: on, except SSV2 and the demo data, whose classes "
                        "have a left and a right)")
    g.add_argument("--sampling", default=None, choices=SAMPLINGS,
                   help="frames of a clip: stride = num_frames frames sampling_rate apart; segment = the video cut "
                        "into num_frames segments, one frame from each, as VideoMAE samples SSV2 (default: segment "
                        "for SSV2, stride otherwise)")
    g.add_argument("--test_num_segment", default=5, type=int, help="temporal clips per video at test")
    g.add_argument("--test_num_crop", default=3, type=int, help="spatial crops per clip at test")

    cli_args.add_run_args(p, "output/finetune")
    cli_args.add_scale_args(p)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval", action="store_true", help="only test: the best (else newest) checkpoint in "
                                                        "--output_dir, or --resume, or --finetune")
    g.add_argument("--disable_eval_during_finetuning", action="store_true", help="no validation between epochs")
    g.add_argument("--probe", default=None, choices=PROBES,
                   help="frozen-feature evaluation of --finetune's encoder instead of fine-tuning: train a linear or "
                        "attentive probe on its tokens (the encoder stays frozen, in eval mode), or k-NN (no training)")
    g.add_argument("--knn_k", default=20, type=int, help="--probe knn: neighbours that vote")
    g.add_argument("--knn_feature", default="time", choices=KNN_FEATURES,
                   help="--probe knn: the feature compared: the tokens averaged over space in each time slice, in time "
                        "order (time), or the mean of all tokens the classifier pools (mean)")
    g.add_argument("--knn_temperature", default=0.07, type=float,
                   help="--probe knn: a neighbour's vote is exp(cosine similarity / temperature)")
    g.add_argument("--dist_eval", default=True, type=str2bool, nargs="?", const=True,
                   help="shard validation and test over processes (without padding: every view counted once)")
    return p


def validate_args(args: argparse.Namespace):
    grid, problems = cli_args.validate_common(
        args, ("batch_size", "epochs", "update_freq", "sampling_rate", "num_sample", "save_ckpt_freq", "print_freq",
               "test_num_segment", "test_num_crop"))
    if args.short_side_size is not None and args.short_side_size < 1:
        problems.append(f"--short_side_size must be at least 1, got {args.short_side_size}")
    if args.finetune and not (Path(args.finetune).is_file() or Path(args.finetune).is_dir()):
        problems.append(f"--finetune {args.finetune} does not exist")
    for flag in ("data_path", "eval_data_path"):
        value = getattr(args, flag)
        if value is not None and not Path(value).exists():
            problems.append(f"--{flag} {value} does not exist")
    if not 0 < args.layer_decay <= 1:
        problems.append(f"--layer_decay must be in (0, 1], got {args.layer_decay}")
    if args.nb_classes is not None and args.nb_classes < 2:
        problems.append(f"--nb_classes must be at least 2, got {args.nb_classes}")
    for flag in ("mixup_prob", "mixup_switch_prob", "reprob", "smoothing"):
        if not 0 <= getattr(args, flag) <= 1:
            problems.append(f"--{flag} must be in [0, 1], got {getattr(args, flag)}")
    for flag in ("mixup", "cutmix", "drop", "attn_drop_rate", "fc_drop_rate"):
        if getattr(args, flag) < 0:
            problems.append(f"--{flag} must be 0 or more, got {getattr(args, flag)}")
    if not 0 < args.model_ema_decay < 1:
        problems.append(f"--model_ema_decay must be in (0, 1), got {args.model_ema_decay}")
    if args.data_set in ("UCF101", "HMDB51") and args.split not in (1, 2, 3):
        problems.append(f"--split must be 1, 2 or 3 for --data_set {args.data_set}, got {args.split}")
    if args.eval and not (args.resume or args.finetune or checkpoint_to_evaluate(args)):
        problems.append(f"--eval has nothing to test: no --resume, no --finetune and no checkpoint in "
                        f"--output_dir {args.output_dir}")
    if args.probe and not args.finetune:
        problems.append(f"--probe {args.probe} evaluates a trained encoder, frozen: give its checkpoint with "
                        f"--finetune")
    if args.knn_k < 1 or args.knn_temperature <= 0:
        problems.append(f"--knn_k must be at least 1 and --knn_temperature positive, got {args.knn_k} and "
                        f"{args.knn_temperature}")
    problems += cli_args.model_problems(args.model, pretraining=False)
    problems += cli_args.finetuning_data_problems(args)
    cli_args.fail_if(problems)
    return grid


def make_loader(dataset, args: argparse.Namespace, train: bool, device: torch.device):
    """The loader, wrapped to report unreadable videos (see data_health.BadVideoTracker)."""
    source = f"the {'training' if train else 'evaluation'} list in {args.eval_data_path or args.data_path}"
    if train:
        return classification_train_loader(dataset, cli_args.loader_config(args), args.num_sample, device,
                                           args.update_freq, source)
    return evaluation_loader(dataset, cli_args.loader_config(args), device, is_dist() and args.dist_eval,
                             source)


def checkpoint_to_evaluate(args: argparse.Namespace) -> str:
    """--resume, else checkpoint-best.pth, else the newest epoch checkpoint ('' when there is none)."""
    if args.resume:
        return str(Path(args.resume) / "checkpoint.pth") if Path(args.resume).is_dir() else args.resume
    best = Path(args.output_dir) / "checkpoint-best.pth"
    if best.is_file():
        return str(best)
    found = epoch_checkpoint_files(args.output_dir, folders=args.enable_deepspeed)
    return str(found[-1][1]) if found else ""


def load_weights(path: str, model: torch.nn.Module, model_ema, args: argparse.Namespace, grid: PatchGrid,
                 ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our checkpoint's model (and EMA) weights into ``model`` (``model_ema``), at this run's patch grid.
    ``ckpt``: the file's contents when already read. Returns the checkpoint."""
    if ckpt is None:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}")
    try:
        if recorded_grid(ckpt) is None:
            ckpt = videomae_checkpoint(ckpt, path, grid, args.model_key)
        check_checkpoint_grid(ckpt, grid, path, f"Evaluating keeps a checkpoint's grid: pass the file's values."
                                                f"{FINETUNE_HINT}")
        load_model_state(model, ckpt, path, args.model)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}{pretraining_model_hint(ckpt)}") from None
    if model_ema is not None and "model_ema" in ckpt:
        model_ema.module.load_state_dict(ckpt["model_ema"])
        apply_pos_reference(model_ema.module, ckpt)
    print(f"Loaded {path} (epoch {ckpt.get('epoch')})")
    return ckpt


def videomae_checkpoint(ckpt: dict[str, Any], path: str, grid: PatchGrid, model_key: str) -> dict[str, Any]:
    """A checkpoint with no recorded grid (VideoMAE's own) as ours: the state dict under ``model_key`` as "model";
    refused when the grid inferred from it (as --finetune infers it) is not this run's."""
    from patches.checkpoints.finetune_weights import inferred_grid
    try:
        theirs, note = inferred_grid(ckpt, model_key)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if theirs is not None and "assumed" not in note and theirs.differences(grid):
        raise CheckpointError(f"{path} was made at another patch grid than this run's ({note}: "
                              f"{'; '.join(theirs.differences(grid))}: the file's value first).{FINETUNE_HINT}")
    print(f"{path}: VideoMAE's layout, patch grid {note or 'unknown'}")
    sd = next((ckpt[k] for k in model_key.split("|") if isinstance(ckpt.get(k), dict)), None)
    return ckpt if sd is None else {**ckpt, "model": sd}


def pretraining_model_hint(ckpt: dict[str, Any]) -> str:
    """The end of a refusal message for a pre-training checkpoint given where a classifier's is expected."""
    if any(str(k).startswith("encoder.") for k in ckpt.get("model") or {}):
        return " It holds a pre-training model (encoder.* weights): start from it with --finetune."
    return ""


def shared_run_id(found: FoundCheckpoint | None) -> str:
    """A name for this training run, kept across its resumes and the same on every rank.

    ``checkpoint-best.pth`` carries it, so the final test never takes a best file an earlier run left behind.
    """
    run_id = [str(found.state["run_id"]) if found is not None and found.state.get("run_id") else uuid.uuid4().hex]
    if is_dist():
        torch.distributed.broadcast_object_list(run_id, src=0)
    return run_id[0]


def load_best_of_run(args: argparse.Namespace, model: torch.nn.Module, run_id: str, grid: PatchGrid) -> str:
    """Load this run's ``checkpoint-best.pth`` into ``model`` for the final test; returns what is tested.

    Without validation, or when the file in ``--output_dir`` is another run's, the final weights are tested.
    """
    path = Path(args.output_dir) / "checkpoint-best.pth"
    if not path.is_file():
        return "final weights"
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    if ckpt.get("run_id") != run_id:
        print(f"{path} is another run's (val acc@1 {ckpt.get('best_acc1')}, epoch {ckpt.get('epoch')}); "
              f"testing this run's final weights")
        return "final weights"
    load_weights(str(path), model, None, args, grid, ckpt)
    print(f"Testing {path} (epoch {ckpt.get('epoch')}, val acc@1 {float(ckpt.get('best_acc1', -1.0)):.2f})")
    return str(path)


def load_finetune(args: argparse.Namespace, model: torch.nn.Module, model_ema) -> None:
    """Start from --finetune (any supported layout, any grid)."""
    from patches.checkpoints.finetune_weights import load_finetune_weights
    try:
        report = load_finetune_weights(model, args.finetune, model_key=args.model_key,
                                       model_prefix=args.model_prefix, verbose=is_main_process())
    except ValueError as e:
        raise SystemExit(f"error: --finetune: {e}")
    if model_ema is not None:
        model_ema.module.load_state_dict(model.state_dict())
        if report.pos_reference is not None:
            model_ema.module.set_pos_reference(report.pos_reference)


def probe_model(args: argparse.Namespace, encoder: torch.nn.Module, nb_classes: int) -> FrozenEncoderProbe:
    """--probe: --finetune's encoder, frozen, with a new linear or attentive probe (k-NN's comes later)."""
    load_finetune(args, encoder, None)
    probe = torch.nn.Identity() if args.probe == "knn" else build_probe(args.probe, encoder, nb_classes)
    return FrozenEncoderProbe(encoder, probe)


def knn_probe(args: argparse.Namespace, trainer: Trainer) -> dict[str, Any]:
    """--probe knn: the training videos' centre views are the bank, the test views vote."""
    records, _ = read_records("train", cli_args.video_lists_config(args))
    bank_set = VideoClsEvalDataset(records, trainer.grid, args.sampling_rate, args.short_side_size,
                                   fname_tmpl=args.fname_tmpl)
    loader = evaluation_loader(bank_set, cli_args.loader_config(args), trainer.device, False,
                               f"the training list in {args.data_path}")
    model = trainer.model_without_ddp
    model.probe = fit_knn(model.encoder, loader, trainer.device, args.nb_classes, args.knn_k, args.knn_temperature,
                          trainer.amp_dtype, args.knn_feature)
    print(f"k-NN bank: {len(model.probe.labels)} training videos, {args.knn_feature} features; k {model.probe.k}, "
          f"temperature {args.knn_temperature}")
    stats = run_test(args, trainer)
    trainer.log({**{f"test_{k}": v for k, v in stats.items()}, "probe": "knn", "knn_feature": args.knn_feature,
                 "encoder": encoder_reference(args.finetune)})
    if trainer.tb is not None:
        trainer.tb.update("test", step=0, acc1=stats["acc1"], acc5=stats["acc5"])
    return {**stats, "checkpoint": args.finetune}


def run_test(args: argparse.Namespace, trainer: Trainer) -> dict[str, Any]:
    """Every test view scored into per-rank result files, merged into per-video accuracy over the videos whose
    views are all readable; the others are counted (``left_out``) and named (``left_out_videos``)."""
    test_set, _ = build_dataset("test", cli_args.classification_data_config(args), trainer.grid)
    loader = make_loader(test_set, args, train=False, device=trainer.device)
    out_file = Path(args.output_dir) / f"test_results_rank{get_rank()}.jsonl"
    with trainer.phase("the final test" if trainer.checkpoints is not None else "the test"):
        final_test(trainer.stoppable(loader), trainer.model_without_ddp, trainer.device, out_file, trainer.amp_dtype,
                   args.print_freq)
    data = loader.end_epoch()
    if is_dist():
        torch.distributed.barrier()
    files = [Path(args.output_dir) / f"test_results_rank{r}.jsonl" for r in range(get_world_size())]
    try:
        stats = {**merge_test_results(files, test_set.views_per_video), **data}
    except ValueError:
        raise SystemExit(f"error: none of the {len(test_set.records)} test videos can be read (listed above); "
                         f"the trained checkpoints in {args.output_dir} are kept") from None
    incomplete = {test_set.records[i].path for i in stats.pop("incomplete")}
    stats["left_out"] = len(test_set.records) - stats["videos"]
    stats["left_out_videos"] = sorted(incomplete | set(data["bad_videos"]))
    if is_main_process():
        left_out = (f"; {stats['left_out']} unreadable videos left out: {', '.join(stats['left_out_videos'][:5])}"
                    f"{' ...' if stats['left_out'] > 5 else ''}" if stats["left_out"] else "")
        print(f"Test ({args.test_num_segment} x {args.test_num_crop} views per video, {stats['videos']} videos"
              f"{left_out}): acc@1 {stats['acc1']:.2f}  acc@5 {stats['acc5']:.2f}")
    return stats


def warn_missing_evaluation_videos(args: argparse.Namespace) -> None:
    """Before any training: name the validation and test videos that do not exist (a cheap check; --check_data
    also decodes them). The evaluations will leave them out."""
    if args.data_path is None or args.check_data:
        return
    lists = cli_args.video_lists_config(args)
    modes = ("test",) if args.eval else ("test",) if args.disable_eval_during_finetuning else ("validation", "test")
    for mode in modes:
        try:
            records = read_records(mode, lists)[0]
        except (OSError, ValueError):
            continue  # reported by the flag checks
        missing = [r for r in records if not os.path.exists(r.path)]
        if missing:
            named = ", ".join(f"{r.path} ({r.where})" for r in missing[:3]) + (" ..." if len(missing) > 3 else "")
            print(f"warning: {len(missing)} of the {len(records)} {mode} videos do not exist: {named}; the {mode} "
                  f"will leave them out (--check_data also checks that every video decodes)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune and test (or with --eval only test). Returns the test's figures (``acc1``, ``acc5``, ``videos``,
    ...) with ``checkpoint``: the file tested, or "final weights"."""
    grid = validate_args(args)
    warn_missing_evaluation_videos(args)
    if args.check_data:  # a report, no run: status 0 when every video reads, else an error line and 1
        try:
            data_health.run_check_data(cli_args.video_lists_config(args), args.num_workers, args.fname_tmpl)
        except data_health.DataCheckFailed as e:
            raise SystemExit(f"error: {e}") from None
        raise SystemExit(0)
    cli_args.use_demo_data_if_no_data_path(args, finetuning=True)
    return launch(lambda device: run(args, grid, device), args.device, args.enable_deepspeed and not args.eval)


def run(args: argparse.Namespace, grid: PatchGrid, device: str | None) -> dict[str, Any]:
    if not args.eval:
        print(cli_args.scale_lr(args, get_world_size()))
    with Trainer(cli_args.trainer_config(args, device), grid, args) as trainer:
        print(f"Patch grid: {grid.describe()}")
        # before data and model, so that a checkpoint of another grid is refused before any heavy work
        found = None if args.eval else choose_checkpoint(args.resume, args.auto_resume, args.output_dir, grid,
                                                         folders=args.enable_deepspeed, other_grid_hint=FINETUNE_HINT)
        build_model = functools.partial(
            create_video_model, args.model, grid=grid, drop_rate=args.drop, attn_drop_rate=args.attn_drop_rate,
            drop_path_rate=args.drop_path, fc_drop_rate=args.fc_drop_rate, init_scale=args.init_scale,
            use_mean_pooling=args.use_mean_pooling, pos_embed=args.pos_embed, use_checkpoint=args.use_checkpoint)
        if not args.probe:  # a probe's checkpoint holds the probe alone
            refuse_misfit_early(trainer, found, build_model)
        train_set, nb_classes = build_dataset("train", cli_args.classification_data_config(args), grid)
        args.nb_classes = nb_classes
        model = build_model(num_classes=0 if args.probe else nb_classes)
        if args.probe:
            model = probe_model(args, model, nb_classes)
        model = trainer.prepare_model(model)
        print(f"Model {args.model}: {trainer.n_parameters / 1e6:.2f} M parameters"
              f"{' trained (the probe)' if args.probe else ''}, {nb_classes} classes")
        if args.probe == "knn":
            return knn_probe(args, trainer)
        if args.eval:
            return evaluate_only(args, trainer)
        if found is None and args.finetune and not args.probe:
            load_finetune(args, model, trainer.ema)
        return train(args, trainer, train_set, found)


def refuse_misfit_early(trainer: Trainer, found: FoundCheckpoint | None, build_model: Any) -> None:
    """A checkpoint of another model size is refused before any data is read: its trunk is checked against the
    model at the head size the file holds (the class count is checked against the data when loading)."""
    head = (found.state.get("model") or {}).get("head.weight") if found is not None else None
    try:
        trainer.refuse_misfit(found, functools.partial(build_model, num_classes=head.shape[0] if head is not None
                                                       and head.ndim == 2 else 2))
    except CheckpointError as e:
        raise SystemExit(f"error: {e}{pretraining_model_hint(found.state)}") from None


def evaluate_only(args: argparse.Namespace, trainer: Trainer) -> dict[str, Any]:
    """--eval: test the chosen checkpoint (see :func:`checkpoint_to_evaluate`), or --finetune's weights."""
    path = checkpoint_to_evaluate(args)
    if args.probe and not path:
        raise SystemExit(f"error: --eval --probe {args.probe} tests a trained probe: none in --output_dir "
                         f"{args.output_dir}, and no --resume")
    if path:
        load_weights(path, trainer.model_without_ddp, trainer.ema, args, trainer.grid)
    elif args.finetune:
        load_finetune(args, trainer.model_without_ddp, trainer.ema)
    stats = run_test(args, trainer)
    trainer.log({f"eval_test_{k}": v for k, v in stats.items()})
    return {**stats, "checkpoint": path or args.finetune}


def train(args: argparse.Namespace, trainer: Trainer, train_set: Any, found: FoundCheckpoint | None
          ) -> dict[str, Any]:
    """Fine-tune with validation after every epoch, then test this run's best weights."""
    train_loader = make_loader(train_set, args, train=True, device=trainer.device)
    val_loader = None
    if not args.disable_eval_during_finetuning:
        val_set, _ = build_dataset("validation", cli_args.classification_data_config(args), trainer.grid)
        val_loader = make_loader(val_set, args, train=False, device=trainer.device)
    clips_per_step = args.batch_size * args.num_sample * get_world_size()
    steps_per_epoch = train_loader.sampler.batches_per_epoch // args.update_freq
    if steps_per_epoch == 0:
        raise SystemExit(f"error: --batch_size {args.batch_size} x --update_freq {args.update_freq} x "
                         f"{get_world_size()} processes is larger than the {len(train_set)} training videos")
    print(f"{len(train_set)} training videos ({train_set.sampling} sampling), {steps_per_epoch} updates per epoch of "
          f"{clips_per_step * args.update_freq} clips; lr {args.lr:.3g}")
    optimizer = build_optimizer(cli_args.optimizer_config(args, None if args.probe else args.layer_decay),
                                trainer.model_without_ddp)
    trainer.setup_training(optimizer, train_loader, micro_batch=args.batch_size * args.num_sample,
                           clips_per_step=clips_per_step)
    # best_acc1 starts below any accuracy, so the first validation always writes checkpoint-best.pth, even at 0%.
    trainer.progress.run = RunRecord(best_acc1=-1.0, nb_classes=args.nb_classes, run_id=shared_run_id(found))
    names = class_names(args.data_path, args.nb_classes)
    if names:  # so that run_inference.py can name the classes without --classes
        trainer.progress.run.class_names = names
    if args.probe:  # the probe's checkpoints hold the probe only, and name the encoder it reads
        trainer.progress.run.probe, trainer.progress.run.encoder = args.probe, encoder_reference(args.finetune)
    if found is not None:
        restore(trainer, found)
        del found
    mixup_fn = video_mixup(args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob, args.mixup_switch_prob,
                           args.mixup_mode, args.smoothing, args.nb_classes)
    loss = Classification(classification_criterion(mixup_fn, args.smoothing), trainer.device, trainer.amp_dtype,
                          mixup_fn)
    trainer.fit(loss, after_epoch=None if val_loader is None else functools.partial(validate, args, trainer,
                                                                                    val_loader))
    tested = load_best_of_run(args, trainer.model_without_ddp, trainer.progress.run.run_id, trainer.grid)
    test = run_test(args, trainer)
    trainer.log({**{f"test_{k}": v for k, v in test.items()}, "checkpoint": tested})
    if trainer.tb is not None:
        trainer.tb.update("test", step=trainer.epoch_step(args.epochs - 1), acc1=test["acc1"], acc5=test["acc5"])
    return {**test, "checkpoint": tested}


def restore(trainer: Trainer, found: FoundCheckpoint) -> None:
    """Resume, with a pointer to --finetune when the file holds a pre-training model."""
    try:
        trainer.restore(found)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}{pretraining_model_hint(found.state)}") from None
    trainer.progress.run.best_acc1 = float(found.state.get("best_acc1", -1.0))


def validate(args: argparse.Namespace, trainer: Trainer, loader: Any, epoch: int, record: dict[str, Any]) -> None:
    """Validation after an epoch: into the epoch's record, and ``checkpoint-best.pth`` when it is the best. The
    figures are over the readable videos only (unreadable ones are left out and named, never replaced)."""
    val = evaluate(trainer.stoppable(loader), trainer.model_without_ddp, trainer.device, trainer.amp_dtype,
                   sharded=args.dist_eval)
    data = loader.end_epoch()
    record.update({f"val_{k}": v for k, v in {**val, **data}.items()})
    if data["bad_video_files"] and is_main_process():
        print(f"Validation figures are over the {val['count']} readable clips; {data['bad_video_files']} unreadable "
              f"videos were left out")
    run = trainer.progress.run
    if val["acc1"] > run.best_acc1:
        run.best_acc1 = val["acc1"]
        trainer.save_weights("checkpoint-best.pth", epoch)
    print(f"Best val acc@1 so far: {run.best_acc1:.2f}")
    if trainer.tb is not None:
        trainer.tb.update("val", step=trainer.epoch_step(epoch), **{k: val[k] for k in ("acc1", "acc5", "loss")})


def cli() -> None:
    """The console script: flags from the command line."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    cli()
