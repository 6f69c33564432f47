"""Video datasets: list files, clip sampling, pre-training and fine-tuning datasets.

List files follow VideoMAE: one video per line, ``path`` or ``path label``. See
:func:`parse_list_file` for the exact rules. Fine-tuning datasets come from
:func:`build_dataset`, which also reads SSV2 frame-folder lists and the official
UCF101 and HMDB51 split files.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from patch_grid import PatchGrid
from video_transforms import PRETRAIN_SCALES, EvalTransform, PretrainTransform, RandomResizedCropTransform

MaskGenerator = Callable[[], tuple[Any, Any]]

_INT = re.compile(r"[+-]?[0-9]+")


class VideoDecodeError(RuntimeError):
    """A video could not be opened or decoded; ``path`` names it and ``reason`` says why in one line.

    ``VideoDecodeError(message)`` alone (no cause) is also accepted, so that a DataLoader worker can
    re-raise it in the main process.
    """

    def __init__(self, path: str, cause: BaseException | str | None = None) -> None:
        if cause is None:
            super().__init__(path)
            self.path, self.reason = None, path
            return
        self.path, self.reason = path, decode_reason(cause)
        super().__init__(f"cannot decode video {path}: {self.reason}")


class UnreadableDataError(VideoDecodeError):
    """No readable video was found for an item, even after trying replacements."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class UnreadableVideoWarning(UserWarning):
    """A video was skipped (and replaced by another) because it cannot be read."""


# decord's C++ errors start with "[hh:mm:ss] /path/to/source.cc:123: "
_DECORD_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:[0-9]+: ")


def decode_reason(cause: BaseException | str) -> str:
    """A one-line, human reason for a decoding failure (decord's raw errors are cryptic or multi-line)."""
    text = str(cause).strip() or type(cause).__name__
    if "from_size == to_size" in text:
        return ("decord returns frames of the wrong size for this frame width (a decord 0.6 bug, e.g. 48 or "
                "72 px wide); re-encode the video at another width")
    if text.startswith("Error reading"):
        return "cannot be opened as a video (corrupt, truncated, or not a video file)"
    line = _DECORD_PREFIX.sub("", text.splitlines()[0])
    # "Cannot create buffer source": the file was cut inside its first frames, so decord cannot even learn the
    # stream's size and format.
    if "av_read_frame failed" in line or "Cannot create buffer source" in line:
        return f"frames cannot be decoded, the file is probably truncated or corrupt ({line})"
    return line[:300]


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


def parse_list_file(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                    errors: list[str] | None = None) -> list[tuple[str, int | None]]:
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
    line does not, for text that is not UTF-8, and (naming the file) for a list with no
    entries. With ``errors`` given, those messages are appended to it instead and the bad
    lines skipped (to report them all, as ``--check_data`` does).
    """
    return [(video, label) for _, video, label in numbered_list_entries(path, data_root, errors)]


def numbered_list_entries(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                          errors: list[str] | None = None) -> list[tuple[int, str, int | None]]:
    """:func:`parse_list_file` with the 1-based line number first: ``[(line, video_path, label), ...]``."""
    path = os.fspath(path)
    base = _list_base(path, data_root)
    entries = []
    for number, line in _list_lines(path):
        try:
            entries.append((number, *_parse_line(line, base, f"{path}, line {number}")))
        except ValueError as e:
            _raise_or_collect(e, errors)
    if not entries and not errors:
        _raise_or_collect(ValueError(f"{path}: list file has no entries"), errors)
    return entries


def _raise_or_collect(error: Exception, errors: list[str] | None) -> None:
    if errors is None:
        raise error
    errors.append(str(error))


def _list_base(path: str, data_root: str | os.PathLike | None) -> str:
    return os.fspath(data_root) if data_root is not None else os.path.dirname(os.path.abspath(path))


def _list_lines(path: str) -> list[tuple[int, str]]:
    """``(1-based line number, stripped line)`` for every line that is neither blank nor a ``#`` comment."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the list "
                         f"file as UTF-8") from None
    lines = text.splitlines()
    return [(number, line) for number, line in ((n, raw.strip()) for n, raw in enumerate(lines, start=1))
            if line and not line.startswith("#")]


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


def torch_seeded_rng() -> np.random.Generator:
    """A numpy Generator seeded from torch's RNG, so torch.manual_seed and DataLoader worker seeds govern it."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))


# ---- decoding -----------------------------------------------------------------------------------

def open_video(path: str) -> Any:
    """A decord VideoReader on ``path``, single-threaded (DataLoader workers give the parallelism).

    Raises :class:`VideoDecodeError` for a missing or empty file, one decord cannot open, and one
    without frames.
    """
    import decord  # imported lazily so that parsing and sampling work without it

    if not os.path.isfile(path):
        raise VideoDecodeError(path, "is a folder, not a video file" if os.path.isdir(path) else "file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    try:
        reader = decord.VideoReader(path, num_threads=1)
    except Exception as e:  # decord raises its own error types, and RuntimeError for unreadable files
        raise VideoDecodeError(path, e) from e
    if len(reader) < 1:
        raise VideoDecodeError(path, "the video has no frames")
    return reader


def read_frames(reader: Any, indices: np.ndarray, path: str) -> torch.Tensor:
    """Decode only ``indices`` (sorted, unique) into a uint8 ``[N, H, W, 3]`` tensor."""
    try:
        return torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy())
    except Exception as e:
        raise VideoDecodeError(path, e) from e


class PyAVVideo:
    """A fast reader for the common case (mp4-style files whose container counts the frames), with PyAV.

    Frame ``i`` is the ``i``-th smallest packet timestamp, exactly as decord numbers frames, and the RGB
    conversion is the same, so both give identical frames. Reading seeks to the last keyframe before the
    first frame asked for and decodes from there on, but tells the decoder to drop (not decode) the
    non-reference frames that are not asked for, and converts to RGB only the frames asked for: for an
    H.264 file with B-frames about half the decoding work of reading every frame of the span. Single-
    threaded, as DataLoader workers give the parallelism.

    :meth:`open` returns None when PyAV is missing, cannot open the file or index it, or the frame count
    it finds differs from the container's (e.g. a truncated file); :meth:`read` returns None when
    anything goes wrong. The caller then reads with decord, which names the problem.
    """

    def __init__(self, container: Any, stream: Any, pts: np.ndarray, seek_to: np.ndarray) -> None:
        from av.video.reformatter import VideoReformatter
        self.container, self.stream, self.pts, self.seek_to = container, stream, pts, seek_to
        # frame.to_ndarray(format="rgb24") sets up a new swscale context, with a thread pool, for every frame:
        # 64x64 frames took 0.9 ms each, against 0.02 ms with one single-threaded reformatter per file. No
        # scaler threads also means nothing for a forked DataLoader worker to inherit mid-use.
        self.to_rgb = VideoReformatter()

    @classmethod
    def open(cls, path: str) -> "PyAVVideo | None":
        try:
            import av
        except ImportError:
            return None
        container = None
        try:
            container = av.open(path)
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            pts, seek, key = [], [], []
            for packet in container.demux(stream):
                if packet.size == 0 and packet.pts is None:  # the flush packet at the end
                    continue
                if packet.pts is None:
                    raise ValueError("a packet without timestamp")
                pts.append(packet.pts)
                seek.append(packet.pts if packet.dts is None else min(packet.pts, packet.dts))
                key.append(packet.is_keyframe)
            order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
            pts_sorted = np.asarray(pts, dtype=np.int64)[order]
            if (not pts or stream.frames != len(pts) or not key[0] or len(np.unique(pts_sorted)) != len(pts)):
                raise ValueError("frame count or timestamps differ from the container's")
            # where to seek for frame i: the keyframe with the largest timestamp <= frame i's (its dts if smaller)
            key_pts = np.asarray(pts, dtype=np.int64)[np.asarray(key)]
            key_seek = np.asarray(seek, dtype=np.int64)[np.asarray(key)]
            by_pts = np.argsort(key_pts, kind="stable")
            key_pts, key_seek = key_pts[by_pts], key_seek[by_pts]
            slot = np.searchsorted(key_pts, pts_sorted, side="right") - 1
            seek_to = np.where(slot >= 0, key_seek[np.maximum(slot, 0)], min(seek))
            return cls(container, stream, pts_sorted, seek_to)
        except Exception:
            if container is not None:
                container.close()
            return None

    def __len__(self) -> int:
        return len(self.pts)

    def read(self, indices: np.ndarray) -> np.ndarray | None:
        """Frames ``indices`` (sorted, unique) as uint8 ``[N, H, W, 3]``, or None if they cannot all be read."""
        try:
            wanted = {int(p): k for k, p in enumerate(self.pts[indices])}
            out: list[Any] = [None] * len(wanted)
            missing = len(wanted)
            codec = self.stream.codec_context
            self.container.seek(int(self.seek_to[indices[0]]), stream=self.stream, backward=True)
            mode = None
            for packet in self.container.demux(self.stream):
                want = packet.pts is None or packet.pts in wanted
                if want != mode:  # decode every frame we need, and every reference frame (others need them)
                    codec.skip_frame = "DEFAULT" if want else "NONREF"
                    mode = want
                for frame in codec.decode(packet):
                    k = wanted.get(frame.pts)
                    if k is not None and out[k] is None:
                        out[k] = self.to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
                        missing -= 1
                if missing == 0:
                    break
            codec.skip_frame = "DEFAULT"
            if missing:
                return None
            return np.stack(out)
        except Exception:
            return None

    def close(self) -> None:
        self.container.close()


BACKENDS = ("auto", "decord")


class VideoFile:
    """A video file: ``len()`` frames, :meth:`read` decodes only the frames asked for.

    ``backend="auto"`` reads with :class:`PyAVVideo` where it can (the same frames as decord, about twice
    as fast) and with decord otherwise, and whenever PyAV fails, so that errors are decord's;
    ``"decord"`` always uses decord.
    """

    def __init__(self, path: str, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.path = path
        self.fast = PyAVVideo.open(path) if backend == "auto" and os.path.isfile(path) else None
        self._reader = None if self.fast is not None else open_video(path)

    @property
    def reader(self) -> Any:
        """The decord VideoReader (opened on first use when PyAV reads the file)."""
        if self._reader is None:
            self._reader = open_video(self.path)
        return self._reader

    def __len__(self) -> int:
        return len(self.fast) if self.fast is not None else len(self.reader)

    def read(self, indices: np.ndarray) -> torch.Tensor:
        """Frames ``indices`` (sorted, unique, 0-based) as uint8 ``[N, H, W, 3]``."""
        if self.fast is not None:
            frames = self.fast.read(indices)
            if frames is not None:
                return torch.from_numpy(frames)
            self.fast.close()
            self.fast = None
        return read_frames(self.reader, indices, self.path)


class FrameFolder:
    """A video as extracted JPEG frames ``folder/fname_tmpl.format(i)``, ``i`` from 1 (VideoMAE's SSV2 layout)."""

    def __init__(self, folder: str, num_frames: int, fname_tmpl: str = "img_{:05}.jpg") -> None:
        self.folder, self.num_frames, self.fname_tmpl = folder, num_frames, fname_tmpl

    def __len__(self) -> int:
        return self.num_frames

    def read(self, indices: np.ndarray) -> torch.Tensor:
        """Frames ``indices`` (sorted, unique, 0-based) as uint8 ``[N, H, W, 3]``; only those files are read."""
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        frames = []
        for i in indices.tolist():
            path = os.path.join(self.folder, self.fname_tmpl.format(i + 1))
            try:
                frames.append(decode_jpeg(read_file(path), mode=ImageReadMode.RGB))
            except Exception as e:  # missing file, or not a JPEG
                # named by the folder: that is the listed entry, skipped and reported as one
                raise VideoDecodeError(self.folder, f"frame {os.path.basename(path)}: {decode_reason(e)}") from e
        if len({tuple(f.shape) for f in frames}) > 1:
            raise VideoDecodeError(self.folder, ValueError("frames differ in size"))
        return torch.stack(frames).permute(0, 2, 3, 1)


def decode_clips(source: VideoFile | FrameFolder, picks: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """uint8 ``THWC`` clips for each index array in ``picks``, decoding every needed frame once."""
    needed = np.unique(np.concatenate(picks))
    frames = source.read(needed)
    clips = []
    for p in picks:
        if len(p) == len(needed) and np.array_equal(p, needed):
            clips.append(frames)  # the one clip, or clips that coincide: no copy
        else:  # numpy's gather is several times faster than torch's advanced indexing on uint8
            clips.append(torch.from_numpy(frames.numpy()[np.searchsorted(needed, p)]))
    return clips


# ---- unreadable videos ----------------------------------------------------------------------------

MAX_REPLACEMENTS = 10

class SkipsUnreadableVideos:
    """Mixin for datasets: an item whose video cannot be read is replaced by another item.

    The replacement index comes from the item's own RNG (so runs stay reproducible), at most
    :attr:`max_replacements` times in a row; then :class:`UnreadableDataError` names the files tried.
    By default every skipped file is reported with an :class:`UnreadableVideoWarning` (shown once per
    file and process). With :attr:`report_bad` set, items instead become ``(item, bad)`` where ``bad``
    lists ``(path, reason)`` of the skipped files: batch those with :class:`CollateWithBad`, which
    carries the list through DataLoader worker processes to the main process.
    """

    report_bad: bool = False
    max_replacements: int = MAX_REPLACEMENTS

    def _robust_item(self, index: int, load: Callable[[int], Any],
                     replacement: Callable[[int], int | None]) -> Any:
        bad: list[tuple[str, str]] = []
        for _ in range(self.max_replacements + 1):
            try:
                item = load(index)
            except VideoDecodeError as e:
                bad.append((str(e.path), e.reason))
                next_index = replacement(index)
                if next_index is None:
                    break
                index = next_index
                continue
            if self.report_bad:
                return item, tuple(bad)
            for path, reason in bad:
                # one fixed location: the warnings registry then shows each file's message once per process
                warnings.warn(f"skipped unreadable video {path}: {reason}", UnreadableVideoWarning, stacklevel=2)
            return item
        tried = "; ".join(f"{path} ({reason})" for path, reason in bad[:5])
        raise UnreadableDataError(f"no readable video for this item after trying {len(bad)}: {tried}; "
                                  f"check the data with --check_data")


def other_index(rng: np.random.Generator, index: int, size: int) -> int | None:
    """A uniformly drawn index in ``[0, size)`` other than ``index``; None when there is no other."""
    if size < 2:
        return None
    j = int(rng.integers(size - 1))
    return j + (j >= index)


class CollateWithBad:
    """Collate ``(item, bad)`` pairs of a dataset with ``report_bad`` set into ``(batch, bad)``.

    ``batch`` is what ``inner`` makes of the items, ``bad`` the concatenated ``(path, reason)`` list.
    A plain class rather than a closure, so that it pickles into spawned worker processes.
    """

    def __init__(self, inner: Callable[[list], Any] = default_collate) -> None:
        self.inner = inner

    def __call__(self, batch: list) -> tuple[Any, list[tuple[str, str]]]:
        return self.inner([item for item, _ in batch]), [b for _, bad in batch for b in bad]


# ---- pre-training -------------------------------------------------------------------------------

class VideoMAEPretrainDataset(SkipsUnreadableVideos, Dataset):
    """Clips for masked-autoencoder pre-training, labels ignored.

    Item ``i`` is ``(video, enc_mask, dec_mask)``: ``video`` uint8 ``[3, T, H, W]`` with
    ``T, (H, W) = grid.num_frames, grid.input_size`` (the training step normalises it on its device,
    see ``video_transforms.normalize_batch``), and the two masks as returned by one
    call of ``mask_generator()`` (passed through untouched). With ``num_sample > 1`` each of
    the three is a list of ``num_sample`` independently sampled and augmented clips of the
    same video (repeated augmentation; the needed frames are decoded once); batch those
    with :func:`multiple_samples_collate`.

    Randomness comes from a per-item numpy Generator seeded from torch's RNG, so
    ``torch.manual_seed`` and DataLoader worker seeding make runs reproducible. With
    ``seed`` set, item ``i`` instead always yields the same clip and crop (for
    visualisation and tests; the masks are still whatever ``mask_generator`` draws).
    An unreadable video is replaced by another, see :class:`SkipsUnreadableVideos`.
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
        video = VideoFile(self.samples[index][0])
        picks = [sample_clip_indices(len(video), self.grid.num_frames, self.sampling_rate, rng)
                 for _ in range(self.num_sample)]
        return decode_clips(video, picks)

    def __getitem__(self, index: int):
        rng = self._rng(index)
        return self._robust_item(index, lambda i: self._item(i, rng), lambda i: other_index(rng, i, len(self)))

    def _item(self, index: int, rng: np.random.Generator):
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


# ---- fine-tuning ------------------------------------------------------------------------------------

NB_CLASSES = {"Kinetics-400": 400, "Kinetics-600": 600, "Kinetics-700": 700, "SSV2": 174, "UCF101": 101,
              "HMDB51": 51}
DATA_SETS = (*NB_CLASSES, "custom")
MODES = ("train", "validation", "test")
LIST_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video: a file, or (``num_frames`` set) a folder of extracted frames."""

    path: str
    label: int
    list_file: str  # where it was listed, for error messages
    line: int
    num_frames: int | None = None

    @property
    def where(self) -> str:
        return f"{self.list_file}, line {self.line}"

    def open(self, fname_tmpl: str = "img_{:05}.jpg") -> VideoFile | FrameFolder:
        if self.num_frames is None:
            return VideoFile(self.path)
        return FrameFolder(self.path, self.num_frames, fname_tmpl)


def read_labelled_list(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                       frame_folders: bool = False, errors: list[str] | None = None) -> list[VideoRecord]:
    """A list file (rules of :func:`parse_list_file`) whose every line must have a label.

    With ``frame_folders`` a line whose last two fields are integers is VideoMAE's frame
    format ``folder num_frames label``; other lines are still ``video label``. ``errors`` as in
    :func:`parse_list_file`.
    """
    path = os.fspath(path)
    base = _list_base(path, data_root)
    records = []
    for number, line in _list_lines(path):
        try:
            records.append(_labelled_record(line, base, path, number, frame_folders))
        except ValueError as e:
            _raise_or_collect(e, errors)
    if not records and not errors:
        _raise_or_collect(ValueError(f"{path}: list file has no entries"), errors)
    return records


def _labelled_record(line: str, base: str, path: str, number: int, frame_folders: bool) -> VideoRecord:
    where = f"{path}, line {number}"
    video, label = _parse_line(line, base, where)
    if label is None:
        expected = "'path label' or 'folder num_frames label'" if frame_folders else "'path label'"
        fields = line.rsplit(None, 1)
        if len(fields) == 2:
            raise ValueError(f"{where}: the last field {fields[1]!r} of {line!r} is not an integer label "
                             f"(expected {expected})")
        raise ValueError(f"{where}: no label in {line!r} (expected {expected})")
    count = None
    if frame_folders:
        head = video.rsplit(None, 1)
        if len(head) == 2 and _INT.fullmatch(head[1]):
            video, count = head[0], int(head[1])
            if count < 1:
                raise ValueError(f"{where}: frame folder with {count} frames")
    return VideoRecord(video, label, path, number, count)


def ucf101_records(split_dir: str | os.PathLike, data_root: str | os.PathLike | None, split: int,
                   train: bool) -> list[VideoRecord]:
    """Videos of UCF101's official ``trainlist0{split}.txt`` or ``testlist0{split}.txt`` in ``split_dir``.

    Labels are 0-based: the train list's 1-based label minus one, or for label-less lines
    (the test lists) the class folder looked up in ``classInd.txt``. Video paths are relative
    to ``data_root``, or to ``split_dir`` when it is None.
    """
    split_dir = os.fspath(split_dir)
    class_file = os.path.join(split_dir, "classInd.txt")
    classes = {}
    for number, line in _list_lines(_existing(class_file, "UCF101 class index")):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) < 1:
            raise ValueError(f"{class_file}, line {number}: expected '<1-based index> <class name>', got {line!r}")
        classes[fields[1]] = int(fields[0]) - 1
    list_file = _existing(os.path.join(split_dir, f"{'train' if train else 'test'}list0{split}.txt"),
                          f"UCF101 split {split} list")
    base = split_dir if data_root is None else os.fspath(data_root)
    records = []
    for number, line in _list_lines(list_file):
        where = f"{list_file}, line {number}"
        fields = line.rsplit(None, 1)
        if len(fields) == 2 and _INT.fullmatch(fields[1]):
            video, label = fields[0], int(fields[1]) - 1
            if label < 0:
                raise ValueError(f"{where}: UCF101 labels are 1-based, got {fields[1]}")
        else:
            video = line
            folder = video.replace("\\", "/").split("/")[0]
            if folder not in classes:
                raise ValueError(f"{where}: class folder {folder!r} of {video!r} is not in {class_file}")
            label = classes[folder]
        records.append(VideoRecord(_resolve(video, base), label, list_file, number))
    if not records:
        raise ValueError(f"{list_file}: list file has no entries")
    return records


def hmdb51_records(split_dir: str | os.PathLike, data_root: str | os.PathLike | None, split: int,
                   train: bool) -> list[VideoRecord]:
    """Videos of HMDB51's official split ``split``: lines ``video.avi 1`` (train) or ``2`` (test) of the
    ``<class>_test_split{split}.txt`` files in ``split_dir`` (``0``: unused).

    Labels index the sorted class names; videos are ``<data_root or split_dir>/<class>/<video>``.
    """
    split_dir = os.fspath(split_dir)
    suffix = f"_test_split{split}.txt"
    names = sorted(f for f in os.listdir(split_dir) if f.endswith(suffix))
    if not names:
        raise FileNotFoundError(f"no HMDB51 split files *{suffix} in {split_dir}")
    base = split_dir if data_root is None else os.fspath(data_root)
    wanted = "1" if train else "2"
    records = []
    for label, name in enumerate(names):
        cls, list_file = name[:-len(suffix)], os.path.join(split_dir, name)
        for number, line in _list_lines(list_file):
            fields = line.rsplit(None, 1)
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ValueError(f"{list_file}, line {number}: expected 'video.avi 0|1|2', got {line!r}")
            if fields[1] == wanted:
                records.append(VideoRecord(_resolve(os.path.join(cls, fields[0]), base), label, list_file, number))
    if not records:
        raise ValueError(f"no {'training' if train else 'test'} videos (marked {wanted}) in the *{suffix} "
                         f"files of {split_dir}")
    return records


def _existing(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found")
    return path


class VideoClsTrainDataset(SkipsUnreadableVideos, Dataset):
    """Training clips for classification: item ``i`` is ``(video, label)``, video float32 ``[3, T, H, W]``.

    Each clip is sampled with :func:`sample_clip_indices` and augmented by ``transform``
    (a :class:`RandomResizedCropTransform`). With ``num_sample > 1`` the item is
    ``([video] * num_sample, [label] * num_sample)``: independently sampled and augmented
    clips of one video whose frames are decoded once; batch with :func:`multiple_samples_collate`.
    Randomness as in :class:`VideoMAEPretrainDataset` (torch-seeded, or fixed with ``seed``); an
    unreadable video is replaced by another, see :class:`SkipsUnreadableVideos`.
    """

    def __init__(self, records: Sequence[VideoRecord], grid: PatchGrid, sampling_rate: int,
                 transform: RandomResizedCropTransform, num_sample: int = 1, fname_tmpl: str = "img_{:05}.jpg",
                 seed: int | None = None) -> None:
        if num_sample < 1:
            raise ValueError(f"num_sample must be >= 1, got {num_sample}")
        self.records, self.grid, self.sampling_rate = list(records), grid, sampling_rate
        self.transform, self.num_sample, self.fname_tmpl, self.seed = transform, num_sample, fname_tmpl, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index]) if self.seed is not None else torch_seeded_rng()
        return self._robust_item(index, lambda i: self._item(i, rng), lambda i: other_index(rng, i, len(self)))

    def _item(self, index: int, rng: np.random.Generator):
        record = self.records[index]
        source = record.open(self.fname_tmpl)
        picks = [sample_clip_indices(len(source), self.grid.num_frames, self.sampling_rate, rng)
                 for _ in range(self.num_sample)]
        videos = [self.transform(clip, rng) for clip in decode_clips(source, picks)]
        if self.num_sample == 1:
            return videos[0], record.label
        return videos, [record.label] * self.num_sample

    def __repr__(self) -> str:
        return (f"VideoClsTrainDataset({len(self)} videos, {self.grid.describe()}, sampling_rate={self.sampling_rate}, "
                f"num_sample={self.num_sample}, {self.transform})")


class VideoClsEvalDataset(SkipsUnreadableVideos, Dataset):
    """Deterministic evaluation views: one item per (video, temporal segment, spatial crop).

    Segments come from :func:`segment_clip_indices`, crops from :class:`EvalTransform`
    (short side resized to ``short_side``, then ``num_crops`` crops spread along the axis with
    slack). Item ``i`` is ``(video, label, video_index)``, plus ``view = segment * num_crops + crop``
    when ``with_view``; ``len`` is videos x segments x crops. An unreadable video's views are replaced
    by the same views of other videos (with those videos' labels and indices, so a multi-view test
    merges them as repeats and leaves the unreadable video out); see :class:`SkipsUnreadableVideos`.
    """

    def __init__(self, records: Sequence[VideoRecord], grid: PatchGrid, sampling_rate: int,
                 short_side: int | None = None, num_segments: int = 1, num_crops: int = 1, with_view: bool = False,
                 fname_tmpl: str = "img_{:05}.jpg") -> None:
        if num_segments < 1 or num_crops < 1:
            raise ValueError(f"num_segments and num_crops must be >= 1, got {num_segments}, {num_crops}")
        self.records, self.grid, self.sampling_rate = list(records), grid, sampling_rate
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
        indices = segment_clip_indices(len(source), self.grid.num_frames, self.sampling_rate,
                                       self.num_segments)[segment]
        video = self.transform.view(decode_clips(source, [indices])[0], crop)
        if self.with_view:
            return video, record.label, video_index, view
        return video, record.label, video_index

    def __repr__(self) -> str:
        return (f"VideoClsEvalDataset({len(self.records)} videos x {self.num_segments} segments x {self.num_crops} "
                f"crops, {self.grid.describe()}, sampling_rate={self.sampling_rate}, {self.transform})")


def default_flip(data_set: str) -> bool:
    """Horizontal flip in training: off for SSV2, whose classes include left/right pairs; on otherwise."""
    return data_set != "SSV2"


def train_flip(args: Any) -> bool:
    """``args.flip`` when set (not None), else :func:`default_flip` of ``args.data_set``."""
    flip = getattr(args, "flip", None)
    return default_flip(args.data_set) if flip is None else bool(flip)


def _eval_folder(args: Any) -> str:
    return getattr(args, "eval_data_path", None) or args.data_path


def _list_file_for(mode: str, args: Any) -> str:
    folder, flag = (args.data_path, "--data_path") if mode == "train" else (_eval_folder(args), "--eval_data_path")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {folder} is not a folder: for --data_set {args.data_set} it must hold "
                         f"train.csv, val.csv and test.csv")
    path = os.path.join(folder, LIST_FILES[mode])
    if mode == "validation" and not os.path.isfile(path):
        fallback = os.path.join(folder, LIST_FILES["test"])
        if os.path.isfile(fallback):
            print(f"note: no {path}; validating on {fallback}")
            return fallback
    return _existing(path, "list file")


def _records_for(mode: str, args: Any, errors: list[str] | None = None) -> list[VideoRecord]:
    data_root = getattr(args, "data_root", None)
    if args.data_set in ("UCF101", "HMDB51"):
        folder = args.data_path if mode == "train" else _eval_folder(args)
        read = ucf101_records if args.data_set == "UCF101" else hmdb51_records
        return read(folder, data_root, int(getattr(args, "split", 1)), train=mode == "train")
    return read_labelled_list(_list_file_for(mode, args), data_root, frame_folders=args.data_set == "SSV2",
                              errors=errors)


def _nb_classes(mode: str, args: Any, records: list[VideoRecord]) -> tuple[int, str]:
    """The class count and how to name where it came from in an error message."""
    given = getattr(args, "nb_classes", None)
    if given is not None:
        return int(given), f"--nb_classes {given}"
    if args.data_set in NB_CLASSES:
        n = NB_CLASSES[args.data_set]
        return n, f"--data_set {args.data_set}, which has {n} classes (set --nb_classes for another count)"
    train = records
    if mode != "train":
        train_list = os.path.join(args.data_path, LIST_FILES["train"])
        if os.path.isfile(train_list):
            train = read_labelled_list(train_list, getattr(args, "data_root", None))
    if not train:
        raise ValueError("no usable labelled line to infer the class count from; set --nb_classes")
    n = max(r.label for r in train) + 1
    return n, f"the {n} classes found in {train[0].list_file} (set --nb_classes for more)"


def _check_labels(records: list[VideoRecord], nb_classes: int, source: str, errors: list[str] | None = None
                  ) -> list[VideoRecord]:
    """The records whose label is in range; the others raise (or, with ``errors``, are reported there),
    one message per list file naming the first bad line and counting the others."""
    bad = [r for r in records if r.label >= nb_classes]
    for list_file in dict.fromkeys(r.list_file for r in bad):
        here = [r for r in bad if r.list_file == list_file]
        more = f" (and {len(here) - 1} more lines, e.g. line {', line '.join(str(r.line) for r in here[1:4])})" \
            if len(here) > 1 else ""
        _raise_or_collect(ValueError(f"{here[0].where}: label {here[0].label} is out of range for {source}; labels "
                                     f"must be 0..{nb_classes - 1}{more}"), errors)
    return [r for r in records if r.label < nb_classes]


def read_records(mode: str, args: Any, errors: list[str] | None = None) -> tuple[list[VideoRecord], int]:
    """The videos :func:`build_dataset` would use for ``mode`` and the class count, after every list check.

    Raises ``ValueError`` or ``FileNotFoundError`` naming the file (and line) of the first problem; with
    ``errors`` given, every problem is appended there instead and the bad lines are left out.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if args.data_set not in DATA_SETS:
        raise ValueError(f"--data_set must be one of {DATA_SETS}, got {args.data_set!r}")
    try:
        records = _records_for(mode, args, errors)
        nb_classes, source = _nb_classes(mode, args, records)
    except (ValueError, FileNotFoundError) as e:
        if errors is None:
            raise
        errors.append(str(e))
        return [], 0
    return _check_labels(records, nb_classes, source, errors), nb_classes


def build_dataset(mode: str, args: Any, grid: PatchGrid) -> tuple[Dataset, int]:
    """The fine-tuning dataset for ``mode`` ("train", "validation" or "test") and the class count.

    Reads from ``args``: ``data_set`` (one of :data:`DATA_SETS`), ``data_path`` (folder of
    train.csv/val.csv/test.csv, or of the UCF101/HMDB51 split files), ``eval_data_path``,
    ``data_root``, ``sampling_rate``; for training ``num_sample``, ``aa``,
    ``train_interpolation``, ``reprob``, ``remode``, ``recount``, ``flip`` (None: per
    data set, see :func:`train_flip`); for evaluation ``short_side_size``,
    ``test_num_segment``, ``test_num_crop``; and ``nb_classes``, ``fname_tmpl``, ``split``.
    Absent optional fields mean off (no augmentation beyond crop and flip, one clip, one view).

    Items: train ``(video, label)`` (lists of ``num_sample`` when > 1), validation
    ``(video, label, video_index)`` from the centre clip and crop, test ``(video, label,
    video_index, view)`` over ``test_num_segment x test_num_crop`` views. Validation falls
    back to test.csv when val.csv is missing; UCF101/HMDB51 validate and test on the test split.
    """
    records, nb_classes = read_records(mode, args)
    if mode == "train" and args.data_set == "custom" and getattr(args, "nb_classes", None) is not None:
        used = len({r.label for r in records})
        if used < nb_classes:
            print(f"warning: --nb_classes {nb_classes} but {records[0].list_file} uses only {used} distinct "
                  f"labels; the other classes are never trained")

    fname_tmpl = getattr(args, "fname_tmpl", "img_{:05}.jpg")
    if mode == "train":
        transform = RandomResizedCropTransform(
            grid.input_size, scale=tuple(getattr(args, "train_crop_scale", None) or (0.08, 1.0)),
            flip=train_flip(args), rand_augment=getattr(args, "aa", None),
            interpolation=getattr(args, "train_interpolation", "bilinear"), reprob=getattr(args, "reprob", 0.0),
            remode=getattr(args, "remode", "pixel"), recount=getattr(args, "recount", 1))
        dataset: Dataset = VideoClsTrainDataset(records, grid, args.sampling_rate, transform,
                                                getattr(args, "num_sample", 1), fname_tmpl)
    else:
        test = mode == "test"
        dataset = VideoClsEvalDataset(
            records, grid, args.sampling_rate, getattr(args, "short_side_size", None),
            num_segments=getattr(args, "test_num_segment", 1) if test else 1,
            num_crops=getattr(args, "test_num_crop", 1) if test else 1, with_view=test, fname_tmpl=fname_tmpl)
    return dataset, nb_classes
