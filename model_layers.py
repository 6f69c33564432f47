"""Layers of the video ViT shared by pre-training and fine-tuning, up to the trunk :class:`VideoEncoder`.

Parameter names follow VideoMAE's released checkpoints (``patch_embed.proj``,
``blocks.N.attn.qkv``/``q_bias``/``v_bias``), so they load as they are.
The transformer block is timm's BEiT block, whose layout is exactly VideoMAE's.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from timm.layers import trunc_normal_
from timm.models.beit import Block

from attention import BlockAttention
from patch_grid import PatchGrid

POS_EMBED_TYPES = ("1d", "3d", "learned")

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class PatchEmbed(nn.Module):
    """Cut a clip into tubelet x patch x patch cubes and project each to a token (one Conv3d)."""

    def __init__(self, grid: PatchGrid, embed_dim: int):
        super().__init__()
        self.grid = grid
        kernel = (grid.tubelet_size, grid.patch_size, grid.patch_size)
        self.proj = nn.Conv3d(grid.in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def check_input(self, x: torch.Tensor) -> None:
        g = self.grid
        expected = (g.in_chans, g.num_frames, *g.input_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"model expects clips of shape [B, {', '.join(map(str, expected))}] "
                             f"({g.describe()}), got {list(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)

    def embed_selected(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Tokens [B, K, D] of only the tubelets in ``index`` [B, K]: the same as ``forward(x)`` then a gather.

        The MAE encoder sees ~10% of the tubelets, so projecting only those (a matmul over the gathered
        pixel cubes) skips ~90% of the embedding's work, forward and backward.
        """
        self.check_input(x)
        g = self.grid
        cubes = rearrange(x, "b c (t q) (h p1) (w p2) -> b (t h w) (c q p1 p2)",
                          q=g.tubelet_size, p1=g.patch_size, p2=g.patch_size)
        return F.linear(gather_tokens(cubes, index), self.proj.weight.flatten(1), self.proj.bias)


def sincos_1d_table(positions: np.ndarray, dim: int) -> np.ndarray:
    """VideoMAE's table: channel j of position p is sin/cos(p / 10000^(2*(j//2)/dim)), sin on even j."""
    j = np.arange(dim)
    angles = positions[:, None].astype(np.float64) / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    table = np.empty_like(angles)
    table[:, 0::2] = np.sin(angles[:, 0::2])
    table[:, 1::2] = np.cos(angles[:, 1::2])
    return table


def sincos_3d_table(grid: PatchGrid, dim: int) -> np.ndarray:
    """Factorised table: separate sin-cos channels for time, row and column of each token."""
    d_space = 2 * (dim // 6)
    d_time = dim - 2 * d_space
    t, h, w = np.meshgrid(np.arange(grid.t), np.arange(grid.h), np.arange(grid.w), indexing="ij")
    return np.concatenate([sincos_1d_table(t.reshape(-1), d_time),
                           sincos_1d_table(h.reshape(-1), d_space),
                           sincos_1d_table(w.reshape(-1), d_space)], axis=1)


def build_pos_table(grid: PatchGrid, dim: int, kind: str = "1d") -> torch.Tensor:
    """Fixed position table [1, num_tokens, dim] for a grid: '1d' over the flat token index, or '3d'."""
    if kind == "3d":
        table = sincos_3d_table(grid, dim)
    elif kind in ("1d", "learned"):  # learned tables start from the 1-D one
        table = sincos_1d_table(np.arange(grid.num_tokens), dim)
    else:
        raise ValueError(f"--pos_embed must be one of {', '.join(POS_EMBED_TYPES)}, got {kind!r}")
    return torch.from_numpy(table).float().unsqueeze(0)


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
    """Patch embedding + position table + blocks: the trunk of both the MAE encoder and the classifier."""

    def __init__(self, grid: PatchGrid, embed_dim: int, depth: int, num_heads: int,
                 pos_embed: str = "1d", **block_kwargs: Any):
        super().__init__(embed_dim, depth, num_heads, **block_kwargs)
        self.grid = grid
        self.embed_dim = embed_dim
        self.pos_embed_type = pos_embed
        self.patch_embed = PatchEmbed(grid, embed_dim)
        table = build_pos_table(grid, embed_dim, pos_embed)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(table)
        else:
            # Rebuilt from the grid at construction, so it is not part of the state dict.
            self.register_buffer("pos_embed", table, persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x) + self.pos_embed.to(x.dtype)

    def forward_tokens(self, x: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """Clip [B, C, T, H, W] -> tokens [B, N or K, D] after the blocks; ``keep_index`` picks K tokens."""
        if keep_index is None:
            tokens = self.embed(x)
        else:
            tokens = self.patch_embed.embed_selected(x, keep_index)
            tokens = tokens + gather_tokens(self.pos_embed.to(tokens.dtype), keep_index)
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
