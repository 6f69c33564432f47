"""Build any PATCHES model by its registered name: the classifiers and the masked autoencoders."""
from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn

from patches.models import classifier as modeling_finetune  # noqa: F401  (registers the classifier names)
from patches.models import pretrain as modeling_pretrain  # noqa: F401  (registers the pre-training names)
from patches.models.errors import ModelError


def create_video_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a PATCHES model by name (VideoMAE's ``vit_small_patch16_224`` means the video classifier)."""
    if name.startswith("vit_"):
        name = "video_" + name
    if not timm.is_model(name):
        known = ", ".join(sorted(n for n in timm.list_models("*videomae*") + timm.list_models("video_vit*")))
        raise ModelError(f"--model {name!r} is not a PATCHES model; known: {known}")
    return timm.create_model(name, **kwargs)
