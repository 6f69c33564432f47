"""Broken videos: counted and reported during a run (``--max_bad_fraction``), or all found up front (``--check_data``).

During training a dataset with ``report_bad`` set replaces each unreadable video by another one and
hands the skipped ``(path, reason)`` pairs along with the item; :class:`patches.data.unreadable.CollateWithBad`
carries them through the DataLoader's worker processes, and :class:`BadVideoTracker` (in the main
process) warns once per file, counts the skips of each epoch and stops the run when too many files
are broken. ``--check_data`` instead opens every listed video, reads its first and last frames and
reports every bad entry (and every bad list line) without building a model.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from patches.data.datasets import PretrainingDataConfig
from patches.data.lists import VideoListsConfig, numbered_pretraining_entries, read_records
from patches.data.video_reader import FrameFolder, VideoDecodeError, VideoFile
from patches.errors import PatchesError
from patches.utils.distributed import get_rank, get_world_size, is_dist, is_main_process

MAX_LISTED = 100  # bad paths written into one log.txt record
EXAMPLES = 5  # bad paths quoted in an error message


class TooManyBadVideos(PatchesError, RuntimeError):
    """More of the videos than ``--max_bad_fraction`` allows cannot be read."""


class DataCheckFailed(PatchesError):
    """``--check_data`` found unreadable videos or bad list lines (each printed above the error)."""


class BadVideoTracker:
    """Wraps a DataLoader whose batches are ``(batch, bad)`` (see :class:`patches.data.unreadable.CollateWithBad`).

    Iterating yields the plain batches; every skipped file is warned about the first time this
    process sees it, counted, and checked against ``max_bad_fraction`` of ``num_videos``: more
    distinct unreadable files than that raises :class:`TooManyBadVideos` at once. Other attributes
    (``sampler``, ``dataset``, ...) are the loader's.
    """

    def __init__(self, loader: Any, num_videos: int, max_bad_fraction: float, source: str,
                 sharded: bool = True, fate: str = "replaced by another video") -> None:
        # ``fate``: what becomes of an unreadable video's items, for the warning (evaluation: "left out ...")
        self.loader, self.num_videos, self.max_bad_fraction, self.source = loader, num_videos, max_bad_fraction, source
        self.sharded = sharded  # each process reads its own share (else every process reads everything)
        self.fate = fate
        self.seen: dict[str, str] = {}  # every unreadable file of the run -> reason
        self.merged = 0  # how many of ``seen`` every process knows (gathered at the last epoch end)
        self._epoch_files: dict[str, str] = {}
        self._epoch_skips = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (e.g. while unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        for batch, bad in self.loader:
            if bad:
                self.add(bad)
            if batch is not None:  # (None: all its items were unreadable, and not replaced)
                yield batch

    def add(self, bad: Iterable[tuple[str, str]]) -> None:
        """Record skipped ``(path, reason)`` pairs; warn about new files; stop when there are too many."""
        prefix = f"[rank {get_rank()}] " if get_world_size() > 1 else ""
        for path, reason in bad:
            self._epoch_skips += 1
            self._epoch_files.setdefault(path, reason)
            if path not in self.seen:
                self.seen[path] = reason
                # sys.stdout rather than print: every rank's files are news, also where print is main-only
                sys.stdout.write(f"{prefix}warning: skipping unreadable video {path}: {reason} ({self.fate}; each "
                                 f"file is reported once)\n")
                sys.stdout.flush()
        self.check()

    def unmerged(self) -> int:
        """Unreadable files this process found since the last epoch end's gathering: summed over the processes
        (at each update, see :mod:`patches.train.update_sync`) and added to :attr:`merged` for the run's count."""
        return len(self.seen) - self.merged if self.sharded else 0

    def check_agreed(self, unmerged_total: int) -> None:
        """Every process alike, with :meth:`unmerged` summed over the processes: the run's count against the limit
        (each process alone sees only its share of the files)."""
        if self.sharded:
            self.check(self.merged + unmerged_total)

    def check(self, count: int | None = None) -> None:
        """Raise :class:`TooManyBadVideos` when ``count`` (default: the files this process knows) unreadable files
        are more than ``--max_bad_fraction`` allows."""
        count = len(self.seen) if count is None else count
        limit = self.max_bad_fraction * self.num_videos
        if count > limit:
            examples = "\n  ".join(f"{p}: {r}" for p, r in list(self.seen.items())[:EXAMPLES])
            raise TooManyBadVideos(
                f"{count} of the {self.num_videos} videos of {self.source} cannot be read, more than "
                f"--max_bad_fraction {self.max_bad_fraction:g} allows ({limit:g}); for example:\n  {examples}\n"
                f"List them all with --check_data, then fix or remove them (or raise --max_bad_fraction).")

    def end_epoch(self) -> dict[str, Any]:
        """This epoch's skips, summed over processes: ``skipped_videos`` (loads replaced),
        ``bad_video_files`` (distinct files) and ``bad_videos`` (their sorted paths, at most 100).

        Under torch.distributed with a sharded loader every process must call it (the counts are gathered).
        """
        skips, files = self._epoch_skips, dict(self._epoch_files)
        self._epoch_skips, self._epoch_files = 0, {}
        if is_dist() and self.sharded:
            import torch.distributed as dist
            gathered: list[Any] = [None] * get_world_size()
            dist.all_gather_object(gathered, (skips, files))
            skips = sum(g[0] for g in gathered)
            files = {p: r for g in gathered for p, r in g[1].items()}
            for path, reason in files.items():
                self.seen.setdefault(path, reason)
            self.merged = len(self.seen)
        if files and is_main_process():
            print(f"{self.source}: {skips} unreadable video loads skipped this epoch, from {len(files)} files: "
                  f"{', '.join(sorted(files)[:EXAMPLES])}{' ...' if len(files) > EXAMPLES else ''}", flush=True)
        self.check()
        return {"skipped_videos": skips, "bad_video_files": len(files), "bad_videos": sorted(files)[:MAX_LISTED]}


# ---------------------------------------------------------------- --check_data

@dataclass(frozen=True)
class Entry:
    """One listed video to check: a file, or (``num_frames`` set) a folder of frames."""

    path: str
    where: str
    num_frames: int | None = None


def check_video(path: str, num_frames: int | None = None, fname_tmpl: str = "img_{:05}.jpg") -> str | None:
    """None when the video opens and its first and last frames decode to RGB frames; else the reason."""
    try:
        # decord, the stricter reader (run_videomae_vis.py uses it too; training reads with PyAV where it can)
        source = VideoFile(path, backend="decord") if num_frames is None else FrameFolder(path, num_frames, fname_tmpl)
        frames = source.read(np.unique(np.array([0, len(source) - 1])))
    except VideoDecodeError as e:
        return e.reason
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[1:3]) < 1:
        return f"decodes to frames of shape {tuple(frames.shape)}, not [N, H, W, 3]"
    return None


def pretraining_entries(list_file: str, data_root: str | None, errors: list[str]) -> list[Entry]:
    """The videos and frame folders of the pre-training ``list_file`` (paths relative to ``data_root`` when
    given); bad lines go to ``errors``."""
    try:
        parsed = numbered_pretraining_entries(list_file, data_root, errors=errors)
    except (OSError, ValueError) as e:
        errors.append(str(e))
        return []
    return [Entry(path, f"{list_file}, line {number}", count) for number, path, count in parsed]


def finetuning_entries(lists: VideoListsConfig, errors: list[str]) -> list[Entry]:
    """The videos of the train, validation and test lists, each once; bad lines go to ``errors``."""
    entries: dict[tuple[str, int | None], Entry] = {}
    for mode in ("train", "validation", "test"):
        for r in read_records(mode, lists, errors)[0]:
            entries.setdefault((r.path, r.num_frames), Entry(r.path, r.where, r.num_frames))
    errors[:] = list(dict.fromkeys(errors))  # validation may read the test list again
    return list(entries.values())


def _check(entry: Entry, fname_tmpl: str) -> str | None:
    return check_video(entry.path, entry.num_frames, fname_tmpl)


def check_entries(entries: list[Entry], num_workers: int = 0, fname_tmpl: str = "img_{:05}.jpg"
                  ) -> list[tuple[Entry, str]]:
    """``(entry, reason)`` for every entry that fails :func:`check_video`, in list order."""
    if num_workers > 1 and len(entries) > 4 * num_workers:
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial
        with ProcessPoolExecutor(num_workers) as pool:
            reasons = list(pool.map(partial(_check, fname_tmpl=fname_tmpl), entries,
                                    chunksize=max(1, len(entries) // (16 * num_workers))))
    else:
        reasons = [_check(e, fname_tmpl) for e in entries]
    return [(e, r) for e, r in zip(entries, reasons) if r is not None]


def run_check_data(data: PretrainingDataConfig | VideoListsConfig, num_workers: int = 0,
                   fname_tmpl: str = "img_{:05}.jpg") -> int:
    """``--check_data``: print every bad list line and unreadable video of ``data`` (a pre-training list, or
    a classification run's train, validation and test lists). Returns the number of videos checked when all is
    well; raises :class:`DataCheckFailed` otherwise."""
    errors: list[str] = []
    if isinstance(data, VideoListsConfig):
        entries = finetuning_entries(data, errors)
    else:
        entries = pretraining_entries(data.data_path, data.data_root, errors)
    print(f"check_data: checking {len(entries)} videos (open, decode the first and last frame) ...", flush=True)
    for message in errors:
        print(f"bad list line: {message}")
    bad = check_entries(entries, num_workers, fname_tmpl)
    for entry, reason in bad:
        print(f"bad video: {entry.path} ({entry.where}): {reason}")
    if errors or bad:
        raise DataCheckFailed(f"--check_data found {len(bad)} unreadable of {len(entries)} videos and "
                              f"{len(errors)} bad list lines (listed above)")
    print(f"check_data: all {len(entries)} videos are readable", flush=True)
    return len(entries)
