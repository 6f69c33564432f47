"""VideoMAE's ``modeling_pretrain``: the masked video autoencoder, over :mod:`patches.models.pretrain`.

``import modeling_pretrain`` registers the ``pretrain_videomae_*_patch16_224`` names with timm, and
``modeling_pretrain.pretrain_videomae_base_patch16_224()`` builds the model, as in VideoMAE (any grid:
``grid=patches.grid.make_grid(...)`` or VideoMAE's ``img_size=``/``patch_size=``/``all_frames=`` keywords).
"""
from __future__ import annotations

from patches.models.pretrain import ENTRY_POINTS
from patches.models.pretrain import ENTRY_POINTS as _ENTRY_POINTS
from patches.models.pretrain import (MaskedVideoAutoencoder, PretrainDecoder, PretrainEncoder, mask_to_index, patchify,
                                     per_row_mean_var, pixel_targets, unpatchify)

globals().update(_ENTRY_POINTS)
