"""The end of the pre-training pipeline as batched tensor operations on the step's device: the clips' crops, at the
size they were cut (so of different sizes, padded to the batch's largest), converted from YUV 4:2:0 to RGB,
resized to the input size, flipped where drawn, and normalised, for the whole batch at once.

The loader's own path (:func:`yuv_crops.crop_clip_rgb`, :meth:`transforms.PretrainTransform.resize_crop`, then
:func:`transforms.normalize_batch` in the step) converts and resizes each clip in its worker; a CUDA run's workers
only decode and slice the crops' planes (:class:`yuv_crops.YuvCrop`), and these functions do the rest on the
device. The conversion repeats swscale's arithmetic (:mod:`patches.data.yuv_rgb`); bilinear resizing here is in
float32 where the loader's is on uint8, so the two differ by that rounding only (at most 1/255 before
normalisation). Crops the decoder gives in RGB (frame folders, decord) travel as RGB, flipped in the worker."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import default_collate, get_worker_info

from patches.data.transforms import normalize_batch
from patches.data.yuv_crops import YuvCrop
from patches.data.yuv_rgb import coefficients_tensor, yuv420_to_rgb

# int32 elements of one conversion chunk (its temporaries stay near a GiB on the device)
_CONVERT_ELEMENTS = 1 << 26


def batch_buffer(shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised uint8 tensor for a batch; in a DataLoader worker in shared memory, as ``default_collate``
    makes its batches, so that handing it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=torch.uint8)
    numel = int(torch.Size(shape).numel())
    storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=torch.uint8).new(storage).view(tuple(shape))


def pad_crops(crops: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``THWC`` crops of different sizes as one uint8 ``[B, T, H, W, C]`` batch, zero-padded at the bottom
    and right to the largest, and their ``[B, 2]`` int64 ``(height, width)``: what a loader hands over."""
    if not crops:
        raise ValueError("no crops to pad")
    t, c = crops[0].shape[0], crops[0].shape[3]
    height, width = max(x.shape[1] for x in crops), max(x.shape[2] for x in crops)
    out = batch_buffer((len(crops), t, height, width, c)).zero_()
    for i, crop in enumerate(crops):
        out[i, :, :crop.shape[1], :crop.shape[2]] = crop
    return out, torch.tensor([[x.shape[1], x.shape[2]] for x in crops], dtype=torch.int64)


def resize_crops(crops: torch.Tensor, sizes: torch.Tensor, out_hw: tuple[int, int],
                 flips: torch.Tensor | None = None, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Padded uint8 ``[B, T, H, W, C]`` crops (:func:`pad_crops`) -> float32 ``[B, C, T, out_h, out_w]`` in 0..255:
    each crop's ``sizes[b]`` region (from ``offsets[b]``, default the top left corner) resized bilinearly (as the
    loader does), mirrored where ``flips[b]``. Crops of one size and offset are resized in one call."""
    b, t, _, _, c = crops.shape
    out = torch.empty((b, c, t, *out_hw), dtype=torch.float32, device=crops.device)
    offsets = torch.zeros_like(sizes) if offsets is None else offsets
    regions = [tuple(r) for r in torch.cat([offsets, sizes], 1).tolist()]  # one small host copy of B x 4 numbers
    for key in sorted(set(regions)):
        top, left, size = key[0], key[1], key[2:]
        group = [i for i, r in enumerate(regions) if r == key]
        index = torch.tensor(group, device=crops.device)
        region = crops.index_select(0, index)[:, :, top:top + size[0], left:left + size[1]]  # [G, T, h, w, C]
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
                         std: Sequence[float] = IMAGENET_DEFAULT_STD, offsets: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """The model's input from padded crops on their device: :func:`resize_crops`, rounded to whole pixel values as
    the loader's uint8 resize would be, then normalised as :func:`transforms.normalize_batch`."""
    resized = resize_crops(crops, sizes, out_hw, flips, offsets).round_().clamp_(0, 255)
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


class YuvCrops(PaddedCrops):
    """A batch of :class:`yuv_crops.YuvCrop` as a loader hands it to the step: ``crops`` uint8 ``[B, T, 3 H / 2, W]``,
    each clip's planes (luma rows, then U | V) padded to the largest; per clip its ``boxes`` (the crop inside its
    luma), ``flips`` and ``colours`` (``(colorspace, full_range)``), kept as Python values so that a worker hands
    over one shared tensor only. :meth:`to_model_input` converts, crops, resizes, flips and normalises."""

    def __init__(self, crops: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]], flips: Sequence[bool],
                 colours: Sequence[tuple[int, bool]], out_hw: tuple[int, int]) -> None:
        self.crops, self.out_hw = crops, (int(out_hw[0]), int(out_hw[1]))
        self.boxes, self.flips, self.colours = list(boxes), list(flips), list(colours)

    @property
    def sizes(self) -> torch.Tensor:
        """int64 ``[B, 2]``: each clip's crop ``(height, width)``."""
        return torch.tensor([box[2:] for box in self.boxes], dtype=torch.int64).reshape(-1, 2)

    @classmethod
    def from_crops(cls, crops: Sequence[YuvCrop], out_hw: tuple[int, int]) -> "YuvCrops":
        """The batch of ``crops`` (the collate step, in the worker)."""
        t = crops[0].shape[0]
        height, width = max(c.shape[1] for c in crops), max(c.shape[2] for c in crops)
        # the padding is left as it comes: converted on the device like the rest, then never read
        batch = batch_buffer((len(crops), t, height * 3 // 2, width))
        out = batch.numpy()
        for i, crop in enumerate(crops):
            crop.copy_into(out[i])
        return cls(batch, [c.box for c in crops], [c.flip for c in crops], [c.colour for c in crops], out_hw)

    def pin_memory(self) -> "YuvCrops":
        return YuvCrops(self.crops.pin_memory(), self.boxes, self.flips, self.colours, self.out_hw)

    def to(self, device: torch.device, non_blocking: bool = False) -> "YuvCrops":
        return YuvCrops(self.crops.to(device, non_blocking=non_blocking), self.boxes, self.flips, self.colours,
                        self.out_hw)

    def rgb(self) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]``: every clip's planes in RGB (the padding too), on the crops' device, converted
        a chunk of clips at a time."""
        b, t, rows, width = self.crops.shape
        height = rows * 2 // 3
        out = torch.empty((b, t, height, width, 3), dtype=torch.uint8, device=self.crops.device)
        step = max(1, _CONVERT_ELEMENTS // (t * height * width))
        coefficients = coefficients_tensor(self.colours).to(self.crops.device, non_blocking=True)
        for start in range(0, b, step):
            planes = self.crops[start:start + step]
            chroma = planes[:, :, height:]
            out[start:start + step] = yuv420_to_rgb(planes[:, :, :height], chroma[..., :width // 2],
                                                    chroma[..., width // 2:], coefficients[start:start + step])
        return out

    def to_model_input(self) -> torch.Tensor:
        """float32 ``[B, C, T, H, W]``, normalised, on the crops' device: :meth:`rgb`, then
        :func:`crops_to_model_input` of each clip's box, flipped where drawn."""
        boxes = torch.tensor(self.boxes, dtype=torch.int64).reshape(-1, 4)
        return crops_to_model_input(self.rgb(), boxes[:, 2:], self.out_hw, torch.tensor(self.flips, dtype=torch.bool),
                                    offsets=boxes[:, :2])


class CollateCrops:
    """The collate function for items ``(crop, enc_mask, dec_mask)`` whose crops are :class:`yuv_crops.YuvCrop`
    or uint8 ``THWC`` of different sizes (or lists of ``num_sample`` of each): one :class:`YuvCrops` (all YUV) or
    :class:`PaddedCrops` and the masks, collated as usual."""

    def __init__(self, out_hw: tuple[int, int]) -> None:
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))

    def __call__(self, batch: list) -> tuple[Any, ...]:
        flat = []
        for item in batch:
            flat.extend(zip(*item) if isinstance(item[0], (list, tuple)) else [item])
        crops, masks = [item[0] for item in flat], default_collate([item[1:] for item in flat])
        if all(isinstance(crop, YuvCrop) for crop in crops):
            return (YuvCrops.from_crops(crops, self.out_hw), *masks)
        # a batch with an RGB crop (a video decord read) travels as RGB, its YUV crops converted here
        crops = [crop.to_rgb() if isinstance(crop, YuvCrop) else crop for crop in crops]
        return (PaddedCrops(*pad_crops(crops), self.out_hw), *masks)
