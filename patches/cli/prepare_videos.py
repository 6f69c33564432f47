"""``patches-prepare-videos`` / ``scripts/prepare_videos.py``: prepare raw videos for training in one command (see
:mod:`patches.data.prepare` for what is written).

    python scripts/prepare_videos.py raw/kinetics400/train k400/train --short_side 320 --workers 16

Exit status: 0 when every input is prepared, 1 when some could not be (listed), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from patches.cli.encode_flags import add_encode_args, encode_config
from patches.data.prepare import FAILURES_NAME, LIST_NAME, VIDEO_SUFFIXES, describe, prepare
from patches.errors import UsageError


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
        print(f"recipe-rate files (source frames 0, {args.keep_every}, {2 * args.keep_every}, ...), tagged with K: "
              f"train with the recipe's own --sampling_rate R (a multiple of {args.keep_every}), which the loaders "
              f"read as R/{args.keep_every} frames apart in these files")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
