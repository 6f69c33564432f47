"""Self-check rows run in this process: the environment, decoding, and training steps on a fixed batch (eager
and compiled)."""
from __future__ import annotations

import math
import os
import platform
import time
from importlib import metadata
from typing import Any

import numpy as np
import torch

from patches.perf.selfcheck_context import PACKAGES, Context, Skip

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
    from patches.models.factory import create_video_model
    from patches.train.optim import OptimizerConfig, build_optimizer
    from patches.train.reconstruction import MaskedReconstruction
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


# ---- the GPU run's settings ---------------------------------------------------------------------------

def check_gpu_settings(ctx: Context) -> dict[str, Any]:
    """What a CUDA run decides before its first step: TF32 on, SDPA untimed in bf16, Python.h for --compile,
    SyncBatchNorm under DDP (issue 27, items 13, 14, 17 and 10)."""
    if ctx.device.type != "cuda":
        raise Skip("TF32, SDPA's untimed choice and SyncBatchNorm are CUDA's settings; needs CUDA")
    return gpu_settings(ctx.device)


def gpu_settings(device: torch.device) -> dict[str, Any]:
    """The decisions of :func:`check_gpu_settings`, made for ``device``; raises on any that is wrong."""
    from patches.config.checks import _compile_problems
    from patches.grid import make_grid
    from patches.models.attention import choose_attention_path
    from patches.models.factory import create_video_model
    from patches.models.probes import LinearProbe
    from patches.utils.devices import enable_tf32
    from patches.utils.distributed import synchronise_batch_norms

    problems = []
    if not (enable_tf32(device, deterministic=False) and torch.backends.cuda.matmul.allow_tf32):
        problems.append("TF32 is off for fp32 matmuls")
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=make_grid(4, 2, 32, 8), decoder_depth=1)
    path = choose_attention_path(model, device, torch.bfloat16)
    if path != "sdpa":
        problems.append(f"--attn_impl auto chose {path} in bf16")
    problems += _compile_problems("inductor", device)
    if not isinstance(synchronise_batch_norms(LinearProbe(8, 2), device).bn, torch.nn.SyncBatchNorm):
        problems.append("the linear probe's BatchNorm is not synchronised under DDP")
    if problems:
        raise RuntimeError("; ".join(problems))
    return {"tf32": True, "attn_auto_bf16": path, "python_h": True, "sync_batch_norm": True}


# ---- host syncs per update ----------------------------------------------------------------------------

def check_host_syncs(ctx: Context) -> dict[str, Any]:
    """A few real updates of the training step, the ranks' agreement included, under CUDA's sync debug mode: at
    most one synchronising call per update, the agreement's read (issue 27 item 9)."""
    if ctx.device.type != "cuda":
        raise Skip("torch.cuda.set_sync_debug_mode watches CUDA's synchronising calls; needs CUDA (on CPU, "
                   "tests/test_update_sync.py counts the host reads per update)")
    figures = host_syncs(ctx.device, CudaSyncWarnings)
    if figures["syncs_per_update"] > 1:
        raise RuntimeError(f"{figures['syncs_per_update']:g} synchronising calls per update, more than one; the "
                           f"first: {figures['first_sync']}")
    return figures


class CudaSyncWarnings:
    """While on, every synchronising CUDA call warns (``torch.cuda.set_sync_debug_mode``); :attr:`count` counts
    them and :attr:`first` keeps the first one's message."""

    def __enter__(self) -> "CudaSyncWarnings":
        import warnings
        self._record = warnings.catch_warnings(record=True)
        self._warnings = self._record.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in self._warnings if "synchroniz" in str(w.message)]
        self._record.__exit__(*exc)
        self.count, self.first = len(syncs), syncs[0] if syncs else None


def host_syncs(device: torch.device, watch: Any, updates: int = 4, update_freq: int = 2) -> dict[str, Any]:
    """``updates`` updates of ``update_freq`` micro-steps of a micro pre-training model (bf16 on CUDA), as the
    epoch loop makes them, after one update of warm-up; ``watch()``: a context manager that counts what it sees
    (``count``, ``first``) while the updates run, e.g. :class:`CudaSyncWarnings`."""
    from patches.grid import make_grid
    from patches.models.factory import create_video_model
    from patches.train.optim import OptimizerConfig, build_optimizer
    from patches.train.reconstruction import MaskedReconstruction
    from patches.train.update_sync import RankErrors, UpdateSync
    from patches.train.updater import Updater

    grid = make_grid(4, 2, 32, 8)
    torch.manual_seed(0)
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=grid, decoder_depth=1).to(device)
    optimizer = build_optimizer(OptimizerConfig("adamw", lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.95)),
                                model)
    updater, sync = Updater(model, optimizer, update_freq, clip_grad=1.0), UpdateSync(device, RankErrors())
    loss_fn = MaskedReconstruction(grid, device, torch.bfloat16 if device.type == "cuda" else None)
    batch = fixed_batch(grid, 2)  # (on the host, pinned on CUDA, as the loader gives it)
    batch = tuple(t.pin_memory() for t in batch) if device.type == "cuda" else batch
    losses: list[float] = []

    def update() -> None:
        for k in range(update_freq):
            loss = loss_fn(model, batch)
            sync.add_loss(loss)
            updater(loss, k + 1 == update_freq, lambda norm: agreed_norm(sync.agree(norm, 0, [0.0]), losses))

    model.train()
    updater.start_epoch()
    update()  # (first-use allocations and library loads sync once; not the steady state)
    with watch() as seen:
        for _ in range(updates):
            update()
    return {"updates": updates, "update_freq": update_freq, "syncs_per_update": seen.count / updates,
            "first_sync": seen.first, "first_loss": losses[0], "last_loss": losses[-1]}


def agreed_norm(agreed: Any, losses: list[float]) -> float | None:
    """The epoch loop's use of an agreement, in short: keep the losses, return the gradient norm."""
    losses += agreed.losses
    return agreed.grad_norm
