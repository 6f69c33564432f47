r"""PATCHES self-check: does this machine run PATCHES correctly, and how fast? One command before a long job.

    python scripts/selfcheck.py                      # on a GPU node: ViT-B checks and timings (about 6 minutes)
    python scripts/selfcheck.py --quick --device cpu # micro models on small grids: the same checks in a minute or two

Each check is a row: pass, fail, or skipped with the reason (a skipped row does not fail the run). The checks:
the environment (torch, CUDA, GPU, bf16, nccl, deepspeed, decoders); decoding generated H.264 videos; 20
pre-training steps on one fixed batch at each grid, in bf16 and in fp16 with the grad scaler (finite, and the
last loss below the first); the same with ``torch.compile``; fine-tuning with a multi-view test; a 1-process
torchrun (nccl on CUDA, gloo on CPU); save and exact resume against an uninterrupted run; DeepSpeed ZeRO-2 in
bf16 and fp16. Then the step timings (scripts/benchmark.py, each in its own process: step time, clips/s, MFU
against the bf16 matmul rate measured in the same process, peak memory) with SDPA and with the explicit
attention path, and the data loader's clips/s with all the machine's cores against the step's (which bounds).
Writes ``selfcheck.json`` and ``selfcheck.md`` into ``--output_dir``; exits 1 if any check fails. The run
scripts' logs of a failed run stay in ``selfcheck_work/`` there.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]  # the checkout (the package is installed editable from it)

from patches.utils import cpu_memory  # noqa: F401  (before torch: allocator settings torch reads once, see cpu_memory.py)
import numpy as np
import torch

from patches.perf.selfcheck_report import Check, format_figures, markdown_report, write_reports  # noqa: F401  (re-exported)

PACKAGES = ("timm", "einops", "safetensors", "tensorboardX", "av", "decord", "deepspeed")
# Resumed against uninterrupted weights, max abs difference. CPU kernels are deterministic; on CUDA the runs use
# --deterministic (cuBLAS workspace, deterministic algorithms) and the explicit attention path, which should
# also give 0: the tolerance only allows for a kernel torch cannot make deterministic.
RESUME_ATOL = {"cpu": 0.0, "cuda": 1e-6}


@dataclass(frozen=True)
class Profile:
    """How big the checks are: ``--quick`` (micro models, small grids) or the full run (ViT-B on a GPU)."""

    size: str                      # pre-training model size of the loss and timing checks
    decoder_depth: int
    num_frames: int
    grids: tuple[str, ...]         # SIZE/PATCH of the loss and timing checks
    batch: int                     # the fixed batch of the loss checks
    lr: float
    timing_batch: int
    timing_warmup: int
    timing_iters: int
    run_flags: tuple[str, ...]     # model size and grid of the run scripts' checks (paths, not speed)
    demo_size: int                 # demo clips' side for those runs
    loader_videos: tuple[int, int, float]  # count, short side, seconds of the loader's generated videos
    loader_flags: tuple[str, ...]  # the loader's grid (its defaults: 16 frames at stride 4, 224 px)
    loader_seconds: float
    compile_backend: str
    timed_grids: int               # how many of ``grids`` are timed


# Quick: on CPU, inductor's C++ build of even a micro model takes minutes; aot_eager still traces the model
# through dynamo and AOT autograd, without code generation.
QUICK = Profile("micro", 1, 4, ("32/8", "48/8"), 2, 1e-3, 2, 1, 2,
                ("--input_size", "32", "--patch_size", "8", "--num_frames", "4", "--sampling_rate", "2"), 32,
                (2, 64, 2.0), ("--input_size", "32", "--patch_size", "8", "--num_frames", "4"), 2.0, "aot_eager", 1)
FULL = Profile("base", 4, 16, ("224/16", "288/16"), 8, 2e-4, 32, 2, 6,
               ("--input_size", "112", "--patch_size", "16", "--num_frames", "8", "--sampling_rate", "2"), 64,
               (4, 320, 4.0), (), 8.0, "inductor", 2)


class Skip(Exception):
    """A check that cannot run here; the message says why."""


@dataclass
class Context:
    device: torch.device
    profile: Profile
    work: Path
    demo: Path | None = None
    eager_first_loss: dict[str, float] = field(default_factory=dict)
    batches: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)  # the fixed batch of each grid
    timing: list[dict] = field(default_factory=list)


# ---- the environment and decoding ---------------------------------------------------------------------

def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (Ampere and later); torch's plain check counts emulation on V100/T4 too."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument
        return torch.cuda.get_device_capability(device) >= (8, 0)


def check_environment(ctx: Context) -> dict[str, Any]:
    figures: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                               "cuda": torch.version.cuda or "none", "cpu_cores": len(os.sched_getaffinity(0))}
    if ctx.device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch sees no GPU (CUDA_VISIBLE_DEVICES, driver?)")
        props = torch.cuda.get_device_properties(ctx.device)
        figures.update(gpu=props.name, gpus=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                       memory_gb=round(props.total_memory / 1e9, 1), bf16=native_bf16(ctx.device),
                       nccl=torch.distributed.is_nccl_available())
        if figures["nccl"]:
            version = torch.cuda.nccl.version()
            figures["nccl_version"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    versions = package_versions()
    figures.update(versions)
    if versions["av"] == "missing" and versions["decord"] == "missing":
        raise RuntimeError("no video decoder: install av (PyAV) or decord")
    if ctx.device.type == "cuda" and not figures["nccl"]:
        raise RuntimeError("this torch has no nccl: multi-GPU runs cannot start")
    return figures


def check_decode(ctx: Context) -> dict[str, Any]:
    """Generated H.264 clips read back by every installed reader, close to the frames written."""
    from patches.data.demo import render_clip, write_mp4
    from patches.data.video_reader import VideoFile

    frames = render_clip(0, seed=1, num_frames=24, size=(64, 96))
    path = ctx.work / "decode.mp4"
    write_mp4(path, frames)
    backends = [b for b, pkg in (("auto", "av"), ("decord", "decord")) if package_versions()[pkg] != "missing"]
    figures: dict[str, Any] = {}
    for backend in backends:
        video = VideoFile(str(path), backend=backend)
        got = video.read(np.arange(0, 24, 3)).numpy()
        if len(video) != 24 or got.shape != frames[::3].shape:
            raise RuntimeError(f"{backend}: {len(video)} frames of {got.shape[1:]}, wrote 24 of {frames.shape[1:]}")
        error = float(np.abs(got.astype(np.float32) - frames[::3]).mean())
        figures[f"{'pyav' if backend == 'auto' else backend}_mean_abs_error"] = round(error, 2)
        if error > 8:
            raise RuntimeError(f"{backend}: frames differ from those written by {error:.1f} grey levels on average")
    return figures


# ---- steps in this process ------------------------------------------------------------------------------

def fixed_batch(grid: Any, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Demo clips (uint8, as the loader delivers them) with tube masks of ratio 0.9."""
    from patches.data.demo import render_clip
    from patches.data.masking import MaskGenerator

    clips = [torch.from_numpy(render_clip(i % 2, seed=i, num_frames=grid.num_frames, size=grid.input_size))
             for i in range(batch)]
    videos = torch.stack(clips).permute(0, 4, 1, 2, 3).contiguous()
    gen = MaskGenerator(grid, "tube", 0.9, rng=np.random.default_rng(0))
    masks = [gen() for _ in range(batch)]
    return videos, torch.stack([m[0] for m in masks]), torch.stack([m[1] for m in masks])


def train_fixed_batch(ctx: Context, grid: Any, amp: torch.dtype | None, compile_backend: str | None = None,
                      steps: int = 20) -> dict[str, Any]:
    """``steps`` real pre-training updates on one batch: losses finite and the last below the first."""
    from patches.models.attention import configure_attention
    from patches.train.reconstruction import MaskedReconstruction
    from patches.models.factory import create_video_model
    from patches.train.optim import OptimizerConfig, build_optimizer
    from patches.train.updater import Updater

    p, device = ctx.profile, ctx.device
    torch.manual_seed(0)
    model = create_video_model(f"pretrain_videomae_{p.size}_patch16_224", grid=grid,
                               decoder_depth=p.decoder_depth).to(device)
    attention = configure_attention(model, "auto", device, amp, p.batch)
    if compile_backend:
        model.compile(backend=compile_backend)
    optimizer = build_optimizer(OptimizerConfig("adamw", lr=p.lr, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.95)),
                                model)
    scaler = torch.amp.GradScaler(device.type) if amp is torch.float16 else None
    update = Updater(model, optimizer, scaler=scaler)
    if grid.spec not in ctx.batches:
        ctx.batches[grid.spec] = fixed_batch(grid, p.batch)
    loss_fn, batch = MaskedReconstruction(grid, device, amp), ctx.batches[grid.spec]
    model.train()
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model, batch)
        update(loss)
        losses.append(float(loss.detach()))
    figures = {"patches_per_frame": grid.patches_per_frame, "attention": attention, "first_loss": losses[0],
               "last_loss": losses[-1], "s_per_step": (time.perf_counter() - start) / steps}
    if scaler is not None:
        figures.update(loss_scale=scaler.get_scale(), skipped_steps=update.skipped)
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"non-finite losses: {losses}")
    if not losses[-1] < losses[0]:
        raise RuntimeError(f"the loss did not fall over {steps} steps: {losses[0]:.4f} -> {losses[-1]:.4f}")
    return figures


def amp_name(amp: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp]


def check_loss_falls(ctx: Context, grid: Any, amp: torch.dtype | None) -> dict[str, Any]:
    if amp is torch.float16 and ctx.device.type != "cuda":
        raise Skip("fp16 with the grad scaler runs on CUDA only")
    figures = train_fixed_batch(ctx, grid, amp)
    ctx.eager_first_loss[f"{grid.spec} {amp_name(amp)}"] = figures["first_loss"]
    return figures


def check_compile(ctx: Context, grid: Any, amp: torch.dtype | None) -> dict[str, Any]:
    """Compiled steps learn, and start from the eager model's loss (the same weights and batch)."""
    figures = {"backend": ctx.profile.compile_backend,
               **train_fixed_batch(ctx, grid, amp, compile_backend=ctx.profile.compile_backend)}
    eager = ctx.eager_first_loss.get(f"{grid.spec} {amp_name(amp)}")
    if eager is not None:
        figures["eager_first_loss"] = eager
        if abs(figures["first_loss"] - eager) > 5e-2 * abs(eager):
            raise RuntimeError(f"the compiled model's first loss {figures['first_loss']:.4f} is not the eager "
                               f"model's {eager:.4f}")
    return figures


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
    from patches.perf import benchmark
    from patches.grid import parse_grid_spec

    p = ctx.profile
    size, patch = parse_grid_spec(spec)
    cfg = dict(task="pretrain", model=p.size, size=size, patch=patch, num_frames=p.num_frames, dtype="bf16",
               attn_impl=attn_impl, compile=None, decoder_mask="none", mask_ratio=0.9, decoder_depth=p.decoder_depth,
               batch_size=p.timing_batch, warmup=p.timing_warmup, iters=p.timing_iters, device=str(ctx.device))
    # Quick mode measures in this process (a micro model: the peak memory is then this process's, not the step's).
    try:
        row = benchmark.run_isolated(cfg) if p is FULL else benchmark.measure(cfg)
    except RuntimeError as e:
        if "OutOfMemoryError" in str(e):
            raise Skip(f"out of GPU memory at batch {p.timing_batch}: rerun with a smaller --timing_batch") from e
        raise
    ctx.timing.append(row)
    return {"patches_per_frame": row["patches_per_frame"], "batch": row["batch_size"], "step_s": row["step_s"],
            "clips_per_s": row["clips_per_s"], "mfu_pct": 100 * row["fraction_of_matmul"],
            "bf16_matmul_tflops": row["matmul_gflops"] / 1e3, "peak_mem_gb": row["peak_mem_gb"]}


def check_loader(ctx: Context) -> dict[str, Any]:
    """The pre-training loader's clips/s with one worker per core (scripts/loader_bench.py) against the fastest
    timed step at the first grid: the slower of the two bounds a run."""
    from patches.perf import loader_bench

    count, short_side, seconds = ctx.profile.loader_videos
    paths = loader_bench.make_videos(ctx.work / "loader_videos", count, short_side=short_side, seconds=seconds)
    workers = len(os.sched_getaffinity(0))
    row = loader_bench.measure_loader(paths, workers, batch_size=8, seconds=ctx.profile.loader_seconds,
                                      device=ctx.device.type, extra_args=ctx.profile.loader_flags, workdir=ctx.work)
    figures: dict[str, Any] = {"workers": workers, "loader_clips_per_s": row["clips_per_s"],
                               "videos": f"{count} x {short_side}p, {seconds:g} s"}
    first = [r for r in ctx.timing if r["patches_per_frame"] == ctx.timing[0]["patches_per_frame"]] if ctx.timing else []
    if first:
        step = max(first, key=lambda r: r["clips_per_s"])
        figures.update(step_clips_per_s=step["clips_per_s"], step=f"{step['patches_per_frame']} {step['attention']}",
                       bound="loader" if row["clips_per_s"] < step["clips_per_s"] else "step")
    return figures


# ---- the run and its report -----------------------------------------------------------------------------

def plan(ctx: Context) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """(name, check) in the order they run."""
    from patches.grid import grids_from_specs

    p, cuda = ctx.profile, ctx.device.type == "cuda"
    grids = grids_from_specs(p.grids, p.num_frames, 2)
    amps = (torch.bfloat16, torch.float16)  # fp16 is skipped on CPU, with the reason
    checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("environment", lambda: check_environment(ctx)), ("decode", lambda: check_decode(ctx))]
    for grid in grids:
        for amp in amps:
            checks.append((f"loss_falls {grid.patches_per_frame} {amp_name(amp)}",
                           lambda g=grid, a=amp: check_loss_falls(ctx, g, a)))
    checks += [(f"compile {grids[0].patches_per_frame} bf16", lambda: check_compile(ctx, grids[0], torch.bfloat16)),
               ("finetune_multiview_test", lambda: check_finetune(ctx)),
               ("torchrun " + ("nccl" if cuda else "gloo"), lambda: check_torchrun(ctx)),
               ("resume_exact", lambda: check_resume(ctx)),
               ("deepspeed_zero2 bf16", lambda: check_deepspeed(ctx, "bf16")),
               ("deepspeed fp16 (ZeRO-2 refused, ZeRO-0 steps)", lambda: check_deepspeed(ctx, "fp16"))]
    for spec, grid in list(zip(p.grids, grids))[:p.timed_grids]:
        for impl in ("sdpa", "math"):
            checks.append((f"timing {grid.patches_per_frame} {impl}",
                           lambda s=spec, i=impl: check_timing(ctx, s, i)))
    checks.append(("loader_vs_step", lambda: check_loader(ctx)))
    return checks


def run_check(name: str, fn: Callable[[], dict[str, Any]], index: int, total: int) -> Check:
    print(f"[{index}/{total}] {name} ...", flush=True)
    check, start = Check(name), time.perf_counter()
    try:
        check.figures = fn()
    except Skip as e:
        check.status, check.detail = "skipped", str(e)
    except Exception as e:  # a failed check is a row of the report, not the end of the run
        check.status, check.detail = "fail", f"{type(e).__name__}: {e}"
    check.seconds = time.perf_counter() - start
    if torch.cuda.is_available():  # what this process's checks cached would be missing to the timing processes
        gc.collect()
        torch.cuda.empty_cache()
    print(f"    {check.status} ({check.seconds:.1f} s) {format_figures(check.figures)} {check.detail}".rstrip(),
          flush=True)
    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="micro models, small grids, few steps (what CI runs)")
    p.add_argument("--output_dir", default=".", help="where selfcheck.json and selfcheck.md go")
    p.add_argument("--timing_batch", type=int, default=None,
                   help=f"clips per timed step (default {FULL.timing_batch}, quick {QUICK.timing_batch})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    profile = QUICK if args.quick else FULL
    if args.timing_batch:
        profile = replace(profile, timing_batch=args.timing_batch)
    output_dir = Path(args.output_dir)
    work = output_dir / "selfcheck_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ctx, start = Context(device, profile, work.resolve()), time.perf_counter()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() \
        else platform.processor() or platform.machine()
    print(f"PATCHES self-check on {args.device} ({device_name}), {'quick' if args.quick else 'full'} mode, "
          f"torch {torch.__version__}", flush=True)
    checks_to_run = plan(ctx)
    checks = [run_check(name, fn, i + 1, len(checks_to_run)) for i, (name, fn) in enumerate(checks_to_run)]
    passed = all(c.status != "fail" for c in checks)
    meta = {"passed": passed, "mode": "quick" if args.quick else "full", "device": args.device,
            "device_name": device_name, "torch": torch.__version__, "seconds": time.perf_counter() - start}
    write_reports(output_dir, checks, meta, ctx.timing)
    if passed:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown_report(checks, meta, ctx.timing))
    print(f"Wrote {output_dir / 'selfcheck.json'} and {output_dir / 'selfcheck.md'}"
          + ("" if passed else f"; the failed runs' logs are in {work}"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
