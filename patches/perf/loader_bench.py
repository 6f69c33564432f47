"""Data-loader throughput: our pre-training loader against a VideoMAE-style reference pipeline.

Both pipelines read the same generated H.264 mp4 files (:func:`make_videos`: 320 px short side,
10 s at 25 fps by default) through the same DataLoader settings (sampler, collate, worker count,
pinned memory on cuda only); clips/s counts ``num_sample`` clips per decoded video.

* ``ours``: exactly the loader pre-training builds (``data_loaders.pretraining_loader``, at the
  pre-training flags' defaults: 16 frames, sampling rate 4, 224 px, patch 16, tube mask, here ratio 0.9).
  It decodes only the frames a clip needs, once per video for its ``num_sample`` clips, and
  crops and resizes uint8 tensors (see datasets.py and video_transforms.py).
* ``baseline``: mirrors VideoMAE's reference loader: decord reads every frame of the clip's span
  (16 x 4 = 64 consecutive frames), the clip's 16 frames become PIL images, each gets
  GroupMultiScaleCrop's crop and a bilinear resize to 224, then Stack, ToTorchFormatTensor and
  GroupNormalize; ``num_sample`` clips are ``num_sample`` augmentations of one decode (VideoMAE V2).

    python scripts/loader_bench.py --workers 0 1 2 --num_sample 1 2 --videos 8 --json loader.json

API (for scripts/benchmark.py): :func:`make_videos`, :func:`measure_loader`, :func:`run`
(``run(parse_args([...]))`` or any namespace with the same fields) and :func:`markdown_table`. The command line
is :mod:`patches.perf.loader_bench_cli`; ``--data_path`` (the user's files against their decode-only limit) and
``--leak_clips`` (workers' memory over a long run) are in :mod:`patches.perf.loader_files`.

Figures depend on the machine being otherwise idle: on a busy one use ``--repeats 3`` (pipelines take
turns, the best run counts) and read the 0-worker column "clips per CPU s", which other processes'
load changes less. Worker counts above the free cores measure the scheduler, not the loader. The
mp4 files are cached in ``--video_dir`` (data/loader_bench), 8 of them take about a minute to make.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[2]  # the checkout (the package is installed editable from it)

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
import torch

from patches.errors import PatchesError, UsageError
from patches.perf.bench_videos import CODECS, make_videos, video_size
from patches.perf.loader_limits import children_cpu_s, worker_rss_mb
from patches.perf.reference_loader import ReferencePretrainDataset

PIPELINES = ("baseline", "ours", "device")


# ---- measuring -------------------------------------------------------------------------------------

def loader_args(list_file: str, num_workers: int, num_sample: int, batch_size: int,
                extra_args: Sequence[str] = ()) -> tuple[argparse.Namespace, Any]:
    """The pre-training loader's flags, at run_mae_pretraining's defaults but tube masks of ratio 0.9, and the
    patch grid. ``extra_args`` are more of its grid, data and masking flags, e.g. ``["--num_frames", "8"]``."""
    from patches.config import flags as cli_args
    from patches.data.masking import MASK_TYPES
    from patches.grid import GridError, grid_from_args

    p = argparse.ArgumentParser("PATCHES data-loader benchmark: the pre-training loader's flags")
    p.add_argument("--batch_size", default=64, type=int)
    cli_args.add_grid_args(p, "pretrain_videomae_base_patch16_224")
    cli_args.add_data_args(p, "list file of 'path' or 'path label' lines", num_sample=1)
    cli_args.add_run_args(p, "output/pretrain")
    p.add_argument("--mask_type", default="tube", choices=MASK_TYPES)
    p.add_argument("--mask_ratio", default=0.9, type=float)
    p.add_argument("--flip", action="store_true", help="horizontal flip, off as in pre-training's default")
    argv = ["--data_path", list_file, "--num_workers", str(num_workers), "--num_sample", str(num_sample),
            "--batch_size", str(batch_size), *extra_args]
    args = p.parse_args(argv)
    try:
        grid = grid_from_args(args)
    except GridError as e:
        raise UsageError(str(e)) from None
    return args, grid


def build_loader(pipeline: str, args: argparse.Namespace, grid: Any, device: torch.device):
    """The DataLoader of ``pipeline``: ``ours`` is ``data_loaders.pretraining_loader`` itself, as pre-training
    builds it for ``device``; ``device`` the same as a CUDA run builds it (workers hand over YUV crop planes, the
    step's device does the rest), whatever ``device`` is; ``baseline`` the same DataLoader
    (``data_loaders.train_loader``, same collate, workers, pinning) over :class:`ReferencePretrainDataset`."""
    from patches.config import library_configs as cli_args
    from patches.data import loaders as data_loaders
    from patches.data.masking import build_mask_generator

    if pipeline in ("ours", "device"):
        return data_loaders.pretraining_loader(cli_args.pretraining_data_config(args), cli_args.loader_config(args),
                                               grid, build_mask_generator(args, grid), device,
                                               crops_to_device=True if pipeline == "device" else None)[1]
    if pipeline != "baseline":
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    from patches.data.datasets import CollateWithBad, collate_fn_for
    from patches.data.health import BadVideoTracker
    from patches.data.lists import parse_list_file

    paths = [p for p, _ in parse_list_file(args.data_path, args.data_root)]
    dataset = ReferencePretrainDataset(paths, grid, args.sampling_rate, build_mask_generator(args, grid),
                                       args.num_sample)
    loader = data_loaders.train_loader(dataset, cli_args.loader_config(args),
                                       CollateWithBad(collate_fn_for(args.num_sample)), device, persistent_workers=True)
    return BadVideoTracker(loader, len(dataset), args.max_bad_fraction, args.data_path)


def measure_loader(paths: Sequence[str], num_workers: int, num_sample: int = 1, pipeline: str = "ours",
                   batch_size: int = 4, seconds: float = 5.0, min_batches: int = 3, warmup_batches: int | None = None,
                   device: str = "cpu", extra_args: Sequence[str] = (), workdir: str | os.PathLike | None = None
                   ) -> dict[str, Any]:
    """Clips per second delivered by ``pipeline`` (``"ours"`` or ``"baseline"``) over ``paths``.

    A list file repeating ``paths`` feeds the loader of :func:`build_loader`, ``batch_size`` videos per batch
    (``num_sample`` clips each). After ``warmup_batches`` (default 2 per worker, at least 2) it times batches
    until ``seconds`` have passed and at least ``min_batches`` came. The row: ``pipeline``, ``workers``,
    ``num_sample``, ``clips_per_s``, ``clips_per_s_per_worker`` (0 workers count as one), ``clips_per_cpu_s``
    (at 0 workers: per CPU second of this process, which other load changes less), ``clips_per_all_cpu_s``
    (per CPU second of this process and its workers), ``worker_rss_mb`` (each worker's, at the end), ``batches``,
    ``clips``, ``seconds``, ``batch_shape`` and ``dtype`` of the last batch's videos, ``device``."""
    dev = torch.device(device)
    warmup = warmup_batches if warmup_batches is not None else 2 * max(1, num_workers)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        # enough lines that the run rarely ends the epoch: at 2 ms a clip more than `seconds` takes
        lines = batch_size * (warmup + min_batches + 2 * num_workers + 2) + int(seconds * 500)
        list_file = os.path.join(tmp, "list.csv")
        with open(list_file, "w") as f:
            f.writelines(f"{os.path.abspath(paths[i % len(paths)])}\n" for i in range(lines))
        args, grid = loader_args(list_file, num_workers, num_sample, batch_size, extra_args)
        loader = build_loader(pipeline, args, grid, dev)
        it = iter(loader)
        try:
            for _ in range(warmup):
                next(it)
            batches, start, cpu_start = 0, time.perf_counter(), time.process_time()
            workers_cpu_start = children_cpu_s()
            for batch in it:  # a fast loader may reach the end of the list before `seconds`: time what came
                videos = batch[0]
                batches += 1
                if time.perf_counter() - start >= seconds and batches >= min_batches:
                    break
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            cpu_all = cpu + children_cpu_s() - workers_cpu_start
            if batches == 0:
                raise RuntimeError(f"the loader gave no batch after its {warmup} warm-up batches")
            rss = [round(mb, 1) for mb in worker_rss_mb()]
        finally:
            del it, loader  # stops the workers
    clips = batches * batch_size * num_sample
    return {"pipeline": pipeline, "workers": num_workers, "num_sample": num_sample,
            "clips_per_s": clips / elapsed, "clips_per_s_per_worker": clips / elapsed / max(1, num_workers),
            # at 0 workers all the work is this process's: clips per CPU second ignores other processes' load
            "clips_per_cpu_s": clips / cpu if num_workers == 0 and cpu > 0 else None,
            # with workers: clips per CPU second of the workers and this process together
            "clips_per_all_cpu_s": clips / cpu_all if cpu_all > 0 else None,
            "batches": batches, "clips": clips, "seconds": elapsed, "batch_shape": list(videos.shape),
            "dtype": str(videos.dtype).replace("torch.", ""), "device": device, "worker_rss_mb": rss}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (workers, num_sample, pipeline) of ``args`` (see :func:`parse_args`): one row each, as
    :func:`measure_loader` returns, plus ``videos`` (what was read), ``runs`` (clips/s of each of the
    ``args.repeats`` runs, pipelines taking turns) with the best run's figures, and on ``ours`` rows
    ``speedup`` (its clips/s over the baseline's at the same workers and num_sample). Writes ``args.json``
    when set. The best run is the least disturbed by other load on the machine."""
    paths = make_videos(args.video_dir, args.videos, args.short_side, args.seconds, args.fps)
    h, w = video_size(args.short_side, 16 / 9)
    described = f"{len(paths)} x {w}x{h}, {args.seconds:g} s at {args.fps} fps, H.264 GOP 250"
    rows = []
    for workers in args.workers:
        for num_sample in args.num_sample:
            pair: dict[str, dict[str, Any]] = {}
            for _ in range(max(1, getattr(args, "repeats", 1))):
                for pipeline in args.pipelines:
                    row = measure_loader(paths, workers, num_sample, pipeline, args.batch_size, args.time,
                                         device=args.device, extra_args=args.extra_args)
                    if getattr(args, "verbose", False):
                        print(f"  {pipeline:8s} workers {workers} num_sample {num_sample}: "
                              f"{row['clips_per_s']:.2f} clips/s", flush=True)
                    runs = pair.get(pipeline, {}).get("runs", []) + [round(row["clips_per_s"], 3)]
                    if pipeline not in pair or row["clips_per_s"] > pair[pipeline]["clips_per_s"]:
                        pair[pipeline] = row
                    pair[pipeline]["runs"] = runs
            for pipeline in args.pipelines:
                pair[pipeline]["videos"] = described
                rows.append(pair[pipeline])
            if "ours" in pair and "baseline" in pair:
                pair["ours"]["speedup"] = pair["ours"]["clips_per_s"] / pair["baseline"]["clips_per_s"]
                if pair["ours"]["clips_per_cpu_s"] and pair["baseline"]["clips_per_cpu_s"]:
                    pair["ours"]["speedup_cpu"] = pair["ours"]["clips_per_cpu_s"] / pair["baseline"]["clips_per_cpu_s"]
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def run_real_size(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The pre-training loader (``ours``) on real-sized sources and on their prepared copies.

    For each of ``args.codecs``: ``args.videos`` generated 1080p sources of ``args.seconds`` s (H.264 as
    :data:`X264_OPTIONS`, VP9 as :data:`VP9_OPTIONS`), prepared afresh by ``scripts/prepare_videos.py`` at its
    defaults with one worker (its throughput: ``prep_video_s_per_s_per_worker``), then clips/s of the loader
    at each of ``args.workers`` on both. Rows carry ``source``, ``speedup`` (prepared over source) and the
    fields of :func:`measure_loader`; ``args.json`` gets them."""
    import shutil

    from patches.data.encoding import EncodeConfig
    from patches.data.prepare import prepare

    rows = []
    for codec in args.codecs:
        paths = make_videos(Path(args.video_dir) / "real_size", args.videos, 1080, args.seconds, args.fps, codec=codec)
        prepared_dir = Path(args.video_dir) / "real_size" / f"prepared_{codec}"
        shutil.rmtree(prepared_dir, ignore_errors=True)
        list_file = Path(args.video_dir) / "real_size" / f"{codec}.csv"
        list_file.write_text("".join(f"{os.path.abspath(p)}\n" for p in paths))
        summary = prepare(str(list_file), str(prepared_dir), EncodeConfig(), workers=1, labels="none", progress=False)
        if summary["failed"]:
            raise PatchesError(f"preparing the {codec} sources failed: {summary['failures']}")
        prepared = sorted(str(p) for p in prepared_dir.rglob("*.mp4"))
        for workers in args.workers:
            pair = {}
            for source, files in ((f"1080p {codec.upper()}", paths), (f"prepared from {codec.upper()}", prepared)):
                row = measure_loader(files, workers, 1, "ours", args.batch_size, args.time, device=args.device,
                                     extra_args=args.extra_args)
                row.update(source=source, prep_video_s_per_s_per_worker=summary["video_seconds_per_second_per_worker"],
                           prep_bytes=(summary["bytes_in"], summary["bytes_out"]))
                if getattr(args, "verbose", False):
                    print(f"  {source:20s} workers {workers}: {row['clips_per_s']:.2f} clips/s", flush=True)
                pair[source.split()[0]] = row
                rows.append(row)
            pair["prepared"]["speedup"] = pair["prepared"]["clips_per_s"] / pair["1080p"]["clips_per_s"]
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def real_size_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`run_real_size` as a markdown table."""
    lines = ["| videos | workers | clips/s | clips/s per worker | speed-up | preparation (video-s/s per worker) "
             "| MB in -> out |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        prep = r["source"].startswith("prepared")
        extra = ["", "", ""]
        if prep:
            extra = [f"{r['speedup']:.1f}x", f"{r['prep_video_s_per_s_per_worker']:.2f}",
                     "{:.1f} -> {:.1f}".format(*(b / 1e6 for b in r["prep_bytes"]))]
        lines.append(f"| {r['source']} | {r['workers']} | {r['clips_per_s']:.2f} | {r['clips_per_s_per_worker']:.2f} "
                     f"| {' | '.join(extra)} |")
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`run` as a markdown table."""
    lines = ["| pipeline | workers | num_sample | clips/s | clips/s per worker | speed-up over baseline "
             "| clips per CPU s (0 workers) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        cpu = f"{r['clips_per_cpu_s']:.2f}" if r.get("clips_per_cpu_s") else ""
        if r.get("speedup_cpu"):
            cpu += f" ({r['speedup_cpu']:.2f}x)"
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['num_sample']} | {r['clips_per_s']:.2f} | "
                     f"{r['clips_per_s_per_worker']:.2f} | {speedup} | {cpu} |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PATCHES data-loader benchmark", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    p.add_argument("--num_sample", type=int, nargs="+", default=[1, 2], help="clips per decoded video")
    p.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=["baseline", "ours"],
                   help="device: the loader as a CUDA run builds it (YUV crops; conversion and resize left to the "
                        "step's device, not timed here)")
    p.add_argument("--videos", type=int, default=8, help="distinct mp4 files to generate (cached)")
    p.add_argument("--video_dir", default=str(ROOT / "data" / "loader_bench"), help="where the mp4 files are kept")
    p.add_argument("--short_side", type=int, default=320)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--batch_size", type=int, default=4, help="videos per batch")
    p.add_argument("--time", type=float, default=5.0, help="seconds timed per run (after warm-up)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per configuration, pipelines taking turns; the best run counts (for a busy machine)")
    p.add_argument("--device", default="cpu", help="cuda pins memory, as training does")
    p.add_argument("--extra_args", nargs=argparse.REMAINDER, default=[],
                   help="more pre-training grid, data or masking flags for the loader (last on the line), "
                        "e.g. --num_frames 8")
    p.add_argument("--real_size", action="store_true",
                   help="instead: 1080p sources (--codecs) against their prepare_videos.py copies (ours only)")
    p.add_argument("--codecs", nargs="+", choices=tuple(CODECS), default=list(CODECS),
                   help="--real_size: the sources' codecs")
    p.add_argument("--data_path", default=None,
                   help="instead of generated videos: the videos of this pre-training list file, with their "
                        "decode-only limit measured in the same run")
    p.add_argument("--data_root", default=None, help="--data_path's paths are relative to this folder")
    p.add_argument("--leak_clips", type=int, default=0,
                   help="instead: run the loader (first --workers, --num_sample) over this many clips and check "
                        "that its workers' resident memory does not grow")
    p.add_argument("--leak_mb", type=float, default=64.0, help="--leak_clips: growth (MB) counted as a leak")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--verbose", action="store_true", help="print each figure as it comes")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's arguments (``argv`` as a list, e.g. ``[]`` for the defaults), for :func:`run`."""
    return get_args_parser().parse_args(argv)
