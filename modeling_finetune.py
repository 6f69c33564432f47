"""Video ViT pieces shared by pre-training and fine-tuning, and the action classifier.

Parameter names follow VideoMAE's released checkpoints (``patch_embed.proj``,
``blocks.N.attn.qkv``/``q_bias``/``v_bias``, ``fc_norm``, ``head``), so they load as they are.
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
from timm.models import register_model
from timm.models.beit import Attention as BeitAttention
from timm.models.beit import Block

from patch_grid import PatchGrid, make_grid

POS_EMBED_TYPES = ("1d", "3d", "learned")

# Geometry of the named sizes: width, depth, heads, and the pre-training decoder's width and heads.
VIT_SIZES: dict[str, dict[str, int]] = {
    "micro": dict(embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=64, decoder_num_heads=2),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=96, decoder_num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=192, decoder_num_heads=3),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=384, decoder_num_heads=6),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_num_heads=8),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, decoder_embed_dim=640, decoder_num_heads=8),
}
# What a "..._patch16_224" name means when no grid flag overrides it.
DEFAULT_GRID = dict(num_frames=16, tubelet_size=2, input_size=224, patch_size=16)

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def resolve_grid(grid: PatchGrid | None = None, **kwargs: Any) -> PatchGrid:
    """The grid a model is built for: an explicit grid, or VideoMAE-style keyword overrides of 16x224/16."""
    if grid is not None:
        return grid
    d = dict(DEFAULT_GRID)
    aliases = {"img_size": "input_size", "all_frames": "num_frames"}
    for key, value in kwargs.items():
        if value is not None:
            d[aliases.get(key, key)] = value
    return make_grid(d["num_frames"], d["tubelet_size"], d["input_size"], d["patch_size"])


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


class TransformerStack(nn.Module):
    """A list of blocks with optional activation checkpointing; holds ``blocks.N.*``."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 init_values: float | None = None, use_checkpoint: bool = False):
        super().__init__()
        rates = [float(r) for r in torch.linspace(0, drop_path_rate, depth)] if depth else []
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


class VideoTransformer(TransformerStack):
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


class VisionTransformer(VideoTransformer):
    """Action classifier: trunk, then mean-pooled tokens through ``fc_norm`` (or a cls token) and ``head``."""

    def __init__(self, grid: PatchGrid, num_classes: int = 400, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, use_mean_pooling: bool = True, fc_drop_rate: float = 0.0,
                 init_scale: float = 0.0, pos_embed: str = "1d", **block_kwargs: Any):
        super().__init__(grid, embed_dim, depth, num_heads, pos_embed=pos_embed, **block_kwargs)
        self.num_classes = num_classes
        self.use_mean_pooling = use_mean_pooling
        self.norm = nn.Identity() if use_mean_pooling else LayerNorm(embed_dim)
        self.fc_norm = LayerNorm(embed_dim) if use_mean_pooling else None
        self.cls_token = None if use_mean_pooling else nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.fc_dropout = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_vit_weights)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear) and init_scale > 0:
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def get_num_layers(self) -> int:
        return len(self.blocks)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for timm's layer-wise LR decay: stem 0, block i -> i + 1, final norms last."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^fc_norm", (99999,))])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], 1)
        tokens = self.norm(self.run_blocks(tokens))
        if self.fc_norm is not None:
            return self.fc_norm(tokens.mean(1))
        return tokens[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_dropout(self.forward_features(x)))


def _classifier(size: str, pretrained: bool = False, grid: PatchGrid | None = None,
                **kwargs: Any) -> VisionTransformer:
    geometry, kwargs = split_model_kwargs(pretrained, kwargs)
    dims = {k: v for k, v in VIT_SIZES[size].items() if not k.startswith("decoder")}
    return VisionTransformer(resolve_grid(grid, **geometry), **dims, mlp_ratio=4.0, qkv_bias=True, **kwargs)


def split_model_kwargs(pretrained: bool, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate VideoMAE-style geometry keywords from model keywords; drop timm's bookkeeping ones."""
    if pretrained:
        raise ValueError("no weights are downloaded: pass a checkpoint file with --finetune")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    geometry = {k: kwargs.pop(k, None) for k in ("img_size", "input_size", "patch_size", "num_frames",
                                                   "all_frames", "tubelet_size")}
    return geometry, kwargs


def _register_classifiers() -> None:
    # timm already has image ViTs under "vit_small_patch16_224" and friends; the video classifiers are
    # registered as "video_vit_*" there, and create_video_model() also accepts VideoMAE's plain names.
    for size in VIT_SIZES:
        def fn(pretrained: bool = False, _size: str = size, **kwargs: Any) -> VisionTransformer:
            return _classifier(_size, pretrained, **kwargs)
        fn.__name__ = f"video_vit_{size}_patch16_224"
        fn.__module__ = __name__
        register_model(fn)


_register_classifiers()


def create_video_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a PATCHES model by name (VideoMAE's ``vit_small_patch16_224`` means the video classifier)."""
    import timm
    if name.startswith("vit_"):
        name = "video_" + name
    if not timm.is_model(name):
        import modeling_pretrain  # noqa: F401  (registers the pre-training names)
    if not timm.is_model(name):
        known = ", ".join(sorted(n for n in timm.list_models("*videomae*") + timm.list_models("video_vit*")))
        raise ValueError(f"--model {name!r} is not a PATCHES model; known: {known}")
    return timm.create_model(name, **kwargs)

