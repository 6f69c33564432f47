"""List files and official splits: which videos a run reads, with their labels and class count.

List files follow VideoMAE: one video per line, ``path`` or ``path label``. See
:func:`parse_list_file` for the exact rules. :func:`read_records` also reads SSV2 frame-folder
lists and the official UCF101 and HMDB51 split files.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from patches.data.list_paths import list_base as _list_base
from patches.data.list_paths import resolve as _resolve
from patches.data.video_reader import FrameFolder, VideoFile
from patches.errors import UsageError

_INT = re.compile(r"[+-]?[0-9]+")


class ListFileError(UsageError, ValueError):
    """A list file, a line of it, or the flags choosing the lists, that cannot be used (still a ValueError)."""


def _parse_line(line: str, base: str, where: str) -> tuple[str, int | None]:
    fields = line.rsplit(None, 1)
    if len(fields) == 1:
        return _resolve(line, base), None
    head, last = fields
    if _INT.fullmatch(last):
        label = int(last)
        if label < 0:
            raise ListFileError(f"{where}: negative label {label}")
        return _resolve(head, base), label
    whole, head_path = _resolve(line, base), _resolve(head, base)
    if not os.path.isfile(whole) and os.path.isfile(head_path):
        raise ListFileError(f"{where}: label {last!r} after {head!r} is not a non-negative integer")
    return whole, None


def parse_list_file(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                    errors: list[str] | None = None) -> list[tuple[str, int | None]]:
    """Read a VideoMAE-style list file into ``[(video_path, label or None), ...]``.

    Rules, per line (UTF-8, optional BOM, ``\\n`` or ``\\r\\n`` endings):

    * blank lines and lines whose first non-blank character is ``#`` are skipped;
    * surrounding whitespace is stripped; if the line has more than one whitespace-separated
      field and the last one is an integer, that field is the label and the rest is the
      path (so paths may contain spaces); otherwise the whole line is a path without label;
    * relative paths are taken relative to ``data_root`` when given; without it, relative to the
      working directory when the path exists there (as VideoMAE opens them), else relative to the
      directory holding the list file; absolute paths stay.

    Raises :class:`ListFileError` naming the file and the 1-based line number for a negative label, for a
    non-integer last field after a path that exists as a file while the whole line does not, for text that is
    not UTF-8, and (naming the file) for a list with no entries. With ``errors`` given, those messages are
    appended to it instead and the bad lines skipped (to report them all, as ``--check_data`` does).
    """
    return [(video, label) for _, video, label in numbered_list_entries(path, data_root, errors)]


def numbered_list_entries(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                          errors: list[str] | None = None) -> list[tuple[int, str, int | None]]:
    """:func:`parse_list_file` with the 1-based line number first: ``[(line, video_path, label), ...]``."""
    path = os.fspath(path)
    base = _list_base(path, data_root)
    entries = []
    for number, line in _list_lines(path):
        try:
            entries.append((number, *_parse_line(line, base, f"{path}, line {number}")))
        except ValueError as e:
            _raise_or_collect(e, errors)
    if not entries and not errors:
        _raise_or_collect(ListFileError(f"{path}: list file has no entries"), errors)
    return entries


def numbered_pretraining_entries(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                                 errors: list[str] | None = None) -> list[tuple[int, str, int | None]]:
    """A pre-training list as ``[(line, path, num_frames), ...]``: video files (``num_frames`` None) and
    VideoMAE's frame folders, ``folder num_frames label`` or ``folder num_frames`` (the folder must exist).
    Rules and ``errors`` as in :func:`parse_list_file`."""
    path = os.fspath(path)
    entries = []
    for number, video, label in numbered_list_entries(path, data_root, errors):
        folder, count = video, label  # 'folder num_frames': the count was parsed as the label
        if not os.path.isdir(video):
            head = video.rsplit(None, 1)
            folder, count = (head[0], int(head[1])) if len(head) == 2 and _INT.fullmatch(head[1]) else (video, None)
            if not os.path.isdir(folder):
                folder, count = video, None
        elif count is None:
            _raise_or_collect(ListFileError(f"{path}, line {number}: {video} is a folder; a frame folder's line is "
                                            f"'folder num_frames label'"), errors)
            continue
        if count is not None and count < 1:
            _raise_or_collect(ListFileError(f"{path}, line {number}: frame folder with {count} frames"), errors)
            continue
        entries.append((number, folder, count))
    return entries


def _raise_or_collect(error: Exception, errors: list[str] | None) -> None:
    if errors is None:
        raise error
    errors.append(str(error))


def _list_lines(path: str) -> list[tuple[int, str]]:
    """``(1-based line number, stripped line)`` for every line that is neither blank nor a ``#`` comment."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ListFileError(f"{path}, line {line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the list "
                            f"file as UTF-8") from None
    lines = text.splitlines()
    kept = [(number, line) for number, line in ((n, raw.strip()) for n, raw in enumerate(lines, start=1))
            if line and not line.startswith("#")]
    first: dict[str, int] = {}
    repeats = []
    for number, line in kept:
        if first.setdefault(line, number) != number:
            repeats.append((number, first[line]))
    if repeats:
        note_once(f"warning: {path}: {len(repeats)} duplicate lines (e.g. line {repeats[0][0]} repeats line "
                  f"{repeats[0][1]}); each is used as often as it is listed")
    return kept


_NOTED: set[str] = set()


def note_once(message: str) -> None:
    """Print ``message`` the first time this process is told it (lists are read more than once per run)."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(message)


NB_CLASSES = {"Kinetics-400": 400, "Kinetics-600": 600, "Kinetics-700": 700, "SSV2": 174, "UCF101": 101,
              "HMDB51": 51}
DATA_SETS = (*NB_CLASSES, "custom")
MODES = ("train", "validation", "test")
LIST_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video: a file, or (``num_frames`` set) a folder of extracted frames."""

    path: str
    label: int
    list_file: str  # where it was listed, for error messages
    line: int
    num_frames: int | None = None

    @property
    def where(self) -> str:
        return f"{self.list_file}, line {self.line}"

    def open(self, fname_tmpl: str = "img_{:05}.jpg") -> VideoFile | FrameFolder:
        if self.num_frames is None:
            return VideoFile(self.path)
        return FrameFolder(self.path, self.num_frames, fname_tmpl)


def read_labelled_list(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                       frame_folders: bool = False, errors: list[str] | None = None) -> list[VideoRecord]:
    """A list file (rules of :func:`parse_list_file`) whose every line must have a label.

    With ``frame_folders`` a line whose last two fields are integers is VideoMAE's frame
    format ``folder num_frames label``; other lines are still ``video label``. ``errors`` as in
    :func:`parse_list_file`.
    """
    path = os.fspath(path)
    base = _list_base(path, data_root)
    records = []
    for number, line in _list_lines(path):
        try:
            records.append(_labelled_record(line, base, path, number, frame_folders))
        except ValueError as e:
            _raise_or_collect(e, errors)
    if not records and not errors:
        _raise_or_collect(ListFileError(f"{path}: list file has no entries"), errors)
    return records


def _labelled_record(line: str, base: str, path: str, number: int, frame_folders: bool) -> VideoRecord:
    where = f"{path}, line {number}"
    video, label = _parse_line(line, base, where)
    if label is None:
        expected = "'path label' or 'folder num_frames label'" if frame_folders else "'path label'"
        fields = line.rsplit(None, 1)
        if len(fields) == 2:
            raise ListFileError(f"{where}: the last field {fields[1]!r} of {line!r} is not an integer label "
                                f"(expected {expected})")
        raise ListFileError(f"{where}: no label in {line!r} (expected {expected})")
    count = None
    if frame_folders:
        head = video.rsplit(None, 1)
        if len(head) == 2 and _INT.fullmatch(head[1]):
            video, count = head[0], int(head[1])
            if count < 1:
                raise ListFileError(f"{where}: frame folder with {count} frames")
    return VideoRecord(video, label, path, number, count)


def ucf101_records(split_dir: str | os.PathLike, data_root: str | os.PathLike | None, split: int,
                   train: bool) -> list[VideoRecord]:
    """Videos of UCF101's official ``trainlist0{split}.txt`` or ``testlist0{split}.txt`` in ``split_dir``.

    Labels are 0-based: the train list's 1-based label minus one, or for label-less lines (the test lists) the
    class folder looked up in ``classInd.txt``. Video paths are relative to ``data_root`` (else ``split_dir``).
    """
    split_dir = os.fspath(split_dir)
    class_file = os.path.join(split_dir, "classInd.txt")
    classes = {}
    for number, line in _list_lines(_existing(class_file, "UCF101 class index")):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) < 1:
            raise ListFileError(f"{class_file}, line {number}: expected '<1-based index> <class name>', got {line!r}")
        classes[fields[1]] = int(fields[0]) - 1
    list_file = _existing(os.path.join(split_dir, f"{'train' if train else 'test'}list0{split}.txt"),
                          f"UCF101 split {split} list")
    base = split_dir if data_root is None else os.fspath(data_root)
    records = []
    for number, line in _list_lines(list_file):
        where = f"{list_file}, line {number}"
        fields = line.rsplit(None, 1)
        if len(fields) == 2 and _INT.fullmatch(fields[1]):
            video, label = fields[0], int(fields[1]) - 1
            if label < 0:
                raise ListFileError(f"{where}: UCF101 labels are 1-based, got {fields[1]}")
        else:
            video = line
            folder = video.replace("\\", "/").split("/")[0]
            if folder not in classes:
                raise ListFileError(f"{where}: class folder {folder!r} of {video!r} is not in {class_file}")
            label = classes[folder]
        records.append(VideoRecord(_resolve(video, base), label, list_file, number))
    if not records:
        raise ListFileError(f"{list_file}: list file has no entries")
    return records


def hmdb51_records(split_dir: str | os.PathLike, data_root: str | os.PathLike | None, split: int,
                   train: bool) -> list[VideoRecord]:
    """Videos of HMDB51's official split ``split``: lines ``video.avi 1`` (train) or ``2`` (test) of the
    ``<class>_test_split{split}.txt`` files in ``split_dir`` (``0``: unused). Labels index the sorted class
    names; videos are ``<data_root or split_dir>/<class>/<video>``."""
    split_dir = os.fspath(split_dir)
    suffix = f"_test_split{split}.txt"
    names = sorted(f for f in os.listdir(split_dir) if f.endswith(suffix))
    if not names:
        raise FileNotFoundError(f"no HMDB51 split files *{suffix} in {split_dir}")
    base = split_dir if data_root is None else os.fspath(data_root)
    wanted = "1" if train else "2"
    records = []
    for label, name in enumerate(names):
        cls, list_file = name[:-len(suffix)], os.path.join(split_dir, name)
        for number, line in _list_lines(list_file):
            fields = line.rsplit(None, 1)
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ListFileError(f"{list_file}, line {number}: expected 'video.avi 0|1|2', got {line!r}")
            if fields[1] == wanted:
                records.append(VideoRecord(_resolve(os.path.join(cls, fields[0]), base), label, list_file, number))
    if not records:
        raise ListFileError(f"no {'training' if train else 'test'} videos (marked {wanted}) in the *{suffix} "
                            f"files of {split_dir}")
    return records


def _existing(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found")
    return path


@dataclass(frozen=True)
class VideoListsConfig:
    """Where a classification run's videos are listed (the fields of the flags of the same names).

    ``data_path``: the folder of train.csv/val.csv/test.csv, or of the UCF101/HMDB51 split files;
    ``eval_data_path``: the folder for validation and test when not ``data_path``; ``data_root``: what
    relative video paths are relative to; ``split``: the UCF101/HMDB51 split; ``nb_classes``: None to
    take the count from ``data_set`` or infer it from the training labels.
    """

    data_set: str
    data_path: str
    eval_data_path: str | None = None
    data_root: str | None = None
    split: int = 1
    nb_classes: int | None = None

    @property
    def eval_folder(self) -> str:
        return self.eval_data_path or self.data_path


def _list_file_for(mode: str, lists: VideoListsConfig) -> str:
    folder, flag = (lists.data_path, "--data_path") if mode == "train" else (lists.eval_folder, "--eval_data_path")
    if not os.path.isdir(folder):
        raise ListFileError(f"{flag} {folder} is not a folder: for --data_set {lists.data_set} it must hold "
                            f"train.csv, val.csv and test.csv")
    path = os.path.join(folder, LIST_FILES[mode])
    if mode == "validation" and not os.path.isfile(path):
        fallback = os.path.join(folder, LIST_FILES["test"])
        if os.path.isfile(fallback):
            note_once(f"note: no {path}; validating on {fallback}")
            return fallback
    return _existing(path, "list file")


def _records_for(mode: str, lists: VideoListsConfig, errors: list[str] | None = None) -> list[VideoRecord]:
    folder = lists.data_path if mode == "train" else lists.eval_folder
    own_list = os.path.join(folder, LIST_FILES["train" if mode == "train" else "test"])
    if lists.data_set in ("UCF101", "HMDB51") and not os.path.isfile(own_list):
        read = ucf101_records if lists.data_set == "UCF101" else hmdb51_records
        return read(folder, lists.data_root, lists.split, train=mode == "train")
    return read_labelled_list(_list_file_for(mode, lists), lists.data_root, frame_folders=lists.data_set == "SSV2",
                              errors=errors)


def _nb_classes(mode: str, lists: VideoListsConfig, records: list[VideoRecord]) -> tuple[int, str]:
    """The class count and how to name where it came from in an error message."""
    if lists.nb_classes is not None:
        return lists.nb_classes, f"--nb_classes {lists.nb_classes}"
    if lists.data_set in NB_CLASSES:
        n = NB_CLASSES[lists.data_set]
        return n, f"--data_set {lists.data_set}, which has {n} classes (set --nb_classes for another count)"
    train = records
    if mode != "train":
        train_list = os.path.join(lists.data_path, LIST_FILES["train"])
        if os.path.isfile(train_list):
            train = read_labelled_list(train_list, lists.data_root)
    if not train:
        raise ListFileError("no usable labelled line to infer the class count from; set --nb_classes")
    n = max(r.label for r in train) + 1
    return n, f"the {n} classes found in {train[0].list_file} (set --nb_classes for more)"


def _check_labels(records: list[VideoRecord], nb_classes: int, source: str, errors: list[str] | None = None
                  ) -> list[VideoRecord]:
    """The records whose label is in range; the others raise (or, with ``errors``, are reported there),
    one message per list file naming the first bad line and counting the others."""
    bad = [r for r in records if r.label >= nb_classes]
    for list_file in dict.fromkeys(r.list_file for r in bad):
        here = [r for r in bad if r.list_file == list_file]
        more = f" (and {len(here) - 1} more lines, e.g. line {', line '.join(str(r.line) for r in here[1:4])})" \
            if len(here) > 1 else ""
        _raise_or_collect(ListFileError(f"{here[0].where}: label {here[0].label} is out of range for {source}; labels "
                                        f"must be 0..{nb_classes - 1}{more}"), errors)
    return [r for r in records if r.label < nb_classes]


def read_records(mode: str, lists: VideoListsConfig, errors: list[str] | None = None
                 ) -> tuple[list[VideoRecord], int]:
    """The videos of ``mode`` ("train", "validation" or "test") and the class count, after every list check.

    Validation falls back to test.csv when val.csv is missing. UCF101/HMDB51 read train.csv/val.csv/test.csv
    (VideoMAE's lists) when the folder has a train.csv, else the official split files, testing and validating
    on the test split.

    Raises :class:`ListFileError` or ``FileNotFoundError`` naming the file (and line) of the first problem; with
    ``errors`` given, every problem is appended there instead and the bad lines are left out.
    """
    if mode not in MODES:
        raise ListFileError(f"mode must be one of {MODES}, got {mode!r}")
    if lists.data_set not in DATA_SETS:
        raise ListFileError(f"--data_set must be one of {DATA_SETS}, got {lists.data_set!r}")
    try:
        records = _records_for(mode, lists, errors)
        nb_classes, source = _nb_classes(mode, lists, records)
    except (ValueError, FileNotFoundError) as e:
        if errors is None:
            raise
        errors.append(str(e))
        return [], 0
    return _check_labels(records, nb_classes, source, errors), nb_classes


def class_names(data_path: str, nb_classes: int) -> list[str] | None:
    """``DATA_PATH/classes.txt`` (one name per line, in label order) when there is one for ``nb_classes``."""
    path = Path(data_path) / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return names if len(names) == nb_classes else None
