"""A CUDA run's device path, run on the CPU: the workers hand over YUV 4:2:0 crop planes, the step converts them
to RGB (swscale's arithmetic), resizes, flips and normalises them batched; it must give the loader's CPU path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patches.data.datasets import VideoMAEPretrainDataset, collate_fn_for
from patches.data.device_transforms import CollateCrops, YuvCrops
from patches.data.transforms import IMAGENET_DEFAULT_STD, normalize_batch
from patches.data.video_reader import VideoFile
from patches.data.yuv_crops import YuvCrop, crop_clip_rgb, crop_clip_yuv, frame_planes
from patches.data.yuv_rgb import coefficients_tensor, frame_colour, yuv420_to_rgb
from patches.grid import make_grid

# (pixel format, AVColorSpace, AVColorRange): BT.601 limited (untagged), BT.709 limited, full range two ways
COLOURS = [("yuv420p", 2, 0), ("yuv420p", 1, 1), ("yuvj420p", 2, 2), ("yuv420p", 6, 2), ("yuv420p", 9, 1)]


@pytest.mark.parametrize("fmt,colorspace,color_range", COLOURS)
def test_yuv420_to_rgb_is_swscales_conversion(fmt: str, colorspace: int, color_range: int) -> None:
    import av
    from av.video.reformatter import VideoReformatter

    rng = np.random.default_rng(colorspace)
    h, w = 34, 50  # not a multiple of swscale's SIMD width
    y, u, v = (rng.integers(0, 256, s, dtype=np.uint8) for s in ((h, w), (h // 2, w // 2), (h // 2, w // 2)))
    frame = av.VideoFrame.from_ndarray(np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(-1, w), format=fmt)
    frame.colorspace, frame.color_range = colorspace, color_range
    expected = VideoReformatter().reformat(frame, format="rgb24", threads=1).to_ndarray().astype(int)
    got = yuv420_to_rgb(*(torch.from_numpy(p)[None] for p in (y, u, v)), coefficients_tensor([frame_colour(frame)]))
    diff = np.abs(got[0].numpy().astype(int) - expected)
    assert got.dtype == torch.uint8 and diff.max() <= 2 and diff.mean() < 0.05  # bit-exact on x86 builds


def _h264(path: Path, fmt: str, colorspace: int, color_range: int, size: tuple[int, int] = (70, 102)) -> Path:
    """A textured, moving H.264 mp4 written by PyAV in ``fmt`` and tagged with ``colorspace`` and ``color_range``."""
    import av

    rng = np.random.default_rng(1)
    h, w = size
    texture = rng.integers(0, 256, (2 * h, 2 * w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, fmt
        stream.options = {"crf": "18", "threads": "1", "g": "8"}
        cc = stream.codec_context
        cc.colorspace, cc.color_range = colorspace, color_range
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[i:i + h, 2 * i:2 * i + w]), format="rgb24")
            frame = frame.reformat(format=fmt)
            frame.colorspace, frame.color_range = colorspace, color_range
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("fmt,colorspace,color_range", COLOURS[:3])
def test_yuv_crops_at_odd_corners_convert_to_the_loaders_rgb_crops(tmp_path: Path, fmt: str, colorspace: int,
                                                                   color_range: int) -> None:
    source = VideoFile(str(_h264(tmp_path / "v.mp4", fmt, colorspace, color_range)))
    frames = source.decode(np.array([0, 3, 7, 19]))
    assert frames is not None and frames[0].format.name == fmt
    planes, colour = frame_planes(frames), frame_colour(frames[0])
    assert colour == (colorspace, fmt == "yuvj420p" or color_range == 2), "the file keeps its tags"
    for box in [(0, 0, 70, 102), (1, 1, 69, 101), (3, 5, 9, 7), (10, 33, 31, 42), (69, 101, 1, 1)]:
        for flip in (False, True):
            expected = crop_clip_rgb(frames, box, flip, source.fast.to_rgb)
            got = crop_clip_yuv(planes, box, flip, colour)
            assert got.luma[0].dtype == np.uint8 and got.to_rgb().shape == expected.shape
            assert (got.to_rgb().int() - expected.int()).abs().max() <= 2
    source.fast.close()


@pytest.mark.parametrize("fmt,colorspace,color_range", COLOURS[:3])
def test_device_path_gives_the_cpu_paths_clips_on_h264(tmp_path: Path, fmt: str, colorspace: int,
                                                      color_range: int) -> None:
    """Same frames, boxes and flips from the same seeds; pixels within 2/255 of the CPU path's."""
    for i in range(3):
        _h264(tmp_path / f"v{i}.mp4", fmt, colorspace, color_range, size=(70 + 8 * i, 102 - 6 * i))
    (tmp_path / "list.csv").write_text("".join(f"v{i}.mp4\n" for i in range(3)))
    grid = make_grid(4, 2, 32, 16)
    datasets = [VideoMAEPretrainDataset(tmp_path / "list.csv", tmp_path, grid, 2, lambda: (torch.zeros(8), ()),
                                        num_sample=3, flip=True) for _ in range(2)]
    datasets[1].crops_to_device = True
    for seed in range(3):
        torch.manual_seed(seed)
        cpu = normalize_batch(collate_fn_for(3)([datasets[0][i] for i in range(3)])[0])
        torch.manual_seed(seed)
        batch = CollateCrops(grid.input_size)([datasets[1][i] for i in range(3)])[0]
        assert isinstance(batch, YuvCrops) and batch.dtype == torch.uint8 and any(batch.flips)
        assert len({tuple(b[:2]) for b in batch.boxes}) > 1, "crops at odd and even corners"
        got = batch.to(torch.device("cpu")).to_model_input()
        pixels = (got - cpu).abs() * torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1, 1) * 255
        assert got.shape == cpu.shape == (9, 3, 4, 32, 32) and pixels.max() <= 2.001 and pixels.mean() < 0.5


def test_a_batch_with_an_rgb_crop_travels_as_rgb(tmp_path: Path) -> None:
    """A video decord reads (no YUV planes) in a batch of YUV crops: the batch is converted in the worker."""
    source = VideoFile(str(_h264(tmp_path / "v.mp4", "yuv420p", 2, 0)))
    frames = source.decode(np.arange(4))
    yuv = crop_clip_yuv(frame_planes(frames), (1, 3, 40, 60), True, frame_colour(frames[0]))
    rgb = crop_clip_rgb(frames, (0, 0, 50, 50), False, source.fast.to_rgb)
    batch = CollateCrops((32, 32))([(yuv, torch.zeros(8)), (rgb, torch.ones(8))])[0]
    assert not isinstance(batch, YuvCrops) and batch.sizes.tolist() == [[40, 60], [50, 50]]
    assert torch.equal(batch.crops[0, :, :40, :60], yuv.to_rgb()) and isinstance(yuv, YuvCrop)
    source.fast.close()
