"""Prepare raw videos for training in one command: a mirrored tree of small H.264 mp4 files, and list files.

    python scripts/prepare_videos.py raw/kinetics400/train k400/train --short_side 320 --workers 16

SRC is a folder tree of videos (any container PyAV opens: mp4, webm, mkv, avi, ...) or a list file of
``path`` / ``path label`` lines. DST receives, for every input ``SRC/a/b.webm``, ``DST/a/b.mp4``:

* H.264 (libx264, yuv420p), the short side scaled down to ``--short_side`` (or the long side capped by
  ``--max_side``; never scaled up), frame rate capped by ``--max_fps``, a keyframe every ``--gop`` frames
  exactly (a clip's seek then decodes at most ``gop - 1`` frames it does not use), no audio; the display
  rotation of phone videos is applied, so portrait videos come out portrait;
* ``list.csv``: ``path label`` lines (paths relative to DST; labels from the list file, from ``--label_csv``,
  or from the first folder level, numbered in sorted order and named in ``classes.txt``), or ``path`` lines;
* with ``--keep_every K``, recipe-rate files: only source frames 0, K, 2K, ... at 1/K of the source's frame
  rate, each at its source timestamp, tagged with K (:mod:`patches.data.recipe_rate`). The loaders read them
  with the recipe's own ``--sampling_rate R`` as R/K frames apart: the same moments in time, a clip decodes
  about 1/K of the frames, and a clip's start moves in steps of K source frames (temporal jitter at a coarser
  step);
* ``failures.csv``: every input that could not be prepared, with the reason (one bad file never stops the batch);
* ``prepare_summary.json``: files, hours of video, bytes in and out, time, throughput.

Outputs are written to a temporary file, checked (it opens and its last frame decodes), then renamed: a
rerun skips outputs that exist and decode, and inputs that failed before and have not changed since
(``--retry_failed`` tries them again), removes the temporary files a killed run left, and does the rest.
The source is only read. PyAV does the work; ``--ffmpeg`` uses the ffmpeg on PATH instead.

The command line is :mod:`patches.cli.prepare_videos`; :func:`prepare` raises :class:`UsageError` for bad input.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from patches.data.encoding import EncodeConfig, probe_prepared, transcode_ffmpeg, transcode_pyav
from patches.errors import UsageError
from patches.utils.distributed import process_alive

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ogv", ".3gp", ".wmv")
LIST_NAME, CLASSES_NAME, FAILURES_NAME, SUMMARY_NAME = "list.csv", "classes.txt", "failures.csv", "prepare_summary.json"
# what a writer leaves while it works: ".{name}.{pid}.prep.tmp"
_TEMP = re.compile(r"^\..+\.(\d+)\.prep\.tmp$")


@dataclass(frozen=True)
class Job:
    """One input video, its output and its label."""

    src: str
    dst: str
    label: int | None


def _temp_path(dst: str) -> str:
    head, name = os.path.split(dst)
    return os.path.join(head, f".{name}.{os.getpid()}.prep.tmp")


def prepare_one(job: Job, config: EncodeConfig) -> dict[str, Any]:
    """Prepare one video; never raises. The result's ``status`` is ``done``, ``skipped`` (a good output
    exists) or ``failed`` (with ``reason``)."""
    result: dict[str, Any] = {"src": job.src, "dst": job.dst, "label": job.label, "bytes_in": 0, "bytes_out": 0}
    start = time.perf_counter()
    if os.path.isfile(job.dst):
        try:
            frames, seconds = probe_prepared(job.dst)
            return {**result, "status": "skipped", "frames": frames, "seconds": seconds,
                    "bytes_out": os.path.getsize(job.dst), "time": 0.0}
        except Exception:  # noqa: BLE001  (a bad output is made again)
            pass
    tmp = _temp_path(job.dst)
    try:
        if not os.path.isfile(job.src):
            raise ValueError("file not found")
        if os.path.getsize(job.src) == 0:
            raise ValueError("empty file (0 bytes)")
        os.makedirs(os.path.dirname(job.dst) or ".", exist_ok=True)
        transcode = transcode_ffmpeg if config.ffmpeg else transcode_pyav
        written, _ = transcode(job.src, tmp, config)
        frames, seconds = probe_prepared(tmp)
        if frames != written and not config.ffmpeg:
            raise ValueError(f"wrote {written} frames but the output holds {frames}")
        os.replace(tmp, job.dst)
        return {**result, "status": "done", "frames": frames, "seconds": seconds, "time": time.perf_counter() - start,
                "bytes_in": os.path.getsize(job.src), "bytes_out": os.path.getsize(job.dst)}
    except Exception as e:  # noqa: BLE001  (one bad file never stops the batch)
        reason = _reason(e)
        return {**result, "status": "failed", "reason": reason, "time": time.perf_counter() - start}
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _reason(error: Exception) -> str:
    """One line: FFmpeg's own words for PyAV's errors (without errno and path), else the message."""
    strerror = getattr(error, "strerror", None)
    if strerror and type(error).__module__.startswith("av"):
        return f"cannot be read as a video ({strerror})"
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _prepare_star(args: tuple[Job, EncodeConfig]) -> dict[str, Any]:
    return prepare_one(*args)


# ---- the batch ------------------------------------------------------------------------------------------

def find_inputs(src: str, suffixes: Sequence[str] = VIDEO_SUFFIXES) -> tuple[str, list[tuple[str, int | None]]]:
    """The root the tree is mirrored from, and ``[(video path, label or None)]``: every file under the folder
    ``src`` whose suffix is in ``suffixes``, sorted, or the entries of the list file ``src``."""
    if os.path.isdir(src):
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(src) for f in files
                       if f.lower().endswith(tuple(suffixes)) and not f.startswith("."))
        return os.path.abspath(src), [(os.path.abspath(p), None) for p in found]
    if not os.path.isfile(src):
        raise UsageError(f"SRC {src}: no such folder or list file")
    from patches.data.lists import parse_list_file

    try:
        entries = [(os.path.abspath(p), label) for p, label in parse_list_file(src)]
    except ValueError as e:
        raise UsageError(str(e)) from None
    base = os.path.dirname(os.path.abspath(src))
    inside = all(os.path.commonpath([base, p]) == base for p, _ in entries)
    return (base if inside else os.path.commonpath([os.path.dirname(p) for p, _ in entries])), entries


def read_label_csv(path: str) -> dict[str, str]:
    """``video -> label`` from a CSV of ``video,label`` rows (a header row is skipped when its label is
    ``label``); ``video`` is a path relative to SRC or a file name without suffix."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    except OSError as e:
        raise UsageError(f"--label_csv {path}: {e.strerror}") from None
    if rows and rows[0][-1].strip().lower() == "label":
        rows = rows[1:]
    bad = [i for i, r in enumerate(rows, 1) if len(r) < 2]
    if bad or not rows:
        raise UsageError(f"--label_csv {path}: expected 'video,label' rows" + (f" (row {bad[0]})" if bad else ""))
    return {r[0].strip(): r[-1].strip() for r in rows}


def assign_labels(root: str, entries: list[tuple[str, int | None]], label_csv: str | None,
                  labels: str) -> tuple[list[int | None], list[str] | None]:
    """Each entry's label and, when labels are names, the class names in index order.

    ``labels``: ``auto`` (the list file's labels, else ``--label_csv``, else the first folder level when
    every video is inside one), ``folders``, ``csv``, ``list`` or ``none``."""
    if labels == "auto":
        labels = ("csv" if label_csv else "list" if all(lb is not None for _, lb in entries)
                  else "folders" if all(os.sep in os.path.relpath(p, root) for p, _ in entries) else "none")
    if labels == "none":
        return [None] * len(entries), None
    if labels == "list":
        if any(lb is None for _, lb in entries):
            raise UsageError("--labels list: some lines of the list file have no label")
        return [lb for _, lb in entries], None
    if labels == "folders":
        names = [os.path.relpath(p, root).split(os.sep)[0] for p, _ in entries]
        if any(os.sep not in os.path.relpath(p, root) for p, _ in entries):
            raise UsageError("--labels folders: some videos are not inside a class folder of SRC")
    elif labels == "csv":
        if not label_csv:
            raise UsageError("--labels csv needs --label_csv")
        table = read_label_csv(label_csv)
        names = []
        for p, _ in entries:
            rel = Path(os.path.relpath(p, root)).as_posix()
            name = table.get(rel, table.get(Path(p).stem))
            if name is None:
                raise UsageError(f"--label_csv {label_csv}: no label for {rel}")
            names.append(name)
    else:
        raise UsageError(f"--labels must be auto, folders, csv, list or none, got {labels!r}")
    if all(re.fullmatch(r"[0-9]+", n) for n in names):
        return [int(n) for n in names], None
    classes = sorted(set(names))
    index = {n: i for i, n in enumerate(classes)}
    return [index[n] for n in names], classes


def plan_jobs(root: str, entries: list[tuple[str, int | None]], labels: list[int | None], dst: str) -> list[Job]:
    """One job per input: ``DST/<path relative to root>.mp4``; two inputs with the same output are a usage error."""
    jobs, seen = [], {}
    for (path, _), label in zip(entries, labels):
        out = os.path.join(os.path.abspath(dst), str(Path(os.path.relpath(path, root)).with_suffix(".mp4")))
        if out in seen:
            raise UsageError(f"{seen[out]} and {path} would both be written to {out}")
        seen[out] = path
        jobs.append(Job(path, out, label))
    return jobs


def remove_stale_temp_files(dst: str) -> int:
    """Remove the temporary outputs of writers that are gone (a killed run); returns how many."""
    removed = 0
    for folder, _, files in os.walk(dst):
        for name in files:
            match = _TEMP.match(name)
            if match and not process_alive(int(match.group(1))):
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = _temp_path(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _known_failures(dst: str) -> dict[str, tuple[str, int, int]]:
    """``src -> (reason, size, mtime_ns)`` from a previous run's failures.csv."""
    path = os.path.join(dst, FAILURES_NAME)
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {r["path"]: (r["reason"], int(r["size"]), int(r["mtime_ns"])) for r in csv.DictReader(f)}


def _unchanged(src: str, size: int, mtime_ns: int) -> bool:
    try:
        info = os.stat(src)
    except OSError:
        return size == -1
    return (info.st_size, info.st_mtime_ns) == (size, mtime_ns)


def run_jobs(jobs: list[Job], config: EncodeConfig, workers: int, progress: bool = True) -> list[dict[str, Any]]:
    """Every job's result, in job order; ``workers`` processes, with a progress bar and ETA."""
    from tqdm import tqdm

    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), unit="video", disable=not progress, file=sys.stderr, smoothing=0.1)
    if workers <= 1:
        stream: Any = map(_prepare_star, ((j, config) for j in jobs))
        pool = None
    else:
        import multiprocessing
        pool = multiprocessing.get_context("spawn").Pool(workers)
        stream = pool.imap_unordered(_prepare_star, [(j, config) for j in jobs])
    try:
        for result in stream:
            results.append(result)
            bar.update(1)
            bar.set_postfix(failed=sum(r["status"] == "failed" for r in results), refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    order = {j.dst: i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[r["dst"]])


def write_outputs(dst: str, results: list[dict[str, Any]], classes: list[str] | None,
                  failures: list[tuple[str, str, int, int]]) -> None:
    """``list.csv`` (and ``classes.txt``) of the prepared videos, and ``failures.csv`` (removed when none)."""
    lines = []
    for r in results:
        if r["status"] in ("done", "skipped"):
            rel = Path(os.path.relpath(r["dst"], dst)).as_posix()
            lines.append(rel if r["label"] is None else f"{rel} {r['label']}")
    write_atomically(os.path.join(dst, LIST_NAME), "".join(f"{line}\n" for line in lines))
    if classes is not None:
        write_atomically(os.path.join(dst, CLASSES_NAME), "".join(f"{i} {n}\n" for i, n in enumerate(classes)))
    write_report_csv(os.path.join(dst, FAILURES_NAME), ["path", "reason", "size", "mtime_ns"], failures)


def write_report_csv(path: str, header: list[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV report of ``rows`` under ``header``, written atomically; none left behind when there are no rows."""
    if not rows:
        if os.path.exists(path):
            os.remove(path)
        return
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomically(path, text.getvalue())


def summarize(results: list[dict[str, Any]], known: int, workers: int, elapsed: float) -> dict[str, Any]:
    """Counts, hours of video, bytes in and out, time, and the throughput of what was encoded now."""
    done = [r for r in results if r["status"] == "done"]
    good = [r for r in results if r["status"] in ("done", "skipped")]
    encoded_s = sum(r["seconds"] for r in done)
    return {"inputs": len(results) + known, "prepared_now": len(done),
            "already_prepared": sum(r["status"] == "skipped" for r in results),
            "failed": sum(r["status"] == "failed" for r in results) + known, "known_failures_skipped": known,
            "hours_of_video": sum(r["seconds"] for r in good) / 3600, "encoded_video_seconds": encoded_s,
            "bytes_in": sum(r["bytes_in"] for r in done), "bytes_out": sum(r["bytes_out"] for r in done),
            "seconds": elapsed, "workers": workers,
            "video_seconds_per_second_per_worker": encoded_s / elapsed / max(1, workers) if done else None}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def describe(summary: dict[str, Any]) -> str:
    s = summary
    text = (f"{s['inputs']} videos: {s['prepared_now']} prepared now, {s['already_prepared']} already prepared, "
            f"{s['failed']} failed; {s['hours_of_video']:.3f} h of video; in {_size(s['bytes_in'])} -> out "
            f"{_size(s['bytes_out'])}; {s['seconds']:.1f} s with {s['workers']} worker(s)")
    if s["video_seconds_per_second_per_worker"]:
        text += f" ({s['video_seconds_per_second_per_worker']:.2f} video-s per s per worker)"
    return text


def prepare(src: str, dst: str, config: EncodeConfig, workers: int = 1, labels: str = "auto",
            label_csv: str | None = None, retry_failed: bool = False, progress: bool = True,
            suffixes: Sequence[str] = VIDEO_SUFFIXES, mirror_root: str | None = None) -> dict[str, Any]:
    """Prepare every video of ``src`` into ``dst`` (see the module docstring); returns the summary, whose
    ``failures`` lists ``(path, reason)``. ``mirror_root``: the folder whose tree ``dst`` mirrors, for a list file
    ``src`` (default: the list's folder, else the videos' common folder). Raises :class:`UsageError` before any
    work for bad input."""
    start = time.perf_counter()
    if os.path.abspath(dst) == os.path.abspath(src) or (os.path.isdir(src) and os.path.commonpath(
            [os.path.abspath(src), os.path.abspath(dst)]) == os.path.abspath(src)):
        raise UsageError(f"DST {dst} must not be SRC {src} or inside it (the source is never touched)")
    root, entries = find_inputs(src, suffixes)
    root = os.path.abspath(mirror_root) if mirror_root is not None else root
    if not entries:
        raise UsageError(f"SRC {src}: no videos found (suffixes {' '.join(suffixes)})")
    label_of, classes = assign_labels(root, entries, label_csv, labels)
    jobs = plan_jobs(root, entries, label_of, dst)
    os.makedirs(dst, exist_ok=True)
    stale = remove_stale_temp_files(dst)
    old = {} if retry_failed else _known_failures(dst)
    skip = {j.src for j in jobs if j.src in old and _unchanged(j.src, *old[j.src][1:])}
    results = run_jobs([j for j in jobs if j.src not in skip], config, workers, progress)
    failures = [(s, *old[s]) for s in sorted(skip)]
    for r in results:
        if r["status"] == "failed":
            try:
                info = os.stat(r["src"])
                failures.append((r["src"], r["reason"], info.st_size, info.st_mtime_ns))
            except OSError:
                failures.append((r["src"], r["reason"], -1, -1))
    write_outputs(dst, results, classes, sorted(failures))
    summary = summarize(results, len(skip), workers, time.perf_counter() - start)
    summary["unfinished_outputs_removed"] = stale
    summary["config"] = asdict(config)
    summary["failures"] = [(p, reason) for p, reason, *_ in sorted(failures)]
    write_atomically(os.path.join(dst, SUMMARY_NAME), json.dumps(summary, indent=1) + "\n")
    return summary
