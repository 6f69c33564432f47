"""YUV 4:2:0 to RGB as torch operations, batched, on any device: the integer arithmetic of swscale's unscaled
``yuv420p -> rgb24`` converter, the one PyAV's ``VideoReformatter`` runs for the CPU loader path, so that a CUDA
run's device-side conversion (:mod:`patches.data.device_transforms`) gives the loader's RGB values.

swscale (x86, 64-bit) converts with 13-bit coefficients derived from its table for the frame's colorspace
(BT.601 when unspecified, BT.709, FCC, SMPTE 240M, BT.2020) and range (limited, or full for ``yuvj420p`` and frames
flagged full range): each of the luma and chroma terms is multiplied by ``pmulhw`` (``(a * b) >> 16``, so floored
term by term), the terms are summed and saturated to 0..255; each chroma sample serves its 2 x 2 luma pixels
(nearest, no interpolation). Here the same sums in int32 give the same bytes; on other builds of swscale (its plain
C path) values may differ by a step of rounding."""
from __future__ import annotations

from typing import Any, Sequence

import torch

# swscale's ff_yuv2rgb_coeffs: (crv, cbu, cgu, cgv) * 65536, indexed by AVColorSpace
_UNSPECIFIED = (104597, 132201, 25675, 53279)
_TABLE = {1: (117489, 138438, 13975, 34925), 4: (104448, 132798, 24759, 53109), 7: (117579, 136230, 16907, 35559),
          9: (110013, 140363, 12277, 42626), 10: (110013, 140363, 12277, 42626)}
# (luma scale, luma offset, v->r, u->g, v->g, u->b): the int16 factors swscale's SIMD converter multiplies by
COEFFICIENTS = 6


def _round16(x: int) -> int:
    return (x + 32768) >> 16


def _times_224_over_255(x: int) -> int:
    return x * 224 // 255 if x >= 0 else -((-x) * 224 // 255)  # C's int64 division truncates toward zero


def swscale_coefficients(colorspace: int, full_range: bool) -> tuple[int, int, int, int, int, int]:
    """The factors swscale converts a frame of AVColorSpace ``colorspace`` with (see the module docstring)."""
    crv, cbu, cgu, cgv = _TABLE.get(int(colorspace), _UNSPECIFIED)
    cgu, cgv = -cgu, -cgv
    cy, oy = 1 << 16, 0
    if full_range:
        crv, cbu, cgu, cgv = (_times_224_over_255(c) for c in (crv, cbu, cgu, cgv))
    else:
        cy, oy = (cy * 255) // 219, 16 << 16
    return (_round16(cy * 8192), _round16(oy * 8), _round16(crv * 8192), _round16(cgu * 8192),
            _round16(cgv * 8192), _round16(cbu * 8192))


def frame_colour(frame: Any) -> tuple[int, bool]:
    """``(colorspace, full_range)`` of a PyAV frame as swscale reads them: full range for ``yuvj420p`` and for frames
    flagged JPEG (full) range."""
    return int(frame.colorspace), frame.format.name == "yuvj420p" or int(frame.color_range) == 2


def coefficients_tensor(colours: Sequence[tuple[int, bool]]) -> torch.Tensor:
    """int32 ``[B, 6]``: :func:`swscale_coefficients` of each clip's ``(colorspace, full_range)``."""
    return torch.tensor([swscale_coefficients(*c) for c in colours], dtype=torch.int32).reshape(-1, COEFFICIENTS)


def yuv420_to_rgb(luma: torch.Tensor, u: torch.Tensor, v: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """uint8 planes ``luma [B, ..., H, W]``, ``u`` and ``v [B, ..., H/2, W/2]`` (H, W even) -> uint8
    ``[B, ..., H, W, 3]`` RGB, clip ``b`` converted with ``coefficients[b]`` (:func:`coefficients_tensor`)."""
    shape = (-1,) + (1,) * (luma.dim() - 1)
    k = [coefficients[:, i].to(luma.device).view(shape) for i in range(COEFFICIENTS)]
    y = ((luma.to(torch.int32) * 8 - k[1]) * k[0]) >> 16
    u = u.to(torch.int32) * 8 - 1024
    v = v.to(torch.int32) * 8 - 1024
    red, blue = (v * k[2]) >> 16, (u * k[5]) >> 16
    green = ((u * k[3]) >> 16) + ((v * k[4]) >> 16)
    chroma = torch.stack([red, green, blue], dim=-1)  # [B, ..., H/2, W/2, 3]
    chroma = chroma.repeat_interleave(2, dim=-3).repeat_interleave(2, dim=-2)
    return (y.unsqueeze(-1) + chroma).clamp_(0, 255).to(torch.uint8)
