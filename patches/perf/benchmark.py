r"""PATCHES benchmark: train-step time, MFU against the spec peak and FLOP/s against the measured matmul rate,
peak memory, loader clips/s with the cores a GPU gets.

Each step configuration runs in its own process, so peak memory (RSS on CPU, allocator peak on CUDA, both
counted from after the FLOP count) is its own. The data loader is measured by scripts/loader_bench.py (our
loader against a VideoMAE-style baseline on generated 320p, 10 s mp4s). Prints markdown tables and writes JSON. The full table of PERFORMANCE.md:

    python scripts/benchmark.py --tasks pretrain finetune --models small base --sizes 224 288 \
        --dtypes fp32 bf16 --decoder_masks none run_cell --json bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
import torch

from patches.perf import peaks


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int | None = None, iters: int = 10) -> float:
    """Dense n x n matmul FLOP/s: the ceiling a step's FLOP/s is compared with.

    On CUDA n is 8192 and ``iters`` products run back to back between two CUDA events: one small product per
    synchronize measures launch and sync latency as much as the tensor cores, and would inflate MFU.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    if device.type == "cuda":
        with torch.cuda.device(device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                torch.matmul(a, b, out=c)
            end.record()
            end.synchronize()
            return 2 * n ** 3 * iters / (start.elapsed_time(end) / 1e3)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def sync(device: torch.device) -> None:
    """Wait for the named device (not the current one) to finish its work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak-memory count afresh: the allocator's peak on CUDA, the process's peak RSS (VmHWM) on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass  # elsewhere the peak stays the process's lifetime peak


def peak_memory(device: torch.device) -> int:
    """Bytes: the allocator's peak on CUDA; on CPU VmHWM since :func:`reset_peak_memory` (ru_maxrss elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def pretrain_step_fn(cfg: dict, device: torch.device):
    """Closures running one real pre-training step (the engine's loss, the driver's update) on random clips."""
    import numpy as np

    from patches.data.masking import MaskGenerator
    from patches.grid import make_grid
    from patches.train.reconstruction import MaskedReconstruction
    from patches.train.updater import Updater

    grid = make_grid(cfg["num_frames"], 2, cfg["size"], cfg["patch"])
    model = build_model(f"pretrain_videomae_{cfg['model']}_patch16_224", cfg, device, grid=grid,
                        decoder_depth=cfg["decoder_depth"], use_checkpoint=cfg.get("use_checkpoint", False))
    optimizer = build_benchmark_optimizer(model)
    gen = MaskGenerator(grid, "tube", cfg["mask_ratio"], cfg["decoder_mask"], 0.5, rng=np.random.default_rng(0))
    masks = [gen() for _ in range(cfg["batch_size"])]
    # uint8, as the loader delivers them: the step's own normalisation on the device is timed too
    batch = (torch.randint(0, 256, (cfg["batch_size"], 3, grid.num_frames, *grid.input_size), dtype=torch.uint8),
             torch.stack([m[0] for m in masks]), torch.stack([m[1] for m in masks]))
    loss_fn, update = MaskedReconstruction(grid, device, amp_dtype_of(cfg)), Updater(model, optimizer)
    model.train()

    def step() -> None:
        update(loss_fn(model, batch))

    return step, lambda: loss_fn(model, batch).backward(), grid, model


def finetune_step_fn(cfg: dict, device: torch.device):
    """Closures running one real fine-tuning step (the engine's loss, the driver's update) on random clips."""
    from patches.grid import make_grid
    from patches.train.classification import Classification
    from patches.train.updater import Updater

    grid = make_grid(cfg["num_frames"], 2, cfg["size"], cfg["patch"])
    model = build_model(f"vit_{cfg['model']}_patch16_224", cfg, device, grid=grid, num_classes=400)
    optimizer = build_benchmark_optimizer(model, layer_decay=0.75)
    videos = torch.randn(cfg["batch_size"], 3, grid.num_frames, *grid.input_size, device=device)
    labels = torch.randint(0, 400, (cfg["batch_size"],), device=device)
    loss_fn = Classification(torch.nn.CrossEntropyLoss(), device, amp_dtype_of(cfg))
    update = Updater(model, optimizer)
    model.train()

    def step() -> None:
        update(loss_fn(model, (videos, labels)))

    return step, lambda: loss_fn(model, (videos, labels)).backward(), grid, model


def amp_dtype_of(cfg: dict) -> torch.dtype | None:
    return torch.bfloat16 if cfg["dtype"] == "bf16" else None


def build_model(name: str, cfg: dict, device: torch.device, **kwargs) -> torch.nn.Module:
    """The model as the run scripts build it, with the same --attn_impl and --compile handling."""
    from patches.models.attention import configure_attention
    from patches.models.factory import create_video_model
    model = create_video_model(name, **kwargs).to(device)
    cfg["attention"] = configure_attention(model, cfg["attn_impl"], device, amp_dtype_of(cfg))
    if cfg["compile"]:
        model.compile(backend=cfg["compile"])
    return model


def build_benchmark_optimizer(model: torch.nn.Module, layer_decay: float | None = None) -> torch.optim.Optimizer:
    from patches.train.optim import OptimizerConfig, build_optimizer
    return build_optimizer(OptimizerConfig("adamw", lr=1e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.95),
                                           layer_decay=layer_decay), model)


def count_model_flops(model: torch.nn.Module, forward_backward, attention: str, hardware: bool = False) -> int:
    """FLOPs of one forward + backward, counted on the eager model with matmul + softmax attention.

    ``hardware``: with the forward that activation checkpointing recomputes (hardware FLOPs); else the
    model's FLOPs only, the numerator of MFU.

    The same count for every attention path and for compiled models: the flop counter charges SDPA's CPU
    flash backward for the recomputation it does, which would flatter the fused path's FLOP/s.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from patches.models.attention import set_fused_attention
    compiled = getattr(model, "_compiled_call_impl", None)
    model._compiled_call_impl = None
    set_fused_attention(model, False)
    stacks = [m for m in model.modules() if hasattr(m, "use_checkpoint")]
    recompute = [m.use_checkpoint for m in stacks]
    if not hardware:  # model FLOPs: --use_checkpoint's recomputed forward is not the model's work
        for m in stacks:
            m.use_checkpoint = False
    try:
        with FlopCounterMode(display=False) as counter:
            forward_backward()
    finally:
        set_fused_attention(model, attention == "sdpa")
        model._compiled_call_impl = compiled
        for m, r in zip(stacks, recompute):
            m.use_checkpoint = r
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


STEP_FNS = {"pretrain": pretrain_step_fn, "finetune": finetune_step_fn}


def measure(cfg: dict) -> dict:
    """Run one configuration in this process and return its figures."""
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    step, forward_backward, grid, model = STEP_FNS[cfg["task"]](cfg, device)
    matmul_dtype = torch.bfloat16 if cfg["dtype"] == "bf16" else torch.float32
    # The machine's matmul ceiling is optional: the patch sweep reports step times, not the fraction of it.
    ceiling = cfg.get("matmul_ceiling", True)
    rate_before = matmul_rate(matmul_dtype, device) if ceiling else None
    flops = count_model_flops(model, forward_backward, cfg["attention"])
    hardware_flops = (count_model_flops(model, forward_backward, cfg["attention"], hardware=True)
                      if cfg.get("use_checkpoint") else flops)
    # The count ran the explicit attention path: its memory is not the measured path's.
    sync(device)
    reset_peak_memory(device)
    for _ in range(cfg["warmup"]):
        step()
    times = []
    for _ in range(cfg["iters"]):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    peak_mem = peak_memory(device)  # before the second matmul measurement's 3 n x n tensors
    # The machine's ceiling is the faster of two measurements: on a shared machine one short measurement can
    # land in a slow spell and flatter the step (ViT-B once showed 121% of a single measurement).
    rate = max(rate_before, matmul_rate(matmul_dtype, device)) if ceiling else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, peak_source = peaks.peak_tflops(name, cfg["dtype"], cfg.get("peak_tflops"))
    return {**cfg, "patches_per_frame": grid.patches_per_frame, "tokens": grid.num_tokens,
            "step_s": seconds, "step_s_each": times, "clips_per_s": cfg["batch_size"] / seconds,
            "gflop_per_step": flops / 1e9, "hardware_gflop_per_step": hardware_flops / 1e9,
            "achieved_gflops": flops / seconds / 1e9, "matmul_gflops": rate and rate / 1e9,
            "fraction_of_matmul": rate and hardware_flops / seconds / rate, "device_name": name,
            "peak_tflops": peak, "peak_source": peak_source, "mfu": peaks.mfu(flops, seconds, peak),
            "hfu": peaks.mfu(hardware_flops, seconds, peak), "peak_mem_gb": peak_mem / 1e9,
            "cpu_allocator": cpu_memory.allocator_settings()}


def configurations(args: argparse.Namespace) -> list[dict]:
    configs = []
    for task in args.tasks:
        for model in args.models:
            for size in args.sizes:
                for dtype in args.dtypes:
                    for attn_impl in args.attn_impls:
                        for compile_backend in args.compile:
                            for decoder_mask in args.decoder_masks if task == "pretrain" else ["-"]:
                                configs.append(dict(
                                    task=task, model=model, size=size, patch=args.patch_size,
                                    num_frames=args.num_frames, dtype=dtype, attn_impl=attn_impl,
                                    compile=None if compile_backend == "none" else compile_backend,
                                    decoder_mask=decoder_mask, mask_ratio=args.mask_ratio,
                                    decoder_depth=args.decoder_depth, batch_size=args.batch_size,
                                    warmup=args.warmup, iters=args.iters, device=args.device,
                                    use_checkpoint=args.use_checkpoint, peak_tflops=args.peak_tflops))
    return configs


def run_isolated(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "patches.perf.benchmark", "--one", json.dumps(cfg)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark configuration {cfg} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def markdown_table(rows: list[dict]) -> str:
    """The step rows. GFLOP/step: model FLOPs (with --use_checkpoint's recompute after a +); MFU (HFU with the
    recompute) against the spec peak; % of matmul: hardware FLOP/s against the measured matmul rate."""
    head = ("| task | model | size/patch | patches/frame | dtype | attention | decoder mask | step s | clips/s | "
            "GFLOP/step | GFLOP/s | MFU (spec peak) | % of matmul | peak mem GB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        attention = r["attention"] + (f" + compile ({r['compile']})" if r["compile"] else "")
        hardware = r.get("hardware_gflop_per_step", r["gflop_per_step"])
        gflop = f"{r['gflop_per_step']:.0f}" + (f" + {hardware - r['gflop_per_step']:.0f} recompute"
                                               if hardware > r["gflop_per_step"] else "")
        mfu = percent(r.get("mfu")) + (f" (HFU {percent(r.get('hfu'))})" if hardware > r["gflop_per_step"] else "")
        mfu += f" of {r['peak_tflops']:.0f}" if r.get("peak_tflops") else ""
        lines.append(f"| {r['task']} | ViT-{r['model'][0].upper()} | {r['size']}/{r['patch']} | {r['patches_per_frame']} | "
                     f"{r['dtype']} | {attention} | {r['decoder_mask']} | {r['step_s']:.3f} | {r['clips_per_s']:.2f} | "
                     f"{gflop} | {r['achieved_gflops']:.0f} | {mfu} | {percent(r['fraction_of_matmul'])} | "
                     f"{r['peak_mem_gb']:.2f} |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["pretrain", "finetune"], choices=sorted(STEP_FNS))
    p.add_argument("--models", nargs="+", default=["small"], help="ViT sizes: micro tiny small base large huge")
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 288], help="input sizes (224 -> 196 patches/frame)")
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--attn_impls", nargs="+", default=["auto"], choices=["auto", "sdpa", "math"],
                   help="attention paths to compare (auto: what the run scripts choose)")
    p.add_argument("--compile", nargs="+", default=["none"], metavar="BACKEND",
                   help="torch.compile backends to compare; none = eager")
    p.add_argument("--decoder_masks", nargs="+", default=["none"], choices=["none", "run_cell"])
    p.add_argument("--mask_ratio", type=float, default=0.9)
    p.add_argument("--decoder_depth", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--use_checkpoint", action="store_true", help="pre-training with activation checkpointing, "
                   "as the run scripts' --use_checkpoint (less memory: the largest batch that fits)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--iters", type=int, default=5, help="timed steps; the median is reported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the device's dense peak TFLOP/s for MFU (default: the spec table's, patches/perf/peaks.py)")
    p.add_argument("--gpus_per_node", type=int, default=None,
                   help="GPUs sharing this machine's cores: the loader gets cores / GPUs workers (default: the "
                        "visible GPUs, at least 1)")
    p.add_argument("--no_loader", action="store_true", help="skip the data-loader measurement")
    p.add_argument("--loader_workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    p.add_argument("--loader_num_sample", type=int, nargs="+", default=[1, 2], help="clips per decoded video")
    p.add_argument("--loader_repeats", type=int, default=1,
                   help="loader runs per configuration; the best counts (for a machine with other load)")
    p.add_argument("--json", default=None, help="write all figures here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = get_args_parser().parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"CPU allocator: {cpu_memory.allocator_settings()}", flush=True)
    for cfg in configurations(args):
        rows.append(run_isolated(cfg))
        r = rows[-1]
        print(f"  {cfg['task']} {cfg['model']} {cfg['size']}/{cfg['patch']} {cfg['dtype']} {r['attention']} "
              f"compile {cfg['compile']} decoder mask {cfg['decoder_mask']}: {r['step_s']:.3f} s/step, "
              f"{100 * r['fraction_of_matmul']:.0f}% of matmul", flush=True)
    print(markdown_table(rows))
    loader_rows = [] if args.no_loader else measure_loaders(args)
    if loader_rows:
        from patches.perf import loader_bench
        print(f"\nData loader ({loader_rows[0]['videos']}; 16 frames at stride 4 -> 224 px):")
        print(loader_bench.markdown_table(loader_rows))
        share = peaks.cores_per_gpu(args.gpus_per_node)
        print(f"\nWhich bounds a run: step clips/s against our loader's clips/s (pre-training, --num_sample 1) "
              f"with the {share} cores a GPU gets ({len(os.sched_getaffinity(0))} cores / "
              f"{args.gpus_per_node or max(peaks.visible_gpus(), 1)} GPUs)")
        print(bound_table(rows, loader_rows, share))
    if args.json:
        Path(args.json).write_text(json.dumps(rows + loader_rows, indent=2))


def measure_loaders(args: argparse.Namespace) -> list[dict]:
    """scripts/loader_bench.py's rows: our loader and the per-frame-PIL baseline on generated 320p mp4s."""
    from patches.perf import loader_bench
    workers = sorted(set(args.loader_workers) | {peaks.cores_per_gpu(args.gpus_per_node)})  # + a GPU's share
    argv = ["--workers", *map(str, workers), "--num_sample", *map(str, args.loader_num_sample),
            "--repeats", str(args.loader_repeats), "--device", args.device]
    return [{"task": "loader", **r} for r in loader_bench.run(loader_bench.parse_args(argv))]


def bound_table(step_rows: list[dict], loader_rows: list[dict], cores_per_gpu: int) -> str:
    """Per pre-training step row: its clips/s, the loader's with ``cores_per_gpu`` workers, and which bounds."""
    ours = {r["workers"]: r["clips_per_s"] for r in loader_rows if r["pipeline"] == "ours" and r["num_sample"] == 1}
    loader = ours[cores_per_gpu]
    lines = [f"| step | step clips/s | loader clips/s, {cores_per_gpu} workers (a GPU's cores) | bound |",
             "|---|---|---|---|"]
    for r in step_rows:
        if r["task"] == "pretrain":
            lines.append(f"| ViT-{r['model'][0].upper()} {r['patches_per_frame']} {r['dtype']} {r['decoder_mask']} | "
                         f"{r['clips_per_s']:.2f} | {loader:.1f} | {peaks.bound(r['clips_per_s'], loader)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
