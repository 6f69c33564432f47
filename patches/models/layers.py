"""Layers of the video ViT shared by pre-training and fine-tuning, up to the trunk :class:`VideoEncoder`.

Parameter names follow VideoMAE's released checkpoints (``patch_embed.proj``,
``blocks.N.attn.qkv``/``q_bias``/``v_bias``), so they load as they are.
The transformer block is timm's BEiT block, whose layout is exactly VideoMAE's.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from timm.layers import trunc_normal_
from timm.models.beit import Block

from patches.grid import PatchGrid
from patches.models.attention import BlockAttention
from patches.models.errors import ModelError

POS_EMBED_TYPES = ("1d", "3d", "learned")

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class PatchEmbed(nn.Module):
    """Cut a clip into tubelet x patch x patch cubes and project each to a token (one Conv3d).

    ``grid`` (default: the model's) may name another patch size with the same tubelet and channels: the
    kernel is then resized on the fly by :func:`pi_resize_kernel` (FlexiViT), differentiably.
    """

    def __init__(self, grid: PatchGrid, embed_dim: int):
        super().__init__()
        self.grid = grid
        kernel = (grid.tubelet_size, grid.patch_size, grid.patch_size)
        self.proj = nn.Conv3d(grid.in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def check_input(self, x: torch.Tensor, grid: PatchGrid | None = None) -> None:
        g = grid or self.grid
        if (g.tubelet_size, g.in_chans) != (self.grid.tubelet_size, self.grid.in_chans):
            raise ValueError(f"grid {g.spec} has tubelet {g.tubelet_size} and {g.in_chans} channels; the model's "
                             f"kernel has tubelet {self.grid.tubelet_size} and {self.grid.in_chans} channels "
                             f"(only the frame and patch sizes may change)")
        expected = (g.in_chans, g.num_frames, *g.input_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"model expects clips of shape [B, {', '.join(map(str, expected))}] "
                             f"({g.describe()}), got {list(x.shape)}")

    def kernel(self, grid: PatchGrid | None = None) -> torch.Tensor:
        """The Conv3d weight for ``grid``'s patch: the model's own, or its PI resize."""
        g = grid or self.grid
        return pi_resize_kernel(self.proj.weight, (g.patch_size, g.patch_size))

    def forward(self, x: torch.Tensor, grid: PatchGrid | None = None) -> torch.Tensor:
        self.check_input(x, grid)
        if grid is None or grid.patch_size == self.grid.patch_size:
            return self.proj(x).flatten(2).transpose(1, 2)
        stride = (grid.tubelet_size, grid.patch_size, grid.patch_size)
        return F.conv3d(x, self.kernel(grid), self.proj.bias, stride=stride).flatten(2).transpose(1, 2)

    def embed_selected(self, x: torch.Tensor, index: torch.Tensor, grid: PatchGrid | None = None) -> torch.Tensor:
        """Tokens [B, K, D] of only the tubelets in ``index`` [B, K]: the same as ``forward(x)`` then a gather.

        The MAE encoder sees ~10% of the tubelets, so projecting only those (a matmul over the gathered
        pixel cubes) skips ~90% of the embedding's work, forward and backward.
        """
        self.check_input(x, grid)
        g = grid or self.grid
        cubes = rearrange(x, "b c (t q) (h p1) (w p2) -> b (t h w) (c q p1 p2)",
                          q=g.tubelet_size, p1=g.patch_size, p2=g.patch_size)
        return F.linear(gather_tokens(cubes, index), self.kernel(grid).flatten(1), self.proj.bias)


def bilinear_resize_matrix(old_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """R [new_h*new_w, old_h*old_w], float64, with resize(x).flatten() == R @ x.flatten() (bilinear, no antialias)."""
    n_old = old_hw[0] * old_hw[1]
    basis = torch.eye(n_old, dtype=torch.float64).reshape(n_old, 1, *old_hw)
    resized = F.interpolate(basis, size=tuple(new_hw), mode="bilinear", align_corners=False, antialias=False)
    return resized.reshape(n_old, -1).T


@lru_cache(maxsize=64)
def _resize_matrix_f64(old_hw: tuple[int, int], new_hw: tuple[int, int], pinv: bool) -> torch.Tensor:
    """R, or pinv(R) [old, new], float64 on the CPU: made once per patch pair."""
    r = bilinear_resize_matrix(old_hw, new_hw)
    return torch.linalg.pinv(r) if pinv else r


# The resize matrices on their devices, in plain dicts (not lru_cache, which torch.compile traces through,
# putting a float64 pinv and a host copy in every step's graph); filled up front by prepare_resize_matrices.
_RESIZE_MATRICES: dict[tuple, torch.Tensor] = {}
MATRIX_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _resize_matrix(old_hw: tuple[int, int], new_hw: tuple[int, int], pinv: bool, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """R (or pinv(R) [old, new]) on the device, made once per patch pair so a step makes no host transfer."""
    key = (old_hw, new_hw, pinv, str(device), str(dtype))
    matrix = _RESIZE_MATRICES.get(key)
    if matrix is None:
        matrix = _RESIZE_MATRICES[key] = _resize_matrix_f64(old_hw, new_hw, pinv).to(device=device, dtype=dtype)
    return matrix


def prepare_resize_matrices(base_patch: int, patches: Sequence[int], device: torch.device) -> None:
    """Both resize matrices between ``base_patch`` and each of ``patches``, on ``device`` in every float dtype a
    step may ask for, so that a compiled step only looks them up."""
    for patch in patches:
        if patch != base_patch:
            for pinv in (True, False):
                for dtype in MATRIX_DTYPES:
                    _resize_matrix((base_patch, base_patch), (patch, patch), pinv, device, dtype)


def pi_resize_kernel(weight: torch.Tensor, new_hw: tuple[int, int]) -> torch.Tensor:
    """FlexiViT's pseudo-inverse resize of a patch kernel [..., ph, pw] to [..., ph', pw'], differentiable.

    With R the bilinear resize of a patch to the new size, the new kernel solves R^T w_new = w_old in the
    least-squares, minimum-norm sense, so that <resize(x), w_new> == <x, w_old>: exact for every x when the
    patch grows (R has full column rank), and for smooth patches when it shrinks. Computed in the weight's
    dtype with autocast off (a bf16 kernel would lose the resize's precision).
    """
    *lead, ph, pw = weight.shape
    new_hw = (int(new_hw[0]), int(new_hw[1]))
    if (ph, pw) == new_hw:
        return weight
    m = _resize_matrix((ph, pw), new_hw, True, weight.device, weight.dtype)
    with torch.autocast(weight.device.type, enabled=False):
        # Row form of w_new = pinv(R^T) w_old: w_new^T = w_old^T pinv(R).
        return (weight.reshape(-1, ph * pw) @ m).reshape(*lead, *new_hw)


def resize_patch_pixels(pixels: torch.Tensor, source: PatchGrid, grid: PatchGrid) -> torch.Tensor:
    """Per-token pixels [B, K, (q p p c)] laid out as :func:`modeling_pretrain.patchify`'s at ``source``'s patch
    -> the same at ``grid``'s patch, by the bilinear resize R of each tubelet slice and channel."""
    p, n = source.patch_size, grid.patch_size
    if p == n:
        return pixels
    r = _resize_matrix((p, p), (n, n), False, pixels.device, pixels.dtype)
    cubes = pixels.unflatten(-1, (source.tubelet_size, p * p, source.in_chans))
    return torch.einsum("nm,bkqmc->bkqnc", r, cubes).flatten(2)


def sincos_1d_table(positions: np.ndarray, dim: int) -> np.ndarray:
    """VideoMAE's table: channel j of position p is sin/cos(p / 10000^(2*(j//2)/dim)), sin on even j."""
    j = np.arange(dim)
    angles = positions[:, None].astype(np.float64) / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    table = np.empty_like(angles)
    table[:, 0::2] = np.sin(angles[:, 0::2])
    table[:, 1::2] = np.cos(angles[:, 1::2])
    return table


def _token_centres(n: int, reference: int) -> np.ndarray:
    """Positions of n tokens along an axis, on the scale of ``reference`` tokens over the same frame."""
    if n == reference:
        return np.arange(n)
    return (np.arange(n) + 0.5) * reference / n - 0.5


def sincos_3d_table(grid: PatchGrid, dim: int, reference: Sequence[int] | None = None) -> np.ndarray:
    """Factorised table: separate sin-cos channels for time, row and column of each token.

    ``reference`` (rows, cols) puts row i of h at (i + 0.5) * rows / h - 0.5 (columns alike), so a token
    covering the same part of the frame has the same position at every grid; default: the grid's own.
    """
    d_space = 2 * (dim // 6)
    d_time = dim - 2 * d_space
    ref_h, ref_w = (grid.h, grid.w) if reference is None else (int(reference[0]), int(reference[1]))
    t, h, w = np.meshgrid(np.arange(grid.t), _token_centres(grid.h, ref_h), _token_centres(grid.w, ref_w),
                          indexing="ij")
    return np.concatenate([sincos_1d_table(t.reshape(-1), d_time),
                           sincos_1d_table(h.reshape(-1), d_space),
                           sincos_1d_table(w.reshape(-1), d_space)], axis=1)


def build_pos_table(grid: PatchGrid, dim: int, kind: str = "1d",
                    reference: Sequence[int] | None = None) -> torch.Tensor:
    """Fixed position table [1, num_tokens, dim] for a grid: '1d' over the flat token index, or '3d'.

    ``reference``: the token rows/cols a '3d' table's coordinates are scaled to (see :func:`sincos_3d_table`).
    A '1d' table has none (its flat index means different places at different grids): any other than the
    grid's own is refused.
    """
    if kind == "3d":
        table = sincos_3d_table(grid, dim, reference)
    elif kind in ("1d", "learned"):  # learned tables start from the 1-D one
        if reference is not None and tuple(int(r) for r in reference) != (grid.h, grid.w):
            raise ModelError(f"a '{kind}' position table cannot be used at grid {grid.spec} of a model whose "
                             f"table is for {reference[0]}x{reference[1]} tokens per frame: its flat token index "
                             f"means different places at different grids; use --pos_embed 3d")
        table = sincos_1d_table(np.arange(grid.num_tokens), dim)
    else:
        raise ModelError(f"--pos_embed must be one of {', '.join(POS_EMBED_TYPES)}, got {kind!r}")
    return torch.from_numpy(table).float().unsqueeze(0)


def pos_table_at(cache: dict, grid: PatchGrid, dim: int, kind: str, reference: tuple[int, int],
                 device: torch.device) -> torch.Tensor:
    """The fixed table of ``grid`` on ``device``, built once and kept in ``cache`` (no host transfer per step)."""
    key = (grid.shape, device)
    if key not in cache:
        cache[key] = build_pos_table(grid, dim, kind, reference).to(device)
    return cache[key]


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], index [B, K] -> [B, K, D]; either may have batch 1 and is then broadcast."""
    dim = x.shape[-1]
    if x.shape[0] == 1:  # one table for every sample (position tables): a plain row lookup
        return x[0].index_select(0, index.reshape(-1)).view(*index.shape, dim)
    batch, n = x.shape[:2]
    # Row lookups in the flattened batch: on CPU about 3x faster than gather over an index expanded to D.
    rows = (index.expand(batch, -1) + n * torch.arange(batch, device=index.device).unsqueeze(1)).reshape(-1)
    return x.reshape(batch * n, dim).index_select(0, rows).view(batch, -1, dim)


class TransformerStack(nn.Module):
    """A list of blocks with optional activation checkpointing; holds ``blocks.N.*``."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 init_values: float | None = None, use_checkpoint: bool = False):
        super().__init__()
        rates = [float(r) for r in torch.linspace(0, drop_path_rate, depth, device="cpu")] if depth else []
        self.blocks = nn.ModuleList([
            Block(dim, num_heads, qkv_bias=qkv_bias, mlp_ratio=mlp_ratio, proj_drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=rates[i], init_values=init_values or None,
                  norm_layer=LayerNorm)
            for i in range(depth)])
        for block in self.blocks:
            block.attn.__class__ = BlockAttention  # same parameters, faster explicit path
        self.use_checkpoint = use_checkpoint

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and self.training and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class VideoEncoder(TransformerStack):
    """Patch embedding + position table + blocks: the trunk of both the MAE encoder and the classifier.

    ``pos_reference`` (rows, cols; default: the grid's own) scales a '3d' table's coordinates (see
    :func:`sincos_3d_table`); a model pre-trained on several grids keeps its finest grid's
    (:func:`patch_grid.position_reference`). ``grid`` arguments
    run the trunk at another grid (patch kernel PI-resized, the grid's '3d' table).
    """

    def __init__(self, grid: PatchGrid, embed_dim: int, depth: int, num_heads: int,
                 pos_embed: str = "1d", pos_reference: Sequence[int] | None = None, **block_kwargs: Any):
        super().__init__(embed_dim, depth, num_heads, **block_kwargs)
        self.grid = grid
        self.embed_dim = embed_dim
        self.pos_embed_type = pos_embed
        self.pos_reference = (grid.h, grid.w) if pos_reference is None else tuple(int(r) for r in pos_reference)
        self.patch_embed = PatchEmbed(grid, embed_dim)
        table = build_pos_table(grid, embed_dim, pos_embed, self.pos_reference if pos_embed == "3d" else None)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(table)
        else:
            # Rebuilt from the grid at construction, so it is not part of the state dict.
            self.register_buffer("pos_embed", table, persistent=False)
        self._pos_tables: dict = {}
        self._prepared_grids: tuple[PatchGrid, ...] = ()

    def set_pos_reference(self, reference: Sequence[int]) -> None:
        """Use another '3d' reference (a checkpoint's): the fixed table is rebuilt, a learned one kept."""
        self.pos_reference = tuple(int(r) for r in reference)
        self._pos_tables.clear()
        if self.pos_embed_type == "3d":
            self.pos_embed = build_pos_table(self.grid, self.embed_dim, "3d", self.pos_reference).to(
                self.pos_embed.device)
        self.prepare_grids(self._prepared_grids)

    def prepare_grids(self, grids: Sequence[PatchGrid]) -> None:
        """Build every table and resize matrix ``grids`` need, now (again after :meth:`set_pos_reference`):
        a compiled forward then only looks them up, one graph per grid."""
        self._prepared_grids = tuple(grids)
        for grid in self._prepared_grids:
            self.pos_table(grid)
        prepare_resize_matrices(self.grid.patch_size, [g.patch_size for g in self._prepared_grids],
                                self.pos_embed.device)

    def pos_table(self, grid: PatchGrid | None = None) -> torch.Tensor:
        """The position table [1, N, D] at ``grid`` (default: the model's)."""
        if grid is None or grid.shape == self.grid.shape:
            return self.pos_embed
        if self.pos_embed_type == "learned":
            raise ModelError(f"a learned position table belongs to the model's grid {self.grid.spec}; it cannot "
                             f"run at {grid.spec}")
        ref = self.pos_reference if self.pos_embed_type == "3d" else (self.grid.h, self.grid.w)
        return pos_table_at(self._pos_tables, grid, self.embed_dim, self.pos_embed_type, ref,
                            self.pos_embed.device)

    def embed(self, x: torch.Tensor, grid: PatchGrid | None = None) -> torch.Tensor:
        return self.patch_embed(x, grid) + self.pos_table(grid).to(x.dtype)

    def forward_tokens(self, x: torch.Tensor, keep_index: torch.Tensor | None = None,
                       grid: PatchGrid | None = None) -> torch.Tensor:
        """Clip [B, C, T, H, W] -> tokens [B, N or K, D] after the blocks; ``keep_index`` picks K tokens."""
        if keep_index is None:
            tokens = self.embed(x, grid)
        else:
            tokens = self.patch_embed.embed_selected(x, keep_index, grid)
            tokens = tokens + gather_tokens(self.pos_table(grid).to(tokens.dtype), keep_index)
        return self.run_blocks(tokens)


def init_vit_weights(module: nn.Module, linear_init: str = "trunc_normal") -> None:
    """VideoMAE's initialisation: trunc-normal (fine-tuning) or xavier (pre-training) linears."""
    if isinstance(module, nn.Linear):
        if linear_init == "xavier":
            nn.init.xavier_uniform_(module.weight)
        else:
            trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
