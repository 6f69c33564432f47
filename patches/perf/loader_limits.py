"""What bounds the pre-training loader on a set of files: the decode-only limit (seeking to each clip's keyframe
and decoding its span on one core, no colour conversion, no augmentation), and the loader workers' resident
memory, sampled over a long run to show it does not grow."""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from patches.data.clip_sampling import sample_clip_indices
from patches.data.recipe_rate import file_sampling_rate
from patches.data.video_reader import VideoFile
from patches.errors import UsageError


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_only_limit(paths: Sequence[str], num_frames: int, sampling_rate: int, num_sample: int = 1,
                      seconds: float = 5.0, min_videos: int = 4, seed: int = 0) -> dict[str, Any]:
    """Clips per second one core decodes from ``paths``, as the pre-training loader draws them, doing nothing else.

    Per video (in turn, from the start again when all were read): open it, draw one clip of ``num_frames`` frames
    ``sampling_rate`` apart as the loader does (its ``num_sample`` clips are augmentations of that one), and decode
    every frame it needs once (the loader's own reader: seek to the keyframe before each run of frames, decode the
    reference frames and the frames asked for), with no colour conversion. Runs in this process, one thread, until
    ``seconds`` have passed and ``min_videos`` were read. ``clips_per_s`` is per wall second, ``clips_per_cpu_s``
    per CPU second of this process (what a busy machine disturbs least; the limit uses it). Files PyAV cannot read
    are skipped; a :class:`UsageError` when none is readable."""
    rng = np.random.default_rng(seed)
    videos = clips = skipped = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds or videos < min_videos:
        if skipped >= len(paths):
            raise UsageError(f"PyAV cannot read any of the {len(paths)} videos, so there is no decode-only limit")
        path = paths[(videos + skipped) % len(paths)]
        video = VideoFile(path)
        # one pick: the num_sample clips of a video share it
        pick = sample_clip_indices(len(video), num_frames, file_sampling_rate(sampling_rate, video), rng)
        if video.decode(np.unique(pick)) is None:
            skipped += 1
            continue
        videos, clips = videos + 1, clips + num_sample
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"num_sample": num_sample, "clips": clips, "seconds": elapsed, "clips_per_s": clips / elapsed,
            "clips_per_cpu_s": clips / cpu if cpu > 0 else float("nan"), "unreadable_skipped": skipped}


def worker_rss_mb(pid: int | None = None) -> list[float]:
    """Resident memory (MB) of each child process of ``pid`` (default: this process), e.g. DataLoader workers."""
    import psutil

    out = []
    for child in psutil.Process(pid).children():
        try:
            out.append(child.memory_info().rss / 2 ** 20)
        except psutil.Error:  # it ended meanwhile
            continue
    return out


def children_cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) the child processes of ``pid`` (default: this process) have used so far."""
    import psutil

    total = 0.0
    for child in psutil.Process(pid).children():
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def rss_growth(samples: Sequence[Sequence[float]]) -> float:
    """How much (MB) the workers' resident memory grew over a run: the median of the largest worker's RSS over
    the run's last quarter minus its median over the second quarter (start-up and first allocations settle in
    the first; a median ignores one large clip)."""
    peaks = [max(s) for s in samples if s]
    if len(peaks) < 4:
        return 0.0
    quarter = len(peaks) // 4
    return float(np.median(peaks[-quarter:]) - np.median(peaks[quarter:2 * quarter]))
