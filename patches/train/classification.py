"""The loss of fine-tuning: a batch of clips and labels through the classifier, with timm's mixup/cutmix for
clips (:func:`video_mixup`) and the criterion that fits it (:func:`classification_criterion`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from patches.data.samplers import StepPosition
from patches.utils.devices import amp_autocast


@dataclass(frozen=True)
class Classification:
    """The fine-tuning loss of a batch ``(videos, labels)``: mixup/cutmix when set, the model under autocast,
    ``criterion`` in fp32."""

    criterion: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None = None
    mixup_fn: Callable | None = None

    def __call__(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                 position: StepPosition | None = None) -> torch.Tensor:
        """The loss of ``batch``; ``position`` is not used (timm's mixup draws from the global RNG)."""
        non_blocking = self.device.type == "cuda"
        videos = batch[0].to(self.device, non_blocking=non_blocking)
        labels = batch[1].to(self.device, non_blocking=non_blocking)
        if self.mixup_fn is not None:
            videos, labels = self.mixup_fn(videos, labels)
        with amp_autocast(self.device, self.amp_dtype):
            logits = model(videos)
        return self.criterion(logits.float(), labels)


def video_mixup(mixup: float, cutmix: float, cutmix_minmax: list[float] | None, prob: float, switch_prob: float,
                mode: str, smoothing: float, num_classes: int) -> Callable | None:
    """timm's Mixup/CutMix for clips (``--mixup --cutmix --cutmix_minmax --mixup_prob ...``), None when off."""
    if not (mixup > 0 or cutmix > 0 or cutmix_minmax is not None):
        return None
    from timm.data import Mixup

    mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, cutmix_minmax=cutmix_minmax, prob=prob,
                switch_prob=switch_prob, mode=mode, label_smoothing=smoothing, num_classes=num_classes)

    def mix_video(videos: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # timm's Mixup expects images: fold time into channels so cutmix cuts the same box from every frame.
        b, c, t, h, w = videos.shape
        mixed, soft = mix(videos.reshape(b, c * t, h, w), labels)
        return mixed.reshape(b, c, t, h, w), soft
    return mix_video


def classification_criterion(mixup_fn: Callable | None, smoothing: float) -> torch.nn.Module:
    """Soft-target cross-entropy after mixup, else label smoothing, else plain cross-entropy."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixup_fn is not None:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return torch.nn.CrossEntropyLoss()
