"""Fine-tune and test a video action classifier, from any checkpoint, at any patch grid.

Without --data_path it trains on the built-in demo dataset (generated on first use). The run's body is
:func:`patches.train.finetuning.run_finetuning`; the test and the probes are in :mod:`patches.eval`.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)

from patches.checkpoints.finetune_weights import FC_NORM_INITS
from patches.cli.exits import exits_on_error
from patches.config import flags as cli_args
from patches.config.dry_run import finetuning_summary
from patches.config.finetuning import resolve_finetuning
from patches.config.flag_types import str2bool
from patches.config.videomae_flags import StoreOrRefuse, add_videomae_args, refuse_image_folder
from patches.data import health as data_health
from patches.data.clip_sampling import SAMPLINGS
from patches.data.lists import DATA_SETS
from patches.eval.classifier_test import warn_missing_evaluation_videos
from patches.models.probes import KNN_FEATURES, PROBES
from patches.train import finetuning
from patches.train.trainer import launch

SCRIPT = "run_class_finetuning.py"  # the entry script at the repository root, as commands print it


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
    g.add_argument("--fc_norm_init", default="fresh", choices=FC_NORM_INITS,
                   help="a mean-pooling classifier's fc_norm when --finetune has none: fresh (ones and zeros, as "
                        "VideoMAE, which ignores the encoder's final norm) or encoder_norm (a copy of the "
                        "pre-trained encoder's final norm)")

    cli_args.add_optim_args(p, lr=1e-3, min_lr=1e-6, warmup_epochs=5, opt_betas=[0.9, 0.999])
    p.add_argument("--layer_decay", default=0.75, type=float,
                   help="layer-wise LR decay: block i of L gets lr * layer_decay^(L - i)")

    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--aa", default="rand-m7-n4-mstd0.5-inc1", type=str,
                   help="video RandAugment policy (timm syntax), the same op on every frame; 'none' to disable")
    g.add_argument("--train_crop_scale", default=[0.08, 1.0], type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="area range of the training random resized crop, as a share of the frame")
    g.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")
    g.add_argument("--train_interpolation", default="bicubic", type=str,
                   help="RandAugment's interpolation for rotations, shears and translations: bicubic (VideoMAE's; "
                        "frame by frame through PIL), bilinear (one tensor call, cheaper), nearest, or random "
                        "(bilinear or bicubic per op, as VideoMAE's 'random')")
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
    g.add_argument("--data_set", default="Kinetics-400", choices=[*DATA_SETS, "image_folder"], help="dataset kind",
                   action=StoreOrRefuse, refusal=refuse_image_folder)
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
    add_videomae_args(p, finetuning=True)
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
                   help="shard validation and test over processes (without padding: every view counted once); "
                        "on by default, where VideoMAE's default is off (and its test then fails), as every "
                        "VideoMAE script passes --dist_eval; with --dist_eval false every process validates and "
                        "tests on all the videos")
    return p


@exits_on_error
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune and test (or with --eval only test; with --dry_run print and return the resolved run's JSON
    object). Returns the test's figures (``acc1``, ``acc5``, ``videos``,
    ...) with ``checkpoint``: the file tested, or "final weights"."""
    run = resolve_finetuning(args)
    if args.dry_run:
        summary = finetuning_summary(run, SCRIPT)
        print(json.dumps(summary, indent=1))
        return summary
    warn_missing_evaluation_videos(run)
    if run.check_data:
        data_health.run_check_data(run.data.lists, run.num_workers, run.data.fname_tmpl)
        raise SystemExit(0)  # a report, no run: an unreadable video ends in DataCheckFailed (status 1)
    return launch(lambda device: finetuning.run_finetuning(run, device), run.device,
                  run.deepspeed and not run.evaluation.eval_only)


def cli() -> None:
    """The console script: flags from the command line."""
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    cli()
