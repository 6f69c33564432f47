"""The PATCHES demo on CPU: pre-train on the built-in demo videos, fine-tune, test, and compare with
fine-tuning from scratch on the same budget.

    python run_demo.py                 # its result and time: README.md, "Quick start"
    python run_demo.py --output_dir output/demo --pretrain_epochs 80 --finetune_epochs 30

Each stage is an ordinary run of run_mae_pretraining.py / run_class_finetuning.py; the commands are
printed so they can be re-run or changed one by one. Re-running resumes finished stages from their
checkpoints.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
import torch

from patches.cli import finetune as run_class_finetuning
from patches.cli import pretrain as run_mae_pretraining
from patches.cli.stages import run_stage
from patches.config.demo_recipe import FINETUNE_EPOCHS, GRID, PRETRAIN_EPOCHS, finetune_recipe, pretrain_recipe


def pretrain_flags(args: argparse.Namespace) -> list[str]:
    return ["--model", "pretrain_videomae_micro_patch16_224", *GRID,
            *pretrain_recipe(args.pretrain_epochs, args.demo_root),
            "--output_dir", str(Path(args.output_dir) / "pretrain")]


def finetune_flags(args: argparse.Namespace, name: str, checkpoint: str = "") -> list[str]:
    flags = ["--model", "vit_micro_patch16_224", *GRID, *finetune_recipe(args.finetune_epochs, args.demo_root),
             "--output_dir", str(Path(args.output_dir) / name)]
    return flags + (["--finetune", checkpoint] if checkpoint else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="output/demo", help="where the three runs write")
    p.add_argument("--demo_root", default="data/demo", help="where the demo videos are generated")
    p.add_argument("--pretrain_epochs", default=PRETRAIN_EPOCHS, type=int, help="pre-training epochs")
    p.add_argument("--finetune_epochs", default=FINETUNE_EPOCHS, type=int, help="fine-tuning epochs (both arms)")
    args = p.parse_args()
    # The demo's model is tiny: one thread computes it fastest while a DataLoader worker decodes on the
    # other core (measured on 2 cores: 0.084 s a pre-training step, against 0.103 s with 2 threads).
    torch.set_num_threads(1)

    pretrain_dir = Path(args.output_dir) / "pretrain"
    _, t_pre = run_stage("1/3 masked pre-training", run_mae_pretraining, pretrain_flags(args))
    checkpoint = str(pretrain_dir / f"checkpoint-{args.pretrain_epochs - 1}.pth")
    pre, t_ft = run_stage("2/3 fine-tuning from the pre-trained encoder", run_class_finetuning,
                          finetune_flags(args, "finetune_pretrained", checkpoint))
    scratch, t_sc = run_stage("3/3 the same fine-tuning from random weights", run_class_finetuning,
                              finetune_flags(args, "finetune_scratch"))

    print("\n| fine-tuned from | test top-1 | test top-5 | time |")
    print("|---|---|---|---|")
    print(f"| masked pre-training ({args.pretrain_epochs} epochs) | {pre['acc1']:.1f} | {pre['acc5']:.1f} | "
          f"{t_pre:.0f} s + {t_ft:.0f} s |")
    print(f"| scratch | {scratch['acc1']:.1f} | {scratch['acc5']:.1f} | {t_sc:.0f} s |")
    print(f"\nPre-training gains {pre['acc1'] - scratch['acc1']:+.1f} points top-1 "
          f"({pre['videos']} test videos, {pre['views_per_video']:.0f} views each).")


if __name__ == "__main__":
    main()
