"""The flags of how ``prepare_videos.py`` and ``prepare_dataset.py`` re-encode videos, checked into an
:class:`EncodeConfig`."""
from __future__ import annotations

import argparse
import shutil

from patches.data.encoding import EncodeConfig

SOURCE_GOP = 16  # the default keyframe interval, in source frames (recipe-rate files keep its time span)


def default_gop(keep_every: int) -> int:
    """``--gop`` when not given: a keyframe every :data:`SOURCE_GOP` source frames, at least every frame."""
    return max(1, SOURCE_GOP // max(1, keep_every))


def add_encode_args(p: argparse.ArgumentParser) -> None:
    """The flags of how videos are re-encoded, and of the batch (shared with ``prepare_dataset.py``)."""
    p.add_argument("--short_side", type=int, default=320, help="scale the short side down to this many pixels")
    p.add_argument("--max_side", type=int, default=None, help="instead, scale the long side down to at most this")
    p.add_argument("--max_fps", type=float, default=None, help="cap the frame rate (frames dropped by timestamp)")
    p.add_argument("--keep_every", type=int, default=1,
                   help="recipe-rate files: keep source frames 0, K, 2K, ... at 1/K of the frame rate, tagged with K; "
                        "train with the recipe's own --sampling_rate (a multiple of K): the loaders read it as "
                        "rate / K frames apart in these files")
    p.add_argument("--gop", type=int, default=None,
                   help=f"a keyframe every this many frames, exactly (default: every {SOURCE_GOP} source frames, "
                        f"i.e. {SOURCE_GOP} / --keep_every)")
    p.add_argument("--crf", type=int, default=23, help="libx264 quality (lower: better and larger)")
    p.add_argument("--preset", default="veryfast", help="libx264 preset (slower: smaller files)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (one video each)")
    p.add_argument("--retry_failed", action="store_true", help="try again the inputs failures.csv lists")
    p.add_argument("--ffmpeg", action="store_true", help="encode with the ffmpeg on PATH instead of PyAV")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def encode_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EncodeConfig:
    """The flags of :func:`add_encode_args` checked (``parser.error`` for bad values) as an :class:`EncodeConfig`."""
    gop = default_gop(args.keep_every) if args.gop is None else args.gop
    checks = [(args.short_side < 2, "--short_side must be >= 2"), (gop < 1, "--gop must be >= 1"),
              (args.max_side is not None and args.max_side < 2, "--max_side must be >= 2"),
              (args.max_fps is not None and args.max_fps <= 0, "--max_fps must be > 0"),
              (args.keep_every < 1, "--keep_every must be >= 1"),
              (args.keep_every > 1 and (args.max_fps is not None or args.ffmpeg),
               "--keep_every keeps exact source frames: not with --max_fps or --ffmpeg"),
              (args.workers < 1, "--workers must be >= 1"), (not 0 <= args.crf <= 51, "--crf must be in 0..51")]
    ffmpeg = shutil.which("ffmpeg") if args.ffmpeg else None
    checks.append((args.ffmpeg and ffmpeg is None, "--ffmpeg: no ffmpeg on PATH (leave it out to use PyAV)"))
    for bad, message in checks:
        if bad:
            parser.error(message)
    return EncodeConfig(args.short_side, args.max_side, args.max_fps, gop, args.crf, args.preset, ffmpeg,
                        keep_every=args.keep_every)
