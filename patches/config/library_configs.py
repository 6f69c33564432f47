"""The library's small configs from a run's resolved flags: lists, datasets, loader, optimizer, driver.

Each builder reads a flags namespace after resolution (see :mod:`patches.config.run_config`): the scaled learning
rates, the concrete precision, the grid flags, the class count and the demo data are already in it.
"""
from __future__ import annotations

import argparse

from patches.data.datasets import ClassificationDataConfig, PretrainingDataConfig
from patches.data.lists import VideoListsConfig
from patches.data.loaders import LoaderConfig
from patches.train.optim import OptimizerConfig
from patches.train.trainer import Schedule, TrainerConfig


def video_lists_config(args: argparse.Namespace) -> VideoListsConfig:
    """Where the fine-tuning flags say the videos are listed."""
    return VideoListsConfig(data_set=args.data_set, data_path=args.data_path, eval_data_path=args.eval_data_path,
                            data_root=args.data_root, split=args.split, nb_classes=args.nb_classes)


def classification_data_config(args: argparse.Namespace) -> ClassificationDataConfig:
    """The fine-tuning flags' datasets."""
    return ClassificationDataConfig(
        lists=video_lists_config(args), sampling_rate=args.sampling_rate, num_sample=args.num_sample, aa=args.aa,
        train_crop_scale=_pair(args.train_crop_scale), flip=args.flip, train_interpolation=args.train_interpolation,
        reprob=args.reprob, remode=args.remode, recount=args.recount, short_side_size=args.short_side_size,
        test_num_segment=args.test_num_segment, test_num_crop=args.test_num_crop, fname_tmpl=args.fname_tmpl,
        sampling=args.sampling)


def _pair(values: list[float] | None) -> tuple[float, float] | None:
    return None if values is None else (values[0], values[1])


def pretraining_data_config(args: argparse.Namespace) -> PretrainingDataConfig:
    """The pre-training flags' dataset."""
    return PretrainingDataConfig(data_path=args.data_path, sampling_rate=args.sampling_rate, data_root=args.data_root,
                                 num_sample=args.num_sample, flip=args.flip, fname_tmpl=args.fname_tmpl,
                                 decoder=getattr(args, "decoder", "pyav"))


def loader_config(args: argparse.Namespace) -> LoaderConfig:
    """The DataLoader settings of either script's flags."""
    return LoaderConfig(batch_size=args.batch_size, num_workers=args.num_workers, pin_memory=args.pin_mem,
                        seed=args.seed, max_bad_fraction=args.max_bad_fraction)


def optimizer_config(args: argparse.Namespace, layer_decay: float | None = None) -> OptimizerConfig:
    """The optimizer's settings from the resolved flags (``--lr`` scaled)."""
    return OptimizerConfig(opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, eps=args.opt_eps,
                           betas=None if args.opt_betas is None else tuple(args.opt_betas), momentum=args.momentum,
                           layer_decay=layer_decay)


def trainer_config(args: argparse.Namespace, device: str | None) -> TrainerConfig:
    """The driver's settings from the resolved flags (LRs scaled); ``device``: what ``launch`` chose."""
    schedule = Schedule(lr=args.lr, min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
                        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                        weight_decay_end=args.weight_decay_end)
    return TrainerConfig(
        output_dir=args.output_dir, model_name=args.model, device=device, amp=args.amp, epochs=args.epochs,
        schedule=schedule,
        log_dir=args.log_dir, seed=args.seed, deterministic=args.deterministic, start_epoch=args.start_epoch,
        update_freq=args.update_freq, clip_grad=args.clip_grad, print_freq=args.print_freq,
        save_ckpt_freq=args.save_ckpt_freq, save_ckpt_every_steps=args.save_ckpt_every_steps,
        keep_ckpts=args.keep_ckpts, save_safetensors=args.save_safetensors, attn_impl=args.attn_impl,
        compile=args.compile, model_ema_decay=args.model_ema_decay if getattr(args, "model_ema", False) else None,
        model_ema_force_cpu=getattr(args, "model_ema_force_cpu", False),
        deepspeed_zero_stage=args.zero_stage if args.enable_deepspeed else None)
