"""The self-check's ``device_path`` row: a CUDA run's loader hands the step YUV 4:2:0 crops
(:class:`device_transforms.YuvCrops`), converted, resized, flipped and normalised batched on the device. On the
check's device, this row compares that path's clips with the CPU path's (same seeds: the same frames, boxes and
flips; pixels within 2/255) and times both sides: the workers' clips per second (in this process, one thread)
with and without the conversion, and the device's milliseconds per clip."""
from __future__ import annotations

import time
from typing import Any

import torch

from patches.perf.selfcheck_context import Context
from patches.perf.selfcheck_decoders import prepared_video

MAX_PIXEL_ERROR = 2.0  # of 255: swscale's integer conversion is repeated exactly; resizing rounds differently


def _batches(ctx: Context, crops_to_device: bool, items: int) -> tuple[list[Any], float]:
    """``items`` items of the pre-training dataset on the check's video (seeded), collated as the loader does,
    and the clips per second of making them (one thread, as in a loader worker)."""
    from patches.data.datasets import VideoMAEPretrainDataset, collate_fn_for
    from patches.data.device_transforms import CollateCrops
    from patches.grid import make_grid

    quick = ctx.profile.size == "micro"
    grid = make_grid(4 if quick else 16, 2, 32 if quick else 224, 8 if quick else 16)
    path = prepared_video(ctx)
    (ctx.work / "device_path.csv").write_text(f"{path}\n" * items)
    dataset = VideoMAEPretrainDataset(ctx.work / "device_path.csv", None, grid, 2 if quick else 4,
                                      lambda: (torch.zeros(1), torch.zeros(1)), num_sample=2, flip=True)
    dataset.crops_to_device = crops_to_device
    collate = CollateCrops(grid.input_size) if crops_to_device else collate_fn_for(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start, batches = time.perf_counter(), []
        for i in range(0, items, 2):
            torch.manual_seed(i)
            batches.append(collate([dataset[i], dataset[i + 1]])[0])
        return batches, 2 * items / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def check_device_path(ctx: Context) -> dict[str, Any]:
    """The device path against the CPU path on ``ctx.device``: largest pixel difference, and the speed of each."""
    from patches.data.transforms import IMAGENET_DEFAULT_STD, normalize_batch

    items = 4 if ctx.profile.size == "micro" else 16
    cpu_batches, rgb_clips_per_s = _batches(ctx, False, items)
    yuv_batches, yuv_clips_per_s = _batches(ctx, True, items)
    cuda = ctx.device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(ctx.device)) if cuda else (lambda: None)
    error, device_s = 0.0, 0.0
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=ctx.device).view(1, 3, 1, 1, 1)
    yuv_batches[0].to(ctx.device).to_model_input()  # the first call's set-up is not timed
    for expected, crops in zip(cpu_batches, yuv_batches):
        crops = (crops.pin_memory() if cuda else crops).to(ctx.device, non_blocking=cuda)
        sync()
        start = time.perf_counter()
        got = crops.to_model_input()
        sync()
        device_s += time.perf_counter() - start
        want = normalize_batch(expected.to(ctx.device))
        error = max(error, ((got - want).abs() * std * 255).max().item())
    if error > MAX_PIXEL_ERROR:
        raise RuntimeError(f"the device path's clips differ from the CPU path's by {error:.2f}/255 on {ctx.device}")
    return {"max_pixel_error": round(error, 3), "worker_rgb_clips_per_s": round(rgb_clips_per_s, 1),
            "worker_yuv_clips_per_s": round(yuv_clips_per_s, 1),
            "device_ms_per_clip": round(1e3 * device_s / (2 * items), 3), "device": str(ctx.device)}
