"""Keep the video decoders' own messages out of the tools' output.

decord's bundled FFmpeg and its C++ code write straight to file descriptor 2 ("moov atom not found",
"[hh:mm:ss] .../video_reader.cc:83: ERROR opening: ..."), beside the one line PATCHES already prints for
the same failure (:class:`patches.data.video_reader.VideoDecodeError`). :func:`decoder_stderr_silenced`
points descriptor 2 at /dev/null around a decoder call; :func:`quiet_pyav` turns off PyAV's relay of
FFmpeg's log. ``PATCHES_DECODER_LOGS=1`` in the environment keeps both, for debugging a decoder.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from typing import Iterator

_STDERR_FD = 2
_lock = threading.Lock()
_depth = 0  # blocks open in this process (threads may nest them): the first one redirects, the last restores
_saved_fd: int | None = None


def decoder_logs_wanted() -> bool:
    """Whether the user asked to see the decoders' own messages (``PATCHES_DECODER_LOGS=1``)."""
    return os.environ.get("PATCHES_DECODER_LOGS", "") not in ("", "0")


@functools.lru_cache(maxsize=None)
def quiet_pyav() -> None:
    """No FFmpeg log lines through PyAV (PyAV 13 and later log nothing unless asked; older ones relay warnings
    and errors to Python's logging)."""
    if decoder_logs_wanted():
        return
    try:
        import av.logging
    except ImportError:
        return
    try:
        av.logging.set_level(None)
    except (TypeError, ValueError):  # a PyAV that takes only a level
        av.logging.set_level(av.logging.PANIC)


@contextlib.contextmanager
def decoder_stderr_silenced() -> Iterator[None]:
    """Inside the block, whatever C code writes to descriptor 2 is dropped; the decoder's exception still
    carries the reason. Python's own ``sys.stderr`` is flushed first, so nothing written before is lost."""
    global _depth, _saved_fd
    if decoder_logs_wanted():
        yield
        return
    with _lock:
        if _depth == 0:
            if sys.stderr is not None:
                sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            _saved_fd = os.dup(_STDERR_FD)
            os.dup2(devnull, _STDERR_FD)
            os.close(devnull)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                os.dup2(_saved_fd, _STDERR_FD)
                os.close(_saved_fd)
                _saved_fd = None
