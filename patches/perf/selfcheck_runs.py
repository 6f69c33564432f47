"""Self-check rows run as subprocesses: the run scripts (torchrun, exact resume, DeepSpeed, fine-tuning) and the
timings (benchmark, loader)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from patches.perf.selfcheck_context import FULL, QUICK, RESUME_ATOL, ROOT, Context, Skip
from patches.perf.selfcheck_steps import package_versions

# ---- the run scripts in subprocesses --------------------------------------------------------------------

def demo_root(ctx: Context) -> Path:
    """A small demo dataset (8/4/4 clips of 16 frames) for the run scripts' checks, made once."""
    if ctx.demo is None:
        from patches.data.demo import make_demo_dataset
        side = ctx.profile.demo_size
        ctx.demo = make_demo_dataset(ctx.work / "demo", num_train=8, num_val=4, num_test=4, num_unlabeled=0,
                                     num_frames=16, size=(side, side), verbose=False)["root"]
    return ctx.demo


def run_script(ctx: Context, script: str, out: Path, flags: list[str], torchrun: bool = False
               ) -> subprocess.CompletedProcess:
    """``script`` with ``flags`` writing into ``out``: plain python, or a 1-process torchrun on a free port.
    Its output goes to ``out.log``; a non-zero exit raises with the last lines of the error."""
    from patches.train.deepspeed_engine import free_port
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                     "--master_port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [*launcher, str(ROOT / script), *flags, "--device", ctx.device.type, "--output_dir", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ctx.work, timeout=600)
    Path(f"{out}.log").write_text(" ".join(cmd) + "\n\n" + result.stdout + "\n" + result.stderr)
    if result.returncode != 0:
        lines = [x for x in result.stderr.splitlines() if x.strip()][-4:]
        raise RuntimeError(f"{script} exited with {result.returncode} (log: {out}.log): " + " / ".join(lines))
    return result


def pretrain_flags(ctx: Context, epochs: int, *extra: str) -> list[str]:
    root = demo_root(ctx)
    return [*ctx.profile.run_flags, "--model", f"pretrain_videomae_{'micro' if ctx.profile is QUICK else 'small'}"
            "_patch16_224", "--decoder_depth", "1", "--data_path", str(root / "train.csv"), "--data_root",
            str(root), "--batch_size", "4", "--epochs", str(epochs), "--warmup_epochs", "1", "--lr", "1e-3",
            "--num_workers", "0", "--print_freq", "1", "--save_ckpt_freq", "1", *extra]


def train_losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines() if line.strip()]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"train losses in {out / 'log.txt'}: {losses}")
    return losses


def check_torchrun(ctx: Context) -> dict[str, Any]:
    """Two epochs of pre-training under torchrun (the uninterrupted run the resume check compares with)."""
    out = ctx.work / "uninterrupted"
    run_script(ctx, "run_mae_pretraining.py", out, pretrain_flags(ctx, 2, *resume_flags(ctx)), torchrun=True)
    return {"backend": "nccl" if ctx.device.type == "cuda" else "gloo", "epoch_losses": train_losses(out)}


def resume_flags(ctx: Context) -> list[str]:
    # The explicit attention path: cuBLAS matmuls are deterministic under --deterministic, fused kernels may not be.
    return ["--deterministic", "--attn_impl", "math", "--amp", "bf16"]


def check_resume(ctx: Context) -> dict[str, Any]:
    """One epoch, stop, the same command for two: the losses and weights of the uninterrupted run."""
    from patches.checkpoints.reading import read_pth_checkpoint

    reference = ctx.work / "uninterrupted"
    if not (reference / "checkpoint-1.pth").is_file():
        raise RuntimeError("the uninterrupted run (the torchrun check) did not finish")
    out = ctx.work / "resumed"
    run_script(ctx, "run_mae_pretraining.py", out, pretrain_flags(ctx, 1, *resume_flags(ctx)), torchrun=True)
    second = run_script(ctx, "run_mae_pretraining.py", out, pretrain_flags(ctx, 2, *resume_flags(ctx)),
                        torchrun=True)
    if "continuing at epoch 1" not in second.stdout:
        raise RuntimeError(f"the second run did not resume (log: {out}.log)")
    ours, theirs = (read_pth_checkpoint(d / "checkpoint-1.pth")["model"] for d in (out, reference))
    diff = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in theirs)
    atol = RESUME_ATOL[ctx.device.type]
    losses, uninterrupted = train_losses(out), train_losses(reference)
    loss_diff = abs(losses[-1] - uninterrupted[-1])
    figures = {"max_abs_weight_diff": diff, "last_epoch_loss_diff": loss_diff, "tolerance": atol,
               "losses": losses, "uninterrupted_losses": uninterrupted}
    if diff > atol or loss_diff > atol:
        raise RuntimeError(f"the resumed run differs from the uninterrupted one: weights by {diff:.3g}, the last "
                           f"epoch's loss by {loss_diff:.3g} (tolerance {atol})")
    return figures


def check_deepspeed(ctx: Context, amp: str) -> dict[str, Any]:
    """ZeRO-2 steps in bf16. In fp16, ZeRO 1/2 must be refused (DeepSpeed mis-drives the loss scaler there, see
    ds_utils.amp_problem), and ZeRO-0 steps run instead."""
    from patches.train.deepspeed_engine import amp_problem

    if package_versions()["deepspeed"] == "missing":
        raise Skip("deepspeed not installed")
    figures: dict[str, Any] = {}
    stage = "2"
    if amp == "fp16":
        if amp_problem(2, "fp16") is None:
            raise RuntimeError("--zero_stage 2 with --amp fp16 is no longer refused")
        figures["zero2_fp16"] = "refused"
        if ctx.device.type != "cuda":
            raise Skip("ZeRO-2 with fp16 is refused, as it must be; fp16 steps run on CUDA only")
        stage = "0"
    out = ctx.work / f"deepspeed_{amp}"
    result = run_script(ctx, "run_mae_pretraining.py", out,
                        pretrain_flags(ctx, 1, "--enable_deepspeed", "--zero_stage", stage, "--amp", amp,
                                       "--clip_grad", "1.0"))
    if f"ZeRO stage {stage}" not in result.stdout:
        raise RuntimeError(f"no 'ZeRO stage {stage}' in the run's output (log: {out}.log)")
    return {**figures, "zero_stage": int(stage), "epoch_losses": train_losses(out)}


def check_finetune(ctx: Context) -> dict[str, Any]:
    """Fine-tuning for an epoch, then the final test over 2 segments x 2 crops per video."""
    out = ctx.work / "finetune"
    flags = [*ctx.profile.run_flags, "--model", f"vit_{'micro' if ctx.profile is QUICK else 'small'}_patch16_224",
             "--data_set", "custom", "--data_path", str(demo_root(ctx)), "--batch_size", "2", "--epochs", "1",
             "--warmup_epochs", "1", "--num_sample", "1", "--test_num_segment", "2", "--test_num_crop", "2",
             "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0", "--num_workers", "0",
             "--print_freq", "1"]
    run_script(ctx, "run_class_finetuning.py", out, flags)
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines() if line.strip()]
    test = next((r for r in records if "test_acc1" in r), None)
    if test is None or test.get("test_views_per_video") != 4 or test.get("test_videos") != 4:
        raise RuntimeError(f"no 4-view test of the 4 test videos in {out / 'log.txt'}: {test}")
    return {"train_loss": train_losses(out)[-1], "val_acc1": records[0].get("val_acc1"),
            "test_acc1": test["test_acc1"], "test_views_per_video": test["test_views_per_video"]}


# ---- speed ----------------------------------------------------------------------------------------------

def check_timing(ctx: Context, spec: str, attn_impl: str) -> dict[str, Any]:
    """scripts/benchmark.py's measurement of one pre-training configuration, in its own process."""
    from patches.grid import parse_grid_spec
    from patches.perf import benchmark

    p = ctx.profile
    size, patch = parse_grid_spec(spec)
    cfg = dict(task="pretrain", model=p.size, size=size, patch=patch, num_frames=p.num_frames, dtype="bf16",
               attn_impl=attn_impl, compile=None, decoder_mask="none", mask_ratio=0.9, decoder_depth=p.decoder_depth,
               batch_size=p.timing_batch, warmup=p.timing_warmup, iters=p.timing_iters, device=str(ctx.device),
               peak_tflops=ctx.peak_tflops)
    # Quick mode measures in this process (a micro model: the peak memory is then this process's, not the step's).
    try:
        row = benchmark.run_isolated(cfg) if p is FULL else benchmark.measure(cfg)
    except RuntimeError as e:
        if "OutOfMemoryError" in str(e):
            raise Skip(f"out of GPU memory at batch {p.timing_batch}: rerun with a smaller --timing_batch") from e
        raise
    ctx.timing.append(row)
    return {"patches_per_frame": row["patches_per_frame"], "batch": row["batch_size"], "step_s": row["step_s"],
            "clips_per_s": row["clips_per_s"], "mfu_pct": row["mfu"] and 100 * row["mfu"],
            "peak_tflops": row["peak_tflops"], "pct_of_matmul": 100 * row["fraction_of_matmul"],
            "bf16_matmul_tflops": row["matmul_gflops"] / 1e3, "peak_mem_gb": row["peak_mem_gb"]}


def check_loader(ctx: Context) -> dict[str, Any]:
    """The pre-training loader's clips/s with the cores one GPU gets (this machine's cores / --gpus_per_node,
    default the visible GPUs) as workers, on files of realistic length and size (scripts/loader_bench.py),
    against the fastest timed step at the first grid: the slower of the two bounds a run."""
    from patches.perf import bench_videos, loader_bench, peaks

    count, short_side, seconds = ctx.profile.loader_videos
    paths = bench_videos.make_videos(ctx.work / "loader_videos", count, short_side=short_side, seconds=seconds)
    cores = len(os.sched_getaffinity(0))
    workers = peaks.cores_per_gpu(ctx.gpus_per_node, cores)
    row = loader_bench.measure_loader(paths, workers, batch_size=8, seconds=ctx.profile.loader_seconds,
                                      device=ctx.device.type, extra_args=ctx.profile.loader_flags, workdir=ctx.work)
    gpus = ctx.gpus_per_node or max(peaks.visible_gpus(), 1)
    figures: dict[str, Any] = {"cores": cores, "gpus": gpus, "workers_per_gpu": workers,
                               "loader_clips_per_s": row["clips_per_s"],
                               "videos": f"{count} x {short_side}p, {seconds:g} s"}
    first = [r for r in ctx.timing if r["patches_per_frame"] == ctx.timing[0]["patches_per_frame"]] if ctx.timing else []
    if first:
        step = max(first, key=lambda r: r["clips_per_s"])
        figures.update(step_clips_per_s=step["clips_per_s"], step=f"{step['patches_per_frame']} {step['attention']}",
                       bound=peaks.bound(step["clips_per_s"], row["clips_per_s"]))
    return figures
