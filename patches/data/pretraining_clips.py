"""Pre-training clips of one video: decoded once for all its clips, each crop cut from the YUV frames before
colour conversion (:mod:`patches.data.yuv_crops`), then resized. Same clips as decoding to RGB first and
transforming each clip (:func:`video_reader.decode_clips` + :class:`transforms.PretrainTransform`): the same
frames, and the same crop boxes and flips drawn in the same order from ``rng``."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from patches.data.transforms import PretrainTransform
from patches.data.video_reader import FrameArray, FrameFolder, VideoFile, decode_clips
from patches.data.yuv_crops import YuvCrop, convertible, crop_clip_rgb, crop_clip_yuv, frame_planes
from patches.data.yuv_rgb import frame_colour


def pretraining_clips(source: VideoFile | FrameFolder | FrameArray, picks: Sequence[np.ndarray],
                      transform: PretrainTransform, rng: np.random.Generator, resize: bool = True
                      ) -> list[torch.Tensor] | list[torch.Tensor | YuvCrop]:
    """uint8 ``[C, T, H, W]`` clips of ``source``, one for each index array in ``picks``; with ``resize=False``
    each clip's crop instead, unconverted where the decoder gives YUV 4:2:0 (a :class:`yuv_crops.YuvCrop`), else
    uint8 ``THWC`` RGB at the size it was cut, flipped where drawn (the step's device converts, resizes and flips
    them: :mod:`patches.data.device_transforms`)."""
    if not resize:
        return clip_crops(source, picks, transform, rng, yuv=True)
    return [transform.resize_crop(crop) for crop in clip_crops(source, picks, transform, rng)]


def clip_crops(source: VideoFile | FrameFolder | FrameArray, picks: Sequence[np.ndarray], transform: PretrainTransform,
               rng: np.random.Generator, yuv: bool = False) -> list:
    """Each clip's crop, uint8 ``THWC`` contiguous, mirrored where drawn; boxes and flips from ``transform.draw``.
    PyAV's YUV 4:2:0 frames are cut before their conversion (with ``yuv``, not converted at all: a
    :class:`YuvCrop` each); other sources are converted whole, then cut."""
    if isinstance(source, VideoFile):
        needed = np.unique(np.concatenate(picks))
        frames = source.decode(needed)
        if frames is not None and convertible(frames):
            return (_yuv_crops if yuv else _rgb_crops)(source, frames, needed, picks, transform, rng)
    crops = []
    for clip in decode_clips(source, picks):
        (top, left, h, w), flip = transform.draw(clip.shape[1], clip.shape[2], rng)
        crop = clip[:, top:top + h, left:left + w]
        crops.append((crop.flip(2) if flip else crop).contiguous())
    return crops


def _rgb_crops(source: VideoFile, frames: list, needed: np.ndarray, picks: Sequence[np.ndarray],
               transform: PretrainTransform, rng: np.random.Generator) -> list[torch.Tensor]:
    """:func:`clip_crops` of convertible frames: each clip's box cut from the planes, then converted by swscale."""
    crops = []
    for pick in picks:
        box, flip = transform.draw(frames[0].height, frames[0].width, rng)
        chosen = [frames[i] for i in np.searchsorted(needed, pick).tolist()]
        crops.append(crop_clip_rgb(chosen, box, flip, source.fast.to_rgb))
    del frames  # the decoder's frame buffers go back before the file is closed
    source.fast.close()
    return crops


def _yuv_crops(source: VideoFile, frames: list, needed: np.ndarray, picks: Sequence[np.ndarray],
               transform: PretrainTransform, rng: np.random.Generator) -> list[YuvCrop]:
    """:func:`clip_crops` with ``yuv``: each clip's box as views of the frames' planes (copied once, by the collate
    step)."""
    height, width, colour = frames[0].height, frames[0].width, frame_colour(frames[0])
    planes = frame_planes(frames)  # views: they keep the frames' buffers until the batch is collated
    del frames
    source.fast.close()
    crops = []
    for pick in picks:
        box, flip = transform.draw(height, width, rng)
        chosen = [planes[i] for i in np.searchsorted(needed, pick).tolist()]
        crops.append(crop_clip_yuv(chosen, box, flip, colour))
    return crops
