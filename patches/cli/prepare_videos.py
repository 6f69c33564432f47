"""``patches-prepare-videos`` / ``scripts/prepare_videos.py``: prepare raw videos for training in one command (see
:mod:`patches.data.prepare` for what is written).

    python scripts/prepare_videos.py raw/kinetics400/train k400/train --short_side 320 --workers 16

Exit status: 0 when every input is prepared, 1 when some could not be (listed), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Sequence

from patches.data.encoding import EncodeConfig
from patches.data.prepare import FAILURES_NAME, LIST_NAME, VIDEO_SUFFIXES, describe, prepare
from patches.errors import UsageError


def add_encode_args(p: argparse.ArgumentParser) -> None:
    """The flags of how videos are re-encoded, and of the batch (shared with ``prepare_dataset.py``)."""
    p.add_argument("--short_side", type=int, default=320, help="scale the short side down to this many pixels")
    p.add_argument("--max_side", type=int, default=None, help="instead, scale the long side down to at most this")
    p.add_argument("--max_fps", type=float, default=None, help="cap the frame rate (frames dropped by timestamp)")
    p.add_argument("--keep_every", type=int, default=1,
                   help="recipe-rate files: keep source frames 0, K, 2K, ... at 1/K of the frame rate; read them "
                        "with the recipe's --sampling_rate divided by K (e.g. 4 -> 2 for K=2)")
    p.add_argument("--gop", type=int, default=16, help="a keyframe every this many frames, exactly")
    p.add_argument("--crf", type=int, default=23, help="libx264 quality (lower: better and larger)")
    p.add_argument("--preset", default="veryfast", help="libx264 preset (slower: smaller files)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (one video each)")
    p.add_argument("--retry_failed", action="store_true", help="try again the inputs failures.csv lists")
    p.add_argument("--ffmpeg", action="store_true", help="encode with the ffmpeg on PATH instead of PyAV")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def encode_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EncodeConfig:
    """The flags of :func:`add_encode_args` checked (``parser.error`` for bad values) as an :class:`EncodeConfig`."""
    checks = [(args.short_side < 2, "--short_side must be >= 2"), (args.gop < 1, "--gop must be >= 1"),
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
    return EncodeConfig(args.short_side, args.max_side, args.max_fps, args.gop, args.crf, args.preset, ffmpeg,
                        keep_every=args.keep_every)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PATCHES video preparation: resized H.264 mp4 copies and list files",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", help="folder tree of videos, or a list file of 'path' / 'path label' lines")
    p.add_argument("dst", help="output folder (the mirrored tree, list.csv, failures.csv, prepare_summary.json)")
    add_encode_args(p)
    p.add_argument("--labels", default="auto", choices=("auto", "folders", "csv", "list", "none"),
                   help="where list.csv's labels come from; auto: the list file's, --label_csv, the class "
                        "folders (when every video is in one), else none")
    p.add_argument("--label_csv", default=None, help="CSV of 'video,label' rows (video: path under SRC or name "
                                                     "without suffix; label: class name or index)")
    p.add_argument("--suffixes", nargs="+", default=list(VIDEO_SUFFIXES), help="which files of a folder are videos")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    config = encode_config(parser, args)
    try:
        summary = prepare(args.src, args.dst, config, args.workers, args.labels, args.label_csv,
                          args.retry_failed, not args.quiet, [s.lower() for s in args.suffixes])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary["unfinished_outputs_removed"]:
        print(f"removed {summary['unfinished_outputs_removed']} unfinished output(s) of an earlier run")
    for path, reason in summary["failures"]:
        print(f"failed: {path}: {reason}")
    if summary["prepared_now"] == 0 and summary["failed"] == summary["known_failures_skipped"]:
        print(f"nothing to do: every input is already prepared or listed in {FAILURES_NAME} "
              f"({'--retry_failed to try those again' if summary['failed'] else 'unchanged'})")
    print(describe(summary))
    print(f"wrote {os.path.join(args.dst, LIST_NAME)}" + (f" and {FAILURES_NAME} ({summary['failed']} failed)"
                                                          if summary["failed"] else ""))
    if args.keep_every > 1:
        print(f"recipe-rate files (source frames 0, {args.keep_every}, {2 * args.keep_every}, ...): read them with "
              f"--sampling_rate R/{args.keep_every} for a recipe's --sampling_rate R")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
