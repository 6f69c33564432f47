"""Video datasets: list files, clip sampling, and the masked-autoencoder pre-training dataset.

List files follow VideoMAE: one video per line, ``path`` or ``path label``. See
:func:`parse_list_file` for the exact rules. Fine-tuning datasets will live here too.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from patch_grid import PatchGrid
from video_transforms import PRETRAIN_SCALES, PretrainTransform

MaskGenerator = Callable[[], tuple[Any, Any]]

_INT = re.compile(r"[+-]?[0-9]+")


class VideoDecodeError(RuntimeError):
    """A video could not be opened or decoded; ``path`` names it."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(f"cannot decode video {path}: {cause}")
        self.path = path


# ---- list files -------------------------------------------------------------------------------------

def _resolve(path: str, base: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base, path)


def _parse_line(line: str, base: str, where: str) -> tuple[str, int | None]:
    fields = line.rsplit(None, 1)
    if len(fields) == 1:
        return _resolve(line, base), None
    head, last = fields
    if _INT.fullmatch(last):
        label = int(last)
        if label < 0:
            raise ValueError(f"{where}: negative label {label}")
        return _resolve(head, base), label
    whole, head_path = _resolve(line, base), _resolve(head, base)
    if not os.path.isfile(whole) and os.path.isfile(head_path):
        raise ValueError(f"{where}: label {last!r} after {head!r} is not a non-negative integer")
    return whole, None


def parse_list_file(path: str | os.PathLike, data_root: str | os.PathLike | None = None
                    ) -> list[tuple[str, int | None]]:
    """Read a VideoMAE-style list file into ``[(video_path, label or None), ...]``.

    Rules, per line (UTF-8, optional BOM, ``\\n`` or ``\\r\\n`` endings):

    * blank lines and lines whose first non-blank character is ``#`` are skipped;
    * surrounding whitespace is stripped; if the line has more than one whitespace-separated
      field and the last one is an integer, that field is the label and the rest is the
      path (so paths may contain spaces); otherwise the whole line is a path without label;
    * relative paths are taken relative to ``data_root`` when given, else relative to the
      directory holding the list file (never the working directory); absolute paths stay.

    Raises ``ValueError`` naming the file and the 1-based line number for a negative
    label, for a non-integer last field after a path that exists as a file while the whole
    line does not, and (naming the file) for a list with no entries.
    """
    path = os.fspath(path)
    base = os.fspath(data_root) if data_root is not None else os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8-sig", newline=None) as f:
        lines = f.read().splitlines()
    entries = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entries.append(_parse_line(line, base, f"{path}, line {number}"))
    if not entries:
        raise ValueError(f"{path}: list file has no entries")
    return entries


# ---- frame sampling -------------------------------------------------------------------------------

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


def torch_seeded_rng() -> np.random.Generator:
    """A numpy Generator seeded from torch's RNG, so torch.manual_seed and DataLoader worker seeds govern it."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))


# ---- decoding -----------------------------------------------------------------------------------

def open_video(path: str) -> Any:
    """A decord VideoReader on ``path``, single-threaded (DataLoader workers give the parallelism)."""
    import decord  # imported lazily so that parsing and sampling work without it

    try:
        return decord.VideoReader(path, num_threads=1)
    except Exception as e:  # decord raises its own error types, and RuntimeError for missing files
        raise VideoDecodeError(path, e) from e


def read_frames(reader: Any, indices: np.ndarray, path: str) -> torch.Tensor:
    """Decode only ``indices`` (sorted, unique) into a uint8 ``[N, H, W, 3]`` tensor."""
    try:
        return torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy())
    except Exception as e:
        raise VideoDecodeError(path, e) from e


# ---- pre-training -------------------------------------------------------------------------------

class VideoMAEPretrainDataset(Dataset):
    """Clips for masked-autoencoder pre-training, labels ignored.

    Item ``i`` is ``(video, enc_mask, dec_mask)``: ``video`` float32 ``[3, T, H, W]`` with
    ``T, (H, W) = grid.num_frames, grid.input_size``, and the two masks as returned by one
    call of ``mask_generator()`` (passed through untouched). With ``num_sample > 1`` each of
    the three is a list of ``num_sample`` independently sampled and augmented clips of the
    same video (repeated augmentation; the needed frames are decoded once); batch those
    with :func:`multiple_samples_collate`.

    Randomness comes from a per-item numpy Generator seeded from torch's RNG, so
    ``torch.manual_seed`` and DataLoader worker seeding make runs reproducible. With
    ``seed`` set, item ``i`` instead always yields the same clip and crop (for
    visualisation and tests; the masks are still whatever ``mask_generator`` draws).
    """

    def __init__(self, list_file: str | os.PathLike, data_root: str | os.PathLike | None, grid: PatchGrid,
                 sampling_rate: int, mask_generator: MaskGenerator, num_sample: int = 1,
                 scales: Sequence[float] = PRETRAIN_SCALES, flip: bool = True, seed: int | None = None) -> None:
        if num_sample < 1:
            raise ValueError(f"num_sample must be >= 1, got {num_sample}")
        if sampling_rate < 1:
            raise ValueError(f"sampling_rate must be >= 1, got {sampling_rate}")
        self.list_file = os.fspath(list_file)
        self.samples = parse_list_file(list_file, data_root)
        self.grid = grid
        self.sampling_rate = sampling_rate
        self.mask_generator = mask_generator
        self.num_sample = num_sample
        self.seed = seed
        self.transform = PretrainTransform(grid.input_size, scales, flip)

    def __len__(self) -> int:
        return len(self.samples)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([self.seed, index])
        return torch_seeded_rng()

    def load_clips(self, index: int, rng: np.random.Generator) -> list[torch.Tensor]:
        """``num_sample`` raw uint8 ``THWC`` clips of video ``index``, decoding each needed frame once."""
        path = self.samples[index][0]
        reader = open_video(path)
        picks = [sample_clip_indices(len(reader), self.grid.num_frames, self.sampling_rate, rng)
                 for _ in range(self.num_sample)]
        needed = np.unique(np.concatenate(picks))
        frames = read_frames(reader, needed, path)
        return [frames[torch.from_numpy(np.searchsorted(needed, p))] for p in picks]

    def __getitem__(self, index: int):
        rng = self._rng(index)
        videos, enc_masks, dec_masks = [], [], []
        for clip in self.load_clips(index, rng):
            videos.append(self.transform(clip, rng))
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


def build_pretraining_dataset(args: Any, grid: PatchGrid,
                              mask_generator: MaskGenerator) -> VideoMAEPretrainDataset:
    """The pre-training dataset named by ``args.data_path`` (list file), ``args.data_root`` (or None),
    ``args.sampling_rate`` and ``args.num_sample`` (default 1)."""
    return VideoMAEPretrainDataset(
        list_file=args.data_path,
        data_root=getattr(args, "data_root", None),
        grid=grid,
        sampling_rate=args.sampling_rate,
        mask_generator=mask_generator,
        num_sample=getattr(args, "num_sample", 1),
    )
