"""The action classifier: the video trunk, then pooled tokens through ``fc_norm`` and ``head``.

Parameter names follow VideoMAE's released fine-tuned checkpoints (``patch_embed.proj``, ``blocks.N.*``,
``fc_norm``, ``head``), so they load as they are. Registered with timm as ``video_vit_<size>_patch16_224``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from patches.grid import PatchGrid
from patches.models.layers import LayerNorm, VideoEncoder, init_vit_weights
from patches.models.registry import VIT_SIZES, register_sizes, resolve_grid, split_model_kwargs


class VideoClassifier(VideoEncoder):
    """Action classifier: trunk, then mean-pooled tokens through ``fc_norm`` (or a cls token) and ``head``.

    ``pos_reference``: see :class:`model_layers.VideoEncoder` (``--finetune`` sets a checkpoint's).
    """

    def __init__(self, grid: PatchGrid, num_classes: int = 400, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, use_mean_pooling: bool = True, fc_drop_rate: float = 0.0,
                 init_scale: float = 0.0, pos_embed: str = "1d", pos_reference: Sequence[int] | None = None,
                 **block_kwargs: Any):
        super().__init__(grid, embed_dim, depth, num_heads, pos_embed=pos_embed, pos_reference=pos_reference,
                         **block_kwargs)
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

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Clip [B, C, T, H, W] -> the last block's tokens [B, N, D] (with the cls token first when used)."""
        tokens = self.embed(x)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], 1)
        return self.norm(self.run_blocks(tokens))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, D] -> the pooled feature [B, D] the head classifies."""
        if self.fc_norm is not None:
            return self.fc_norm(tokens.mean(1))
        return tokens[:, 0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode_tokens(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_dropout(self.forward_features(x)))


def _classifier(size: str, pretrained: bool = False, grid: PatchGrid | None = None,
                **kwargs: Any) -> VideoClassifier:
    geometry, kwargs = split_model_kwargs(pretrained, kwargs)
    dims = {k: v for k, v in VIT_SIZES[size].items() if not k.startswith("decoder")}
    return VideoClassifier(resolve_grid(grid, **geometry), **dims, mlp_ratio=4.0, qkv_bias=True, **kwargs)


# timm already has image ViTs under "vit_small_patch16_224" and friends; the video classifiers are
# registered as "video_vit_*" there, and create_video_model() also accepts VideoMAE's plain names.
ENTRY_POINTS = register_sizes("video_vit_{size}_patch16_224", _classifier, __name__)
