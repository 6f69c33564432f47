"""The end of the pre-training pipeline as batched tensor operations on the step's device: the clips' crops, uint8
at the size they were cut (so of different sizes, padded to the batch's largest), resized to the input size,
flipped where drawn, and normalised, for the whole batch at once.

The loader's own path (:meth:`transforms.PretrainTransform.resize_crop`, then :func:`transforms.normalize_batch` in
the step) resizes each clip in its worker; these functions do the same on the device, so that a CUDA run's
workers only decode and cut. Bilinear resizing here is in float32 where the loader's is on uint8, so the two
differ by that rounding only (at most 1/255 before normalisation). Colour conversion stays in the loader: swscale
converts the kept pixels of a YUV crop (:mod:`patches.data.yuv_crops`) for less than it costs to hand over YUV."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import default_collate

from patches.data.transforms import normalize_batch


def pad_crops(crops: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``THWC`` crops of different sizes as one uint8 ``[B, T, H, W, C]`` batch, zero-padded at the bottom
    and right to the largest, and their ``[B, 2]`` int64 ``(height, width)``: what a loader hands over."""
    if not crops:
        raise ValueError("no crops to pad")
    t, c = crops[0].shape[0], crops[0].shape[3]
    height, width = max(x.shape[1] for x in crops), max(x.shape[2] for x in crops)
    out = torch.zeros((len(crops), t, height, width, c), dtype=torch.uint8)
    for i, crop in enumerate(crops):
        out[i, :, :crop.shape[1], :crop.shape[2]] = crop
    return out, torch.tensor([[x.shape[1], x.shape[2]] for x in crops], dtype=torch.int64)


def resize_crops(crops: torch.Tensor, sizes: torch.Tensor, out_hw: tuple[int, int],
                 flips: torch.Tensor | None = None) -> torch.Tensor:
    """Padded uint8 ``[B, T, H, W, C]`` crops (:func:`pad_crops`) -> float32 ``[B, C, T, out_h, out_w]`` in 0..255:
    each crop's ``sizes[b]`` region resized bilinearly (as the loader does), mirrored where ``flips[b]``.
    Crops of one size are resized in one call."""
    b, t, _, _, c = crops.shape
    out = torch.empty((b, c, t, *out_hw), dtype=torch.float32, device=crops.device)
    hw = [tuple(s) for s in sizes.tolist()]  # one small host copy of B x 2 numbers
    for size in sorted(set(hw)):
        group = [i for i, s in enumerate(hw) if s == size]
        index = torch.tensor(group, device=crops.device)
        region = crops.index_select(0, index)[:, :, :size[0], :size[1]]  # [G, T, h, w, C]
        region = region.reshape(len(group) * t, *size, c).permute(0, 3, 1, 2).float()
        if size != tuple(out_hw):
            region = F.interpolate(region, size=tuple(out_hw), mode="bilinear", align_corners=False, antialias=False)
        out[index] = region.reshape(len(group), t, c, *out_hw).transpose(1, 2)
    if flips is not None and bool(flips.any()):
        mask = flips.to(crops.device).view(b, 1, 1, 1, 1)
        out = torch.where(mask, out.flip(-1), out)
    return out


def crops_to_model_input(crops: torch.Tensor, sizes: torch.Tensor, out_hw: tuple[int, int],
                         flips: torch.Tensor | None = None, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                         std: Sequence[float] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """The model's input from padded crops on their device: :func:`resize_crops`, rounded to whole pixel values as
    the loader's uint8 resize would be, then normalised as :func:`transforms.normalize_batch`."""
    resized = resize_crops(crops, sizes, out_hw, flips).round_().clamp_(0, 255)
    return normalize_batch(resized.to(torch.uint8), mean, std)


class PaddedCrops:
    """A batch of crops as a loader hands it to the step: :func:`pad_crops`'s ``crops`` and ``sizes`` and the input
    size ``out_hw``. Pinned by a DataLoader with ``pin_memory`` (it has :meth:`pin_memory`), copied by :meth:`to`,
    made the model's input on its device by :meth:`to_model_input`."""

    def __init__(self, crops: torch.Tensor, sizes: torch.Tensor, out_hw: tuple[int, int]) -> None:
        self.crops, self.sizes, self.out_hw = crops, sizes, (int(out_hw[0]), int(out_hw[1]))

    @property
    def shape(self) -> torch.Size:
        return self.crops.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.crops.dtype

    def pin_memory(self) -> "PaddedCrops":
        return PaddedCrops(self.crops.pin_memory(), self.sizes, self.out_hw)

    def to(self, device: torch.device, non_blocking: bool = False) -> "PaddedCrops":
        return PaddedCrops(self.crops.to(device, non_blocking=non_blocking), self.sizes, self.out_hw)

    def to_model_input(self) -> torch.Tensor:
        """float32 ``[B, C, T, H, W]``, normalised, on the crops' device (:func:`crops_to_model_input`)."""
        return crops_to_model_input(self.crops, self.sizes, self.out_hw)


class CollateCrops:
    """The collate function for items ``(crop, enc_mask, dec_mask)`` whose crops are uint8 ``THWC`` of different
    sizes (or lists of ``num_sample`` of each): one :class:`PaddedCrops` and the masks, collated as usual."""

    def __init__(self, out_hw: tuple[int, int]) -> None:
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))

    def __call__(self, batch: list) -> tuple[Any, ...]:
        flat = []
        for item in batch:
            flat.extend(zip(*item) if isinstance(item[0], (list, tuple)) else [item])
        crops, masks = [item[0] for item in flat], default_collate([item[1:] for item in flat])
        return (PaddedCrops(*pad_crops(crops), self.out_hw), *masks)
