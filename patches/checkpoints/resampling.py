"""Resampling the two grid-dependent tensors of a checkpoint to another patch grid: the patch-embedding kernel
(another tubelet or patch size) and a learned position table (another token grid)."""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F

from patches.models.layers import pi_resize_kernel


def _temporal_matrix(t_old: int, t_new: int) -> torch.Tensor:
    """A [t_new, t_old]: old slice k spreads over the new slices in proportion to their time overlap.

    Each column sums to 1, so the kernel's sum over time (its response to a still clip) is unchanged.
    """
    a = torch.zeros(t_new, t_old, dtype=torch.float64)
    for j in range(t_new):
        for k in range(t_old):
            lo = max(Fraction(j, t_new), Fraction(k, t_old))
            hi = min(Fraction(j + 1, t_new), Fraction(k + 1, t_old))
            if hi > lo:
                a[j, k] = float((hi - lo) * t_old)
    return a


def resize_patch_embed(weight: torch.Tensor, new_kernel: tuple[int, int, int]) -> torch.Tensor:
    """Resample a Conv3d patch-embedding weight [D, C, t, ph, pw] to the kernel (t', ph', pw').

    Space: FlexiViT's pseudo-inverse resize, :func:`model_layers.pi_resize_kernel` (the same function
    flexible-grid pre-training applies on the fly), here in float64.

    Time (tubelet change): old slice k is spread over the new slices by time overlap (2 -> 1 sums the
    two slices, 1 -> 2 splits the slice evenly, 4 -> 2 sums pairs). The sum over time is preserved, so
    a still clip (each frame repeated) gives exactly the same response; motion selectivity is coarsened
    when the tubelet shrinks and spread evenly when it grows.
    """
    if weight.dim() != 5:
        raise ValueError(f"patch-embedding weight must be [D, C, t, ph, pw], got {list(weight.shape)}")
    t_new, ph_new, pw_new = (int(k) for k in new_kernel)
    t_old = weight.shape[2]
    w = weight.detach().to(torch.float64)
    if t_old != t_new:
        w = torch.einsum("jk,dckhw->dcjhw", _temporal_matrix(t_old, t_new), w)
    return pi_resize_kernel(w, (ph_new, pw_new)).to(weight.dtype)


def interpolate_pos_embed(pos: torch.Tensor, old_grid_shape: tuple[int, int, int],
                          new_grid_shape: tuple[int, int, int]) -> torch.Tensor:
    """Resample a position table [1, N, D] from token grid T x H x W to T' x H' x W'.

    Bicubic in space (per time step), then linear in time. A leading extra row (cls token, when
    N == T*H*W + 1) is carried over unchanged. The same grid returns an unchanged copy.
    """
    old_grid_shape = tuple(int(s) for s in old_grid_shape)
    new_grid_shape = tuple(int(s) for s in new_grid_shape)
    n_old = math.prod(old_grid_shape)
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[1] not in (n_old, n_old + 1):
        raise ValueError(f"position table {list(pos.shape)} does not fit a {'x'.join(map(str, old_grid_shape))} "
                         f"token grid ({n_old} tokens, or {n_old + 1} with a cls token)")
    extra, body = pos[:, :pos.shape[1] - n_old], pos[:, pos.shape[1] - n_old:]
    if old_grid_shape == new_grid_shape:
        return pos.detach().clone()
    (t, h, w), (t2, h2, w2), d = old_grid_shape, new_grid_shape, pos.shape[-1]
    work = torch.float64 if pos.dtype == torch.float64 else torch.float32
    x = body.detach().to(work).reshape(t, h, w, d)
    if (h, w) != (h2, w2):
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(h2, w2), mode="bicubic", align_corners=False)
        x = x.permute(0, 2, 3, 1)  # [t, h2, w2, d]
    if t != t2:
        x = x.permute(1, 2, 3, 0).reshape(h2 * w2, d, t)
        x = F.interpolate(x, size=t2, mode="linear", align_corners=False)
        x = x.reshape(h2, w2, d, t2).permute(3, 0, 1, 2)
    return torch.cat([extra.detach(), x.reshape(1, t2 * h2 * w2, d).to(pos.dtype)], dim=1)
