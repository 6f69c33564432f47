"""Attention for the video ViT blocks: timm's BEiT attention with an in-place CPU path, and ``--attn_impl``.

The blocks carry timm's ``fused_attn`` switch: True runs torch's scaled_dot_product_attention, False the
explicit matmul + softmax path of :class:`BlockAttention`. ``--attn_impl auto`` times both on the run's shapes
and keeps the faster (the best path differs from machine to machine), remembering the choice in a cache file;
on CUDA in bf16 or fp16 it takes SDPA untimed (:func:`untimed_choice`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.beit import Attention as BeitAttention

from patches.models.errors import ModelError
from patches.utils.files import write_atomically


class MatmulSoftmaxAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v over [B, H, N, d] on CPU, with one [B*H, N, N] buffer each way, filled in place.

    The plain ops allocate the scores, then the probabilities, and in backward two more N x N gradients:
    at the pre-training decoder's 1568 tokens each is 30 MB in bf16, fresh from the system every time.
    Here the scale rides on the matmul, softmax and its backward overwrite their input, and softmax runs on
    a 3-D view (on CPU, bf16 softmax over the last axis of a 4-D tensor is several times slower). One ViT-S
    decoder layer's attention, forward + backward in bf16: 42-46 against 50-58 ms; see PERFORMANCE.md for steps.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        b, h, n, d = q.shape
        q, k, v = (t.reshape(b * h, n, d) for t in (q, k, v))
        with torch.autocast(q.device.type, enabled=False):  # inputs come in one dtype; out= needs no casts
            probs = torch.baddbmm(q.new_empty(()).expand(b * h, n, n), q, k.transpose(1, 2), beta=0, alpha=scale)
            torch.softmax(probs, dim=-1, out=probs)
            out = torch.bmm(probs, v)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return out.view(b, h, n, d)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v, probs = ctx.saved_tensors
        shape = grad_out.shape
        grad_out = grad_out.reshape(q.shape)
        with torch.autocast(q.device.type, enabled=False):
            grad_scores = torch.bmm(grad_out, v.transpose(1, 2))
            grad_v = torch.bmm(probs.transpose(1, 2), grad_out)
            torch._softmax_backward_data(grad_scores, probs, -1, probs.dtype, grad_input=grad_scores)
            grad_q = torch.bmm(grad_scores, k).mul_(ctx.scale)
            grad_k = torch.bmm(grad_scores.transpose(1, 2), q).mul_(ctx.scale)
        return grad_q.view(shape), grad_k.view(shape), grad_v.view(shape), None


class BlockAttention(BeitAttention):
    """timm's BEiT attention (VideoMAE's layout) whose matmul + softmax path is :class:`MatmulSoftmaxAttention`.

    The plain matmul + softmax ops remain for CUDA (whose autocast runs softmax in fp32), compiled graphs
    (inductor fuses them itself) and dropout on the attention map; every other path is timm's own.
    """

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        if (self.fused_attn or shared_rel_pos_bias is not None or self.relative_position_bias_table is not None
                or self.qkv_bias_separate):
            return super().forward(x, shared_rel_pos_bias)
        b, n, c = x.shape
        bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if q.device.type != "cpu" or torch.compiler.is_compiling() or (self.training and self.attn_drop.p > 0):
            scores = (q * self.scale) @ k.transpose(-2, -1)
            attn = self.attn_drop(scores.flatten(0, 1).softmax(dim=-1).view_as(scores))
            out = attn @ v
        else:
            out = MatmulSoftmaxAttention.apply(q, k, v, self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


def set_fused_attention(model: nn.Module, fused: bool) -> None:
    """Choose scaled_dot_product_attention (True) or explicit matmul + softmax (False) in every block."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


ATTN_IMPLS = ("auto", "sdpa", "math")
PATHS = ("sdpa", "math")
_CHOICES: dict[str, str] = {}  # this process's choices of ``auto``, by :func:`auto_cache_key`


def configure_attention(model: nn.Module, impl: str, device: torch.device, amp_dtype: torch.dtype | None,
                        batch_size: int = 2) -> str:
    """Set every block's attention path for ``--attn_impl``; returns the path chosen.

    ``auto`` times both paths on this run's shapes (:func:`choose_attention_path`); in a process group rank 0
    chooses and the others follow, so that every rank computes the same way.
    """
    if impl not in ATTN_IMPLS:
        raise ModelError(f"--attn_impl must be one of {', '.join(ATTN_IMPLS)}, got {impl!r}")
    path = impl
    if impl == "auto":
        import torch.distributed as dist
        spread = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        choice = [choose_attention_path(model, device, amp_dtype, batch_size)
                  if not spread or dist.get_rank() == 0 else None]
        if spread:
            dist.broadcast_object_list(choice, src=0)
        path = choice[0]
    set_fused_attention(model, path == "sdpa")
    return path


def choose_attention_path(model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None,
                          batch_size: int = 2, cache_file: Path | None = None) -> str:
    """``auto``: the faster path for the model's widest-token attention layer (its last one: the decoder's in
    pre-training, the encoder's in fine-tuning) at the grid's token count, in this dtype, at this batch.

    The choice is remembered per (device, dtype, shape) in this process and in :func:`auto_cache_file`,
    so that later runs on the same machine skip the timing.
    """
    layers = [m for m in model.modules() if isinstance(m, BlockAttention)]
    if not layers:  # nothing to choose for
        return "sdpa"
    if untimed_choice(device, amp_dtype):
        print(f"Attention auto: sdpa (CUDA in {amp_dtype}: its flash / memory-efficient kernels, not timed)")
        return "sdpa"
    attn, tokens = layers[-1], model.grid.num_tokens
    key = auto_cache_key(attn, device, amp_dtype, batch_size, tokens)
    cache_file = cache_file or auto_cache_file()
    if key not in _CHOICES:
        _CHOICES.update(_read_cache(cache_file))
    if key in _CHOICES:
        print(f"Attention auto: {_CHOICES[key]} (measured before for {key}, cached in {cache_file})")
        return _CHOICES[key]
    seconds = time_attention_paths(attn, device, amp_dtype, batch_size, tokens)
    path = min(PATHS, key=seconds.__getitem__)
    print(f"Attention auto: {path} ({', '.join(f'{p} {1e3 * seconds[p]:.2f} ms' for p in PATHS)} per forward + "
          f"backward of one attention layer at {key})")
    _CHOICES[key] = path
    _write_cache(cache_file, key, path)
    return path


def untimed_choice(device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """Whether ``auto`` takes SDPA without timing: on CUDA in bf16 or fp16 its flash and memory-efficient kernels
    never build the N x N scores. Timed at batch 2 the explicit path may still win, and then a real batch would
    build gigabytes of fp32 scores per decoder layer."""
    return device.type == "cuda" and amp_dtype in (torch.bfloat16, torch.float16)


def time_attention_paths(attn: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, batch_size: int,
                         tokens: int, repeats: int = 3) -> dict[str, float]:
    """Median seconds of a forward + backward of a copy of ``attn`` on random [batch, tokens, dim] input,
    per path (after one untimed pass each). The global RNGs are left as they were."""
    # The input (and dropout, in train mode) draw from torch's RNGs. Without the fork, a run that times the paths
    # would draw its drop-path numbers from another stream than one that reads its choice from the cache: the
    # same command would train differently, and an interrupted run would not resume to an uninterrupted one's.
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _time_attention_paths(attn, device, amp_dtype, batch_size, tokens, repeats)


def _time_attention_paths(attn: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, batch_size: int,
                          tokens: int, repeats: int) -> dict[str, float]:
    import copy
    import statistics
    import time

    layer = copy.deepcopy(attn).to(device).train()
    x = torch.randn(batch_size, tokens, layer.qkv.in_features, device=device, requires_grad=True)
    seconds = {}
    for path in PATHS:
        layer.fused_attn = path == "sdpa"
        times = []
        for i in range(repeats + 1):
            _synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = layer(x)
            out.float().sum().backward()
            _synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
        seconds[path] = statistics.median(times)
    return seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def auto_cache_key(attn: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, batch_size: int,
                   tokens: int) -> str:
    """'cuda NVIDIA H100 80GB HBM3 | bf16 | 1568 tokens x 384 dim, 6 heads, batch 2': what the timing depends on."""
    dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp_dtype]
    return (f"{device.type} {_device_name(device)} | {dtype} | {tokens} tokens x {attn.qkv.in_features} dim, "
            f"{attn.num_heads} heads, batch {batch_size}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def auto_cache_file() -> Path:
    """Where ``auto``'s choices are kept: $PATCHES_CACHE_DIR, else $XDG_CACHE_HOME/patches or ~/.cache/patches."""
    folder = os.environ.get("PATCHES_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "patches")
    return Path(folder) / "attn_auto.json"


def _read_cache(path: Path) -> dict[str, str]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in entries.items() if v in PATHS} if isinstance(entries, dict) else {}


def _write_cache(path: Path, key: str, path_chosen: str) -> None:
    """Add one choice to the cache file, atomically; a cache that cannot be written only costs the timing again."""
    entries = {**_read_cache(path), key: path_chosen}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(entries, indent=1, sort_keys=True)))
    except OSError as e:
        print(f"Attention auto: could not write the cache {path} ({e}); the next run times again")
