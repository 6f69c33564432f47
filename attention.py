"""Attention for the video ViT blocks: timm's BEiT attention with an in-place CPU path, and ``--attn_impl``.

The blocks carry timm's ``fused_attn`` switch: True runs torch's scaled_dot_product_attention, False the
explicit matmul + softmax path of :class:`BlockAttention`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.beit import Attention as BeitAttention


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


def attention_path(impl: str, device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """Resolve ``--attn_impl``: 'sdpa' (torch's fused kernels) or 'math' (matmul, softmax, matmul).

    ``auto`` follows scripts/benchmark.py's measurements: on CPU with 16-bit autocast torch's flash kernel
    is the slowest part of the step, and plain matmul + softmax is faster; everywhere else SDPA wins.
    """
    if impl not in ATTN_IMPLS:
        raise ValueError(f"--attn_impl must be one of {', '.join(ATTN_IMPLS)}, got {impl!r}")
    if impl != "auto":
        return impl
    return "math" if device.type == "cpu" and amp_dtype is not None else "sdpa"


def configure_attention(model: nn.Module, impl: str, device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """Set every block's attention path for ``--attn_impl``; returns the path chosen."""
    path = attention_path(impl, device, amp_dtype)
    set_fused_attention(model, path == "sdpa")
    return path
