"""scripts/loader_bench.py: the data loader's clips per second on generated videos (against VideoMAE's per-frame
reference), on real-sized sources and their prepared copies, or on the videos of a list file with their
decode-only limit; and the workers' memory over a long run. ``--help`` lists the flags."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
import torch

from patches.errors import PatchesError
from patches.perf.loader_bench import markdown_table, parse_args, real_size_table, run, run_real_size
from patches.perf.loader_files import files_table, leak_check, run_files
from patches.perf.loader_limits import usable_cores


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        report(args)
    except PatchesError as e:
        if e.exit_status == 1:
            raise SystemExit(f"error: {e}") from None
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_status) from None  # a usage error: 2


def report(args: argparse.Namespace) -> None:
    """Measure what ``args`` asks for and print its table."""
    if args.leak_clips:
        result = leak_check(args)
        print(f"Loader ({result['pipeline']}) memory over {result['clips']} clips, {result['workers']} workers, "
              f"num_sample {result['num_sample']}: worker RSS (MB) first {result['rss_mb_first']}, "
              f"last {result['rss_mb_last']}, peak {result['rss_mb_peak']:.0f}; growth {result['growth_mb']:.1f} MB: "
              f"{'LEAK' if result['leak'] else 'no leak'} (limit {args.leak_mb:g} MB)")
        if result["leak"]:
            raise PatchesError(f"the loader's workers grew by {result['growth_mb']:.1f} MB over the run")
        return
    if args.data_path:
        rows = run_files(args)
        print(f"Pre-training loader on {rows[0]['videos']}; batch {args.batch_size}, device {args.device}, "
              f"{usable_cores()} usable cores")
        print(files_table(rows))
        return
    if args.real_size:
        rows = run_real_size(args)
        print(f"Pre-training loader, {args.videos} video(s) of {args.seconds:g} s per codec at 1080p and prepared "
              f"(scripts/prepare_videos.py defaults); batch {args.batch_size}, device {args.device}")
        print(real_size_table(rows))
        return
    rows = run(args)
    print(f"Data loader, {rows[0]['videos']}; {torch.get_num_threads()} torch threads, device {args.device}")
    print(markdown_table(rows))
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
