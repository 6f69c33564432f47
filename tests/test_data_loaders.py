"""DataLoaders: training order and seeds, evaluation without padding, the pre-training loader and its checks."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from patches.data import loaders as data_loaders
from patches.data.datasets import PretrainingDataConfig, collate_fn_for
from patches.data.health import BadVideoTracker
from patches.data.loaders import LoaderConfig
from patches.data.masking import MaskGenerator
from patches.data.samplers import ResumableSampler, SeededItems, ShardSampler
from patches.grid import make_grid

CPU = torch.device("cpu")


class Numbers(torch.utils.data.Dataset):
    """Item ``i`` is the tensor ``[i]`` and a random draw; with ``report_bad`` set, ``(item, ())`` as the
    datasets give it, and every third item reports a skipped file."""

    report_bad = False

    def __init__(self, size: int) -> None:
        self.records = list(range(size))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        item = torch.tensor([index]), torch.rand(())
        if not self.report_bad:
            return item
        return item, ((f"v{index}.mp4", "broken"),) if index % 3 == 2 else ()


def config(batch_size: int = 2, max_bad_fraction: float = 1.0) -> LoaderConfig:
    return LoaderConfig(batch_size=batch_size, num_workers=0, pin_memory=True, seed=7,
                        max_bad_fraction=max_bad_fraction)


def test_train_loader_is_resumable_seeded_and_draws_nothing_from_the_global_rng() -> None:
    loader = data_loaders.train_loader(Numbers(10), config(3), None, CPU, batches_multiple=2)
    assert isinstance(loader.sampler, ResumableSampler) and isinstance(loader.dataset, SeededItems)
    assert loader.sampler.batches_per_epoch == 2 and loader.batch_size == 3 and loader.drop_last
    assert loader.pin_memory is False  # pinning only for CUDA
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = [(i.tolist(), r.tolist()) for i, r in loader]
    assert torch.equal(torch.get_rng_state(), before)
    assert first == [(i.tolist(), r.tolist()) for i, r in data_loaders.train_loader(Numbers(10), config(3), None, CPU,
                                                                                    batches_multiple=2)]
    assert sorted(x for ids, _ in first for [x] in ids) == sorted(set(x for ids, _ in first for [x] in ids))


def test_workers_ignore_the_stop_signals() -> None:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        data_loaders._worker_init(0)
        assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in previous)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_classification_train_loader_reports_bad_videos_and_keeps_whole_updates() -> None:
    dataset = Numbers(13)
    loader = data_loaders.classification_train_loader(dataset, config(2), 1, CPU, update_freq=2, source="the list")
    assert isinstance(loader, BadVideoTracker) and dataset.report_bad
    assert loader.sampler.batches_per_epoch == 6  # 6 whole batches of 2, a multiple of update_freq
    loader.sampler.set_epoch(0)
    seen = [x for ids, _ in loader for [x] in ids.tolist()]
    assert len(seen) == len(set(seen)) == 12
    assert loader.end_epoch()["bad_video_files"] == sum(x % 3 == 2 for x in seen)


def test_evaluation_loader_takes_every_item_once_in_order() -> None:
    for sharded, sampler in ((False, torch.utils.data.SequentialSampler), (True, ShardSampler)):
        loader = data_loaders.evaluation_loader(Numbers(5), config(2), CPU, sharded, "the list")
        assert isinstance(loader.sampler, sampler) and loader.sharded is sharded
        assert [x for ids, _ in loader for [x] in ids.tolist()] == [0, 1, 2, 3, 4]


def test_too_many_bad_videos_stop_training_never_evaluation() -> None:
    train = data_loaders.classification_train_loader(Numbers(9), config(3, max_bad_fraction=0.1), 1, CPU, 1,
                                                     "the list")
    train.sampler.set_epoch(0)
    with pytest.raises(Exception, match="--max_bad_fraction 0.1"):
        list(train)
    evaluation = data_loaders.evaluation_loader(Numbers(9), config(3, max_bad_fraction=0.1), CPU, False, "the list")
    assert len(list(evaluation)) == 3 and evaluation.end_epoch()["bad_video_files"] == 3


def test_pretraining_loader(demo_root: Path) -> None:
    grid = make_grid(4, 2, 32, 16)
    data = PretrainingDataConfig(data_path=str(demo_root / "train.csv"), sampling_rate=2, data_root=str(demo_root),
                                 num_sample=2)
    dataset, loader = data_loaders.pretraining_loader(data, config(4), grid, MaskGenerator(grid, "tube", 0.75), CPU)
    assert len(dataset) == 16 and dataset.report_bad and dataset.num_sample == 2
    assert loader.sampler.batches_per_epoch == 4 and loader.collate_fn.inner is collate_fn_for(2)
    loader.sampler.set_epoch(0)
    video, enc, dec = next(iter(loader))
    assert video.shape == (8, 3, 4, 32, 32) and video.dtype == torch.uint8
    with pytest.raises(data_loaders.BatchLargerThanData, match=rf"^--batch_size 17 x 1 processes is larger than the "
                                                             rf"16 videos in {demo_root / 'train.csv'}$"):
        data_loaders.pretraining_loader(data, config(17), grid, MaskGenerator(grid, "tube", 0.75), CPU)


def test_the_device_path_on_cpu_gives_the_loaders_clips_within_rounding(demo_root: Path) -> None:
    """CUDA runs hand the step YUV crops at their cut size, converted, resized, flipped and normalised there in one
    batch (patches.data.device_transforms): run on the CPU, that path gives the loader's own clips within 2/255
    (1 on x86, where the conversion is swscale's to the bit; the resize rounds in float)."""
    from patches.data.datasets import VideoMAEPretrainDataset
    from patches.data.device_transforms import CollateCrops, YuvCrops
    from patches.data.transforms import IMAGENET_DEFAULT_STD, normalize_batch
    from patches.train.reconstruction import clips_to_device

    grid = make_grid(4, 2, 32, 16)
    masks = MaskGenerator(grid, "tube", 0.75)
    loader_path = VideoMAEPretrainDataset(demo_root / "train.csv", demo_root, grid, 2, masks, num_sample=2, flip=True)
    device_path = VideoMAEPretrainDataset(demo_root / "train.csv", demo_root, grid, 2, masks, num_sample=2, flip=True)
    device_path.crops_to_device = True
    items = range(6)
    torch.manual_seed(0)
    expected = collate_fn_for(2)([loader_path[i] for i in items])[0]
    torch.manual_seed(0)
    batch = CollateCrops(grid.input_size)([device_path[i] for i in items])
    crops = batch[0]
    assert isinstance(crops, YuvCrops) and crops.dtype == torch.uint8 and crops.shape[:2] == (12, 4)
    assert len({tuple(s) for s in crops.sizes.tolist()}) > 1, "crops of several sizes in one batch"
    assert tuple(batch[1].shape) == (12, grid.num_tokens) and tuple(batch[2].shape) == (12, grid.num_tokens)
    got = clips_to_device(crops, CPU)
    want = normalize_batch(expected)
    assert got.shape == want.shape == (12, 3, 4, 32, 32) and got.dtype == torch.float32
    pixels = (got - want).abs() * torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1, 1) * 255
    assert pixels.max() <= 2.001 and pixels.mean() < 0.5  # uint8 resizing rounds in fixed point
