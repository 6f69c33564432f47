"""VideoMAE pre-training model, :class:`MaskedVideoAutoencoder`: an encoder over the visible tokens, a light
decoder that predicts pixels; and the pixel targets it is trained on.

Parameter layout is that of VideoMAE's released pre-training checkpoints: ``encoder.patch_embed.proj``,
``encoder.blocks.N.*``, ``encoder.norm``, ``encoder_to_decoder``, ``mask_token``,
``decoder.blocks.N.*``, ``decoder.norm``, ``decoder.head``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from einops import rearrange
from timm.layers import trunc_normal_

from patches.grid import PatchGrid
from patches.models.layers import (LayerNorm, TransformerStack, VideoEncoder, build_pos_table, gather_tokens,
                                   init_vit_weights, pos_table_at, resize_patch_pixels)
from patches.models.registry import VIT_SIZES, register_sizes, resolve_grid, split_model_kwargs


class PretrainEncoder(VideoEncoder):
    """Trunk that sees only the visible tokens, then a final LayerNorm."""

    def __init__(self, grid: PatchGrid, embed_dim: int, depth: int, num_heads: int, **kwargs: Any):
        super().__init__(grid, embed_dim, depth, num_heads, **kwargs)
        self.norm = LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, visible_index: torch.Tensor, grid: PatchGrid | None = None) -> torch.Tensor:
        return self.norm(self.forward_tokens(x, visible_index, grid))


class PretrainDecoder(TransformerStack):
    """Blocks over [visible tokens, mask tokens]; predicts pixels for the trailing mask tokens only."""

    def __init__(self, dim: int, depth: int, num_heads: int, target_dim: int, **kwargs: Any):
        super().__init__(dim, depth, num_heads, **kwargs)
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, target_dim)

    def forward(self, x: torch.Tensor, num_predicted: int) -> torch.Tensor:
        x = self.run_blocks(x)
        return self.head(self.norm(x[:, -num_predicted:]))


class MaskedVideoAutoencoder(nn.Module):
    """Masked autoencoder for video. Call with the clip and per-sample token indices (see :func:`mask_to_index`).

    ``forward(..., grid=)`` runs at another grid of the same frames, tubelet and channels (flexible-grid
    pre-training): the patch kernel is PI-resized on the fly, the position tables are that grid's '3d' tables
    (scaled to ``pos_reference``, default the model's own token rows/cols) and the decoder's pixels are
    resized from the model's patch to the grid's (see :meth:`forward`).
    """

    def __init__(self, grid: PatchGrid, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 decoder_embed_dim: int = 384, decoder_depth: int = 4, decoder_num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 init_values: float = 0.0, pos_embed: str = "1d", use_checkpoint: bool = False,
                 pos_reference: Sequence[int] | None = None):
        super().__init__()
        self.grid = grid
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values,
                      use_checkpoint=use_checkpoint)
        self.encoder = PretrainEncoder(grid, embed_dim, depth, num_heads, pos_embed=pos_embed,
                                       pos_reference=pos_reference, drop_path_rate=drop_path_rate, **common)
        self.decoder = PretrainDecoder(decoder_embed_dim, decoder_depth, decoder_num_heads, grid.target_dim,
                                       **common)
        self.encoder_to_decoder = nn.Linear(embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        # The decoder's table is always fixed: it is thrown away after pre-training.
        self.decoder_pos_kind = "3d" if pos_embed == "3d" else "1d"
        self.register_buffer("decoder_pos_embed", self._decoder_table(grid, torch.device("cpu")), persistent=False)
        self._decoder_tables: dict = {}
        self.apply(lambda m: init_vit_weights(m, "xavier"))
        trunc_normal_(self.mask_token, std=0.02)

    @property
    def pos_reference(self) -> tuple[int, int]:
        return self.encoder.pos_reference

    @property
    def pos_embed_type(self) -> str:
        return self.encoder.pos_embed_type

    def set_pos_reference(self, reference: Sequence[int]) -> None:
        """Use another '3d' reference (a checkpoint's) for the encoder's and decoder's tables."""
        self.encoder.set_pos_reference(reference)
        self._decoder_tables.clear()
        self.decoder_pos_embed = self._decoder_table(self.grid, self.decoder_pos_embed.device)
        self.prepare_grids(self.encoder._prepared_grids)

    def prepare_grids(self, grids: Sequence[PatchGrid]) -> None:
        """Every grid's tables and resize matrices, built now on the model's device, so that a compiled
        forward only looks them up (one graph per grid, no host work in a step)."""
        self.encoder.prepare_grids(grids)
        for grid in grids:
            self.decoder_pos_table(grid)

    def _decoder_table(self, grid: PatchGrid, device: torch.device) -> torch.Tensor:
        ref = self.pos_reference if self.decoder_pos_kind == "3d" else None
        return build_pos_table(grid, self.mask_token.shape[-1], self.decoder_pos_kind, ref).to(device)

    def decoder_pos_table(self, grid: PatchGrid) -> torch.Tensor:
        if grid.shape == self.grid.shape:
            return self.decoder_pos_embed
        ref = self.pos_reference if self.decoder_pos_kind == "3d" else (self.grid.h, self.grid.w)
        return pos_table_at(self._decoder_tables, grid, self.mask_token.shape[-1], self.decoder_pos_kind, ref,
                            self.decoder_pos_embed.device)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.pos_embed", "mask_token"}

    def forward(self, x: torch.Tensor, visible_index: torch.Tensor, target_index: torch.Tensor,
                grid: PatchGrid | None = None) -> torch.Tensor:
        """x [B, C, T, H, W] at ``grid`` (default: the model's); indices [B, Nv] and [B, K] of that grid's
        tokens -> predicted pixels [B, K, grid.target_dim].

        At another patch size the head still predicts the model's (base) patch, and its output is resized to
        the grid's patch by the bilinear matrix R (the head's weights become R W: the transpose of the
        kernel's pinv(R^T)). Why this way: the loss stays on the grid's true pixels (resizing the targets to
        the base patch instead would score interpolated pixels, not the clip), the state dict stays that of
        a fixed model at the base grid, and with the base patch the largest (design of --grids) R maps onto
        every pixel pattern of the smaller patch, so no target is out of the head's reach.
        """
        grid = self.grid if grid is None else grid
        latent = self.encoder_to_decoder(self.encoder(x, visible_index, grid))
        pos = self.decoder_pos_table(grid).to(latent.dtype)
        visible = latent + gather_tokens(pos, visible_index)
        masked = self.mask_token.to(latent.dtype) + gather_tokens(pos, target_index)
        pred = self.decoder(torch.cat([visible, masked], dim=1), target_index.shape[1])
        return resize_patch_pixels(pred, self.grid, grid)


def mask_to_index(mask: torch.Tensor, select: bool) -> torch.Tensor:
    """Bool masks [B, N] -> indices [B, K] of the tokens equal to ``select``, in token order.

    Every row must select the same number of tokens (the mask generator guarantees it). Run it where the
    masks are (CPU, in the loader's process) so that no device sync is needed in the model.
    """
    counts = (mask == select).sum(1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise ValueError(f"masks select different numbers of tokens per sample: {counts.tolist()}")
    k = int(counts[0]) if counts.numel() else 0
    # Stable sort puts the selected tokens first, each group in token order.
    key = (mask != select).to(torch.uint8)
    return torch.sort(key, dim=1, stable=True).indices[:, :k]


def patchify(videos: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, N, tubelet*p*p*C], tokens in (t, h, w) order, pixels channel-last."""
    p, q = grid.patch_size, grid.tubelet_size
    return rearrange(videos, "b c (t q) (h p1) (w p2) -> b (t h w) (q p1 p2 c)", q=q, p1=p, p2=p)


def unpatchify(patches: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    p, q = grid.patch_size, grid.tubelet_size
    return rearrange(patches, "b (t h w) (q p1 p2 c) -> b c (t q) (h p1) (w p2)",
                     t=grid.t, h=grid.h, w=grid.w, q=q, p1=p, p2=p, c=grid.in_chans)


def pixel_targets(videos: torch.Tensor, grid: PatchGrid, mean: torch.Tensor, std: torch.Tensor,
                  normalize_target: bool = True, eps: float = 1e-6,
                  index: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction targets [B, N, target_dim] from normalised clips, computed in fp32.

    The clip is first un-normalised to [0, 1] pixels; with ``normalize_target`` each token's pixels are
    then standardised per channel (VideoMAE's per-patch normalisation). With ``index`` [B, K], only those
    tokens are made: [B, K, target_dim], the same as indexing the full result.
    """
    shape = (1, -1, 1, 1, 1)
    pixels = videos.float() * std.view(shape).to(videos.device) + mean.view(shape).to(videos.device)
    if not normalize_target:
        tokens = patchify(pixels, grid)
        return tokens if index is None else gather_tokens(tokens, index)
    p, q = grid.patch_size, grid.tubelet_size
    # Statistics over a contiguous last axis (one channel of one token) are much faster than over a
    # strided one; the result is then laid out channel-last like patchify's.
    tokens = rearrange(pixels, "b c (t q) (h p1) (w p2) -> b (t h w) c (q p1 p2)", q=q, p1=p, p2=p)
    if index is not None:
        tokens = gather_tokens(tokens.flatten(2), index).view(*index.shape, *tokens.shape[2:])
    mu, var = per_row_mean_var(tokens)
    tokens = (tokens - mu) / (var.sqrt() + eps)
    return rearrange(tokens, "b n c k -> b n (k c)")


def per_row_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over the last axis (keepdim), for values of order 1 such as pixels.

    The sum of squares minus n * mean^2 is ~30x faster on CPU than ``torch.var_mean``; for pixels in
    [0, 1] its fp32 error (~1e-7) is far below the variance of one 8-bit grey level (~1.5e-5).
    """
    n = x.shape[-1]
    mu = x.mean(-1, keepdim=True)
    sum_sq = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square()
    return mu, (sum_sq - n * mu.square()).clamp_(min=0) / (n - 1)


def _pretrain_model(size: str, pretrained: bool = False, grid: PatchGrid | None = None,
                    **kwargs: Any) -> MaskedVideoAutoencoder:
    geometry, kwargs = split_model_kwargs(pretrained, kwargs)
    dims = dict(VIT_SIZES[size])
    for key in ("decoder_embed_dim", "decoder_num_heads"):
        if kwargs.get(key) is not None:
            dims[key] = kwargs.pop(key)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return MaskedVideoAutoencoder(resolve_grid(grid, **geometry), **dims, **kwargs)


# VideoMAE's entry points by name (``pretrain_videomae_base_patch16_224`` ...), registered with timm
ENTRY_POINTS = register_sizes("pretrain_videomae_{size}_patch16_224", _pretrain_model, __name__)
