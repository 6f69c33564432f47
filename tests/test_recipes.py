"""Fidelity to VideoMAE: each recipe of scripts/recipes.py, given to PATCHES's own parsers, yields the numbers
VideoMAE's code computes from the same flags (LRs, total batch, steps, schedule), and clips are sampled as
VideoMAE samples them. The VideoMAE side is written here the way MCG-NJU/VideoMAE's code computes it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

from patches.config import library_configs as cli_args
from patches.config import recipes
from patches.config.lr_scaling import scaled_rates, total_batch_size
from patches.config.run_config import scaled_flags
from patches.data.clip_sampling import (eval_view_fraction, sample_clip_indices, segment_eval_indices,
                                        segment_train_indices)
from patches.data.datasets import VideoClsEvalDataset
from patches.data.samplers import ResumableSampler
from patches.grid import make_grid
from patches.train.optim import cosine_scheduler

# VideoMAE's parser defaults for the flags its scripts leave out (run_mae_pretraining.py, run_class_finetuning.py)
VIDEOMAE_DEFAULTS = {
    "pretrain": {"--lr": 1.5e-4, "--min_lr": 1e-5, "--warmup_lr": 1e-6, "--warmup_epochs": 40, "--update_freq": 1},
    "finetune": {"--lr": 1e-3, "--min_lr": 1e-6, "--warmup_lr": 1e-6, "--warmup_epochs": 5, "--update_freq": 1},
}


def videomae_value(flags: list[str], stage: str, name: str) -> float:
    return float(flags[flags.index(name) + 1]) if name in flags else VIDEOMAE_DEFAULTS[stage][name]


def videomae_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                              start_warmup_value=0, warmup_steps=-1):
    """VideoMAE's cosine_scheduler."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_steps > 0:
        warmup_iters = warmup_steps
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = np.array(
        [final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / (len(iters)))) for i in iters])
    return np.concatenate((warmup_schedule, schedule))


def test_every_recipe_gives_videomae_lr_batch_steps_and_schedule() -> None:
    for name, recipe in recipes.RECIPES.items():
        for stage in ("pretrain", "finetune"):
            flags, gpus = recipe.flags(stage), recipe.gpus(stage)
            # VideoMAE: run_mae_pretraining.py counts batch x processes, run_class_finetuning.py also update_freq
            batch = int(flags[flags.index("--batch_size") + 1])
            total = batch * gpus * (int(videomae_value(flags, stage, "--update_freq")) if stage == "finetune" else 1)
            lr, min_lr, warmup_lr = (videomae_value(flags, stage, f) * total / 256
                                     for f in ("--lr", "--min_lr", "--warmup_lr"))
            steps = recipes.TRAIN_VIDEOS[recipe.dataset] // total

            args = recipes.parsed_args(name, stage)  # the flags verbatim, through PATCHES's own parser
            rates = scaled_rates(args, gpus)
            printed = rates.report
            assert f"LR = {lr:.8f}" in printed and f"Batch size = {total} " in printed, (name, stage, printed)
            assert (rates.lr, rates.min_lr, rates.warmup_lr) == pytest.approx((lr, min_lr, warmup_lr), rel=1e-12)
            assert total_batch_size(args, gpus) == rates.total_batch == total
            # the loader's sampler, on one of the processes, makes the same number of updates per epoch
            sampler = ResumableSampler(recipes.TRAIN_VIDEOS[recipe.dataset], args.batch_size, gpus, 0,
                                       batches_multiple=args.update_freq)
            assert sampler.batches_per_epoch // args.update_freq == steps

            epochs = int(flags[flags.index("--epochs") + 1])
            warmup_epochs = int(videomae_value(flags, stage, "--warmup_epochs"))
            theirs = videomae_cosine_scheduler(lr, min_lr, epochs, steps, warmup_epochs)
            s = cli_args.trainer_config(scaled_flags(args, rates), "cpu").schedule
            ours = cosine_scheduler(s.lr, s.min_lr, epochs, steps, s.warmup_epochs, s.warmup_lr, s.warmup_steps)
            assert len(ours) == len(theirs) == epochs * steps
            warmup = warmup_epochs * steps
            at = [0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, len(ours) // 2, len(ours) - 1]
            # The one departure: the warmup starts at --warmup_lr (VideoMAE's code starts at 0, ignoring it).
            start = warmup_lr * (1 - np.arange(warmup) / (warmup - 1))
            expected = theirs + np.concatenate([start, np.zeros(len(theirs) - warmup)])
            np.testing.assert_allclose(ours[at], expected[at], rtol=1e-9, atol=1e-15, err_msg=f"{name} {stage}")
            np.testing.assert_array_equal(ours[warmup:], theirs[warmup:])


def test_launchers_keep_videomae_total_batch_and_lr_on_fewer_processes() -> None:
    for name, recipe in recipes.RECIPES.items():
        for stage in ("pretrain", "finetune"):
            reference = recipes.effective_values(name, stage)
            for world in (8, 1):
                flags = recipes.launcher_flags(name, stage, world, grid="288/16")
                ours = recipes.effective_values(name, stage, world, flags)
                for key in ("total_batch", "lr", "min_lr", "warmup_lr", "steps_per_epoch", "clips_per_epoch"):
                    assert ours[key] == pytest.approx(reference[key], rel=1e-12), (name, stage, world, key)
                args = recipes.parsed_args(name, stage, flags)
                assert (args.input_size, args.patch_size) == ([288], 16)
                if stage == "finetune":
                    assert args.short_side_size == 288
    with pytest.raises(ValueError, match="total batch 2048 is not a multiple of 3 processes"):
        recipes.launcher_flags("k400_base_800", "pretrain", 3)
    assert "--enable_deepspeed" not in recipes.launcher_flags("k400_base_800", "finetune", 8)


def test_recipe_table_rows() -> None:
    rows = recipes.table(["k400_base_800"], "224/16", tflops=100.0, count_flops=False)
    pre, fine = rows
    assert (pre["total_batch"], pre["lr"], pre["epochs"], pre["clips_per_epoch"]) == (2048, pytest.approx(1.2e-3),
                                                                                      801, 117 * 2048)
    assert (fine["total_batch"], fine["lr"], fine["top1"]) == (512, pytest.approx(2e-3), 80.0)
    assert "| k400_base_800 | finetune | 64 x 8 | 512 | 512 | 0.002 |" in recipes.markdown(rows)


def test_gpu_hours_use_the_slower_of_the_step_and_the_loader_with_a_gpus_cores() -> None:
    flops, clips = 200e9, 1e6  # ViT-B pre-training at 196 patches/frame is about 200 GFLOP a clip
    step = recipes.gpu_hours(flops, clips, tflops=100.0)  # 500 clips/s
    assert step["bound"] == "step" and step["gpu_hours"] == pytest.approx(clips / 500 / 3600)
    fed = recipes.gpu_hours(flops, clips, tflops=100.0, loader_clips_per_s=12 * 6.0)  # 12 cores x 6 clips/s
    assert fed["bound"] == "loader" and fed["gpu_hours"] == pytest.approx(clips / 72 / 3600)
    assert fed["gpu_hours_step"] == pytest.approx(step["gpu_hours"])
    assert recipes.gpu_hours(flops, clips, 100.0, loader_clips_per_s=1000.0)["bound"] == "step"
    row = {"recipe": "r", "stage": "pretrain", "gpus": 8, "batch_per_gpu": 32, "total_batch": 256, "num_sample": 1,
           "lr": 1e-3, "min_lr": 1e-5, "warmup_lr": 1e-6, "epochs": 1, "steps_per_epoch": 1, "clips_per_epoch": 256,
           "gflop_per_clip": 200.0, "top1": None, **fed}
    assert f"| 200 | {fed['gpu_hours']:,.0f} (loader; step: {fed['gpu_hours_step']:,.0f}) |" in recipes.markdown([row])


def videomae_ssv2_test_indices(length: int, num_segment: int, test_num_segment: int, chunk_nb: int) -> list[int]:
    """ssv2.py SSVideoClsDataset, mode 'test': loadvideo_decord's indices, then buffer[chunk_nb::2]."""
    tick = length / float(num_segment)
    all_index = list(np.array([int(tick / 2.0 + tick * x) for x in range(num_segment)] +
                              [int(tick * x) for x in range(num_segment)]))
    while len(all_index) < (num_segment * test_num_segment):
        all_index.append(all_index[-1])
    all_index = list(np.sort(np.array(all_index)))
    return all_index[chunk_nb::2]


def videomae_tsn_pretrain_indices(length: int, clip_len: int, new_step: int, rng: np.random.Generator) -> list[int]:
    """kinetics.py VideoMAE (pre-training): _sample_train_indices + _video_TSN_decord_batch_loader, one segment,
    no temporal jitter; np.random replaced by ``rng``."""
    skip_length = clip_len * new_step
    average_duration = (length - skip_length + 1) // 1
    offsets = np.multiply(list(range(1)), average_duration) + rng.integers(average_duration, size=1)
    skip_offsets = np.zeros(skip_length // new_step, dtype=int)
    frame_ids = []
    for seg_ind in offsets + 1:
        offset = int(seg_ind)
        for i, _ in enumerate(range(0, skip_length, new_step)):
            if offset + skip_offsets[i] <= length:
                frame_ids.append(offset + skip_offsets[i] - 1)
            else:
                frame_ids.append(offset - 1)
            if offset + new_step < length:
                offset += new_step
    return frame_ids


def test_sampling_indices_match_videomae() -> None:
    for length in (47, 100, 131):
        # SSv2 training: 16 segments of len // 16 frames, one random frame in each (ssv2.py)
        ours = segment_train_indices(length, 16, np.random.default_rng(length))
        average = length // 16
        theirs = np.multiply(list(range(16)), average) + np.random.default_rng(length).integers(average, size=16)
        np.testing.assert_array_equal(ours, theirs)
        # SSv2 test: 2 temporal views, the segment starts and the segment centres
        view = VideoClsEvalDataset([], make_grid(16, 2, 224, 16), 2, num_segments=2, sampling="segment")
        for chunk in (0, 1):
            np.testing.assert_array_equal(view.clip_indices(range(length), chunk),
                                          videomae_ssv2_test_indices(length, 16, 2, chunk))
        # K400 pre-training: 16 frames 4 apart from a uniformly drawn start (kinetics.py VideoMAE)
        if length >= 64:
            for seed in range(5):
                np.testing.assert_array_equal(
                    sample_clip_indices(length, 16, 4, np.random.default_rng(seed)),
                    videomae_tsn_pretrain_indices(length, 16, 4, np.random.default_rng(seed)))
    # a single segment-sampled view (validation) sits at the segment centres
    np.testing.assert_array_equal(segment_eval_indices(32, 16, eval_view_fraction(0, 1)), np.arange(16) * 2 + 1)
    # videos shorter than the segment count repeat frames spread over the video
    np.testing.assert_array_equal(segment_train_indices(8, 16, np.random.default_rng(0)), np.arange(16) // 2)
