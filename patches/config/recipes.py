"""VideoMAE's published recipes, line by line, as flags for PATCHES's scripts, and their table.

Each recipe holds the flags of one of MCG-NJU/VideoMAE's scripts/ (pre-training and fine-tuning), verbatim
except for paths, at VideoMAE's process count, with the top-1 its MODEL_ZOO.md reports. The launchers
(scripts/launch/common.sh) take their flags from here; on fewer processes they keep VideoMAE's total batch
by gradient accumulation (--update_freq), and GRID=SIZE/PATCH changes only --input_size and --patch_size.

    python scripts/recipes.py                                   # table (markdown + --json): effective values, top-1, cost
    python scripts/recipes.py --flags k400_base_800 pretrain --world 8 --grid 288/16     # flags for 8 processes
    python scripts/recipes.py --checkpoint_epoch k400_base_800  # the pre-training epoch VideoMAE fine-tunes from
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.cli.exits import exits_on_error
from patches.errors import UsageError

# Training videos in each data set's official training list (split 1 for UCF101 and HMDB51): clips per
# epoch in the table. Runs count the lines of their own list.
TRAIN_VIDEOS = {"k400": 240_436, "ssv2": 168_913, "ucf101": 9_537, "hmdb51": 3_570}

# VideoMAE's flags that PATCHES's launchers leave to their own settings: paths, and DeepSpeed (the DEEPSPEED
# variable), which changes no number of the recipe.
LAUNCHER_FLAGS = ("--enable_deepspeed",)

K400_PRE = ("--mask_type tube --mask_ratio 0.9 --decoder_depth 4 --num_frames 16 --sampling_rate 4 --opt adamw "
            "--opt_betas 0.9 0.95 --warmup_epochs 40 --save_ckpt_freq 20")
SSV2_PRE = K400_PRE.replace("--sampling_rate 4", "--sampling_rate 2")
K400_FT = ("--data_set Kinetics-400 --nb_classes 400 --input_size 224 --short_side_size 224 --save_ckpt_freq 10 "
           "--num_frames 16 --sampling_rate 4 --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --dist_eval "
           "--test_num_segment 5 --test_num_crop 3 --enable_deepspeed")
SSV2_FT = ("--data_set SSV2 --nb_classes 174 --input_size 224 --short_side_size 224 --save_ckpt_freq 10 "
           "--num_frames 16 --opt adamw --opt_betas 0.9 0.999 --weight_decay 0.05 --dist_eval "
           "--test_num_segment 2 --test_num_crop 3 --enable_deepspeed")
UCF_PRE = ("--mask_type tube --mask_ratio 0.75 --model pretrain_videomae_base_patch16_224 --decoder_depth 4 --lr 3e-4 "
           "--batch_size 24 --num_frames 16 --sampling_rate 4 --opt adamw --opt_betas 0.9 0.95 --warmup_epochs 40")
UCF_FT = ("--model vit_base_patch16_224 --batch_size 16 --input_size 224 --short_side_size 224 --num_frames 16 "
          "--sampling_rate 4 --num_sample 2 --opt adamw --lr 5e-4 --warmup_lr 1e-8 --min_lr 1e-5 --layer_decay 0.7 "
          "--opt_betas 0.9 0.999 --weight_decay 0.05 --epochs 100 --test_num_segment 5 --test_num_crop 3 "
          "--fc_drop_rate 0.5 --drop_path 0.2 --use_checkpoint --dist_eval --enable_deepspeed")


@dataclass(frozen=True)
class Recipe:
    """One line of VideoMAE's table: its two scripts' flags (paths left out) and process counts."""

    dataset: str
    pretrain_gpus: int
    pretrain: str
    finetune_gpus: int
    finetune: str
    top1: float
    checkpoint_epoch: int  # the pre-training checkpoint VideoMAE's fine-tuning script reads
    source: str  # VideoMAE's script folder, or where the values come from
    note: str = ""

    def flags(self, stage: str) -> list[str]:
        return (self.pretrain if stage == "pretrain" else self.finetune).split()

    def gpus(self, stage: str) -> int:
        return self.pretrain_gpus if stage == "pretrain" else self.finetune_gpus


def _pre(model: str, batch: int, epochs: int, base: str = K400_PRE) -> str:
    return f"{base} --model pretrain_videomae_{model}_patch16_224 --batch_size {batch} --epochs {epochs}"


RECIPES: dict[str, Recipe] = {
    "k400_small_1600": Recipe(
        "k400", 32, _pre("small", 32, 1601), 32,
        f"--model vit_small_patch16_224 {K400_FT} --batch_size 12 --num_sample 2 --lr 5e-4 --epochs 150",
        79.0, 1599, "scripts/kinetics/videomae_vit_small_patch16_224_tubemasking_ratio_0.9_epoch_1600",
        "VideoMAE's finetune.sh sets OUTPUT_DIR twice and never DATA_PATH: fill --data_path in"),
    "k400_base_800": Recipe(
        "k400", 64, _pre("base", 32, 801), 64,
        f"--model vit_base_patch16_224 {K400_FT} --batch_size 8 --num_sample 1 --lr 1e-3 --epochs 100",
        80.0, 799, "scripts/kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800",
        "fine-tuned without repeated augmentation (MODEL_ZOO: 81.0 with it, script not published)"),
    "k400_base_1600": Recipe(
        "k400", 64, _pre("base", 32, 1601), 64,
        f"--model vit_base_patch16_224 {K400_FT} --batch_size 6 --num_sample 2 --lr 5e-4 --epochs 75",
        81.5, 1599, "scripts/kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_1600"),
    "k400_large_1600": Recipe(
        "k400", 64, _pre("large", 8, 1601).replace("--decoder_depth 4", "--decoder_depth 12"), 64,
        f"--model vit_large_patch16_224 {K400_FT} --batch_size 2 --num_sample 2 --lr 2e-3 --epochs 35",
        85.2, 1599, "scripts/kinetics/videomae_vit_large_patch16_224_tubemasking_ratio_0.9_epoch_1600"),
    "k400_huge_1600": Recipe(
        "k400", 64, _pre("huge", 16, 1601).replace("--decoder_depth 4", "--decoder_depth 12") + " --use_checkpoint",
        64, f"--model vit_huge_patch16_224 {K400_FT} --batch_size 8 --num_sample 2 --lr 1e-3 --warmup_lr 1e-8 "
            f"--min_lr 1e-5 --layer_decay 0.75 --epochs 50 --drop_path 0.2 --fc_drop_rate 0.5 --use_checkpoint",
        86.6, 1599, "scripts/kinetics/videomae_vit_huge_patch16_224_tubemasking_ratio_0.9_epoch_1600",
        "VideoMAE's finetune.sh sets OUTPUT_DIR twice and never DATA_PATH (as ViT-S's): fill --data_path in"),
    "ssv2_small_2400": Recipe(
        "ssv2", 64, _pre("small", 32, 2401, SSV2_PRE), 32,
        f"--model vit_small_patch16_224 {SSV2_FT} --batch_size 12 --num_sample 2 --lr 1e-3 --layer_decay 0.7 "
        f"--epochs 40", 66.8, 2399, "scripts/ssv2/videomae_vit_small_patch16_224_tubemasking_ratio_0.9_epoch_2400",
        "pre-training at 64 GPUs as its pretrain.sh launches them (--nnodes=8), though its comment says 32: total "
        "batch 2048, not 1024"),
    "ssv2_base_800": Recipe(
        "ssv2", 64, _pre("base", 32, 801, SSV2_PRE), 64,
        f"--model vit_base_patch16_224 {SSV2_FT} --batch_size 8 --num_sample 1 --lr 5e-4 --epochs 50",
        69.6, 799, "scripts/ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800",
        "fine-tuned without repeated augmentation"),
    "ssv2_base_2400": Recipe(
        "ssv2", 64, _pre("base", 32, 2401, SSV2_PRE), 64,
        f"--model vit_base_patch16_224 {SSV2_FT} --batch_size 6 --num_sample 2 --lr 5e-4 --epochs 30",
        70.8, 2399, "scripts/ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_2400"),
    "ucf101_base_3200": Recipe(
        "ucf101", 8, f"{UCF_PRE} --epochs 3201 --save_ckpt_freq 100", 8,
        f"{UCF_FT} --data_set UCF101 --nb_classes 101 --save_ckpt_freq 50",
        91.3, 3199, "scripts/ucf101/videomae_vit_base_patch16_224_tubemasking_ratio_0.75_epoch_3200"),
    "hmdb51_base_4800": Recipe(
        "hmdb51", 8, f"{UCF_PRE} --epochs 4801 --save_ckpt_freq 100", 8,
        f"{UCF_FT.replace('--epochs 100', '--epochs 50')} --data_set HMDB51 --nb_classes 51 --save_ckpt_freq 50",
        62.6, 4799, "README.md (no script published)",
        "VideoMAE published no HMDB51 script: UCF101's flags with the paper's 4800 + 50 epochs, unverified"),
}
DEFAULT_RECIPE = {"k400": "k400_base_800", "ssv2": "ssv2_base_800", "ucf101": "ucf101_base_3200",
                  "hmdb51": "hmdb51_base_4800"}


def _flag_value(flags: list[str], name: str, default: str) -> str:
    return flags[flags.index(name) + 1] if name in flags else default


def parse_grid(grid: str) -> tuple[int, int]:
    """``SIZE/PATCH`` (e.g. 288/16), or 196 / 324 patches per frame (224/16, 288/16)."""
    from patches.grid import parse_grid_spec
    return parse_grid_spec({"196": "224/16", "324": "288/16"}.get(grid, grid))


def launcher_flags(name: str, stage: str, world: int, grid: str = "224/16", batch_size: int | None = None,
                   update_freq: int | None = None) -> list[str]:
    """The recipe's flags for ``world`` processes: VideoMAE's total batch kept with ``--update_freq``, the grid
    set by ``--input_size``/``--patch_size`` (and ``--short_side_size``, which VideoMAE sets to the input size),
    the launchers' own flags left out. ``batch_size``: per process (default: VideoMAE's, or what keeps the total
    batch with ``update_freq``); ``update_freq`` alone: the batch size is recomputed; both: taken as given, the
    total batch they make said on stderr when it is not the recipe's. Several grids (``"224/16 288/16"``,
    pre-training only) give flexible pre-training: ``--grids`` and ``--pos_embed 3d``."""
    recipe = RECIPES[name]
    flags = [f for f in recipe.flags(stage) if f not in LAUNCHER_FLAGS]
    per_gpu = int(_flag_value(flags, "--batch_size", "64"))
    total = per_gpu * recipe.gpus(stage)
    if update_freq is not None and batch_size is not None:
        if batch_size * update_freq * world != total:
            print(f"warning: {name} {stage}: --batch_size {batch_size} x --update_freq {update_freq} x {world} "
                  f"processes = total batch {batch_size * update_freq * world}, not VideoMAE's {total}; the LRs "
                  f"scale to it", file=sys.stderr)
    elif update_freq is not None:
        if total % (update_freq * world):
            raise ValueError(f"{name} {stage}: VideoMAE's total batch {total} is not a multiple of --update_freq "
                             f"{update_freq} x {world} processes; give --batch_size too, or an --update_freq that "
                             f"divides {total // world}")
        batch_size = total // (update_freq * world)
    else:
        batch_size = batch_size or (per_gpu if total % (per_gpu * world) == 0 else None)
        if batch_size is None or total % (batch_size * world):
            raise ValueError(f"{name} {stage}: VideoMAE's total batch {total} is not a multiple of {world} "
                             f"processes x batch {batch_size or per_gpu}; set BATCH_SIZE (or --batch_size) to a "
                             f"divisor of {total // world}, or give --update_freq too")
        update_freq = total // (batch_size * world)
    flags = _set(_set(flags, "--batch_size", str(batch_size)), "--update_freq", str(update_freq))
    specs = grid.split()
    if len(specs) > 1:  # flexible pre-training (the patch sweep): --grids replaces --input_size/--patch_size
        if stage != "pretrain":
            raise ValueError(f"{name} {stage}: several grids ({grid}) are for pre-training only")
        return [*flags, "--grids", *("/".join(map(str, parse_grid(s))) for s in specs), "--pos_embed", "3d"]
    size, patch = parse_grid(grid)
    flags = _set(flags, "--input_size", str(size))
    if "--short_side_size" in flags:  # VideoMAE tests on crops of the whole short side
        flags = _set(flags, "--short_side_size", str(size))
    return _set(flags, "--patch_size", str(patch))


REPEATED_SAMPLING_NOTE = ("departs from VideoMAE's published line: --num_sample {k} augmentations of each decoded "
                          "clip, --batch_size / {k} videos per step and the LR scaled by clips (the same clips and LR per "
                          "update), for loader-bound nodes; an epoch makes {k}x the updates, so --epochs and "
                          "--warmup_epochs / {k} give the recipe's updates")


def repeated_sampling_flags(flags: list[str], num_sample: int = 4) -> list[str]:
    """The loader-bound variant of pre-training ``flags``: ``--num_sample num_sample`` augmentations of each decoded
    clip and ``--batch_size`` divided by ``num_sample``, so each update holds the same clips (see
    :data:`REPEATED_SAMPLING_NOTE`; an epoch then makes ``num_sample`` times the updates). Raises ValueError when
    ``num_sample`` does not divide the batch."""
    batch = int(_flag_value(flags, "--batch_size", "64"))
    if num_sample < 1 or batch % num_sample:
        raise ValueError(f"--repeated_sampling {num_sample} must divide the recipe's --batch_size {batch}")
    flags = _set(_set(flags, "--batch_size", str(batch // num_sample)), "--num_sample", str(num_sample))
    return _set(flags, "--lr_scale_by", "clips")


def repeated_sampling_rows(names: list[str], rows: list[dict], num_sample: int) -> list[dict]:
    """Table rows of each recipe's pre-training with :func:`repeated_sampling_flags`, costed like ``rows``'."""
    out = []
    for name in names:
        base = next(r for r in rows if r["recipe"] == name and r["stage"] == "pretrain")
        row = effective_values(name, "pretrain", flags=repeated_sampling_flags(RECIPES[name].flags("pretrain"),
                                                                              num_sample))
        row.update(top1=base["top1"], grid=base["grid"], note=REPEATED_SAMPLING_NOTE.format(k=num_sample),
                   recipe=f"{name} (num_sample {num_sample})")
        if "gflop_per_clip" in base:
            loader = base["loader_clips_per_s"] and base["loader_clips_per_s"] * repeated_sampling_gain(num_sample)
            tflops = base["step_clips_per_s"] * base["gflop_per_clip"] / 1e3
            row.update(gpu_hours(base["gflop_per_clip"] * 1e9, row["clips_per_epoch"] * row["epochs"], tflops, loader),
                       gflop_per_clip=base["gflop_per_clip"], cores_per_gpu=base["cores_per_gpu"],
                       loader_clips_per_s=loader)
        out.append(row)
    return out


# A CUDA run's worker time per clip after decoding (slicing the YUV crop, one copy into the batch) over its
# decoding time: about 1.5 ms against 40 (PERFORMANCE.md, "The loader on your own files", the device path).
POST_DECODE_SHARE = 0.04


def repeated_sampling_gain(num_sample: int, post_decode_share: float = POST_DECODE_SHARE) -> float:
    """How many times the clips per core ``--num_sample num_sample`` gives over 1: one decode (D) feeds ``num_sample``
    clips that each cost ``post_decode_share`` x D more, so K (1 + s) / (1 + K s); 3.6 for K = 4, as measured."""
    return num_sample * (1 + post_decode_share) / (1 + num_sample * post_decode_share)


def _set(flags: list[str], name: str, value: str) -> list[str]:
    if name in flags:
        i = flags.index(name)
        return flags[:i + 1] + [value] + flags[i + 2:]
    return flags + [name, value]


def parsed_args(name: str, stage: str, flags: list[str] | None = None) -> argparse.Namespace:
    """PATCHES's script's arguments for the recipe's flags (VideoMAE's verbatim by default), paths filled in."""
    if stage == "pretrain":
        from patches.cli import pretrain as script
        paths = ["--data_path", "train.csv"]
    else:
        from patches.cli import finetune as script  # type: ignore[no-redef]
        paths = ["--data_path", "lists", "--finetune", "checkpoint.pth"]
    return script.get_args_parser().parse_args(paths + (RECIPES[name].flags(stage) if flags is None else flags))


def effective_values(name: str, stage: str, world: int | None = None, flags: list[str] | None = None) -> dict:
    """What PATCHES's script computes from the recipe's flags at ``world`` processes (VideoMAE's by default):
    total batch, the scaled LRs, steps and clips per epoch on the data set's official training list."""
    from patches.config.lr_scaling import scaled_rates
    recipe = RECIPES[name]
    world = world or recipe.gpus(stage)
    args = parsed_args(name, stage, flags)
    rates = scaled_rates(args, world)
    total = rates.total_batch
    steps = TRAIN_VIDEOS[recipe.dataset] // total
    return {"recipe": name, "stage": stage, "gpus": world, "batch_per_gpu": args.batch_size,
            "update_freq": args.update_freq, "total_batch": total, "num_sample": args.num_sample,
            "lr": rates.lr, "min_lr": rates.min_lr, "warmup_lr": rates.warmup_lr, "epochs": args.epochs,
            "warmup_epochs": args.warmup_epochs, "steps_per_epoch": steps,
            "clips_per_epoch": steps * total * args.num_sample, "model": args.model,
            "mask_ratio": getattr(args, "mask_ratio", None), "decoder_depth": getattr(args, "decoder_depth", None)}


def flops_per_clip(stage: str, model: str, size: int, patch: int, mask_ratio: float | None,
                   decoder_depth: int | None) -> float:
    """Forward + backward FLOPs of one training clip, counted as scripts/benchmark.py counts a step's."""
    import torch

    from patches.perf import benchmark
    size_name = model.split("_")[-3]  # pretrain_videomae_base_patch16_224 / vit_base_patch16_224
    cfg = {"num_frames": 16, "size": size, "patch": patch, "model": size_name, "batch_size": 1,
           "mask_ratio": mask_ratio or 0.9, "decoder_depth": decoder_depth or 4, "decoder_mask": "none",
           "dtype": "fp32", "attn_impl": "math", "compile": None}
    torch.manual_seed(0)
    step_fn = benchmark.STEP_FNS["pretrain" if stage == "pretrain" else "finetune"]
    _, forward_backward, _, model_ = step_fn(cfg, torch.device("cpu"))
    return float(benchmark.count_model_flops(model_, forward_backward, "math"))


# The loader's side of the cost model: the cores one GPU gets (a 96-core, 8-GPU node) and the pre-training
# loader's clips per second per core on Kinetics-shaped files (568x320 H.264, --num_sample 1): 13.9 clips/s from 2
# workers on the idle 2-core machine (issue 28), measured with
# patches.perf.loader_bench (PERFORMANCE.md, "Will the loader keep up?"). Pass your own to table().
CORES_PER_GPU = 12
LOADER_CLIPS_PER_CORE_S = 7.0


def gpu_hours(flops_per_clip_: float, clips: float, tflops: float, loader_clips_per_s: float | None = None
              ) -> dict[str, float | str]:
    """GPU-hours of ``clips`` training clips: at the slower of the step (``tflops`` sustained per GPU) and the
    loader (``loader_clips_per_s`` per GPU; None: the step alone). Returns ``gpu_hours`` (the slower),
    ``gpu_hours_step`` (the step's alone), ``step_clips_per_s`` and ``bound`` ("step" or "loader")."""
    step_rate = tflops * 1e12 / flops_per_clip_
    rate = min(step_rate, loader_clips_per_s) if loader_clips_per_s else step_rate
    return {"gpu_hours": clips / rate / 3600, "gpu_hours_step": clips / step_rate / 3600,
            "step_clips_per_s": step_rate,
            "bound": "loader" if loader_clips_per_s and loader_clips_per_s < step_rate else "step"}


def table(names: list[str], grid: str, tflops: float, count_flops: bool = True, cores_per_gpu: int = CORES_PER_GPU,
          loader_clips_per_core_s: float | None = LOADER_CLIPS_PER_CORE_S) -> list[dict]:
    """One row per recipe and stage, at VideoMAE's process count, with GPU-hours at ``tflops`` per GPU or at the
    loader's ``loader_clips_per_core_s`` x ``cores_per_gpu`` clips/s, whichever is slower (None: the step's)."""
    size, patch = parse_grid(grid)
    loader = loader_clips_per_core_s * cores_per_gpu if loader_clips_per_core_s else None
    rows, cache = [], {}
    for name in names:
        for stage in ("pretrain", "finetune"):
            row = effective_values(name, stage)
            row.update(top1=RECIPES[name].top1, grid=f"{size}/{patch}", note=RECIPES[name].note)
            if count_flops:
                key = (stage, row["model"], row["mask_ratio"], row["decoder_depth"])
                if key not in cache:
                    cache[key] = flops_per_clip(stage, row["model"], size, patch, row["mask_ratio"],
                                                row["decoder_depth"])
                row["gflop_per_clip"] = cache[key] / 1e9
                row.update(gpu_hours(cache[key], row["clips_per_epoch"] * row["epochs"], tflops, loader),
                           cores_per_gpu=cores_per_gpu, loader_clips_per_s=loader)
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| recipe | stage | GPUs x batch | total batch | clips/step | lr | min_lr | warmup_lr | epochs | "
             "steps/epoch | clips/epoch | GFLOP/clip | GPU-hours | VideoMAE top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cost = (f"{r['gflop_per_clip']:.0f} | {r['gpu_hours']:,.0f}" if "gpu_hours" in r else "- | -")
        if r.get("bound") == "loader":
            cost += f" (loader; step: {r['gpu_hours_step']:,.0f})"
        lines.append(f"| {r['recipe']} | {r['stage']} | {r['gpus']} x {r['batch_per_gpu']} | {r['total_batch']} | "
                     f"{r['total_batch'] * r['num_sample']} | {r['lr']:.3g} | {r['min_lr']:.3g} | "
                     f"{r['warmup_lr']:.3g} | {r['epochs']} | {r['steps_per_epoch']:,} | {r['clips_per_epoch']:,} | "
                     f"{cost} | {r['top1'] if r['stage'] == 'finetune' else ''} |")
    return "\n".join(lines)


@exits_on_error
def main() -> None:
    """The table of every recipe, or one recipe's flags (``--flags``) or pre-training epoch."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--flags", nargs=2, metavar=("RECIPE", "STAGE"), help="print the flags, one per line")
    p.add_argument("--checkpoint_epoch", metavar="RECIPE", help="print the pre-training epoch fine-tuning reads")
    p.add_argument("--world", type=int, default=1, help="processes of the run (--flags)")
    p.add_argument("--batch_size", type=int, default=None, help="per process (--flags; default VideoMAE's)")
    p.add_argument("--update_freq", type=int, default=None,
                   help="accumulation (--flags; default: what keeps VideoMAE's total batch)")
    p.add_argument("--grid", default="224/16", help="SIZE/PATCH, or 196 / 324 patches per frame")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="rows of the table")
    p.add_argument("--tflops", type=float, default=100.0,
                   help="sustained training TFLOP/s per GPU for GPU-hours (an assumption: about a third of an "
                        "A100's bf16 peak; measure yours with scripts/benchmark.py)")
    p.add_argument("--cores_per_gpu", type=int, default=CORES_PER_GPU,
                   help="CPU cores the data loader of one GPU gets (GPU-hours use the slower of step and loader)")
    p.add_argument("--loader_clips_per_core", type=float, default=LOADER_CLIPS_PER_CORE_S,
                   help="the loader's clips/s per core (measure yours with scripts/loader_bench.py); 0: the "
                        "step alone bounds")
    p.add_argument("--no_flops", action="store_true", help="leave out GFLOP/clip and GPU-hours")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--repeated_sampling", type=int, default=None, metavar="K",
                   help="also show (table) or print (--flags RECIPE pretrain) the loader-bound variant: --num_sample "
                        "K, --batch_size / K; a departure from VideoMAE's published recipes")
    args = p.parse_args()
    try:
        if args.flags:
            name, stage = args.flags
            if name not in RECIPES or stage not in ("pretrain", "finetune"):
                raise ValueError(f"unknown recipe {name!r} or stage {stage!r}; recipes: {', '.join(RECIPES)}")
            flags = launcher_flags(name, stage, args.world, args.grid, args.batch_size, args.update_freq)
            if args.repeated_sampling and stage == "pretrain":
                flags = repeated_sampling_flags(flags, args.repeated_sampling)
                print(REPEATED_SAMPLING_NOTE.format(k=args.repeated_sampling), file=sys.stderr)
            print("\n".join(flags))
            return
        if args.checkpoint_epoch:
            print(RECIPES[args.checkpoint_epoch].checkpoint_epoch)
            return
        rows = table(args.recipes, args.grid, args.tflops, not args.no_flops, args.cores_per_gpu,
                     args.loader_clips_per_core or None)
        if args.repeated_sampling:
            rows += repeated_sampling_rows(args.recipes, rows, args.repeated_sampling)
    except (ValueError, KeyError) as e:
        raise UsageError(str(e)) from None
    print(markdown(rows))
    if args.repeated_sampling:
        print(f"\n(num_sample {args.repeated_sampling}) rows: {REPEATED_SAMPLING_NOTE.format(k=args.repeated_sampling)}")
    if args.json:
        tmp = Path(f"{args.json}.tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
