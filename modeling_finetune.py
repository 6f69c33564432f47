"""VideoMAE's ``modeling_finetune``: the video classifier, over :mod:`patches.models.classifier`.

``import modeling_finetune`` registers the classifiers with timm (as ``video_vit_*_patch16_224``: timm's own
``vit_*_patch16_224`` are image models), and ``modeling_finetune.vit_base_patch16_224(num_classes=400)`` builds
one, as in VideoMAE.
"""
from __future__ import annotations

from patches.models.classifier import ENTRY_POINTS
from patches.models.classifier import ENTRY_POINTS as _ENTRY_POINTS
from patches.models.classifier import VideoClassifier

globals().update({name.removeprefix("video_"): fn for name, fn in _ENTRY_POINTS.items()})
