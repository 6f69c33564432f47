"""``--dry_run``: the resolved run as one JSON object, read from the flags and the launcher's environment only.

Under torchrun or Slurm the process count and this process's rank come from the same variables the run reads
(``WORLD_SIZE``/``RANK``, ``SLURM_NTASKS``/``SLURM_PROCID``); no process group is joined, and no data, list or
checkpoint is read (a path that does not exist yet is a warning on stderr).
"""
from __future__ import annotations

import os
import sys
from typing import Any

from patches.config.finetuning import FinetuneRunConfig
from patches.config.pretraining import PretrainRunConfig
from patches.config.run_config import RunConfig
from patches.data.datasets import default_flip, default_sampling


def warn(message: str) -> None:
    """A dry run's warning: on stderr, so that stdout holds the JSON object alone."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def environment_rank() -> int:
    """This process's rank as the launcher's environment gives it (0 outside torchrun and Slurm)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"])
    return int(env.get("SLURM_PROCID", "0"))


def _common(run: RunConfig, script: str) -> dict[str, Any]:
    flags, schedule = run.flags, run.trainer.schedule
    return {
        "script": script, "world_size": run.world_size, "rank": environment_rank(), "model": run.model.name,
        "batch_size": run.batch_size, "update_freq": run.update_freq, "num_sample": run.num_sample,
        "total_batch": run.rates.total_batch, "clips_per_update": run.rates.total_batch * run.num_sample,
        "lr_scale_by": flags["lr_scale_by"], "lr": run.rates.lr, "min_lr": run.rates.min_lr,
        "warmup_lr": run.rates.warmup_lr, "epochs": run.trainer.epochs, "warmup_epochs": schedule.warmup_epochs,
        "warmup_steps": schedule.warmup_steps, "opt": run.optimizer.opt, "opt_betas": run.optimizer.betas,
        "opt_eps": run.optimizer.eps, "weight_decay": schedule.weight_decay,
        "weight_decay_end": schedule.weight_decay_end, "clip_grad": run.trainer.clip_grad,
        "num_frames": flags["num_frames"], "sampling_rate": flags["sampling_rate"], "amp": run.trainer.amp,
        "device": run.device, "deepspeed": run.deepspeed, "use_checkpoint": flags["use_checkpoint"],
        "data_path": flags["data_path"], "data_root": flags["data_root"], "output_dir": run.trainer.output_dir,
        "save_ckpt_freq": run.trainer.save_ckpt_freq, "seed": flags["seed"]}


def pretraining_summary(run: PretrainRunConfig, script: str) -> dict[str, Any]:
    """The JSON object of a pre-training dry run."""
    return {**_common(run, script), "grid": run.grid.to_dict(),
            "grids": [g.to_dict() for g in run.grids] if run.flexible else None,
            "mask_type": run.masking.mask_type, "mask_ratio": run.masking.mask_ratio,
            "decoder_mask_type": run.masking.decoder_mask_type, "decoder_mask_ratio": run.masking.decoder_mask_ratio,
            "decoder_depth": run.model.options["decoder_depth"], "normlize_target": run.normlize_target,
            "flip": run.data.flip, "sampling": "stride"}


def finetuning_summary(run: FinetuneRunConfig, script: str) -> dict[str, Any]:
    """The JSON object of a fine-tuning (or ``--eval``) dry run."""
    data, flags, mixup = run.data, run.flags, run.mixup
    data_set = data.lists.data_set
    return {**_common(run, script), "grid": run.grid.to_dict(), "data_set": data_set,
            "nb_classes": run.nb_classes, "eval_only": run.evaluation.eval_only,
            "layer_decay": run.layer_decay, "drop_path": flags["drop_path"], "fc_drop_rate": flags["fc_drop_rate"],
            "use_mean_pooling": flags["use_mean_pooling"], "fc_norm_init": run.weights.fc_norm_init,
            "finetune": run.weights.path or None,
            "sampling": data.sampling or default_sampling(data_set),
            "augmentation": {
                "aa": data.aa, "train_interpolation": data.train_interpolation,
                "train_crop_scale": list(data.train_crop_scale) if data.train_crop_scale else None,
                "flip": default_flip(data_set) if data.flip is None else data.flip, "reprob": data.reprob,
                "remode": data.remode, "recount": data.recount, "mixup": mixup.mixup, "cutmix": mixup.cutmix,
                "cutmix_minmax": mixup.cutmix_minmax, "mixup_prob": mixup.prob,
                "mixup_switch_prob": mixup.switch_prob, "mixup_mode": mixup.mode, "smoothing": mixup.smoothing},
            "short_side_size": data.short_side_size, "test_num_segment": run.evaluation.test_num_segment,
            "test_num_crop": run.evaluation.test_num_crop, "dist_eval": run.evaluation.dist_eval,
            "validate": run.evaluation.validate}
