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
from patches.data.yuv_crops import convertible, crop_clip_rgb


def pretraining_clips(source: VideoFile | FrameFolder | FrameArray, picks: Sequence[np.ndarray],
                      transform: PretrainTransform, rng: np.random.Generator) -> list[torch.Tensor]:
    """uint8 ``[C, T, H, W]`` clips of ``source``, one for each index array in ``picks``."""
    if isinstance(source, VideoFile):
        needed = np.unique(np.concatenate(picks))
        frames = source.decode(needed)
        if frames is not None and convertible(frames):
            height, width = frames[0].height, frames[0].width
            clips = []
            for pick in picks:
                box, flip = transform.draw(height, width, rng)
                chosen = [frames[i] for i in np.searchsorted(needed, pick).tolist()]
                clips.append(transform.resize_crop(crop_clip_rgb(chosen, box, flip, source.fast.to_rgb)))
            return clips
    return [transform(clip, rng) for clip in decode_clips(source, picks)]
