"""Video datasets: clip sampling, pre-training and classification datasets, skipping unreadable videos.

Datasets are built from small frozen configs: :func:`build_pretraining_dataset` from a
:class:`PretrainingDataConfig`, :func:`build_dataset` (classification) from a
:class:`ClassificationDataConfig`. Which videos they read comes from :mod:`patches.data.lists`, how they
are decoded from :mod:`patches.data.video_reader`, what happens to unreadable ones from
:mod:`patches.data.unreadable`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from patches.data.clip_sampling import (SAMPLINGS, eval_view_fraction, sample_clip_indices, segment_clip_indices,
                                        segment_eval_indices, segment_train_indices, torch_seeded_rng)
from patches.data.lists import VideoListsConfig, VideoRecord, numbered_pretraining_entries, read_records
from patches.data.pretraining_clips import pretraining_clips
from patches.data.recipe_rate import file_sampling_rate
from patches.data.torchcodec_reader import TorchCodecVideo, check_decoder, open_video_file
from patches.data.transforms import PRETRAIN_SCALES, EvalTransform, PretrainTransform, RandomResizedCropTransform
# (UnreadableDataError, CollateWithBad, ... are also named here, where VideoMAE's ``datasets`` finds them)
from patches.data.unreadable import (MAX_REPLACEMENTS, CollateWithBad, SkipsUnreadableVideos,  # noqa: F401
                                     UnreadableDataError, UnreadableVideoWarning, other_index)
from patches.data.video_reader import FrameFolder, VideoFile, decode_clips
from patches.grid import PatchGrid

MaskGenerator = Callable[[], tuple[Any, Any]]


# ---- pre-training -------------------------------------------------------------------------------

class VideoMAEPretrainDataset(SkipsUnreadableVideos, Dataset):
    """Clips for masked-autoencoder pre-training, labels ignored; videos are files or frame folders.

    Item ``i`` is ``(video, enc_mask, dec_mask)``: ``video`` uint8 ``[3, T, H, W]`` with
    ``T, (H, W) = grid.num_frames, grid.input_size`` (the training step normalises it on its device,
    see ``video_transforms.normalize_batch``), and the two masks as returned by one
    call of ``mask_generator()`` (passed through untouched). Augmentation is VideoMAE's multi-scale crop,
    plus a horizontal flip only with ``flip``. With ``num_sample > 1`` each of
    the three is a list of ``num_sample`` clips of the same frames, each with its own crop, flip and masks
    (VideoMAE V2's repeated augmentation: one temporal pick, decoded once, augmented ``num_sample`` times);
    batch those with :func:`multiple_samples_collate`.

    Randomness comes from a per-item numpy Generator seeded from torch's RNG, so
    ``torch.manual_seed`` and DataLoader worker seeding make runs reproducible. With
    ``seed`` set, item ``i`` instead always yields the same clip and crop (for
    visualisation and tests; the masks are still whatever ``mask_generator`` draws).
    An unreadable video is replaced by another, see :class:`SkipsUnreadableVideos`.
    """

    def __init__(self, list_file: str | os.PathLike, data_root: str | os.PathLike | None, grid: PatchGrid,
                 sampling_rate: int, mask_generator: MaskGenerator, num_sample: int = 1,
                 scales: Sequence[float] = PRETRAIN_SCALES, flip: bool = False, seed: int | None = None,
                 fname_tmpl: str = "img_{:05}.jpg", decoder: str = "pyav") -> None:
        if decoder != "pyav":
            check_decoder(decoder)
        if num_sample < 1:
            raise ValueError(f"num_sample must be >= 1, got {num_sample}")
        if sampling_rate < 1:
            raise ValueError(f"sampling_rate must be >= 1, got {sampling_rate}")
        self.list_file = os.fspath(list_file)
        self.samples = [(path, count) for _, path, count in numbered_pretraining_entries(list_file, data_root)]
        self.fname_tmpl, self.decoder = fname_tmpl, decoder
        self.grid = grid
        self.sampling_rate = sampling_rate
        self.mask_generator = mask_generator
        self.num_sample = num_sample
        self.seed = seed
        self.transform = PretrainTransform(grid.input_size, scales, flip)
        self.crops_to_device = False  # True: items hold YUV crops (yuv_crops.YuvCrop), converted on the device

    def __len__(self) -> int:
        return len(self.samples)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([self.seed, index])
        return torch_seeded_rng()

    def load_clips(self, index: int, rng: np.random.Generator) -> list[torch.Tensor]:
        """``num_sample`` raw uint8 ``THWC`` clips of video ``index``: one temporal pick, its frames decoded once."""
        video = self._source(index)
        return decode_clips(video, self._picks(video, rng))

    def _source(self, index: int) -> VideoFile | TorchCodecVideo | FrameFolder:
        """Video ``index``: a file, through the ``--decoder`` reader (PyAV or torchcodec), or a frame folder."""
        path, count = self.samples[index]
        return open_video_file(path, self.decoder) if count is None else FrameFolder(path, count, self.fname_tmpl)

    def _picks(self, source: Any, rng: np.random.Generator) -> list[np.ndarray]:
        # VideoMAE's repeated augmentation: one temporal pick, augmented num_sample times
        pick = sample_clip_indices(len(source), self.grid.num_frames, file_sampling_rate(self.sampling_rate, source),
                                   rng)
        return [pick] * self.num_sample

    def __getitem__(self, index: int):
        rng = self._rng(index)
        return self._robust_item(index, lambda i: self._item(i, rng), lambda i: other_index(rng, i, len(self)))

    def _item(self, index: int, rng: np.random.Generator):
        source = self._source(index)
        videos = pretraining_clips(source, self._picks(source, rng), self.transform, rng,
                                   resize=not self.crops_to_device)
        enc_masks, dec_masks = [], []
        for _ in videos:
            enc, dec = self.mask_generator()
            enc_masks.append(enc)
            dec_masks.append(dec)
        if self.num_sample == 1:
            return videos[0], enc_masks[0], dec_masks[0]
        return videos, enc_masks, dec_masks

    def __repr__(self) -> str:
        return (f"VideoMAEPretrainDataset({len(self)} videos from {self.list_file}, {self.grid.describe()}, "
                f"sampling_rate={self.sampling_rate}, num_sample={self.num_sample}, {self.transform})")


def multiple_samples_collate(batch: list) -> Any:
    """Collate items holding lists of ``num_sample`` clips into one batch of ``B * num_sample``.

    Items that are plain tuples (``num_sample == 1``) are collated as usual.
    """
    flat = []
    for item in batch:
        if isinstance(item[0], (list, tuple)):
            flat.extend(zip(*item))
        else:
            flat.append(item)
    return default_collate(flat)


def collate_fn_for(num_sample: int) -> Callable[[list], Any]:
    """The DataLoader ``collate_fn`` matching a dataset's ``num_sample``."""
    return multiple_samples_collate if num_sample > 1 else default_collate


@dataclass(frozen=True)
class PretrainingDataConfig:
    """The pre-training videos: the list file ``data_path`` (paths relative to ``data_root``, or to the list's
    folder when None), ``sampling_rate`` frames between a clip's frames, ``num_sample`` augmentations of one clip
    per video, ``flip``: random horizontal flips (VideoMAE has none), ``fname_tmpl``: the frames of frame folders,
    ``decoder``: ``pyav`` or ``torchcodec`` (:mod:`patches.data.torchcodec_reader`)."""

    data_path: str
    sampling_rate: int
    data_root: str | None = None
    num_sample: int = 1
    flip: bool = False
    fname_tmpl: str = "img_{:05}.jpg"
    decoder: str = "pyav"


def build_pretraining_dataset(config: PretrainingDataConfig, grid: PatchGrid,
                              mask_generator: MaskGenerator) -> VideoMAEPretrainDataset:
    """The pre-training dataset of ``config`` at ``grid``, masked by ``mask_generator``."""
    return VideoMAEPretrainDataset(
        list_file=config.data_path,
        data_root=config.data_root,
        grid=grid,
        sampling_rate=config.sampling_rate,
        mask_generator=mask_generator,
        num_sample=config.num_sample,
        flip=config.flip,
        fname_tmpl=config.fname_tmpl,
        decoder=config.decoder,
    )


# ---- classification ---------------------------------------------------------------------------------

class VideoClsTrainDataset(SkipsUnreadableVideos, Dataset):
    """Training clips for classification: item ``i`` is ``(video, label)``, video float32 ``[3, T, H, W]``.

    Each clip is sampled with :func:`sample_clip_indices` and augmented by ``transform``
    (a :class:`RandomResizedCropTransform`). With ``num_sample > 1`` the item is
    ``([video] * num_sample, [label] * num_sample)``: VideoMAE's repeated augmentation, one temporal pick
    decoded once and augmented ``num_sample`` times independently (crop, flip, RandAugment, erasing); batch with
    :func:`multiple_samples_collate`.
    Randomness as in :class:`VideoMAEPretrainDataset` (torch-seeded, or fixed with ``seed``); an
    unreadable video is replaced by another, see :class:`SkipsUnreadableVideos`.
    """

    def __init__(self, records: Sequence[VideoRecord], grid: PatchGrid, sampling_rate: int,
                 transform: RandomResizedCropTransform, num_sample: int = 1, fname_tmpl: str = "img_{:05}.jpg",
                 seed: int | None = None, sampling: str = "stride") -> None:
        if num_sample < 1:
            raise ValueError(f"num_sample must be >= 1, got {num_sample}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.records, self.grid, self.sampling_rate, self.sampling = list(records), grid, sampling_rate, sampling
        self.transform, self.num_sample, self.fname_tmpl, self.seed = transform, num_sample, fname_tmpl, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index]) if self.seed is not None else torch_seeded_rng()
        return self._robust_item(index, lambda i: self._item(i, rng), lambda i: other_index(rng, i, len(self)))

    def _item(self, index: int, rng: np.random.Generator):
        record = self.records[index]
        source = record.open(self.fname_tmpl)
        picks = [self.clip_indices(source, rng)] * self.num_sample  # one pick, num_sample augmentations
        videos = [self.transform(clip, rng) for clip in decode_clips(source, picks)]
        if self.num_sample == 1:
            return videos[0], record.label
        return videos, [record.label] * self.num_sample

    def clip_indices(self, source: Any, rng: np.random.Generator) -> np.ndarray:
        """One training clip's frame indices in ``source`` (a video reader), by stride (:func:`sample_clip_indices`,
        the rate mapped onto a recipe-rate file) or segments."""
        if self.sampling == "segment":
            return segment_train_indices(len(source), self.grid.num_frames, rng)
        return sample_clip_indices(len(source), self.grid.num_frames, file_sampling_rate(self.sampling_rate, source),
                                   rng)

    def __repr__(self) -> str:
        return (f"VideoClsTrainDataset({len(self)} videos, {self.grid.describe()}, {self.sampling} sampling, "
                f"sampling_rate={self.sampling_rate}, "
                f"num_sample={self.num_sample}, {self.transform})")


class VideoClsEvalDataset(SkipsUnreadableVideos, Dataset):
    """Deterministic evaluation views: one item per (video, temporal segment, spatial crop).

    Temporal views come from :func:`segment_clip_indices` (stride sampling) or :func:`segment_eval_indices`
    (segment sampling), crops from :class:`EvalTransform`
    (short side resized to ``short_side``, then ``num_crops`` crops spread along the axis with
    slack). Item ``i`` is ``(video, label, video_index)``, plus ``view = segment * num_crops + crop``
    when ``with_view``; ``len`` is videos x segments x crops. An unreadable video's views are never
    replaced by another video's (figures count only what they say): with ``report_bad`` they come out as
    ``(None, bad)`` and are left out of the batch, see :class:`SkipsUnreadableVideos`.
    """

    replace_unreadable = False

    def __init__(self, records: Sequence[VideoRecord], grid: PatchGrid, sampling_rate: int,
                 short_side: int | None = None, num_segments: int = 1, num_crops: int = 1, with_view: bool = False,
                 fname_tmpl: str = "img_{:05}.jpg", sampling: str = "stride") -> None:
        if num_segments < 1 or num_crops < 1:
            raise ValueError(f"num_segments and num_crops must be >= 1, got {num_segments}, {num_crops}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.records, self.grid, self.sampling_rate, self.sampling = list(records), grid, sampling_rate, sampling
        self.num_segments, self.num_crops, self.with_view = num_segments, num_crops, with_view
        self.fname_tmpl = fname_tmpl
        self.transform = EvalTransform(grid.input_size, short_side, num_crops)

    @property
    def views_per_video(self) -> int:
        return self.num_segments * self.num_crops

    def __len__(self) -> int:
        return len(self.records) * self.views_per_video

    def __getitem__(self, index: int):
        rng = None

        def replacement(i: int) -> int | None:  # the same view of another video, drawn from a per-index RNG
            nonlocal rng
            if rng is None:
                rng = np.random.default_rng([index])
            video = other_index(rng, i // self.views_per_video, len(self.records))
            return None if video is None else video * self.views_per_video + i % self.views_per_video
        return self._robust_item(index, self._item, replacement)

    def _item(self, index: int):
        video_index, view = divmod(index, self.views_per_video)
        segment, crop = divmod(view, self.num_crops)
        record = self.records[video_index]
        source = record.open(self.fname_tmpl)
        indices = self.clip_indices(source, segment)
        video = self.transform.view(decode_clips(source, [indices])[0], crop)
        if self.with_view:
            return video, record.label, video_index, view
        return video, record.label, video_index

    def clip_indices(self, source: Any, segment: int) -> np.ndarray:
        """Frame indices in ``source`` (a video reader) of temporal view ``segment``: evenly placed stride clips
        (the rate mapped onto a recipe-rate file), or one frame per segment."""
        if self.sampling == "segment":
            return segment_eval_indices(len(source), self.grid.num_frames, eval_view_fraction(segment, self.num_segments))
        return segment_clip_indices(len(source), self.grid.num_frames, file_sampling_rate(self.sampling_rate, source),
                                    self.num_segments)[segment]

    def __repr__(self) -> str:
        return (f"VideoClsEvalDataset({len(self.records)} videos x {self.num_segments} segments x {self.num_crops} "
                f"crops, {self.grid.describe()}, sampling_rate={self.sampling_rate}, {self.transform})")


def default_sampling(data_set: str) -> str:
    """VideoMAE's frame sampling per data set: TSN segments for SSV2, a strided clip for the others."""
    return "segment" if data_set == "SSV2" else "stride"


def default_flip(data_set: str) -> bool:
    """Horizontal flip in training: off for SSV2, whose classes include left/right pairs; on otherwise."""
    return data_set != "SSV2"


@dataclass(frozen=True)
class ClassificationDataConfig:
    """What :func:`build_dataset` reads: the lists, ``sampling_rate``, and per mode its options.

    Training: ``num_sample`` clips per video, ``aa`` (RandAugment policy, None: off),
    ``train_crop_scale`` (None: ``(0.08, 1.0)``), ``flip`` (None: per data set, see :func:`default_flip`),
    ``train_interpolation``, random erasing ``reprob``/``remode``/``recount``. Evaluation:
    ``short_side_size``, and for test ``test_num_segment`` x ``test_num_crop`` views. ``fname_tmpl``
    names the frames of SSV2 frame folders; ``sampling`` ("stride", "segment", None: per data set, see
    :func:`default_sampling`) how clips are cut from videos. The defaults mean off: no augmentation beyond crop and
    flip, one clip, one view.
    """

    lists: VideoListsConfig
    sampling_rate: int
    num_sample: int = 1
    aa: str | None = None
    train_crop_scale: tuple[float, float] | None = None
    flip: bool | None = None
    train_interpolation: str = "bilinear"
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    short_side_size: int | None = None
    test_num_segment: int = 1
    test_num_crop: int = 1
    fname_tmpl: str = "img_{:05}.jpg"
    sampling: str | None = None

    @property
    def frame_sampling(self) -> str:
        """``sampling`` when set, else :func:`default_sampling` of the data set."""
        return default_sampling(self.lists.data_set) if self.sampling is None else self.sampling

    @property
    def train_flip(self) -> bool:
        """``flip`` when set (not None), else :func:`default_flip` of the data set."""
        return default_flip(self.lists.data_set) if self.flip is None else bool(self.flip)


def build_dataset(mode: str, config: ClassificationDataConfig, grid: PatchGrid) -> tuple[Dataset, int]:
    """The classification dataset for ``mode`` ("train", "validation" or "test") and the class count.

    Videos and class count come from :func:`video_lists.read_records`. Items: train ``(video, label)``
    (lists of ``num_sample`` when > 1), validation ``(video, label, video_index)`` from the centre clip
    and crop, test ``(video, label, video_index, view)`` over ``test_num_segment x test_num_crop`` views.
    """
    lists = config.lists
    records, nb_classes = read_records(mode, lists)
    if mode == "train" and lists.data_set == "custom" and lists.nb_classes is not None:
        used = len({r.label for r in records})
        if used < nb_classes:
            print(f"warning: --nb_classes {nb_classes} but {records[0].list_file} uses only {used} distinct "
                  f"labels; the other classes are never trained")
    if mode == "train":
        transform = RandomResizedCropTransform(
            grid.input_size, scale=tuple(config.train_crop_scale or (0.08, 1.0)), flip=config.train_flip,
            rand_augment=config.aa, interpolation=config.train_interpolation, reprob=config.reprob,
            remode=config.remode, recount=config.recount)
        dataset: Dataset = VideoClsTrainDataset(records, grid, config.sampling_rate, transform, config.num_sample,
                                                config.fname_tmpl, sampling=config.frame_sampling)
    else:
        test = mode == "test"
        dataset = VideoClsEvalDataset(
            records, grid, config.sampling_rate, config.short_side_size,
            num_segments=config.test_num_segment if test else 1, num_crops=config.test_num_crop if test else 1,
            with_view=test, fname_tmpl=config.fname_tmpl, sampling=config.frame_sampling)
    return dataset, nb_classes
