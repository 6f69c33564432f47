"""``scripts/prepare_dataset.py``: a dataset as downloaded to the folder the launchers read (prepared mp4 videos,
train.csv, val.csv, test.csv, classes.txt); see :mod:`patches.data.dataset_layouts`.

    python scripts/prepare_dataset.py k400 --src raw/kinetics400 --dst data/k400 --workers 16
    DATASET=k400 DATA_ROOT=data/k400 scripts/launch/torchrun.sh pretrain

Exit status: 0 when every annotated video found is prepared, 1 when some could not be (listed; the lists leave
them out), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from patches.cli.encode_flags import add_encode_args, encode_config
from patches.data.dataset_layouts import DATASETS, MISSING_NAME, prepare_dataset
from patches.data.prepare import FAILURES_NAME, describe
from patches.errors import UsageError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PATCHES dataset preparation: a download to launcher-ready lists and videos",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", choices=DATASETS, help="which dataset's download layout SRC has (DATASET.md)")
    p.add_argument("--src", required=True, help="the dataset as downloaded (only read)")
    p.add_argument("--dst", required=True, help="the launchers' DATA_ROOT: videos, train.csv, val.csv, test.csv, "
                                                "classes.txt")
    p.add_argument("--split", type=int, default=1, help="UCF101 / HMDB51 official split 1, 2 or 3")
    add_encode_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    config = encode_config(parser, args)
    try:
        summary = prepare_dataset(args.dataset, args.src, args.dst, config, args.split, args.workers,
                                  args.retry_failed, not args.quiet)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, reason in summary["failures"]:
        print(f"failed: {path}: {reason}")
    print(describe(summary))
    if summary["missing"]:
        print(f"{summary['missing']} annotated video(s) not found under {args.src}: listed in "
              f"{os.path.join(args.dst, MISSING_NAME)}")
    lists = ", ".join(f"{name} ({n} videos)" for name, n in summary["lists"].items())
    print(f"wrote {lists} and classes.txt ({summary['classes']} classes) in {args.dst}"
          + (f"; {summary['failed']} failed, see {FAILURES_NAME}" if summary["failed"] else ""))
    if args.keep_every > 1:
        print(f"recipe-rate files: train with the recipe's own --sampling_rate (a multiple of {args.keep_every}); "
              f"the loaders read it as that rate / {args.keep_every} in these files")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
