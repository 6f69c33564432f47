"""List files: lines read as DATASET.md documents, and every malformed line named by file and line.

The same checks run up front in both scripts (through the real CLI: see test_faults.py,
``test_bad_list_lines_stop_both_scripts_up_front``) and in ``--check_data``, which collects them all.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from patches.data.lists import (DATA_SETS, NB_CLASSES, VideoListsConfig, numbered_list_entries,
                                numbered_pretraining_entries, parse_list_file, read_labelled_list, read_records)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def lists_config(folder: Path, **kw) -> VideoListsConfig:
    return VideoListsConfig(**{"data_set": "custom", "data_path": str(folder), **kw})


def test_tolerated_lines_are_read_as_documented(tmp_path: Path) -> None:
    # BOM, Windows endings, a comment, blank and whitespace-only lines, spaces in a path, a tab, no label
    lst = write(tmp_path / "list.csv", "\ufeff# header\r\n\r\nclips/my clip.mp4 3\r\n   \r\n\tclips/b.mp4\t7  \r\n"
                                       "  # indented comment\r\nclips/c.mp4\r\n")
    assert numbered_list_entries(lst) == [
        (3, str(tmp_path / "clips" / "my clip.mp4"), 3),
        (5, str(tmp_path / "clips" / "b.mp4"), 7),
        (7, str(tmp_path / "clips" / "c.mp4"), None),
    ]
    labelled = read_labelled_list(write(tmp_path / "train.csv", "a b.mp4 1\r\nc.mp4 0\r\n"))
    assert [(Path(r.path).name, r.label, r.line) for r in labelled] == [("a b.mp4", 1, 1), ("c.mp4", 0, 2)]


@pytest.mark.parametrize("body, line, message", [
    ("a.mp4 0\nb.mp4\n", 2, r"no label in 'b.mp4'"),
    ("a.mp4 0\n\n# c\nb.mp4 abc\n", 4, r"the last field 'abc' of 'b.mp4 abc' is not an integer label"),
    ("a.mp4 0\na.mp4 x7\n", 2, r"label 'x7' after 'a.mp4' is not a non-negative integer"),
    ("a.mp4 -1\n", 1, r"negative label -1"),
    ("a.mp4 1.5\n", 1, r"label '1.5' after 'a.mp4' is not a non-negative integer"),
])
def test_bad_labelled_lines_name_file_and_line(tmp_path: Path, body: str, line: int, message: str) -> None:
    write(tmp_path / "a.mp4", b"")  # a listed file that exists, so a junk label after it is an error
    lst = write(tmp_path / "train.csv", body)
    with pytest.raises(ValueError, match=rf"train\.csv, line {line}: {message}"):
        read_labelled_list(lst)


def test_non_utf8_list_names_the_line(tmp_path: Path) -> None:
    lst = write(tmp_path / "list.csv", b"a.mp4 0\nb.mp4 1\ncaf\xe9.mp4 2\n")
    with pytest.raises(ValueError, match=r"list\.csv, line 3: not UTF-8 text \(byte 0xe9\)"):
        parse_list_file(lst)


def test_empty_list_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"empty\.csv: list file has no entries"):
        parse_list_file(write(tmp_path / "empty.csv", "# only a comment\n\n"))


def test_collecting_mode_reports_every_bad_line_and_keeps_the_good(tmp_path: Path) -> None:
    write(tmp_path / "a.mp4", b"")
    lst = write(tmp_path / "list.csv", "a.mp4 0\na.mp4 -3\nok.mp4 1\na.mp4 x\nlast.mp4\n")
    errors: list[str] = []
    entries = parse_list_file(lst, errors=errors)
    assert [Path(p).name for p, _ in entries] == ["a.mp4", "ok.mp4", "last.mp4"]
    assert [e.split(": ", 1)[0].rsplit(", ", 1)[1] for e in errors] == ["line 2", "line 4"]


def test_labels_against_the_class_count(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "a.mp4 0\nb.mp4 9\nc.mp4 1\nd.mp4 12\n")
    write(tmp_path / "test.csv", "a.mp4 0\n")
    # more labels than --nb_classes: the first bad line named, the others counted
    with pytest.raises(ValueError, match=r"train\.csv, line 2: label 9 is out of range for --nb_classes 5; labels "
                                         r"must be 0\.\.4 \(and 1 more lines, e.g\. line 4\)"):
        read_records("train", lists_config(tmp_path, nb_classes=5))
    # without --nb_classes: the classes found in train.csv bound the test labels
    write(tmp_path / "test.csv", "a.mp4 0\nb.mp4 13\n")
    with pytest.raises(ValueError, match=r"test\.csv, line 2: label 13 is out of range for the 13 classes found"):
        read_records("test", lists_config(tmp_path))
    # fewer labels used than --nb_classes: allowed (build_dataset warns, see test_finetune_datasets.py)
    records, nb_classes = read_records("train", lists_config(tmp_path, nb_classes=20))
    assert nb_classes == 20 and [r.label for r in records] == [0, 9, 1, 12]


def test_frame_folder_lines(tmp_path: Path) -> None:
    lst = write(tmp_path / "train.csv", "frames/1 30 4\nframes/2 0 1\n")
    with pytest.raises(ValueError, match=r"train\.csv, line 2: frame folder with 0 frames"):
        read_labelled_list(lst, frame_folders=True)


def test_pre_training_lists_read_frame_folders(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / "frames" / name).mkdir(parents=True)
    (tmp_path / "clip.mp4").write_bytes(b"")
    lst = write(tmp_path / "train.csv", "frames/a 30 4\nframes/b 12\nclip.mp4 3\nframes/c 0 1\nframes/c 2\n"
                                        "frames/a\n")
    errors: list[str] = []
    entries = numbered_pretraining_entries(lst, errors=errors)
    assert entries == [(1, str(tmp_path / "frames/a"), 30), (2, str(tmp_path / "frames/b"), 12),
                       (3, str(tmp_path / "clip.mp4"), None), (5, str(tmp_path / "frames/c"), 2)]
    assert errors == [f"{lst}, line 4: frame folder with 0 frames",
                      f"{lst}, line 6: {tmp_path / 'frames/a'} is a folder; a frame folder's line is "
                      f"'folder num_frames label'"]


def test_videomae_csv_lists_for_ucf101_and_hmdb51(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "a.avi 0\nb.avi 50\n")
    write(tmp_path / "test.csv", "c.avi 100\n")
    records, nb_classes = read_records("train", lists_config(tmp_path, data_set="UCF101"))
    assert ([r.label for r in records], nb_classes) == ([0, 50], 101)
    assert [r.label for r in read_records("validation", lists_config(tmp_path, data_set="UCF101"))[0]] == [100]
    with pytest.raises(ValueError, match="label 100 is out of range"):
        read_records("test", lists_config(tmp_path, data_set="HMDB51"))


def test_parse_list_file_good_lines(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    lst = write(tmp_path / "sub" / "list.csv",
                "\ufeff# a comment\r\n"
                "a.mp4 3\r\n"
                "\r\n"
                "my clip.mp4 4\r\n"
                "   \r\n"
                "no_label.mp4\r\n"
                "my other clip.mp4\r\n"
                "/abs/x.mp4\t7\r\n")
    assert parse_list_file(lst) == [
        (str(tmp_path / "sub" / "a.mp4"), 3),
        (str(tmp_path / "sub" / "my clip.mp4"), 4),
        (str(tmp_path / "sub" / "no_label.mp4"), None),
        (str(tmp_path / "sub" / "my other clip.mp4"), None),
        ("/abs/x.mp4", 7),
    ]
    with_root = parse_list_file(lst, data_root=tmp_path / "videos")
    assert with_root[0] == (str(tmp_path / "videos" / "a.mp4"), 3)
    assert with_root[-1] == ("/abs/x.mp4", 7)


@pytest.mark.parametrize("body, line", [
    ("ok.mp4 1\nok.mp4 -2\n", 2),            # negative label
    ("# header\n\nok.mp4 1\nok.mp4 x7\n", 4),  # junk label after an existing file
])
def test_parse_list_file_bad_lines(tmp_path: Path, body: str, line: int) -> None:
    write(tmp_path / "ok.mp4", b"")
    lst = write(tmp_path / "bad_list.txt", body)
    with pytest.raises(ValueError, match=rf"bad_list\.txt, line {line}\b"):
        parse_list_file(lst)


def test_parse_list_file_without_entries(tmp_path: Path) -> None:
    lst = write(tmp_path / "empty_list.txt", "# nothing\n\n")
    with pytest.raises(ValueError, match="empty_list.txt"):
        parse_list_file(lst)


def test_lists_config_defaults_and_the_data_sets() -> None:
    lists = VideoListsConfig("custom", "/data/k")
    assert (lists.eval_data_path, lists.data_root, lists.split, lists.nb_classes) == (None, None, 1, None)
    assert lists.eval_folder == "/data/k"
    assert VideoListsConfig("custom", "/data/k", eval_data_path="/data/v").eval_folder == "/data/v"
    assert DATA_SETS == ("Kinetics-400", "Kinetics-600", "Kinetics-700", "SSV2", "UCF101", "HMDB51", "custom")
    assert NB_CLASSES["SSV2"] == 174


def test_unknown_data_set_and_mode_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--data_set must be one of"):
        read_records("train", lists_config(tmp_path, data_set="K400"))
    with pytest.raises(ValueError, match="mode must be one of"):
        read_records("val", lists_config(tmp_path))


def test_duplicate_lines_are_counted_in_one_warning_and_notes_print_once(tmp_path: Path, capsys) -> None:
    listed = write(tmp_path / "train.csv", "a.mp4 1\nb.mp4 2\na.mp4 1\na.mp4 1\n")
    for _ in range(2):  # a run reads its lists more than once
        assert len(read_labelled_list(listed)) == 4
    assert capsys.readouterr().out.splitlines() == [
        f"warning: {listed}: 2 duplicate lines (e.g. line 3 repeats line 1); each is used as often as it is listed"]
    write(tmp_path / "test.csv", "a.mp4 1\n")
    for _ in range(2):
        read_records("validation", lists_config(tmp_path))
    assert capsys.readouterr().out.count(f"note: no {tmp_path / 'val.csv'}; validating on") == 1
