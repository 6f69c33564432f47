"""The self-check's context: how big its checks are (quick or full), the device, its work folder, and what the
checks share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the checkout (the package is installed editable from it)


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
# Full: the loader reads 8 distinct files of Kinetics' shape (568x320, 10 s at 25 fps, one keyframe per 10 s),
# each clip a seek and a decode as in a real epoch, not four short files.
FULL = Profile("base", 4, 16, ("224/16", "288/16"), 8, 2e-4, 32, 2, 6,
               ("--input_size", "112", "--patch_size", "16", "--num_frames", "8", "--sampling_rate", "2"), 64,
               (8, 320, 10.0), (), 8.0, "inductor", 2)


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
    gpus_per_node: int | None = None  # GPUs sharing this machine's cores (None: the visible GPUs, at least 1)
    peak_tflops: float | None = None  # the device's dense peak for MFU (None: the spec table's)
