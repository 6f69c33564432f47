"""The PATCHES experiment: how does the number of patches per frame change accuracy and cost?

For each grid ("SIZE/PATCH": frames of SIZE x SIZE pixels cut into PATCH x PATCH patches) this pre-trains,
fine-tunes and tests with the same budget (epochs, clips per step, schedule), measures the pre-training
step time and peak memory with scripts/benchmark.py (each in its own process), then writes

    OUTPUT_DIR/sweep.md    the table: grid, patches/frame, tokens, final pre-training loss, how it was scored
                           (--eval: fine-tuning, or a linear / attentive / k-NN probe of the frozen encoder),
                           top-1, top-5, step time, peak memory
    OUTPUT_DIR/sweep.png   top-1, step time and peak memory against patches per frame
    OUTPUT_DIR/sweep.json  every figure, for re-plotting

On the demo data (about 15 minutes on 2 CPU cores):

    python scripts/patch_sweep.py --demo

On real data (every stage is an ordinary run of run_mae_pretraining.py / run_class_finetuning.py, printed
so it can be re-run alone; re-running the sweep resumes finished stages from their checkpoints):

    python scripts/patch_sweep.py --model base --data_path k400 --data_set Kinetics-400 \\
        --pretrain_data_path k400/train.csv --grids 224/16 288/16 216/12 224/32 \\
        --pretrain_epochs 800 --finetune_epochs 75 --output_dir output/sweep_k400 \\
        --pretrain_args "--batch_size 32 --num_workers 10" --finetune_args "--batch_size 8 --layer_decay 0.75"
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stages import run_stage  # noqa: E402
import benchmark  # noqa: E402  (scripts/benchmark.py: step time and peak memory, one process per configuration)

DEFAULT_GRIDS = ["224/16", "288/16", "216/12", "224/32"]
# Demo scale (the demo videos are 64x64; 96/8 upsamples): 16, 36, 64 and 144 patches per frame, a 9x range like the real
# default's 49..324. 64/16 plays 224/32, 64/8 the 224/16 baseline, 96/8 the larger frame at the same patch.
DEMO_GRIDS = ["64/16", "48/8", "64/8", "96/8"]

# Small settings for the demo data, after run_demo.py: shortened to fit four grids in ~15 minutes, with
# larger learning rates (and no regularisation in fine-tuning) because the runs are so short.
DEMO_PRETRAIN = ["--mask_type", "tube", "--mask_ratio", "0.75", "--decoder_depth", "2", "--batch_size", "16",
                 "--num_sample", "1", "--warmup_epochs", "1", "--lr", "1e-2", "--min_lr", "1e-5",
                 "--num_workers", "1", "--print_freq", "50", "--device", "cpu"]
DEMO_FINETUNE = ["--batch_size", "16", "--num_sample", "1", "--warmup_epochs", "1", "--lr", "1e-2",
                 "--layer_decay", "0.9", "--drop_path", "0", "--mixup", "0", "--cutmix", "0", "--smoothing", "0",
                 "--aa", "none", "--reprob", "0", "--test_num_segment", "2", "--test_num_crop", "1",
                 "--num_workers", "1", "--print_freq", "50", "--device", "cpu", "--disable_eval_during_finetuning"]


def parse_grid(text: str) -> tuple[int, int]:
    """'224/16' -> (224, 16)."""
    try:
        size, patch = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a grid is SIZE/PATCH, e.g. 224/16; got {text!r}") from None
    if size % patch:
        raise argparse.ArgumentTypeError(f"grid {text}: {size} is not divisible by {patch}")
    return size, patch


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true",
                   help="the demo preset: demo data, micro model, grids " + " ".join(DEMO_GRIDS) + ", short runs")
    p.add_argument("--grids", nargs="+", type=parse_grid, default=None, metavar="SIZE/PATCH",
                   help=f"grids to compare (default: {' '.join(DEFAULT_GRIDS)}; with --demo: {' '.join(DEMO_GRIDS)})")
    p.add_argument("--model", default=None, help="ViT size: micro tiny small base large huge (default: base; demo: micro)")
    p.add_argument("--num_frames", type=int, default=None, help="frames per clip (default 16; demo 8)")
    p.add_argument("--tubelet_size", type=int, default=2)
    p.add_argument("--sampling_rate", type=int, default=None, help="frame stride (default 4)")
    p.add_argument("--pretrain_epochs", type=int, default=None, help="default: the script's (800); demo 6")
    p.add_argument("--finetune_epochs", type=int, default=None, help="default: the script's (30); demo 8")
    p.add_argument("--data_path", default=None,
                   help="fine-tuning data: folder with train.csv/val.csv/test.csv (default: the demo data)")
    p.add_argument("--data_set", default=None, help="fine-tuning --data_set (e.g. Kinetics-400, SSV2)")
    p.add_argument("--data_root", default=None, help="folder the list files' video paths are relative to")
    p.add_argument("--pretrain_data_path", default=None,
                   help="pre-training list file (default: DATA_PATH/train.csv, or the demo data)")
    p.add_argument("--demo_root", default="data/demo", help="where the demo videos are (generated on first use)")
    p.add_argument("--pretrain_args", default="", help="extra flags for run_mae_pretraining.py, one quoted string")
    p.add_argument("--finetune_args", default="", help="extra flags for run_class_finetuning.py, one quoted string")
    p.add_argument("--bench_batch_size", type=int, default=None,
                   help="clips per benchmarked step (default: the pre-training --batch_size x --num_sample)")
    p.add_argument("--bench_iters", type=int, default=5, help="timed benchmark steps (median reported)")
    p.add_argument("--device", default=None, help="cuda or cpu for every stage (default: cuda when present)")
    p.add_argument("--output_dir", default=None, help="default: output/patch_sweep (demo: output/patch_sweep_demo)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every stage and the benchmark (default: torch's; demo: 1, which on a "
                        "shared 2-core machine leaves the other core to the data loader and is much faster)")
    p.add_argument("--eval", default="finetune", choices=["finetune", "linear", "attentive", "knn"],
                   help="how each grid's pre-trained encoder is scored: fine-tuned, or frozen with a linear or "
                        "attentive probe or k-NN (run_class_finetuning.py --probe; much cheaper)")
    p.add_argument("--skip_training", action="store_true", help="only benchmark (no accuracy columns)")
    p.add_argument("--plot_only", action="store_true",
                   help="only remake sweep.md and sweep.png from OUTPUT_DIR/sweep.json (e.g. of an unfinished sweep)")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on --demo."""
    demo = args.demo
    args.grids = args.grids or [parse_grid(g) for g in (DEMO_GRIDS if demo else DEFAULT_GRIDS)]
    args.model = args.model or ("micro" if demo else "base")
    args.num_frames = args.num_frames or (8 if demo else 16)
    args.sampling_rate = args.sampling_rate or 4
    args.threads = args.threads or (1 if demo else None)
    if demo:
        args.pretrain_epochs = args.pretrain_epochs or 6
        args.finetune_epochs = args.finetune_epochs or 8
    args.output_dir = Path(args.output_dir or ("output/patch_sweep_demo" if demo else "output/patch_sweep"))
    if args.data_path and not args.pretrain_data_path:
        args.pretrain_data_path = str(Path(args.data_path) / "train.csv")
    return args


def _flag_value(flags: list[str], name: str) -> str | None:
    """The last value given to ``name`` in a flag list (argparse's rule: the last one wins)."""
    value = None
    for i, f in enumerate(flags[:-1]):
        if f == name:
            value = flags[i + 1]
    return value


def stage_flags(args: argparse.Namespace, size: int, patch: int, out: Path) -> tuple[list[str], list[str]]:
    """Flag lists for the pre-training and fine-tuning runs of one grid."""
    grid = ["--input_size", str(size), "--patch_size", str(patch), "--num_frames", str(args.num_frames),
            "--tubelet_size", str(args.tubelet_size), "--sampling_rate", str(args.sampling_rate)]
    pre = ["--model", f"pretrain_videomae_{args.model}_patch16_224", *grid]
    ft = ["--model", f"vit_{args.model}_patch16_224", *grid]
    if args.demo:
        pre += [*DEMO_PRETRAIN, "--demo_root", args.demo_root]
        if not args.pretrain_data_path:
            # The labelled clips only: the demo's unlabelled pool (pretrain.csv, 13x larger) would not fit the
            # preset's ~15 minutes for four grids.
            pre += ["--data_path", str(Path(args.demo_root) / "train.csv"), "--data_root", args.demo_root]
        ft += [*DEMO_FINETUNE, "--demo_root", args.demo_root]
    for flags, epochs in ((pre, args.pretrain_epochs), (ft, args.finetune_epochs)):
        if epochs:
            flags += ["--epochs", str(epochs), "--save_ckpt_freq", str(epochs)]
        if args.device:
            flags += ["--device", args.device]
        if args.data_root:
            flags += ["--data_root", args.data_root]
    if args.pretrain_data_path:
        pre += ["--data_path", args.pretrain_data_path]
    if args.data_path:
        ft += ["--data_path", args.data_path]
    if args.data_set:
        ft += ["--data_set", args.data_set]
    pre += [*shlex.split(args.pretrain_args), "--output_dir", str(out / "pretrain")]
    probe = [] if args.eval == "finetune" else ["--probe", args.eval]
    ft += [*probe, *shlex.split(args.finetune_args), "--output_dir", str(out / args.eval)]
    return pre, ft


def bench_config(args: argparse.Namespace, size: int, patch: int, pre_flags: list[str]) -> dict[str, Any]:
    """A scripts/benchmark.py configuration matching the pre-training run of this grid."""
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # One optimizer step of the pre-training run sees batch_size x num_sample clips.
    batch = args.bench_batch_size or (int(_flag_value(pre_flags, "--batch_size") or 2)
                                      * int(_flag_value(pre_flags, "--num_sample") or 1))
    return dict(task="pretrain", attn_impl="auto", compile=None, model=args.model, size=size, patch=patch,
                num_frames=args.num_frames,
                dtype="bf16" if device.startswith("cuda") else "fp32", decoder_mask="none",
                mask_ratio=float(_flag_value(pre_flags, "--mask_ratio") or 0.75),
                decoder_depth=int(_flag_value(pre_flags, "--decoder_depth") or 4), batch_size=batch,
                warmup=2, iters=args.bench_iters, device=device)


def sweep_one(args: argparse.Namespace, size: int, patch: int) -> dict[str, Any]:
    import run_class_finetuning
    import run_mae_pretraining
    from patch_grid import make_grid

    grid = make_grid(args.num_frames, args.tubelet_size, size, patch)
    out = args.output_dir / f"grid_{size}_{patch}"
    pre_flags, ft_flags = stage_flags(args, size, patch, out)
    row: dict[str, Any] = {"grid": f"{size}/{patch}", "patches_per_frame": grid.patches_per_frame,
                           "tokens": grid.num_tokens, "eval": args.eval}
    if not args.skip_training:
        pre, row["pretrain_s"] = run_stage(f"{size}/{patch}: masked pre-training", run_mae_pretraining, pre_flags)
        row["pretrain_loss"] = pre.get("train_loss")
        if pre["checkpoint"] is None:
            raise SystemExit(f"error: pre-training wrote no checkpoint in {out / 'pretrain'}")
        ft_flags += ["--finetune", str(pre["checkpoint"])]
        what = "fine-tuning and test" if args.eval == "finetune" else f"{args.eval} probe of the frozen encoder"
        test, row["finetune_s"] = run_stage(f"{size}/{patch}: {what}", run_class_finetuning, ft_flags)
        row["acc1"], row["acc5"] = float(test["acc1"]), float(test["acc5"])
    cfg = bench_config(args, size, patch, pre_flags)
    print(f"\n=== {size}/{patch}: benchmark of one pre-training step ({cfg['batch_size']} clips, "
          f"{cfg['dtype']}, {cfg['device']})", flush=True)
    bench = benchmark.run_isolated(cfg)
    row.update(step_s=bench["step_s"], peak_mem_gb=bench["peak_mem_gb"], bench_batch=cfg["batch_size"],
               gflop_per_step=bench["gflop_per_step"])
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| grid | patches/frame | tokens | pre-train final loss | scored by | top-1 | top-5 | step s | "
            "peak mem GB | train time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        minutes = (r["pretrain_s"] + r["finetune_s"]) / 60 if "pretrain_s" in r else None
        lines.append(f"| {r['grid']} | {r['patches_per_frame']} | {r['tokens']} | {_fmt(r.get('pretrain_loss'), '.4f')} | "
                     f"{r.get('eval', 'finetune')} | "
                     f"{_fmt(r.get('acc1'), '.1f')} | {_fmt(r.get('acc5'), '.1f')} | {r['step_s']:.3f} | "
                     f"{r['peak_mem_gb']:.2f} | {_fmt(minutes, '.1f')}{'' if minutes is None else ' min'} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r["patches_per_frame"], r["grid"]))
    x = [r["patches_per_frame"] for r in rows]
    panels = [("acc1", "test top-1 (%)"), ("step_s", f"pre-training step (s, {rows[0]['bench_batch']} clips)"),
              ("peak_mem_gb", "peak memory (GB)")]
    panels = [(k, label) for k, label in panels if all(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        y = [r[key] for r in rows]
        ax.plot(x, y, "o-", color="tab:blue")
        for xi, yi, r in zip(x, y, rows):
            ax.annotate(r["grid"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if key == "acc1":
            ax.set_ylim(0, max(100.0 if max(y) > 50 else 50.0, max(y) * 1.1))  # a wide axis: small gaps are noise
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("patches per frame")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = resolve(get_args_parser().parse_args(argv))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the benchmark's processes
    rows = []
    start = time.time()
    if args.demo and not args.plot_only:
        from demo_data import ensure_demo_dataset
        ensure_demo_dataset(args.demo_root)
    if args.plot_only:
        rows = json.loads((args.output_dir / "sweep.json").read_text())
    for size, patch in [] if args.plot_only else args.grids:
        rows.append(sweep_one(args, size, patch))
        (args.output_dir / "sweep.json").write_text(json.dumps(rows, indent=2))  # partial results survive a stop
    table = markdown_table(rows)
    (args.output_dir / "sweep.md").write_text(table + "\n")
    title = (f"PATCHES sweep: ViT-{args.model}, {args.num_frames} frames, "
             f"{args.pretrain_epochs or 'default'} pre-train + "
             + ("k-NN" if args.eval == "knn" else f"{args.finetune_epochs or 'default'} {args.eval} epochs")
             + f"{' (demo data)' if args.demo or not args.data_path else ''}")
    png = plot(rows, args.output_dir / "sweep.png", title)
    print(f"\n{table}\n\nWrote {args.output_dir / 'sweep.md'}, {png} and {args.output_dir / 'sweep.json'} "
          f"in {(time.time() - start) / 60:.1f} min")
    return rows


if __name__ == "__main__":
    main()
