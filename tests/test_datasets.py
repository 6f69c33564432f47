"""Clip sampling, clip transforms and the pre-training dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from patches.data.clip_sampling import sample_clip_indices
from patches.data.datasets import (PretrainingDataConfig, VideoMAEPretrainDataset, build_pretraining_dataset,
                                   collate_fn_for, multiple_samples_collate)
from patches.data.demo import render_clip, write_mp4
from patches.data.transforms import (EvalTransform, PretrainTransform, RandomResizedCropTransform, crop_resize, hflip,
                                     multi_scale_crop_params, normalize, normalize_batch, random_resized_crop_params,
                                     to_cthw, uniform_crop_boxes)
from patches.data.video_reader import VideoDecodeError
from patches.grid import make_grid


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ---- sample_clip_indices ----------------------------------------------------------------------------

def test_sample_indices_long_video_covers_all_starts() -> None:
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(400):
        idx = sample_clip_indices(40, 8, 4, rng)
        assert idx.dtype == np.int64 and idx.shape == (8,)
        assert np.all(np.diff(idx) == 4) and idx.max() < 40
        starts.add(int(idx[0]))
    assert starts == set(range(40 - 32 + 1))


def test_sample_indices_short_video_loops() -> None:
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(sample_clip_indices(20, 8, 4, rng), [0, 4, 8, 12, 16, 0, 4, 8])
    # Shorter than the span but long enough for the touched frames: no wrap, start in {0, 1}.
    for _ in range(20):
        idx = sample_clip_indices(30, 8, 4, rng)
        assert idx[0] in (0, 1) and np.all(np.diff(idx) == 4)


def test_sample_indices_single_frame_and_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(sample_clip_indices(1, 4, 2, rng), [0, 0, 0, 0])
    for args in [(0, 4, 2), (10, 0, 2), (10, 4, 0)]:
        with pytest.raises(ValueError):
            sample_clip_indices(*args, rng)


# ---- transforms -------------------------------------------------------------------------------------

def _still_video(t: int = 5, h: int = 50, w: int = 70) -> torch.Tensor:
    frame = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return frame.expand(t, h, w, 3)


def test_transforms_treat_every_frame_alike() -> None:
    video = _still_video()
    rng = np.random.default_rng(0)
    pretrain, outputs = [], []
    for _ in range(6):
        pretrain.append(PretrainTransform((32, 48))(video, rng))
        outputs.append(RandomResizedCropTransform((32, 32))(video, rng))
    outputs += EvalTransform((32, 32), num_crops=3)(video)
    # pre-training clips stay uint8 for the step to normalise on its device; the others are normalised
    for out, dtype in [(c, torch.uint8) for c in pretrain] + [(c, torch.float32) for c in outputs]:
        assert out.dtype == dtype and out.shape[:2] == (3, 5)
        assert torch.equal(out, out[:, :1].expand_as(out))
    assert not torch.equal(pretrain[0], pretrain[1])  # but clips do get different crops


def test_pretrain_transform_is_crop_resize_then_optional_flip() -> None:
    video = torch.from_numpy(render_clip(2, 0, num_frames=4, size=(48, 64)))
    for seed in range(8):
        box = multi_scale_crop_params(48, 64, (32, 32), rng=np.random.default_rng(seed))
        plain = crop_resize(video, box, (32, 32)).permute(1, 0, 2, 3)
        out = PretrainTransform((32, 32))(video, np.random.default_rng(seed))
        assert out.is_contiguous() and (torch.equal(out, plain) or torch.equal(out, hflip(plain)))


def _grid_position(box: tuple[int, int, int, int], h: int, w: int) -> tuple[int, int] | None:
    """Which quarter-step position a box sits at, or None where a side has no slack to tell."""
    top, left, ch, cw = box
    sy, sx = (h - ch) // 4, (w - cw) // 4
    return (top // sy, left // sx) if sy and sx else None


def test_multi_scale_crop_boxes() -> None:
    rng = np.random.default_rng(0)
    ranks = [96, 84, 72, 64]  # int(96 * scale); 0.66 * 96 = 63 snaps to the 64-px output
    corners_centre = {(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)}
    positions5, positions13 = set(), set()
    for _ in range(300):
        box = multi_scale_crop_params(96, 128, (64, 64), rng=rng)
        top, left, ch, cw = box
        assert ch in ranks and cw in ranks and 0 <= top <= 96 - ch and 0 <= left <= 128 - cw
        assert abs(ranks.index(ch) - ranks.index(cw)) <= 1  # max_distort
        positions13.add(_grid_position(box, 96, 128))
        positions5.add(_grid_position(multi_scale_crop_params(96, 128, (64, 64), more_fix_crop=False, rng=rng),
                                      96, 128))
    positions5.discard(None)
    positions13.discard(None)
    assert positions5 == corners_centre
    assert len(positions13) == 13 and corners_centre < positions13


def test_multi_scale_crop_non_square_output_keeps_its_aspect() -> None:
    top, left, ch, cw = multi_scale_crop_params(120, 120, (64, 96), scales=(1.0,), rng=np.random.default_rng(0))
    assert (ch, cw) == (80, 120)


def test_random_resized_crop_boxes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, ch, cw = random_resized_crop_params(60, 80, rng=rng)
        assert 0 <= top and top + ch <= 60 and 0 <= left and left + cw <= 80 and ch > 0 and cw > 0
    # An impossible request falls back to the largest centred box of clamped aspect.
    assert random_resized_crop_params(60, 80, scale=(2.0, 3.0), ratio=(1.0, 1.0), rng=rng) == (0, 10, 60, 60)


def test_uniform_crops_and_normalize() -> None:
    assert uniform_crop_boxes(64, 100, (64, 64), 3) == [(0, 0, 64, 64), (0, 18, 64, 64), (0, 36, 64, 64)]
    assert uniform_crop_boxes(100, 64, (64, 64), 1) == [(18, 0, 64, 64)]
    video = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    video[:, 1] = 255
    out = normalize(video)
    assert out.shape == (3, 2, 4, 4) and out.is_contiguous()
    m, s = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([-m[0] / s[0], (1 - m[1]) / s[1], -m[2] / s[2]]))


def test_normalize_batch_equals_normalize_of_each_clip() -> None:
    clips = torch.randint(0, 256, (3, 4, 3, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = torch.stack([to_cthw(c) for c in clips])  # what pre-training's loader collates
    expected = torch.stack([normalize(c) for c in clips])
    assert torch.equal(normalize_batch(batch), expected)
    with pytest.raises(ValueError, match="uint8"):
        normalize_batch(expected)


def test_pretraining_step_normalises_uint8_batches_on_its_device() -> None:
    from patches.train.reconstruction import prepare_batch
    clips = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 8, dtype=torch.bool)
    masks[:, ::2] = True
    videos, visible, target = prepare_batch((clips, masks, masks), torch.device("cpu"))
    assert videos.dtype == torch.float32 and torch.equal(videos, normalize_batch(clips))
    assert torch.equal(visible, torch.tensor([[1, 3, 5, 7]] * 2)) and torch.equal(target, torch.tensor([[0, 2, 4, 6]] * 2))
    already = prepare_batch((videos, masks, masks), torch.device("cpu"))[0]
    assert torch.equal(already, videos)  # float clips are taken as already normalised


# ---- pre-training dataset ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny mp4s of different sizes and lengths (one shorter than a clip) and their list file."""
    root = tmp_path_factory.mktemp("tiny")
    lines = []
    for i, (t, h, w) in enumerate([(24, 64, 64), (20, 48, 80), (5, 64, 96)]):
        write_mp4(root / f"v {i}.mp4", render_clip(2 * i, i, num_frames=t, size=(h, w)))
        lines.append(f"v {i}.mp4 {i}\n")
    _write(root / "list.csv", "".join(lines))
    return root


class CountingMasks:
    """Stands in for the mask generator: distinct, recognisable tensors, counted."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return torch.full((6,), self.calls), torch.full((2,), -self.calls)


@pytest.mark.parametrize("input_size", [64, (64, 96)])
def test_pretrain_dataset_items(tiny_videos: Path, input_size) -> None:
    grid = make_grid(8, 2, input_size, 16)
    masks = CountingMasks()
    ds = VideoMAEPretrainDataset(tiny_videos / "list.csv", None, grid, 2, masks)
    assert len(ds) == 3
    torch.manual_seed(0)
    for i in range(len(ds)):
        video, enc, dec = ds[i]
        assert video.dtype == torch.uint8 and video.shape == (3, grid.num_frames, *grid.input_size)
        assert video.float().std() > 20
        assert torch.equal(enc, torch.full((6,), i + 1)) and torch.equal(dec, torch.full((2,), -(i + 1)))


def test_pretrain_dataset_decodes_the_sampled_frames(tiny_videos: Path) -> None:
    ds = VideoMAEPretrainDataset(tiny_videos / "list.csv", None, make_grid(4, 2, 32, 16), 3, CountingMasks(),
                                 num_sample=3)
    rendered = render_clip(0, 0, num_frames=24, size=(64, 64)).astype(np.float32)
    clips = ds.load_clips(0, np.random.default_rng(3))
    expected = [sample_clip_indices(24, 4, 3, np.random.default_rng(3))] * 3  # one pick, augmented 3 times
    assert len(clips) == 3
    for clip, indices in zip(clips, expected):
        assert clip.dtype == torch.uint8 and clip.shape == (4, 64, 64, 3)
        # Lossy codec: each decoded frame must be nearest to the rendered frame it claims to be.
        dist = np.abs(clip.numpy()[:, None].astype(np.float32) - rendered[None]).mean(axis=(2, 3, 4))
        np.testing.assert_array_equal(dist.argmin(axis=1), indices)


def test_pretrain_dataset_is_reproducible(tiny_videos: Path) -> None:
    ds = VideoMAEPretrainDataset(tiny_videos / "list.csv", None, make_grid(4, 2, 32, 16), 3, CountingMasks())
    torch.manual_seed(1)
    a = [ds[i][0] for i in range(3)]
    torch.manual_seed(1)
    b = [ds[i][0] for i in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    fixed = VideoMAEPretrainDataset(tiny_videos / "list.csv", None, make_grid(4, 2, 32, 16), 3, CountingMasks(),
                                    seed=5)
    assert torch.equal(fixed[1][0], fixed[1][0])


@pytest.mark.parametrize("name", ["v 0.mp4", "v 1.mp4", "v 2.mp4"])
def test_yuv_crops_give_the_rgb_first_clips_frames_boxes_and_flips(tiny_videos: Path, name: str) -> None:
    """Cutting each crop from the YUV frames before converting it gives today's RGB-first clips: the same frames,
    boxes and flips drawn in the same order from the same seed, pixels within 2/255 (odd box corners included)."""
    from patches.data.pretraining_clips import pretraining_clips
    from patches.data.transforms import PretrainTransform
    from patches.data.video_reader import VideoFile
    from patches.perf.reference_loader import rgb_first_clips

    transform = PretrainTransform((40, 40), flip=True)
    for seed in range(6):
        source = VideoFile(str(tiny_videos / name))
        assert source.fast is not None, "PyAV reads it: the YUV path is the one under test"
        rng_new, rng_old = np.random.default_rng(seed), np.random.default_rng(seed)
        picks = [sample_clip_indices(len(source), 4, 3, rng_new) for _ in range(3)]
        assert all(np.array_equal(p, sample_clip_indices(len(source), 4, 3, rng_old)) for p in picks)
        new = pretraining_clips(source, picks, transform, rng_new)
        old = rgb_first_clips(VideoFile(str(tiny_videos / name), backend="decord"), picks, transform, rng_old)
        assert rng_new.bit_generator.state == rng_old.bit_generator.state, "the same draws, in the same order"
        for a, b in zip(new, old):
            assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape == (3, 4, 40, 40)
            assert (a.int() - b.int()).abs().max() <= 2


def test_yuv_crops_at_odd_corners_and_sizes_are_the_whole_frames_rgb_cut(tiny_videos: Path) -> None:
    from av.video.reformatter import VideoReformatter

    from patches.data.video_reader import VideoFile
    from patches.data.yuv_crops import convertible, crop_clip_rgb, even_box

    source = VideoFile(str(tiny_videos / "v 1.mp4"))  # 48 x 80
    indices = np.array([0, 3, 7, 19])
    frames, rgb = source.decode(indices), source.read(indices).numpy()
    assert convertible(frames) and even_box((3, 5, 9, 7)) == (2, 4, 10, 8)
    for top, left, h, w in [(0, 0, 48, 80), (1, 1, 47, 79), (3, 5, 9, 7), (10, 33, 31, 42), (47, 79, 1, 1)]:
        for flip in (False, True):
            crop = crop_clip_rgb(frames, (top, left, h, w), flip, VideoReformatter()).numpy()
            expected = rgb[:, top:top + h, left:left + w][:, :, ::-1 if flip else 1]
            assert crop.flags["C_CONTIGUOUS"] and crop.shape == expected.shape
            assert np.abs(crop.astype(int) - expected).max() <= 2


def test_repeated_augmentation_and_collate(tiny_videos: Path) -> None:
    grid = make_grid(4, 2, 32, 16)
    masks = CountingMasks()
    ds = VideoMAEPretrainDataset(tiny_videos / "list.csv", tiny_videos, grid, 4, masks, num_sample=2)
    torch.manual_seed(0)
    items = [ds[0], ds[1]]
    assert masks.calls == 4
    for videos, encs, decs in items:
        assert len(videos) == len(encs) == len(decs) == 2
        assert videos[0].shape == videos[1].shape == (3, 4, 32, 32)
        assert not torch.equal(videos[0], videos[1])
    video, enc, dec = multiple_samples_collate(items)
    assert video.shape == (4, 3, 4, 32, 32) and enc.shape == (4, 6) and dec.shape == (4, 2)
    assert torch.equal(video[1], items[0][0][1]) and torch.equal(video[2], items[1][0][0])
    assert torch.equal(enc[:, 0], torch.tensor([1, 2, 3, 4]))
    assert collate_fn_for(2) is multiple_samples_collate


def grey_levels_video(path: Path, num_frames: int = 60) -> Path:
    """An mp4 whose frame i is a flat grey of level 4 * i: a clip's per-frame means say which frames it shows."""
    levels = 4 * np.arange(num_frames, dtype=np.uint8)
    write_mp4(path, np.broadcast_to(levels[:, None, None, None], (num_frames, 48, 64, 3)).copy())
    return path


@pytest.mark.parametrize("crops_to_device", [False, True])
def test_num_sample_clips_are_one_temporal_pick_augmented_apart(tmp_path: Path, crops_to_device: bool) -> None:
    """VideoMAE's repeated augmentation: the num_sample clips of an item show the same frames (flat greys, so
    crops and flips keep each frame's level), not num_sample temporal picks."""
    from patches.data.yuv_crops import YuvCrop

    grey_levels_video(tmp_path / "grey.mp4")
    _write(tmp_path / "list.csv", "grey.mp4 0\n")
    ds = VideoMAEPretrainDataset(tmp_path / "list.csv", tmp_path, make_grid(4, 2, 32, 16), 3, CountingMasks(),
                                 num_sample=3, flip=True)
    ds.crops_to_device = crops_to_device
    for seed in range(4):
        torch.manual_seed(seed)
        videos = ds[0][0]
        if crops_to_device:  # the crops travel as YUV planes (patches.data.yuv_crops.YuvCrop)
            assert all(isinstance(v, YuvCrop) for v in videos)
            videos = [v.to_rgb() for v in videos]
        levels = [v.float().mean(dim=(1, 2, 3) if crops_to_device else (0, 2, 3)) for v in videos]
        assert len(levels) == 3 and (levels[0][1:] - levels[0][:-1] - 12).abs().max() <= 2  # 3 frames apart
        for other in levels[1:]:
            assert (other - levels[0]).abs().max() <= 1, (seed, levels)


def test_loader_and_builder(demo_root: Path) -> None:
    grid = make_grid(4, 2, 32, 16)
    config = PretrainingDataConfig(data_path=str(demo_root / "train.csv"), sampling_rate=2, data_root=str(demo_root))
    assert config.num_sample == 1
    ds = build_pretraining_dataset(config, grid, CountingMasks())
    assert (ds.list_file, ds.sampling_rate, ds.num_sample) == (config.data_path, 2, 1)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_fn_for(1))
    video, enc, dec = next(iter(loader))
    assert video.shape == (4, 3, 4, 32, 32) and enc.shape == (4, 6)


def test_undecodable_video_names_its_path(tmp_path: Path) -> None:
    _write(tmp_path / "broken.mp4", b"not a video at all")
    _write(tmp_path / "list.csv", "broken.mp4 0\n")
    ds = VideoMAEPretrainDataset(tmp_path / "list.csv", None, make_grid(4, 2, 32, 16), 2, CountingMasks())
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        ds[0]
