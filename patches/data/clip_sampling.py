"""Which frames of a video make a clip: VideoMAE's stride sampling (a window of ``num_frames`` every
``sampling_rate`` frames) and its TSN-style segment sampling (SSv2: one frame per segment of the whole video)."""
from __future__ import annotations

import numpy as np
import torch


def sample_clip_indices(num_video_frames: int, num_frames: int, sampling_rate: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Frame indices of one clip: ``num_frames`` frames ``sampling_rate`` apart, int64 ``[num_frames]``.

    As in VideoMAE the clip spans ``num_frames * sampling_rate`` frames and starts uniformly
    in ``[0, len - span]``. A video shorter than that starts at a random frame that still
    fits the clip without wrapping when possible (else at 0) and *loops*: indices wrap
    modulo the video length, so a 1-frame video repeats its only frame.
    """
    if num_video_frames < 1:
        raise ValueError(f"video has no frames (num_video_frames={num_video_frames})")
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames}, {sampling_rate}")
    span = num_frames * sampling_rate
    needed = (num_frames - 1) * sampling_rate + 1  # frames the clip actually touches
    if num_video_frames >= span:
        last_start = num_video_frames - span
    else:
        last_start = max(num_video_frames - needed, 0)
    start = int(rng.integers(last_start + 1))
    return (start + np.arange(num_frames, dtype=np.int64) * sampling_rate) % num_video_frames


def segment_clip_indices(num_video_frames: int, num_frames: int, sampling_rate: int,
                         num_segments: int = 1) -> list[np.ndarray]:
    """Frame indices of ``num_segments`` evaluation clips spread evenly over the video.

    Clip starts go evenly from frame 0 to the last start at which the clip's frames still
    fit; one segment gives the centred clip. Videos shorter than a clip start every clip at
    0 and loop as in :func:`sample_clip_indices`, so segments may coincide.
    """
    if num_video_frames < 1:
        raise ValueError(f"video has no frames (num_video_frames={num_video_frames})")
    if min(num_frames, sampling_rate, num_segments) < 1:
        raise ValueError(f"num_frames, sampling_rate and num_segments must be >= 1, "
                         f"got {num_frames}, {sampling_rate}, {num_segments}")
    slack = max(num_video_frames - ((num_frames - 1) * sampling_rate + 1), 0)
    starts = [slack // 2] if num_segments == 1 else np.round(np.linspace(0, slack, num_segments)).astype(int)
    offsets = np.arange(num_frames, dtype=np.int64) * sampling_rate
    return [(int(start) + offsets) % num_video_frames for start in starts]


SAMPLINGS = ("stride", "segment")


def segment_train_indices(num_video_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """TSN-style training indices, as VideoMAE's SSv2 loader draws them: the video cut into ``num_segments``
    segments of ``len // num_segments`` frames, one frame at a random offset in each, int64 ``[num_segments]``.

    A video shorter than ``num_segments`` frames spreads them evenly and repeats frames (VideoMAE repeats
    frame 0 there).
    """
    if num_video_frames < 1:
        raise ValueError(f"video has no frames (num_video_frames={num_video_frames})")
    average = num_video_frames // num_segments
    base = np.arange(num_segments, dtype=np.int64)
    if average > 0:
        return base * average + rng.integers(average, size=num_segments)
    return base * num_video_frames // num_segments


def segment_eval_indices(num_video_frames: int, num_segments: int, fraction: float) -> np.ndarray:
    """One frame per segment of ``len / num_segments`` frames, ``fraction`` of the way into each: 0 gives the
    segment starts and 0.5 the centres, VideoMAE's two SSv2 test clips. int64 ``[num_segments]``."""
    if num_video_frames < 1:
        raise ValueError(f"video has no frames (num_video_frames={num_video_frames})")
    tick = num_video_frames / float(num_segments)
    return np.array([int(tick * x + tick * fraction) for x in range(num_segments)], dtype=np.int64)


def eval_view_fraction(segment: int, num_segments: int) -> float:
    """Where segment sampling's evaluation view ``segment`` of ``num_segments`` sits in each segment: view j of
    k at j / k (VideoMAE's starts and centres for k = 2); a single view at the centres."""
    return 0.5 if num_segments == 1 else segment / num_segments


def torch_seeded_rng() -> np.random.Generator:
    """A numpy Generator seeded from torch's RNG, so torch.manual_seed and DataLoader worker seeds govern it."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))
