"""The self-check's ``decoders`` row: clips per second of the loader's decoders on one generated H.264 video (the
prepared-file shape: 320 px short side, a keyframe every 16 frames): PyAV (the default), torchcodec on the CPU,
and torchcodec with NVDEC on a CUDA device (``--decoder torchcodec``, :mod:`patches.data.torchcodec_reader`)."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from patches.perf.selfcheck_context import Context, Skip


def prepared_video(ctx: Context) -> str:
    """A generated video prepared as ``prepare_videos.py`` writes them (H.264, GOP 16, 568x320 or smaller), made
    once per self-check run and read by the rows that time the loader's side (decoders, device path)."""
    from patches.data.encoding import EncodeConfig, transcode_pyav
    from patches.perf.bench_videos import render_video, write_video

    quick = ctx.profile.size == "micro"
    raw, prepared = ctx.work / "decoders_raw.mp4", ctx.work / "decoders.mp4"
    if not prepared.is_file():
        write_video(raw, render_video(0, (180, 320) if quick else (360, 640), 96 if quick else 192), 30)
        transcode_pyav(str(raw), str(prepared), EncodeConfig(short_side=160 if quick else 320, gop=16))
    return str(prepared)


def _clips_per_s(open_video: Callable[[], Any], clips: int, sync: Callable[[], None]) -> float:
    """Clips of 16 frames at sampling rate 4, each from a newly opened file, as a loader worker reads them."""
    from patches.data.clip_sampling import sample_clip_indices

    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker: torchcodec's CPU colour conversion runs torch ops
    try:
        start = time.perf_counter()
        for _ in range(clips):
            video = open_video()
            frames = video.read(np.unique(sample_clip_indices(len(video), 16, 4, rng)))
            if len(frames) != 16:
                raise RuntimeError(f"{type(video).__name__}: read {len(frames)} of 16 frames")
        sync()
        return clips / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def check_decoders(ctx: Context) -> dict[str, Any]:
    """Clips/s of each decoder that runs here; skipped (with the reason) where torchcodec cannot run."""
    from patches.data.torchcodec_reader import TorchCodecVideo, torchcodec_problem
    from patches.data.video_reader import VideoFile

    problem = torchcodec_problem()
    if problem is not None:
        raise Skip(f"PyAV only: {problem}")
    path = prepared_video(ctx)
    clips = 8 if ctx.profile.size == "micro" else 40
    nothing = lambda: None  # noqa: E731
    figures = {"pyav_clips_per_s": _clips_per_s(lambda: VideoFile(path), clips, nothing),
               "torchcodec_cpu_clips_per_s": _clips_per_s(lambda: TorchCodecVideo(path), clips, nothing)}
    expected = VideoFile(path).read(np.arange(0, 16, 4))
    if ctx.device.type == "cuda":
        got = TorchCodecVideo(path, ctx.device).read(np.arange(0, 16, 4))
        error = (got.cpu().float() - expected.float()).abs().mean().item()
        if error > 4:  # NVDEC's colour conversion differs from swscale's by rounding
            raise RuntimeError(f"torchcodec on {ctx.device}: frames differ from PyAV's by {error:.1f} levels")
        figures["torchcodec_cuda_clips_per_s"] = _clips_per_s(lambda: TorchCodecVideo(path, ctx.device), clips,
                                                              lambda: torch.cuda.synchronize(ctx.device))
        figures["torchcodec_cuda_mean_abs_error"] = round(error, 2)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}
