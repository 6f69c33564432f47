"""``--decoder torchcodec``: video files read with torchcodec, the PyTorch project's decoder, on the CPU or (NVDEC)
on a CUDA device. PyAV stays the default reader (:mod:`patches.data.video_reader`), as it brings its own FFmpeg;
torchcodec loads the FFmpeg shared libraries of the system (FFmpeg 4 to 8), and its CUDA decoding needs an FFmpeg
built with NVDEC support.

:class:`TorchCodecVideo` reads like :class:`patches.data.video_reader.VideoFile`: ``len()`` frames, :meth:`read`
decodes only the frames asked for (frame ``i``: the ``i``-th presentation timestamp, torchcodec's exact seek mode,
as PyAV and decord number them) into uint8 ``[N, H, W, 3]``, on the reader's device.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from patches.data.recipe_rate import read_keep_every
from patches.data.video_reader import VideoDecodeError
from patches.errors import PatchesError, UsageError

DECODERS = ("pyav", "torchcodec")


class DecoderUnavailableError(PatchesError, RuntimeError):
    """torchcodec is not installed, or cannot load its FFmpeg libraries; the message says which."""


def torchcodec_problem() -> str | None:
    """None when torchcodec imports and loads its FFmpeg libraries, else why not (one line)."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except ImportError as e:
        return f"torchcodec is not installed ({e}); pip install torchcodec"
    try:  # torchcodec loads FFmpeg on first use (memoized): load it now to name the problem
        from torchcodec._internally_replaced_utils import load_core_libraries
        load_core_libraries()
    except ImportError:
        return None  # another torchcodec layout: it loads, or names the problem, on first use
    except (OSError, RuntimeError) as e:
        return (f"torchcodec cannot load FFmpeg 4-8 shared libraries ({str(e).strip().splitlines()[0][:200]}); "
                f"install FFmpeg's libraries (apt install ffmpeg, conda install ffmpeg)")
    return None


class TorchCodecVideo:
    """A video file decoded by torchcodec on ``device`` ("cpu", or "cuda"/"cuda:N" for NVDEC), single-threaded on
    the CPU (DataLoader workers give the parallelism). Raises :class:`VideoDecodeError` for a file that cannot be
    opened or has no frames, :class:`DecoderUnavailableError` when torchcodec cannot run."""

    def __init__(self, path: str, device: str | torch.device = "cpu") -> None:
        problem = torchcodec_problem()
        if problem is not None:
            raise DecoderUnavailableError(f"--decoder torchcodec: {problem}")
        from torchcodec.decoders import VideoDecoder

        if not os.path.isfile(path):
            raise VideoDecodeError(path, "is a folder, not a video file" if os.path.isdir(path) else "file not found")
        self.path = path
        try:
            self.decoder: Any = VideoDecoder(path, device=str(device), seek_mode="exact", dimension_order="NHWC",
                                             num_ffmpeg_threads=1)
            self.num_frames = int(self.decoder.metadata.num_frames or 0)
        except Exception as e:  # noqa: BLE001  (torchcodec raises RuntimeError and ValueError for bad files)
            raise VideoDecodeError(path, e) from e
        if self.num_frames < 1:
            raise VideoDecodeError(path, "the video has no frames")

    def __len__(self) -> int:
        return self.num_frames

    @property
    def keep_every(self) -> int:
        """A recipe-rate file's K (``prepare_videos.py --keep_every``); 1 for a full-rate file."""
        return read_keep_every(self.path)

    def read(self, indices: np.ndarray) -> torch.Tensor:
        """Frames ``indices`` (sorted, unique, 0-based) as uint8 ``[N, H, W, 3]`` on the reader's device."""
        try:
            return self.decoder.get_frames_at([int(i) for i in indices]).data
        except Exception as e:  # noqa: BLE001
            raise VideoDecodeError(self.path, e) from e

    def close(self) -> None:
        self.decoder = None


def open_video_file(path: str, decoder: str = "pyav") -> Any:
    """The reader of ``path`` for ``--decoder``: :class:`VideoFile` (PyAV, decord as fallback) or
    :class:`TorchCodecVideo` on the CPU (in DataLoader workers)."""
    from patches.data.video_reader import VideoFile

    if decoder == "pyav":
        return VideoFile(path)
    if decoder == "torchcodec":
        return TorchCodecVideo(path)
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")


def check_decoder(decoder: str) -> None:
    """Raise :class:`UsageError` for an unknown ``--decoder``, or torchcodec that cannot run here."""
    if decoder not in DECODERS:
        raise UsageError(f"--decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    problem = torchcodec_problem() if decoder == "torchcodec" else None
    if problem is not None:
        raise UsageError(f"--decoder torchcodec: {problem}")
