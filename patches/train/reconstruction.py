"""The loss of masked-video pre-training: the batch to the device, pixel targets, the reconstruction error; at one
grid (:class:`MaskedReconstruction`) or at a grid drawn for each step (:class:`FlexibleReconstruction`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from patches.data.device_transforms import PaddedCrops
from patches.data.masking import MaskGenerator
from patches.data.samplers import StepPosition
from patches.data.transforms import normalize_batch, pixel_mean_std
from patches.grid import PatchGrid
from patches.models.pretrain import mask_to_index, pixel_targets
from patches.utils.devices import amp_autocast
from patches.utils.distributed import all_reduce_mean


@dataclass(frozen=True)
class MaskedReconstruction:
    """The pre-training loss of a batch ``(videos, encoder masks, decoder masks)``: mean squared error between
    the predicted and the true pixels of the tokens the decoder reconstructs."""

    grid: PatchGrid
    device: torch.device
    amp_dtype: torch.dtype | None = None
    normalize_target: bool = True

    def __call__(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                 position: StepPosition | None = None) -> torch.Tensor:
        """The loss of ``batch``; ``position`` is not used (the loader drew the masks)."""
        videos, visible, target = prepare_batch(batch, self.device)
        return reconstruction_loss(model, videos, visible, target, self)


def prepare_batch(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips to the device and normalised there (uint8 from the loader; float clips are taken as already
    normalised), masks to indices on the host (no device sync), then to the device."""
    videos, enc_mask, dec_mask = batch
    return (clips_to_device(videos, device), *mask_indices_to_device(enc_mask, dec_mask, device))


def clips_to_device(videos: torch.Tensor | PaddedCrops, device: torch.device) -> torch.Tensor:
    """Clips to the device, normalised there when they come as uint8 from the loader (resized first when they
    come as crops)."""
    videos = videos.to(device, non_blocking=device.type == "cuda")
    if isinstance(videos, PaddedCrops):
        return videos.to_model_input()
    return normalize_batch(videos) if videos.dtype == torch.uint8 else videos


def mask_indices_to_device(enc_mask: torch.Tensor, dec_mask: torch.Tensor, device: torch.device
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool masks -> visible and decoded token indices, computed on the host (no device sync), then moved."""
    non_blocking = device.type == "cuda"
    visible = mask_to_index(enc_mask, select=False).to(device, non_blocking=non_blocking)
    return visible, mask_to_index(dec_mask, select=True).to(device, non_blocking=non_blocking)


def reconstruction_loss(model: torch.nn.Module, videos: torch.Tensor, visible: torch.Tensor, target: torch.Tensor,
                        cfg: MaskedReconstruction, grid: PatchGrid | None = None) -> torch.Tensor:
    """Mean squared error between predicted and true pixels of the decoded tokens (in fp32); with ``grid``, the
    model runs at that grid instead of its own."""
    with torch.no_grad():
        targets = pixel_targets(videos, grid or cfg.grid, *pixel_mean_std(videos.device), cfg.normalize_target,
                                index=target)
    with amp_autocast(cfg.device, cfg.amp_dtype):
        prediction = model(videos, visible, target) if grid is None else model(videos, visible, target, grid=grid)
    return F.mse_loss(prediction.float(), targets)


def resize_clips(videos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, C, T, H, W]`` clips to frames of ``size``, each frame resized bilinearly with antialiasing."""
    b, c, t, h, w = videos.shape
    if (h, w) == tuple(size):
        return videos
    frames = videos.transpose(1, 2).reshape(b * t, c, h, w)
    frames = F.interpolate(frames, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return frames.reshape(b, t, c, *size).transpose(1, 2).contiguous()


class FlexibleReconstruction:
    """The pre-training loss at a grid drawn for each step from ``grids`` (flexible-grid pre-training).

    ``loss(model, batch, position)``: ``batch`` holds clips at the largest grid's size (its masks are not used).
    The step's grid is drawn from ``(seed, epoch, batch)`` alone (with ``weights``: in those proportions), the same on every process and after a resume;
    the clips are resized on the device to its size, each clip's masks drawn by ``masks[i]`` (grid ``i``'s
    generator) from ``(seed, epoch, batch, the clip's place in the global batch)``, so that they do not depend on
    the number of processes, and the model runs at it. Each clip of a step shares the grid.
    ``settings`` gives the device, precision and target normalisation (its grid is not used)."""

    def __init__(self, grids: Sequence[PatchGrid], masks: Sequence[MaskGenerator], settings: MaskedReconstruction,
                 seed: int, rank: int = 0, weights: Sequence[float] | None = None) -> None:
        if len(masks) != len(grids) or (weights is not None and len(weights) != len(grids)):
            raise ValueError(f"{len(grids)} grids but {len(masks)} mask generators or weights {weights}")
        self.weights = None if weights is None else [w / sum(weights) for w in weights]
        self.grids, self.masks, self.settings = tuple(grids), tuple(masks), settings
        self.seed, self.rank = seed, rank
        self._losses = torch.zeros(len(grids), dtype=torch.float64, device=settings.device)
        self._steps = [0] * len(grids)

    def grid_index(self, position: StepPosition) -> int:
        """Which grid the step at ``position`` trains at: alike, or with ``weights`` (--grid_weights)."""
        if self.weights is None:
            return int(position.rng(self.seed).integers(len(self.grids)))
        return int(position.rng(self.seed).choice(len(self.grids), p=self.weights))

    def __call__(self, model: torch.nn.Module, batch: Sequence[Any], position: StepPosition) -> torch.Tensor:
        index = self.grid_index(position)
        grid, device = self.grids[index], self.settings.device
        videos = resize_clips(clips_to_device(batch[0], device), grid.input_size)
        clips = videos.shape[0]  # each clip's masks from its place in the global batch (the 1: apart from the draw)
        masks = [self.masks[index](position.rng(self.seed, 1, self.rank * clips + j)) for j in range(clips)]
        visible, target = mask_indices_to_device(*(torch.stack(m) for m in zip(*masks)), device)
        loss = reconstruction_loss(model, videos, visible, target, self.settings, grid=grid)
        self._losses[index] += loss.detach()
        self._steps[index] += 1
        return loss

    def epoch_record(self) -> dict[str, float]:
        """Since the last call: the mean loss (over all processes) and the steps of each grid trained at, as
        ``loss_SIZE/PATCH`` and ``steps_SIZE/PATCH``; then starts counting anew."""
        record: dict[str, float] = {}
        for grid, total, steps in zip(self.grids, self._losses.tolist(), self._steps):
            if steps:  # (the same on every process: the grids are drawn alike)
                record[f"loss_{grid.spec}"] = all_reduce_mean(total / steps, self.settings.device)
                record[f"steps_{grid.spec}"] = steps
        self._losses.zero_()
        self._steps = [0] * len(self.grids)
        return record
