"""The loss of masked-video pre-training: the batch to the device, pixel targets, the reconstruction error."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_pretrain import mask_to_index, pixel_targets
from patch_grid import PatchGrid
from utils import amp_autocast
from video_transforms import normalize_batch, pixel_mean_std

PIXEL_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN)
PIXEL_STD = torch.tensor(IMAGENET_DEFAULT_STD)


@dataclass(frozen=True)
class MaskedReconstruction:
    """The pre-training loss of a batch ``(videos, encoder masks, decoder masks)``: mean squared error between
    the predicted and the true pixels of the tokens the decoder reconstructs."""

    grid: PatchGrid
    device: torch.device
    amp_dtype: torch.dtype | None = None
    normalize_target: bool = True

    def __call__(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                 ) -> torch.Tensor:
        videos, visible, target = prepare_batch(batch, self.device)
        return reconstruction_loss(model, videos, visible, target, self)


def prepare_batch(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips to the device and normalised there (uint8 from the loader; float clips are taken as already
    normalised), masks to indices on the host (no device sync), then to the device."""
    videos, enc_mask, dec_mask = batch
    visible = mask_to_index(enc_mask, select=False)
    target = mask_to_index(dec_mask, select=True)
    non_blocking = device.type == "cuda"
    videos = videos.to(device, non_blocking=non_blocking)
    if videos.dtype == torch.uint8:
        videos = normalize_batch(videos)
    return videos, visible.to(device, non_blocking=non_blocking), target.to(device, non_blocking=non_blocking)


def reconstruction_loss(model: torch.nn.Module, videos: torch.Tensor, visible: torch.Tensor, target: torch.Tensor,
                        cfg: MaskedReconstruction) -> torch.Tensor:
    """Mean squared error between predicted and true pixels of the decoded tokens (in fp32)."""
    with torch.no_grad():
        targets = pixel_targets(videos, cfg.grid, *pixel_mean_std(videos.device), cfg.normalize_target, index=target)
    with amp_autocast(cfg.device, cfg.amp_dtype):
        prediction = model(videos, visible, target)
    return F.mse_loss(prediction.float(), targets)
