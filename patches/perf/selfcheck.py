r"""PATCHES self-check: does this machine run PATCHES correctly, and how fast? One command before a long job.

    python scripts/selfcheck.py                      # on a GPU node: ViT-B checks and timings (about 6 minutes)
    python scripts/selfcheck.py --quick --device cpu # micro models on small grids: the same checks in a minute or two

Each check is a row: pass, fail, or skipped with the reason (a skipped row does not fail the run). The checks:
the environment (torch, CUDA, GPU, bf16, nccl, deepspeed, decoders); on CUDA, the run's settings (TF32, SDPA
chosen untimed in bf16, Python.h for --compile, SyncBatchNorm); decoding generated H.264 videos; 20
pre-training steps on one fixed batch at each grid, in bf16 and in fp16 with the grad scaler (finite, and the
last loss below the first); the same with ``torch.compile``; fine-tuning with a multi-view test; a 1-process
torchrun (nccl on CUDA, gloo on CPU); save and exact resume against an uninterrupted run; DeepSpeed ZeRO-2 in
bf16 and fp16. Then the step timings (scripts/benchmark.py, each in its own process: step time, clips/s, MFU
against the device's spec peak, % of the bf16 matmul rate measured in the same process, peak memory) with SDPA
and with the explicit attention path, and the data loader's clips/s with the cores one GPU gets (cores /
--gpus_per_node), on files of realistic length, against the step's (which bounds); and a CUDA run's device
path (YUV crops converted, resized and normalised on the device) against the CPU path's clips, with its speed.
Writes ``selfcheck.json`` and ``selfcheck.md`` into ``--output_dir``; exits 1 if any check fails. The run
scripts' logs of a failed run stay in ``selfcheck_work/`` there.
"""
from __future__ import annotations

import argparse
import gc
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from patches.perf.selfcheck_context import FULL, QUICK, Context, Skip
from patches.perf.selfcheck_decoders import check_decoders
from patches.perf.selfcheck_device_path import check_device_path
from patches.perf.selfcheck_report import Check, format_figures, markdown_report, write_reports
from patches.perf.selfcheck_runs import (check_deepspeed, check_finetune, check_loader, check_resume, check_timing,
                                         check_torchrun)
from patches.perf.selfcheck_steps import (amp_name, check_compile, check_decode, check_environment, check_gpu_settings,
                                          check_host_syncs, check_loss_falls)

__all__ = ["Skip", "main", "plan", "run_check", "write_reports"]


def plan(ctx: Context) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """(name, check) in the order they run."""
    from patches.grid import grids_from_specs

    p, cuda = ctx.profile, ctx.device.type == "cuda"
    grids = grids_from_specs(p.grids, p.num_frames, 2)
    amps = (torch.bfloat16, torch.float16)  # fp16 is skipped on CPU, with the reason
    checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("environment", lambda: check_environment(ctx)), ("decode", lambda: check_decode(ctx)),
        ("gpu_settings", lambda: check_gpu_settings(ctx)), ("host_syncs", lambda: check_host_syncs(ctx))]
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
    checks.append(("decoders pyav vs torchcodec", lambda: check_decoders(ctx)))
    checks.append(("device_path yuv crops", lambda: check_device_path(ctx)))
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
    p.add_argument("--gpus_per_node", type=int, default=None,
                   help="GPUs sharing this machine's cores: the loader check gets cores / GPUs workers "
                        "(default: the visible GPUs, at least 1)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the device's dense bf16 peak TFLOP/s for MFU (default: the spec table's, "
                        "patches/perf/peaks.py)")
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
    ctx = Context(device, profile, work.resolve(), gpus_per_node=args.gpus_per_node, peak_tflops=args.peak_tflops)
    start = time.perf_counter()
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
