"""The loader bench on the user's own files (``scripts/loader_bench.py --data_path LIST``): the pre-training
loader at each worker count and ``--num_sample``, against the decode-only limit of the same files measured in the
same run; and a long run that checks the workers' resident memory does not grow (``--leak_clips``)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from patches.errors import UsageError
from patches.perf.bench_videos import make_videos
from patches.perf.loader_bench import PIPELINES, build_loader, loader_args, measure_loader
from patches.perf.loader_limits import decode_only_limit, rss_growth, usable_cores, worker_rss_mb


def list_paths(args: argparse.Namespace) -> list[str]:
    """The videos of ``args.data_path`` (a pre-training list file, paths relative to ``args.data_root``)."""
    from patches.data.lists import parse_list_file

    paths = [path for path, _ in parse_list_file(args.data_path, args.data_root)]
    if not paths:
        raise UsageError(f"{args.data_path} lists no videos")
    return paths


def run_files(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--data_path``: the loader on the listed files at every (workers, num_sample), and, measured in the same
    run, their decode-only limit per core at each num_sample (:func:`loader_limits.decode_only_limit`).

    Rows as :func:`measure_loader`'s, plus ``decode_limit_per_core`` (clips per CPU second), ``cores`` (those the
    loader keeps busy: its workers, at most the usable cores), ``share_of_limit`` (clips/s over the limit times
    those cores), ``best_clips_per_cpu_s`` (clips per CPU second of the loader's processes, best run: what a busy
    machine disturbs least), ``cpu_share_of_limit`` (that over the limit), and ``vs_num_sample_1`` and
    ``vs_num_sample_1_cpu`` (clips/s, and clips per CPU second, over the same pipeline's at num_sample 1 and as many
    workers). Configurations take turns ``args.repeats`` times; the best run counts."""
    paths = list_paths(args)
    grid_args, _ = loader_args(args.data_path, 0, 1, args.batch_size, args.extra_args)
    limits = {k: decode_only_limit(paths, grid_args.num_frames, grid_args.sampling_rate, k, args.time)
              for k in args.num_sample}
    best: dict[tuple, dict[str, Any]] = {}
    for _ in range(max(1, args.repeats)):
        for workers in args.workers:
            for num_sample in args.num_sample:
                for pipeline in args.pipelines:
                    row = measure_loader(paths, workers, num_sample, pipeline, args.batch_size, args.time,
                                         device=args.device, extra_args=args.extra_args)
                    key = (workers, num_sample, pipeline)
                    runs = best.get(key, {}).get("runs", []) + [round(row["clips_per_s"], 3)]
                    cpu_runs = best.get(key, {}).get("cpu_runs", []) + [round(row["clips_per_all_cpu_s"] or 0, 3)]
                    if key not in best or row["clips_per_s"] > best[key]["clips_per_s"]:
                        best[key] = row
                    best[key].update(runs=runs, cpu_runs=cpu_runs, best_clips_per_cpu_s=max(cpu_runs))
                    if args.verbose:
                        print(f"  {pipeline} workers {workers} num_sample {num_sample}: "
                              f"{row['clips_per_s']:.2f} clips/s", flush=True)
    rows = [best[key] for key in sorted(best, key=lambda k: (k[0], k[1], PIPELINES.index(k[2])))]
    for row in rows:
        limit = limits[row["num_sample"]]["clips_per_cpu_s"]
        cores = min(max(1, row["workers"]), usable_cores())
        one = best.get((row["workers"], 1, row["pipeline"]))
        row.update(videos=f"{len(paths)} files of {args.data_path}", decode_limit_per_core=limit, cores=cores,
                   share_of_limit=row["clips_per_s"] / (limit * cores),
                   cpu_share_of_limit=(row["best_clips_per_cpu_s"] or float("nan")) / limit,
                   vs_num_sample_1=row["clips_per_s"] / one["clips_per_s"] if one else None,
                   vs_num_sample_1_cpu=row["best_clips_per_cpu_s"] / one["best_clips_per_cpu_s"]
                   if one and one["best_clips_per_cpu_s"] else None)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "decode_only": list(limits.values())}, indent=1) + "\n")
    return rows


def leak_check(args: argparse.Namespace) -> dict[str, Any]:
    """``--leak_clips N``: the loader (``device`` when ``--pipelines`` names it, else ``ours``; the first ``--workers``
    and ``--num_sample``) over N clips of the listed (or generated) videos, each worker's resident memory sampled
    after every batch. ``growth_mb`` is :func:`loader_limits.rss_growth`; ``leak`` is True when it exceeds
    ``args.leak_mb``."""
    paths = list_paths(args) if args.data_path else make_videos(args.video_dir, args.videos, args.short_side,
                                                                  args.seconds, args.fps)
    workers, num_sample = args.workers[0], args.num_sample[0]
    per_batch = args.batch_size * num_sample
    batches = -(-args.leak_clips // per_batch)
    with tempfile.TemporaryDirectory() as tmp:
        list_file = os.path.join(tmp, "list.csv")
        Path(list_file).write_text("".join(f"{os.path.abspath(paths[i % len(paths)])}\n"
                                           for i in range(args.batch_size * (batches + 1))))
        loader_flags, grid = loader_args(list_file, workers, num_sample, args.batch_size, args.extra_args)
        pipeline = "device" if "device" in args.pipelines else "ours"
        loader = build_loader(pipeline, loader_flags, grid, torch.device(args.device))
        samples, start = [], time.perf_counter()
        for i, _ in zip(range(batches), loader):
            samples.append([round(mb, 1) for mb in worker_rss_mb()] if workers else [_own_rss_mb()])
        elapsed = time.perf_counter() - start
        del loader
    growth = rss_growth(samples)
    result = {"pipeline": pipeline, "workers": workers, "num_sample": num_sample, "clips": len(samples) * per_batch,
              "clips_per_s": len(samples) * per_batch / elapsed, "rss_mb_first": samples[0],
              "rss_mb_last": samples[-1], "rss_mb_peak": max(max(s) for s in samples if s), "growth_mb": growth,
              "leak": growth > args.leak_mb, "rss_mb_samples": samples}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _own_rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def files_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`run_files` as a markdown table."""
    lines = ["| pipeline | workers | num_sample | clips/s | x num_sample 1 | clips per CPU s | x num_sample 1 (CPU s) "
             "| decode-only limit (clips per core-s) | cores | share of limit x cores | clips per CPU s / limit "
             "| worker RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = f"{r['vs_num_sample_1']:.2f}x" if r.get("vs_num_sample_1") else ""
        cpu_ratio = f"{r['vs_num_sample_1_cpu']:.2f}x" if r.get("vs_num_sample_1_cpu") else ""
        rss = ", ".join(f"{mb:.0f}" for mb in r["worker_rss_mb"])
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['num_sample']} | {r['clips_per_s']:.2f} | {ratio} "
                     f"| {r['best_clips_per_cpu_s']:.2f} | {cpu_ratio} "
                     f"| {r['decode_limit_per_core']:.2f} | {r['cores']} | {100 * r['share_of_limit']:.0f}% "
                     f"| {100 * r['cpu_share_of_limit']:.0f}% | {rss} |")
    return "\n".join(lines)
