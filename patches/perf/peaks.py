"""MFU against a GPU's spec peak, and which side bounds a run: the step or the data loader with the cores one
GPU gets.

MFU (model FLOPs utilisation) is the model's FLOPs per second over the device's dense peak from its data
sheet, the convention of PaLM and Megatron. Activation checkpointing (``--use_checkpoint``) recomputes the
forward in the backward: those FLOPs count in hardware FLOPs (HFU), not in model FLOPs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SpecPeak:
    """A GPU's dense (no sparsity) tensor-core peak per second from its data sheet, in TFLOP/s."""

    name: str
    match: tuple[str, ...]  # all of these in torch.cuda.get_device_name(), lower case
    bf16: float
    tf32: float


# Dense peaks (the data sheets print twice these "with sparsity"). The SXM H100's board name has no "SXM":
# "NVIDIA H100 80GB HBM3"; PCIe and NVL are named, so they are matched first; the first match wins.
SPEC_PEAKS = (
    SpecPeak("H100 PCIe", ("h100", "pcie"), 756.0, 378.0),
    SpecPeak("H100 NVL", ("h100", "nvl"), 835.0, 418.0),
    SpecPeak("H100 SXM", ("h100",), 989.0, 494.5),
    SpecPeak("GH200", ("gh200",), 989.0, 494.5),
    SpecPeak("H200", ("h200",), 989.0, 494.5),
    SpecPeak("H800", ("h800",), 989.0, 494.5),
    SpecPeak("B200", ("b200",), 2250.0, 1100.0),
    SpecPeak("A100", ("a100",), 312.0, 156.0),
    SpecPeak("A800", ("a800",), 312.0, 156.0),
    SpecPeak("L40S", ("l40s",), 362.0, 183.0),
    SpecPeak("L40", ("l40",), 181.0, 90.5),
    SpecPeak("L4", ("l4",), 121.0, 60.0),
    SpecPeak("A10", ("a10",), 125.0, 62.5),
    SpecPeak("RTX 6000 Ada", ("rtx 6000 ada",), 364.0, 182.0),
    SpecPeak("RTX A6000", ("rtx a6000",), 155.0, 77.4),
)


def spec_peak(device_name: str) -> SpecPeak | None:
    """The table's entry for a CUDA device name (``torch.cuda.get_device_name``), or None when unknown.
    The first entry whose words are all in the name wins (the table lists A100 before A10, L40S before L4)."""
    words = device_name.lower()
    if "a10g" in words:  # AWS's A10G is a cut A10: not in the table
        return None
    return next((p for p in SPEC_PEAKS if all(m in words for m in p.match)), None)


def peak_tflops(device_name: str, dtype: str, override: float | None = None) -> tuple[float | None, str]:
    """(TFLOP/s, where it comes from): ``override`` (--peak_tflops), else the spec table's bf16 (fp16) or TF32
    (fp32) dense peak for the device, else (None, why)."""
    if override:
        return float(override), "--peak_tflops"
    peak = spec_peak(device_name)
    if peak is None:
        return None, f"no spec peak for {device_name!r}: pass --peak_tflops"
    value = peak.tf32 if dtype == "fp32" else peak.bf16
    return value, f"{peak.name} {'TF32' if dtype == 'fp32' else 'bf16'} dense spec"


def mfu(flops_per_step: float, step_s: float, peak: float | None) -> float | None:
    """FLOPs per second over ``peak`` TFLOP/s (a fraction), None without a peak."""
    return flops_per_step / step_s / (peak * 1e12) if peak else None


def visible_gpus() -> int:
    """GPUs this process can see (0 without CUDA)."""
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cores_per_gpu(gpus_per_node: int | None = None, cores: int | None = None) -> int:
    """The loader cores one GPU gets: this process's cores divided by the node's GPUs (default the visible
    GPUs, at least 1); at least 1."""
    cores = cores or len(os.sched_getaffinity(0))
    gpus = gpus_per_node if gpus_per_node else max(visible_gpus(), 1)
    return max(cores // max(gpus, 1), 1)


def bound(step_clips_per_s: float, loader_clips_per_s: float) -> str:
    """Which side bounds a run: the slower of the step and the loader."""
    return "loader" if loader_clips_per_s < step_clips_per_s else "step"
