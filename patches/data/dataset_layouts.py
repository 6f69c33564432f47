"""From a dataset as downloaded to the folder the launchers read: prepared mp4 videos, ``train.csv``, ``val.csv``,
``test.csv`` (VideoMAE's ``path label`` lines, paths relative to the folder) and ``classes.txt``.

    python scripts/prepare_dataset.py ucf101 --src raw/ucf101 --dst data/ucf101 --split 1 --workers 16

Each layout reads the official annotations of one dataset into :class:`LabelledVideo` rows; the videos are
prepared by :func:`patches.data.prepare.prepare` (same files, same skips and reruns as ``prepare_videos.py``).
What each dataset's download looks like, and which split feeds which list, is in DATASET.md:

* ``k400``: annotation CSVs ``label,youtube_id,time_start,time_end,split`` (``train.csv``, ``validate.csv`` or
  ``val.csv``, ``test.csv``, in SRC or SRC/annotations); videos anywhere under SRC named
  ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` (or ``<youtube_id>.<ext>``). Classes: the sorted label names.
  test.csv: the test CSV's labelled videos when there are any, else the validation set (VideoMAE's test).
* ``ssv2``: ``labels.json``, ``train.json``, ``validation.json`` (and ``test.json``, unlabelled) in SRC or
  SRC/labels; videos ``<id>.webm`` anywhere under SRC. Labels: the template without brackets, looked up in
  ``labels.json``. test.csv: the validation set (VideoMAE's test).
* ``ucf101``: ``ucfTrainTestlist/`` (``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``) and ``UCF-101/``;
  val.csv and test.csv: split N's test list (VideoMAE's lists).
* ``hmdb51``: ``testTrainMulti_7030_splits/<class>_test_splitN.txt`` (``1`` train, ``2`` test, ``0`` unused)
  and ``hmdb51/<class>/*.avi``; classes sorted; val.csv and test.csv: split N's test videos.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from patches.data.encoding import EncodeConfig
from patches.data.lists import LIST_FILES, ListFileError, hmdb51_records, ucf101_records
from patches.data.prepare import (CLASSES_NAME, VIDEO_SUFFIXES, find_inputs, plan_jobs, prepare, write_atomically,
                                  write_report_csv)
from patches.errors import UsageError

SOURCES_NAME = "dataset_sources.txt"  # the videos handed to prepare(), one path a line (kept for reruns)
MISSING_NAME = "missing.csv"  # annotated videos not found under SRC (e.g. K400 videos gone from YouTube)


@dataclass(frozen=True)
class LabelledVideo:
    """One annotated video of a split: its raw file and its 0-based label."""

    src: str
    label: int


@dataclass(frozen=True)
class DatasetLayout:
    """A dataset as read from its download: the class names and the videos of each list file; ``missing``: the
    annotated videos (names) that are not under SRC."""

    classes: list[str]
    splits: dict[str, list[LabelledVideo]]  # "train", "validation", "test" -> videos
    missing: list[tuple[str, str]]  # (split, annotated name)
    video_root: str  # the folder DST mirrors (the same for every split, so reruns reuse the prepared files)


def _first_file(folders: list[str], names: tuple[str, ...], what: str) -> str:
    for folder in folders:
        for name in names:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    raise UsageError(f"{what}: none of {', '.join(names)} in {' or '.join(folders)}")


def _videos_by_stem(src: str) -> dict[str, str]:
    """Every video file under ``src`` by its name without suffix (two files of one name: a usage error)."""
    _, found = find_inputs(src, VIDEO_SUFFIXES)
    by_stem: dict[str, str] = {}
    for path, _ in found:
        stem = Path(path).stem
        if stem in by_stem:
            raise UsageError(f"two videos named {stem}: {by_stem[stem]} and {path}")
        by_stem[stem] = path
    return by_stem


def _split(rows: list[tuple[str, str]], videos: dict[str, str], index: dict[str, int], split: str,
           missing: list[tuple[str, str]]) -> list[LabelledVideo]:
    out = []
    for name, label in rows:
        path = videos.get(name)
        if path is None:
            missing.append((split, name))
        else:
            out.append(LabelledVideo(path, index[label]))
    return out


# ---- Kinetics-400 ---------------------------------------------------------------------------------------

def _kinetics_rows(path: str) -> list[tuple[list[str], str]]:
    """``([file stems it may have], label)`` of each row of a Kinetics annotation CSV (label may be empty)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"youtube_id", "time_start", "time_end"}
        if not need <= set(reader.fieldnames or ()):
            raise UsageError(f"{path}: expected the columns label,youtube_id,time_start,time_end,split, "
                             f"got {reader.fieldnames}")
        rows = []
        for r in reader:
            start, end = int(float(r["time_start"])), int(float(r["time_end"]))
            stems = [f"{r['youtube_id']}_{start:06d}_{end:06d}", r["youtube_id"]]
            rows.append((stems, (r.get("label") or "").strip()))
    return rows


def kinetics400_layout(src: str) -> DatasetLayout:
    """K400 from its annotation CSVs (see the module docstring)."""
    folders = [src, os.path.join(src, "annotations")]
    files = {"train": _first_file(folders, ("train.csv",), "K400 annotations"),
             "validation": _first_file(folders, ("validate.csv", "val.csv", "validation.csv"), "K400 annotations")}
    try:
        files["test"] = _first_file(folders, ("test.csv",), "K400 annotations")
    except UsageError:
        pass
    rows = {split: _kinetics_rows(path) for split, path in files.items()}
    classes = sorted({label for _, label in rows["train"] if label})
    if not classes:
        raise UsageError(f"{files['train']}: no labels")
    index = {n: i for i, n in enumerate(classes)}
    videos = _videos_by_stem(src)
    splits, missing = {}, []
    for split, split_rows in rows.items():
        named = [(next((s for s in stems if s in videos), stems[0]), label) for stems, label in split_rows
                 if label in index]
        splits[split] = _split(named, videos, index, split, missing)
    if not splits.get("test"):  # the public test CSV is often unlabelled: test on validation, as VideoMAE does
        splits["test"] = splits["validation"]
    return DatasetLayout(classes, splits, missing, src)


# ---- Something-Something V2 -----------------------------------------------------------------------------

def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: {e}") from None


def ssv2_layout(src: str) -> DatasetLayout:
    """SSv2 from its label JSON files (see the module docstring)."""
    folders = [src, os.path.join(src, "labels")]
    labels = _read_json(_first_file(folders, ("labels.json",), "SSv2 labels"))
    index = {name: int(i) for name, i in labels.items()}
    classes = [name for name, _ in sorted(index.items(), key=lambda kv: kv[1])]
    if sorted(index.values()) != list(range(len(index))):
        raise UsageError("SSv2 labels.json: the class indices are not 0..N-1")
    videos = _videos_by_stem(src)
    splits, missing = {}, []
    for split, name in (("train", "train.json"), ("validation", "validation.json")):
        path = _first_file(folders, (name,), "SSv2 labels")
        rows = []
        for item in _read_json(path):
            if not isinstance(item, dict) or "id" not in item or "template" not in item:
                raise UsageError(f"{path}: expected a list of {{'id': ..., 'template': ...}} entries, got {item!r:.80}")
            template = item["template"].replace("[", "").replace("]", "")
            if template not in index:
                raise UsageError(f"{path}: video {item['id']}: template {template!r} is not in labels.json")
            rows.append((str(item["id"]), template))
        splits[split] = _split(rows, videos, index, split, missing)
    splits["test"] = splits["validation"]  # test.json has no labels: VideoMAE tests on validation
    return DatasetLayout(classes, splits, missing, src)


# ---- UCF101 and HMDB51 ----------------------------------------------------------------------------------

def _official_split(records: Callable[[bool], list], split_dir: str) -> tuple[dict[str, list[LabelledVideo]],
                                                                               list[tuple[str, str]]]:
    splits, missing = {}, []
    for split, train in (("train", True), ("test", False)):
        try:
            found = records(train)
        except (ListFileError, FileNotFoundError) as e:
            raise UsageError(str(e)) from None
        for r in found:
            if os.path.isfile(r.path):
                splits.setdefault(split, []).append(LabelledVideo(r.path, r.label))
            else:
                missing.append((split, os.path.relpath(r.path, split_dir)))
    splits.setdefault("train", [])
    splits["validation"] = splits.setdefault("test", [])  # VideoMAE validates on the test split
    return splits, missing


def ucf101_layout(src: str, split: int) -> DatasetLayout:
    """UCF101 from ``ucfTrainTestlist/`` and ``UCF-101/`` (see the module docstring)."""
    split_dir, videos = os.path.join(src, "ucfTrainTestlist"), os.path.join(src, "UCF-101")
    class_file = _first_file([split_dir], ("classInd.txt",), "UCF101 split files")
    with open(class_file, encoding="utf-8-sig") as f:
        pairs = [line.split() for line in f if line.strip()]
    classes = [name for _, name in sorted((int(i), name) for i, name in pairs)]
    splits, missing = _official_split(lambda train: ucf101_records(split_dir, videos, split, train), videos)
    return DatasetLayout(classes, splits, missing, videos)


def hmdb51_layout(src: str, split: int) -> DatasetLayout:
    """HMDB51 from ``testTrainMulti_7030_splits/`` and ``hmdb51/`` (see the module docstring)."""
    split_dir, videos = os.path.join(src, "testTrainMulti_7030_splits"), os.path.join(src, "hmdb51")
    if not os.path.isdir(split_dir):
        raise UsageError(f"HMDB51 split files: no folder {split_dir}")
    suffix = f"_test_split{split}.txt"
    classes = sorted(f[:-len(suffix)] for f in os.listdir(split_dir) if f.endswith(suffix))
    splits, missing = _official_split(lambda train: hmdb51_records(split_dir, videos, split, train), videos)
    return DatasetLayout(classes, splits, missing, videos)


DATASETS = ("k400", "ssv2", "ucf101", "hmdb51")


def read_layout(dataset: str, src: str, split: int = 1) -> DatasetLayout:
    """The classes and split videos of ``dataset`` as downloaded into ``src``."""
    if not os.path.isdir(src):
        raise UsageError(f"--src {src}: no such folder")
    if split not in (1, 2, 3):
        raise UsageError(f"--split must be 1, 2 or 3, got {split}")
    if dataset == "k400":
        return kinetics400_layout(src)
    if dataset == "ssv2":
        return ssv2_layout(src)
    if dataset == "ucf101":
        return ucf101_layout(src, split)
    if dataset == "hmdb51":
        return hmdb51_layout(src, split)
    raise UsageError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")


# ---- the launcher-ready folder --------------------------------------------------------------------------

def prepare_dataset(dataset: str, src: str, dst: str, config: EncodeConfig, split: int = 1, workers: int = 1,
                    retry_failed: bool = False, progress: bool = True) -> dict[str, Any]:
    """Prepare every annotated video of ``dataset`` under ``src`` into ``dst`` and write the launchers' lists;
    returns the preparation summary with ``lists`` (lines per list file) and ``missing`` (count) added."""
    if os.path.commonpath([os.path.abspath(src), os.path.abspath(dst)]) == os.path.abspath(src):
        raise UsageError(f"--dst {dst} must not be --src {src} or inside it (the download is only read)")
    layout = read_layout(dataset, src, split)
    sources = sorted({v.src for videos in layout.splits.values() for v in videos})
    if not sources:
        raise UsageError(f"{src}: none of the annotated videos was found")
    os.makedirs(dst, exist_ok=True)
    source_list = os.path.join(dst, SOURCES_NAME)
    write_atomically(source_list, "".join(f"{p}\n" for p in sources))
    summary = prepare(source_list, dst, config, workers, labels="none", retry_failed=retry_failed,
                      progress=progress, mirror_root=layout.video_root)
    _, entries = find_inputs(source_list)
    prepared = {job.src: job.dst for job in plan_jobs(layout.video_root, entries, [None] * len(entries), dst)}
    failed = {path for path, _ in summary["failures"]}
    counts = {}
    for split, name in LIST_FILES.items():
        lines = [f"{Path(os.path.relpath(prepared[v.src], dst)).as_posix()} {v.label}"
                 for v in layout.splits[split] if v.src not in failed]
        write_atomically(os.path.join(dst, name), "".join(f"{line}\n" for line in lines))
        counts[name] = len(lines)
    write_atomically(os.path.join(dst, CLASSES_NAME), "".join(f"{i} {n}\n" for i, n in enumerate(layout.classes)))
    write_report_csv(os.path.join(dst, MISSING_NAME), ["split", "video"], layout.missing)
    return {**summary, "lists": counts, "missing": len(layout.missing), "classes": len(layout.classes)}

