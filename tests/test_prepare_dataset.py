"""scripts/prepare_dataset.py: generated folders laid out like each dataset's download (real folder and annotation
file names and formats, tiny real videos) to the launcher-ready folder, read back by the run's own list code."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from patches.cli.prepare_dataset import main as prepare_dataset_main
from patches.data.datasets import ClassificationDataConfig, build_dataset
from patches.data.lists import VideoListsConfig, read_records
from patches.grid import make_grid

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--short_side", "32", "--gop", "4", "--quiet"]


def _video(path: Path, seed: int, frames: int = 12) -> None:
    """A tiny real video in the container its suffix names (avi: MPEG-4 part 2, webm: VP9, mp4: H.264)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codec, options = {".avi": ("mpeg4", {}), ".webm": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}),
                      ".mp4": ("libx264", {"threads": "1"})}[path.suffix]
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width, stream.pix_fmt, stream.options = 48, 64, "yuv420p", options
        for _ in range(frames):
            frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _check_lists_load(dst: Path, data_set: str, classes: int) -> None:
    """The lists load as the fine-tuning run reads them (--data_path DST --data_root DST), and a clip decodes."""
    lists = VideoListsConfig(data_set=data_set, data_path=str(dst), data_root=str(dst), nb_classes=classes)
    for mode in ("train", "validation", "test"):
        records, nb_classes = read_records(mode, lists)
        assert nb_classes == classes and records and all(Path(r.path).is_file() for r in records)
    config = ClassificationDataConfig(lists=lists, sampling_rate=1)
    dataset, _ = build_dataset("validation", config, make_grid(num_frames=4, tubelet_size=2, input_size=32,
                                                               patch_size=16))
    video, label, _ = dataset[0]
    assert tuple(video.shape) == (3, 4, 32, 32) and 0 <= label < classes


@pytest.fixture(scope="module")
def ucf101_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("ucf101")
    lists = raw / "ucfTrainTestlist"
    lists.mkdir()
    classes = ["ApplyEyeMakeup", "Archery", "YoYo"]
    (lists / "classInd.txt").write_bytes("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)).encode())
    train, test = [], []
    for i, c in enumerate(classes):
        for g in (1, 8):
            name = f"{c}/v_{c}_g{g:02d}_c01.avi"
            _video(raw / "UCF-101" / name, seed=10 * i + g)
            (test if g == 1 else train).append(name)
    (lists / "trainlist01.txt").write_bytes("".join(f"{n} {classes.index(n.split('/')[0]) + 1}\r\n"
                                                    for n in train).encode())
    (lists / "testlist01.txt").write_bytes("".join(f"{n}\r\n" for n in test).encode())
    return raw


def test_ucf101_official_split_to_launcher_lists(ucf101_download: Path, tmp_path: Path) -> None:
    dst = tmp_path / "ucf101"
    assert prepare_dataset_main(["ucf101", "--src", str(ucf101_download), "--dst", str(dst), "--split", "1",
                                 *FLAGS]) == 0
    assert _lines(dst / "train.csv") == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.mp4 0",
                                         "Archery/v_Archery_g08_c01.mp4 1", "YoYo/v_YoYo_g08_c01.mp4 2"]
    assert _lines(dst / "val.csv") == _lines(dst / "test.csv") == [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.mp4 0", "Archery/v_Archery_g01_c01.mp4 1",
        "YoYo/v_YoYo_g01_c01.mp4 2"]
    assert _lines(dst / "classes.txt") == ["0 ApplyEyeMakeup", "1 Archery", "2 YoYo"]
    _check_lists_load(dst, "UCF101", 3)


def test_hmdb51_split_files_to_launcher_lists(tmp_path: Path) -> None:
    raw, dst = tmp_path / "raw", tmp_path / "hmdb51"
    splits = raw / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for i, c in enumerate(["brush_hair", "cartwheel"]):
        names = [f"{c}_clip_{k}_f_cm_np1_ri_med_0.avi" for k in range(3)]
        for k, name in enumerate(names):
            _video(raw / "hmdb51" / c / name, seed=10 * i + k)
        for split in (1, 2, 3):  # the official files: "name.avi id " lines, 1 train, 2 test, 0 unused
            ids = [1, 2, 0] if split == 1 else [2, 1, 1]
            (splits / f"{c}_test_split{split}.txt").write_text("".join(f"{n} {d} \n" for n, d in zip(names, ids)))
    assert prepare_dataset_main(["hmdb51", "--src", str(raw), "--dst", str(dst), *FLAGS]) == 0
    assert _lines(dst / "train.csv") == ["brush_hair/brush_hair_clip_0_f_cm_np1_ri_med_0.mp4 0",
                                         "cartwheel/cartwheel_clip_0_f_cm_np1_ri_med_0.mp4 1"]
    assert _lines(dst / "test.csv") == _lines(dst / "val.csv") == [
        "brush_hair/brush_hair_clip_1_f_cm_np1_ri_med_0.mp4 0", "cartwheel/cartwheel_clip_1_f_cm_np1_ri_med_0.mp4 1"]
    assert _lines(dst / "classes.txt") == ["0 brush_hair", "1 cartwheel"]
    _check_lists_load(dst, "HMDB51", 2)
    # split 2: the same prepared files where the splits share videos, at the same paths
    assert prepare_dataset_main(["hmdb51", "--src", str(raw), "--dst", str(dst), "--split", "2", *FLAGS]) == 0
    assert len(_lines(dst / "train.csv")) == 4 and len(_lines(dst / "test.csv")) == 2
    summary = json.loads((dst / "prepare_summary.json").read_text())
    assert summary["prepared_now"] == 2 and summary["already_prepared"] == 4  # split 1 left out its 0 ids


def test_kinetics400_annotation_csvs_to_launcher_lists(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw, dst = tmp_path / "k400", tmp_path / "data"
    (raw / "annotations").mkdir(parents=True)
    rows = {"train": [("abseiling", "aaa111", 10, 20), ("zumba", "bbb222", 0, 10), ("zumba", "gone000", 5, 15)],
            "validate": [("abseiling", "ccc333", 30, 40), ("zumba", "ddd444", 1, 11)],
            "test": [("", "eee555", 2, 12)]}  # the public test CSV has no labels
    for split, split_rows in rows.items():
        with open(raw / "annotations" / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"]
                            if split != "test" else ["youtube_id", "time_start", "time_end", "split"])
            for label, yid, start, end in split_rows:
                writer.writerow(([label] if split != "test" else []) + [yid, start, end, split])
                if yid != "gone000":  # a video gone from YouTube: annotated, never downloaded
                    folder = "val" if split == "validate" else split
                    _video(raw / folder / f"{yid}_{start:06d}_{end:06d}.mp4", seed=len(yid) + start)
    assert prepare_dataset_main(["k400", "--src", str(raw), "--dst", str(dst), *FLAGS]) == 0
    assert _lines(dst / "train.csv") == ["train/aaa111_000010_000020.mp4 0", "train/bbb222_000000_000010.mp4 1"]
    assert _lines(dst / "val.csv") == _lines(dst / "test.csv") == ["val/ccc333_000030_000040.mp4 0",
                                                                   "val/ddd444_000001_000011.mp4 1"]
    assert _lines(dst / "classes.txt") == ["0 abseiling", "1 zumba"]
    assert _lines(dst / "missing.csv") == ["split,video", "train,gone000_000005_000015"]
    assert "1 annotated video(s) not found" in capsys.readouterr().out
    _check_lists_load(dst, "Kinetics-400", 2)


@pytest.fixture(scope="module")
def ssv2_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("ssv2")
    (raw / "labels").mkdir()
    templates = ["Holding something", "Pushing something from left to right", "Putting something on something"]
    (raw / "labels" / "labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(templates)}))
    items = {"train": [(1, 0), (2, 1), (3, 2), (4, 0)], "validation": [(5, 1), (6, 2)]}
    for split, pairs in items.items():
        entries = [{"id": str(vid), "label": "holding a cup",
                    "template": templates[t].replace("something", "[something]"), "placeholders": ["cup"]}
                   for vid, t in pairs]
        (raw / "labels" / f"{split}.json").write_text(json.dumps(entries))
        for vid, _ in pairs:
            _video(raw / "20bn-something-something-v2" / f"{vid}.webm", seed=vid)
    (raw / "labels" / "test.json").write_text(json.dumps([{"id": "7"}]))
    _video(raw / "20bn-something-something-v2" / "7.webm", seed=7)
    return raw


def test_ssv2_label_json_to_launcher_lists(ssv2_download: Path, tmp_path: Path) -> None:
    dst = tmp_path / "ssv2"
    assert prepare_dataset_main(["ssv2", "--src", str(ssv2_download), "--dst", str(dst), *FLAGS]) == 0
    folder = "20bn-something-something-v2"
    assert _lines(dst / "train.csv") == [f"{folder}/{v}.mp4 {t}" for v, t in ((1, 0), (2, 1), (3, 2), (4, 0))]
    assert _lines(dst / "val.csv") == _lines(dst / "test.csv") == [f"{folder}/5.mp4 1", f"{folder}/6.mp4 2"]
    assert _lines(dst / "classes.txt")[1] == "1 Pushing something from left to right"
    assert not (dst / folder / "7.mp4").exists()  # the unlabelled test set is not prepared
    _check_lists_load(dst, "SSV2", 3)


def test_bad_download_layouts_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "raw").mkdir()
    for dataset in ("k400", "ssv2", "ucf101", "hmdb51"):
        assert prepare_dataset_main([dataset, "--src", str(tmp_path / "raw"), "--dst", str(tmp_path / "out"),
                                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "K400 annotations" in err and "SSv2 labels" in err and "classInd.txt" in err and "HMDB51" in err
    assert prepare_dataset_main(["ucf101", "--src", str(tmp_path), "--dst", str(tmp_path / "raw" / "x")]) == 2


@pytest.mark.slow
def test_a_one_epoch_finetuning_run_reads_the_prepared_lists(ucf101_download: Path, tmp_path: Path) -> None:
    dst = tmp_path / "ucf101"
    cmd = [sys.executable, str(ROOT / "scripts" / "prepare_dataset.py"), "ucf101", "--src", str(ucf101_download),
           "--dst", str(dst), *FLAGS]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # the launchers' data flags: --data_path DATA_ROOT --data_root DATA_ROOT (scripts/launch/common.sh)
    run = [sys.executable, str(ROOT / "run_class_finetuning.py"), "--model", "vit_micro_patch16_224",
           "--data_set", "UCF101", "--data_path", str(dst), "--data_root", str(dst), "--input_size", "32",
           "--num_frames", "4", "--sampling_rate", "1", "--batch_size", "3", "--epochs", "1", "--device", "cpu",
           "--num_workers", "0", "--output_dir", str(tmp_path / "out"), "--warmup_epochs", "0", "--short_side_size",
           "32", "--test_num_segment", "1", "--test_num_crop", "1"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "Test (1 x 1 views per video, 3 videos)" in out  # test.csv, read through the launchers' flags
    records = [json.loads(line) for line in (tmp_path / "out" / "log.txt").read_text().splitlines()]
    assert records[0]["epoch"] == 0 and "train_loss" in records[0]
