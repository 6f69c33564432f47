"""Reading videos: video files (PyAV where it can, decord otherwise) and folders of extracted frames,
decoding only the frames asked for, with one-line reasons for what cannot be decoded."""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import numpy as np
import torch

from patches.data.recipe_rate import keep_every_of, read_keep_every
from patches.data.quiet_decoders import decoder_stderr_silenced, quiet_pyav
from patches.errors import PatchesError


class VideoDecodeError(PatchesError, RuntimeError):
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
        with decoder_stderr_silenced():
            reader = decord.VideoReader(path, num_threads=1)
    except Exception as e:  # decord raises its own error types, and RuntimeError for unreadable files
        raise VideoDecodeError(path, e) from e
    if len(reader) < 1:
        raise VideoDecodeError(path, "the video has no frames")
    return reader


def read_frames(reader: Any, indices: np.ndarray, path: str) -> torch.Tensor:
    """Decode only ``indices`` (sorted, unique) into a uint8 ``[N, H, W, 3]`` tensor."""
    try:
        with decoder_stderr_silenced():
            return torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy())
    except Exception as e:
        raise VideoDecodeError(path, e) from e


class PyAVVideo:
    """A fast reader for the common case (mp4-style files whose container counts the frames, and WebM/mkv files
    whose last frame ends at the container's duration), with PyAV.

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
        self.keep_every = keep_every_of(container.metadata)  # a recipe-rate file's K (1: full rate)
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
        quiet_pyav()
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
            if (not pts or not key[0] or len(np.unique(pts_sorted)) != len(pts)
                    or not _count_matches(container, stream, len(pts), int(pts_sorted[-1]))):
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

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` of the decoded frames, as the stream declares them."""
        return int(self.stream.codec_context.height), int(self.stream.codec_context.width)

    def _runs(self, indices: np.ndarray) -> list[np.ndarray]:
        """``indices`` cut where seeking saves decoding: a new run starts at a frame when a whole keyframe interval
        lies between it and the previous frame asked for (clips far apart in one video share no decoding). A
        shorter gap is decoded through: a seek there would decode again the frames the decoder holds back."""
        keys = np.unique(self.seek_to)
        pts, seek = self.pts[indices], self.seek_to[indices]
        between = np.searchsorted(keys, seek[1:], side="right") - np.searchsorted(keys, pts[:-1], side="right")
        return np.split(indices, np.nonzero(between >= 2)[0] + 1)

    def decode(self, indices: np.ndarray) -> list[Any] | None:
        """The decoded frames ``indices`` (sorted, unique) as PyAV frames in their own pixel format, or None
        if they cannot all be read. Each run of :meth:`_runs` seeks to its keyframe; frames neither asked for
        nor referenced by others are dropped undecoded."""
        try:
            out: list[Any] = [None] * len(indices)
            codec = self.stream.codec_context
            for run in self._runs(np.asarray(indices)):
                wanted = {int(p): k for k, p in zip(np.searchsorted(indices, run).tolist(), self.pts[run])}
                missing = len(wanted)
                self.container.seek(int(self.seek_to[run[0]]), stream=self.stream, backward=True)
                codec.flush_buffers()
                mode = None
                for packet in self.container.demux(self.stream):
                    want = packet.pts is None or packet.pts in wanted
                    if want != mode:  # decode every frame we need, and every reference frame (others need them)
                        codec.skip_frame = "DEFAULT" if want else "NONREF"
                        mode = want
                    for frame in codec.decode(packet):
                        k = wanted.get(frame.pts)
                        if k is not None and out[k] is None:
                            out[k] = frame
                            missing -= 1
                    if missing == 0:
                        break
                codec.skip_frame = "DEFAULT"
                if missing:
                    return None
            return out
        except Exception:
            return None

    def read(self, indices: np.ndarray) -> np.ndarray | None:
        """Frames ``indices`` (sorted, unique) as uint8 ``[N, H, W, 3]``, or None if they cannot all be read."""
        frames = self.decode(indices)
        if frames is None:
            return None
        try:
            out = None
            for k, frame in enumerate(frames):
                rgb = self.to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
                if out is None:
                    out = np.empty((len(frames), *rgb.shape), dtype=np.uint8)
                out[k] = rgb
            return out
        except Exception:
            return None

    def close(self) -> None:
        self.container.close()


def _count_matches(container: Any, stream: Any, count: int, last_pts: int) -> bool:
    """Whether ``count`` packets, the last at ``last_pts``, are the whole stream: the container's frame count
    where it keeps one (mp4, mov); else (WebM, mkv) the last frame must end at the container's duration,
    give or take two frames, which a file cut short does not."""
    if stream.frames:
        return stream.frames == count
    if container.duration is None or stream.time_base is None or not stream.average_rate:
        return False
    frame_s = 1 / float(stream.average_rate)
    end_s = float(last_pts * stream.time_base) + frame_s
    return abs(end_s - container.duration / 1e6) <= 2 * frame_s


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

    @property
    def keep_every(self) -> int:
        """A recipe-rate file's K (``prepare_videos.py --keep_every``); 1 for a full-rate file."""
        return self.fast.keep_every if self.fast is not None else read_keep_every(self.path)

    def decode(self, indices: np.ndarray) -> list[Any] | None:
        """Frames ``indices`` (sorted, unique, 0-based) as PyAV frames in the decoder's pixel format (for
        :mod:`patches.data.yuv_crops`), or None where PyAV does not read this file: then :meth:`read` does."""
        return None if self.fast is None else self.fast.decode(indices)

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


class FrameArray:
    """A video already decoded: uint8 ``[T, H, W, 3]`` frames (a numpy array or a tensor), read like a file."""

    def __init__(self, frames: np.ndarray | torch.Tensor) -> None:
        frames = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8 or len(frames) < 1:
            raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} "
                             f"{list(frames.shape)}")
        self.frames = frames.cpu()

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, indices: np.ndarray) -> torch.Tensor:
        """Frames ``indices`` (sorted, unique, 0-based) as uint8 ``[N, H, W, 3]``."""
        return self.frames[torch.from_numpy(np.asarray(indices, dtype=np.int64))]


def decode_clips(source: VideoFile | FrameFolder | FrameArray, picks: Sequence[np.ndarray]) -> list[torch.Tensor]:
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
