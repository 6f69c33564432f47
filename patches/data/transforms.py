"""Clip-level augmentation on tensors: one crop and one flip shared by every frame of a clip.

Frames stay uint8 for as long as possible, since uint8 channels-last resizing is several
times faster than float on CPU. The pipeline is

    decoded uint8 [T, H, W, C] -> crop (a view) -> bilinear resize of the crop only
    -> horizontal flip -> float32, normalised, [C, T, H, W]

Pre-training stops one step short: its clips stay uint8 ``[C, T, H, W]`` through collation, pinning
and the copy to the device, and the step normalises the batch there (:func:`normalize_batch`): a
quarter of the bytes to collate and move, and no float work in the loader's workers.

Layouts: decoded clips are ``THWC``; after :func:`crop_resize` or :func:`short_side_resize`
clips are ``TCHW`` (the layout ``interpolate`` wants); :func:`normalize` returns ``CTHW``.
A crop box is ``(top, left, height, width)`` in pixels of the frame it is cut from.
Random choices take an explicit ``numpy.random.Generator`` so that callers control seeding.

Fine-tuning training adds, after crop and flip, video RandAugment and, after normalising, random
erasing (:mod:`patches.data.augment`).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from patches.data.augment import ClipRandomErasing, VideoRandAugment, seeded_global_rngs

Box = tuple[int, int, int, int]

PRETRAIN_SCALES = (1.0, 0.875, 0.75, 0.66)


def as_video_tensor(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A decoded clip as a uint8 ``THWC`` tensor (numpy arrays are wrapped, not copied)."""
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(video)
    if video.ndim != 4 or video.shape[-1] not in (1, 3):
        raise ValueError(f"expected a [T, H, W, C] clip, got shape {tuple(video.shape)}")
    return video


# ---- crop boxes -----------------------------------------------------------------------------

def _aspect_box(h: int, w: int, out_hw: tuple[int, int]) -> tuple[int, int]:
    """The largest box with the output's aspect ratio that fits the frame (min side x min side if square)."""
    out_h, out_w = out_hw
    if h * out_w >= w * out_h:  # frame is relatively taller than the output
        return max(1, min(h, round(w * out_h / out_w))), w
    return h, max(1, min(w, round(h * out_w / out_h)))


def _fixed_offsets(h: int, w: int, ch: int, cw: int, more: bool) -> list[tuple[int, int]]:
    """Corner, centre (and with ``more``: edge-middle and quarter) positions of a ch x cw box."""
    sy, sx = (h - ch) // 4, (w - cw) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
    if more:
        grid += [(0, 2), (4, 2), (2, 0), (2, 4), (1, 1), (1, 3), (3, 1), (3, 3)]
    return [(i * sy, j * sx) for i, j in grid]


def multi_scale_crop_params(h: int, w: int, out_hw: tuple[int, int],
                            scales: Sequence[float] = PRETRAIN_SCALES, max_distort: int = 1,
                            fix_crop: bool = True, more_fix_crop: bool = True, *,
                            rng: np.random.Generator) -> Box:
    """A VideoMAE pre-training style multi-scale crop box ``(top, left, height, width)``.

    Crop height and width are each ``base * scale`` for scales in ``scales``, where the
    base is the frame's shorter side (generally: the largest box of the output's aspect
    ratio); sides within 3 px of the output size snap to it. Height and width may use
    scales at most ``max_distort`` list positions apart, which bounds aspect distortion.
    With ``fix_crop`` the box sits at one of 5 fixed positions (corners and centre), or 13
    with ``more_fix_crop``; otherwise anywhere.
    """
    base_h, base_w = _aspect_box(h, w, out_hw)
    out_h, out_w = out_hw

    def side(base: int, s: float, out: int, limit: int) -> int:
        x = int(base * s)
        return max(1, min(limit, out if abs(x - out) < 3 else x))

    heights = [side(base_h, s, out_h, h) for s in scales]
    widths = [side(base_w, s, out_w, w) for s in scales]
    pairs = [(ch, cw) for i, ch in enumerate(heights) for j, cw in enumerate(widths)
             if abs(i - j) <= max_distort]
    ch, cw = pairs[rng.integers(len(pairs))]
    if fix_crop:
        offsets = _fixed_offsets(h, w, ch, cw, more_fix_crop)
        top, left = offsets[rng.integers(len(offsets))]
    else:
        top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    return int(top), int(left), int(ch), int(cw)


def random_resized_crop_params(h: int, w: int, scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3), *,
                               rng: np.random.Generator, attempts: int = 10) -> Box:
    """An Inception-style crop box: area fraction in ``scale``, aspect ``width/height`` log-uniform in ``ratio``.

    After ``attempts`` misses it falls back to the largest centred box whose aspect is ``ratio``-clamped.
    """
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw
    aspect = min(max(w / h, ratio[0]), ratio[1])
    ch, cw = (h, min(w, round(h * aspect))) if w / h >= aspect else (min(h, round(w / aspect)), w)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def uniform_crop_boxes(h: int, w: int, crop_hw: tuple[int, int], num_crops: int = 1) -> list[Box]:
    """``num_crops`` boxes spread evenly along the axis with the most slack, centred on the other.

    One crop is the centre crop; three give VideoMAE's left/centre/right (or top/middle/bottom) test views.
    """
    ch, cw = min(crop_hw[0], h), min(crop_hw[1], w)
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    if num_crops == 1:
        return [((h - ch) // 2, (w - cw) // 2, ch, cw)]
    steps = np.linspace(0.0, 1.0, num_crops)
    if h - ch > w - cw:
        return [(round(s * (h - ch)), (w - cw) // 2, ch, cw) for s in steps]
    return [((h - ch) // 2, round(s * (w - cw)), ch, cw) for s in steps]


def cover_resize_hw(h: int, w: int, short_side: int, crop_hw: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Frame size after scaling so the short side is ``short_side`` and the frame still covers ``crop_hw``."""
    f = max(short_side / min(h, w), crop_hw[0] / h, crop_hw[1] / w)
    return max(crop_hw[0], round(h * f)), max(crop_hw[1], round(w * f))


# ---- pixel operations ---------------------------------------------------------------------------

def _resize_tchw(video: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    if tuple(video.shape[-2:]) == tuple(out_hw):
        return video
    return F.interpolate(video, size=tuple(out_hw), mode="bilinear", align_corners=False, antialias=False)


def crop_resize(video: torch.Tensor | np.ndarray, box: Box, out_hw: tuple[int, int]) -> torch.Tensor:
    """Cut ``box`` from every frame of a ``THWC`` clip and resize it to ``out_hw``: ``TCHW``, dtype kept."""
    video = as_video_tensor(video)
    top, left, ch, cw = box
    if not (0 <= top and 0 <= left and ch > 0 and cw > 0 and top + ch <= video.shape[1]
            and left + cw <= video.shape[2]):
        raise ValueError(f"crop box {box} does not fit frames of {tuple(video.shape[1:3])}")
    # The permuted view is channels-last in memory, which is what interpolate is fastest on.
    region = video[:, top:top + ch, left:left + cw, :].permute(0, 3, 1, 2)
    return _resize_tchw(region, out_hw)


def short_side_resize(video: torch.Tensor | np.ndarray, short_side: int,
                      crop_hw: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Resize a ``THWC`` clip so its short side is ``short_side`` (and it covers ``crop_hw``): ``TCHW``."""
    video = as_video_tensor(video)
    out_hw = cover_resize_hw(video.shape[1], video.shape[2], short_side, crop_hw)
    return _resize_tchw(video.permute(0, 3, 1, 2), out_hw)


def crop_tchw(video: torch.Tensor, box: Box) -> torch.Tensor:
    top, left, ch, cw = box
    return video[..., top:top + ch, left:left + cw]


def hflip(video: torch.Tensor) -> torch.Tensor:
    """Mirror every frame of a ``TCHW`` (or ``CTHW``) clip left-right."""
    return video.flip(-1)


def _scale_and_shift(mean: Sequence[float], std: Sequence[float], shape: tuple[int, ...],
                     device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x * scale - shift`` equals ``(x / 255 - mean) / std`` per channel, as tensors of ``shape``: made once
    per device (a copy to the GPU at every step would wait for the host)."""
    return _device_scale_and_shift(tuple(mean), tuple(std), shape, torch.device(device or "cpu"))


@functools.lru_cache(maxsize=32)
def _device_scale_and_shift(mean: tuple[float, ...], std: tuple[float, ...], shape: tuple[int, ...],
                            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32, device=device).view(shape)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32, device=device).view(shape)
    return scale, shift


@functools.lru_cache(maxsize=8)
def pixel_mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's per-channel pixel mean and std as float32 tensors on ``device``, made once per device."""
    return (torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float32, device=device),
            torch.tensor(IMAGENET_DEFAULT_STD, dtype=torch.float32, device=device))


def normalize(video: torch.Tensor, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
              std: Sequence[float] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 (0..255) ``TCHW`` clip -> float32 ``CTHW``, ``(x / 255 - mean) / std`` per channel."""
    c = video.shape[1]
    scale, shift = _scale_and_shift(mean, std, (c, 1, 1, 1))
    out = torch.empty((c, video.shape[0], *video.shape[2:]), dtype=torch.float32)
    out.copy_(video.permute(1, 0, 2, 3))
    return out.mul_(scale).sub_(shift)


def normalize_batch(videos: torch.Tensor, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                    std: Sequence[float] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 ``[B, C, T, H, W]`` clips -> float32, normalised as :func:`normalize`, on their own device."""
    if videos.dtype != torch.uint8 or videos.ndim != 5:
        raise ValueError(f"expected uint8 [B, C, T, H, W] clips, got {videos.dtype} {tuple(videos.shape)}")
    scale, shift = _scale_and_shift(mean, std, (1, videos.shape[1], 1, 1, 1), videos.device)
    return videos.to(torch.float32).mul_(scale).sub_(shift)


def to_cthw(video: torch.Tensor) -> torch.Tensor:
    """A ``TCHW`` clip as a contiguous ``CTHW`` one, dtype kept."""
    return video.permute(1, 0, 2, 3).contiguous()


def denormalize(video: torch.Tensor, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                std: Sequence[float] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """Inverse of :func:`normalize`: float ``CTHW`` -> float ``CTHW`` in 0..255 (e.g. for visualisation)."""
    c = video.shape[0]
    m = torch.tensor(mean, dtype=video.dtype).view(c, 1, 1, 1)
    s = torch.tensor(std, dtype=video.dtype).view(c, 1, 1, 1)
    return (video * s + m) * 255.0


# ---- whole-clip transforms ------------------------------------------------------------------------

class PretrainTransform:
    """Pre-training augmentation: multi-scale crop, resize to ``input_hw``, random flip.

    Call with a uint8 ``THWC`` clip and a numpy Generator; returns uint8 ``[C, T, H, W]``, which the
    training step normalises on its device (:func:`normalize_batch`).
    """

    def __init__(self, input_hw: tuple[int, int], scales: Sequence[float] = PRETRAIN_SCALES,
                 flip: bool = True, max_distort: int = 1, more_fix_crop: bool = True) -> None:
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.scales = tuple(scales)
        self.flip = flip
        self.max_distort = max_distort
        self.more_fix_crop = more_fix_crop

    def __call__(self, video: torch.Tensor | np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        video = as_video_tensor(video)
        box, flip = self.draw(video.shape[1], video.shape[2], rng)
        clip = crop_resize(video, box, self.input_hw)
        if flip:
            clip = hflip(clip)
        return to_cthw(clip)

    def draw(self, height: int, width: int, rng: np.random.Generator) -> tuple[Box, bool]:
        """The crop box and the flip of one clip of ``height x width`` frames: what :meth:`__call__` draws."""
        box = multi_scale_crop_params(height, width, self.input_hw, self.scales, self.max_distort, True,
                                      self.more_fix_crop, rng=rng)
        return box, bool(self.flip and rng.random() < 0.5)

    def resize_crop(self, crop: torch.Tensor) -> torch.Tensor:
        """A clip's crop, uint8 ``THWC`` (already flipped if drawn so), resized: uint8 ``[C, T, H, W]``."""
        return to_cthw(crop_resize(crop, (0, 0, crop.shape[1], crop.shape[2]), self.input_hw))

    def __repr__(self) -> str:
        return (f"PretrainTransform(input_hw={self.input_hw}, scales={self.scales}, flip={self.flip}, "
                f"max_distort={self.max_distort}, more_fix_crop={self.more_fix_crop})")


class RandomResizedCropTransform:
    """Fine-tuning training augmentation -> float ``CTHW``.

    Random resized crop, random flip, then optionally video RandAugment (``rand_augment``, a
    timm policy string, on the uint8 crop), normalise, and random erasing (``reprob`` > 0)
    of one box shared by all frames. Keep ``flip=False`` for data whose labels depend on
    left/right (the demo set, SSv2). All randomness follows ``rng``.
    """

    def __init__(self, input_hw: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, rand_augment: str | None = None,
                 interpolation: str = "bilinear", reprob: float = 0.0, remode: str = "pixel",
                 recount: int = 1) -> None:
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), flip
        self.rand_augment = VideoRandAugment.from_policy(rand_augment, interpolation)
        self.erasing = ClipRandomErasing(reprob, remode, recount) if reprob > 0 else None

    def __call__(self, video: torch.Tensor | np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        video = as_video_tensor(video)
        box = random_resized_crop_params(video.shape[1], video.shape[2], self.scale, self.ratio, rng=rng)
        clip = crop_resize(video, box, self.input_hw)
        if self.flip and rng.random() < 0.5:
            clip = hflip(clip)
        if self.rand_augment is None and self.erasing is None:
            return normalize(clip)
        with seeded_global_rngs(rng):
            if self.rand_augment is not None:
                clip = self.rand_augment(clip)
            out = normalize(clip)
            if self.erasing is not None:
                out = self.erasing(out)
        return out

    def __repr__(self) -> str:
        return (f"RandomResizedCropTransform(input_hw={self.input_hw}, scale={self.scale}, ratio={self.ratio}, "
                f"flip={self.flip}, rand_augment={self.rand_augment}, erasing={self.erasing})")


class EvalTransform:
    """Test views: resize the short side to ``short_side`` then take ``num_crops`` uniform ``crop_hw`` crops.

    Returns a list of ``num_crops`` float32 ``[C, T, H, W]`` clips; no randomness.
    """

    def __init__(self, crop_hw: tuple[int, int], short_side: int | None = None, num_crops: int = 1) -> None:
        self.crop_hw = (int(crop_hw[0]), int(crop_hw[1]))
        self.short_side = min(self.crop_hw) if short_side is None else int(short_side)
        self.num_crops = num_crops

    def __call__(self, video: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        resized = short_side_resize(video, self.short_side, self.crop_hw)
        boxes = uniform_crop_boxes(resized.shape[2], resized.shape[3], self.crop_hw, self.num_crops)
        return [normalize(crop_tchw(resized, box)) for box in boxes]

    def view(self, video: torch.Tensor | np.ndarray, crop: int) -> torch.Tensor:
        """Only crop number ``crop`` (0-based) of the list :meth:`__call__` returns."""
        if not 0 <= crop < self.num_crops:
            raise IndexError(f"crop {crop} out of range for {self.num_crops} crops")
        resized = short_side_resize(video, self.short_side, self.crop_hw)
        box = uniform_crop_boxes(resized.shape[2], resized.shape[3], self.crop_hw, self.num_crops)[crop]
        return normalize(crop_tchw(resized, box))

    def __repr__(self) -> str:
        return f"EvalTransform(crop_hw={self.crop_hw}, short_side={self.short_side}, num_crops={self.num_crops})"
