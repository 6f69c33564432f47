"""The named model sizes and the grid behind VideoMAE's ``*_patch16_224`` names, and their registration with timm.

Both modeling files register one timm entry point per size through :func:`register_sizes`; keywords given to
``timm.create_model`` are split by :func:`split_model_kwargs` into the grid (VideoMAE-style ``img_size``,
``num_frames``, ...) and the model's own keywords.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
from timm.models import register_model

from patches.grid import PatchGrid, make_grid
from patches.models.errors import ModelError

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


def split_model_kwargs(pretrained: bool, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate VideoMAE-style geometry keywords from model keywords; drop timm's bookkeeping ones."""
    if pretrained:
        raise ModelError("no weights are downloaded: pass a checkpoint file with --finetune")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    geometry = {k: kwargs.pop(k, None) for k in ("img_size", "input_size", "patch_size", "num_frames",
                                                   "all_frames", "tubelet_size")}
    return geometry, kwargs


def register_sizes(name_format: str, build: Callable[..., nn.Module],
                   module: str) -> dict[str, Callable[..., nn.Module]]:
    """Register ``name_format.format(size=s)`` with timm for every size s in :data:`VIT_SIZES`; returns the entry
    points by name.

    The entry point calls ``build(s, pretrained, **kwargs)``; ``module`` is the module timm files it under.
    """
    entry_points = {}
    for size in VIT_SIZES:
        def fn(pretrained: bool = False, _size: str = size, **kwargs: Any) -> nn.Module:
            return build(_size, pretrained, **kwargs)
        fn.__name__ = name_format.format(size=size)
        fn.__module__ = module
        entry_points[fn.__name__] = register_model(fn)
    return entry_points
