"""Fault suite: bad videos, bad list lines, bad flags, bad checkpoints, and failures while running.

Every bad input is built for real (mp4s written with PyAV and cut or corrupted, pickles that would
create a file, a tmpfs that fills up) and given to the real scripts in subprocesses. The scripts'
runs are independent of each other, so a small thread pool starts them all at once when the first
test needs one; each test then waits for its own.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import launch_helpers as lh
from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.reading import read_pth_checkpoint
from patches.checkpoints.writing import checkpoint_state, save_checkpoint
from patches.data import health as data_health
from patches.data.datasets import PretrainingDataConfig, VideoClsEvalDataset, VideoMAEPretrainDataset
from patches.data.demo import render_clip, write_mp4
from patches.data.lists import VideoListsConfig, VideoRecord
from patches.data.masking import MaskGenerator
from patches.data.unreadable import UnreadableDataError, UnreadableVideoWarning
from patches.grid import make_grid
from patches.train.stop_signals import EXIT_CTRL_C, EXIT_REQUEUE, StopSignals

ROOT = Path(__file__).resolve().parents[1]
GRID = make_grid(8, 2, 32, 8)  # what the CLI flags below describe
PRETRAIN = ["--model", "pretrain_videomae_micro_patch16_224", "--decoder_depth", "1", "--input_size", "32",
            "--patch_size", "8", "--num_frames", "8", "--sampling_rate", "2", "--device", "cpu", "--print_freq", "1",
            "--warmup_epochs", "0", "--num_workers", "0"]
FINETUNE = ["--model", "vit_micro_patch16_224", "--input_size", "32", "--patch_size", "8", "--num_frames", "8",
            "--sampling_rate", "2", "--device", "cpu", "--num_workers", "0", "--data_set", "custom"]

# What each broken file is, and the reason the loader gives for it.
BROKEN = {
    "missing.mp4": "file not found",
    "zero bytes.mp4": "empty file (0 bytes)",
    "cut_midstream.mp4": "frames cannot be decoded, the file is probably truncated or corrupt",
    "random_bytes.mp4": "cannot be opened as a video",
}
EXTRA_BROKEN = {  # not in the training run's list; checked directly
    "cut_index_lost.mp4": "cannot be opened as a video",
    "width48.mp4": "decord returns frames of the wrong size for this frame width",
    "a_folder.mp4": "is a folder, not a video file",
}
ODD_BUT_READABLE = ["short 5 frames.mp4", "single_frame.mp4", "gray.mkv", "odd_63x65.mp4", "vfr.mp4"]


# ---------------------------------------------------------------- building the bad inputs

def encode(path: Path, frames: np.ndarray, codec: str = "libx264", pix_fmt: str = "yuv420p",
           pts_ms: list[int] | None = None, faststart: bool = False) -> Path:
    """Encode frames ([T, H, W, 3] RGB, or [T, H, W] for gray) with PyAV; ``pts_ms`` gives frame times."""
    import av
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream(codec, rate=25)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = pix_fmt
        s.options = {"threads": "1", "crf": "16"} if codec == "libx264" else {}
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="gray" if f.ndim == 2 else "rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


def stream_facts(path: Path) -> tuple[str, int, int, set[int]]:
    """(pixel format, width, height, distinct frame-time steps) as stored in the file."""
    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = [f.pts for f in c.decode(s)]
        return s.codec_context.pix_fmt, s.width, s.height, {b - a for a, b in zip(pts, pts[1:])}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of odd-but-readable and broken videos, each checked to be what its name says."""
    d = tmp_path_factory.mktemp("media")
    clip = render_clip(1, 7, num_frames=32, size=(64, 64))
    write_mp4(d / "short 5 frames.mp4", clip[:5])
    write_mp4(d / "single_frame.mp4", clip[:1])
    encode(d / "gray.mkv", clip.mean(-1).astype(np.uint8), codec="ffv1", pix_fmt="gray")
    encode(d / "odd_63x65.mp4", render_clip(2, 7, num_frames=32, size=(63, 65)), pix_fmt="yuv444p")
    encode(d / "vfr.mp4", clip, pts_ms=np.cumsum(np.random.default_rng(0).integers(10, 120, 32)).tolist())
    assert stream_facts(d / "gray.mkv")[0] == "gray"
    assert stream_facts(d / "odd_63x65.mp4")[1:3] == (65, 63)
    assert len(stream_facts(d / "vfr.mp4")[3]) > 5, "frame times must vary"

    (d / "zero bytes.mp4").write_bytes(b"")
    (d / "random_bytes.mp4").write_bytes(np.random.default_rng(1).bytes(20_000))
    whole = (encode(d / "whole.mp4", clip)).read_bytes()  # index (moov) at the end, as written by default
    (d / "cut_index_lost.mp4").write_bytes(whole[:len(whole) // 2])
    faststart = encode(d / "faststart.mp4", clip, faststart=True).read_bytes()  # index first: opens, then fails
    media_data = faststart.index(b"mdat")  # cut a third into the frames themselves, past the whole index
    (d / "cut_midstream.mp4").write_bytes(faststart[:media_data + (len(faststart) - media_data) // 3])
    write_mp4(d / "width48.mp4", render_clip(0, 7, num_frames=16, size=(64, 48)))
    (d / "a_folder.mp4").mkdir()
    return d


@pytest.fixture(scope="module")
def broken_list(media: Path, demo_root: Path) -> Path:
    """31 good demo clips, the 5 odd-but-readable videos and the 4 broken ones: 40 entries, 10% broken."""
    good = [line.split()[0] for split in ("train", "val", "test")
            for line in (demo_root / f"{split}.csv").read_text().splitlines()][:31]
    lines = [str(demo_root / rel) for rel in good] + ODD_BUT_READABLE + list(BROKEN)
    assert len(lines) == 40
    return write_text(media / "list.csv", "\n".join(lines) + "\n")


def write_text(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


class Touch:
    """Unpickling this creates ``marker`` (through pathlib.Path.touch): a stand-in for any payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class Shell:
    """Unpickling this runs a shell command (os.system) that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two malicious checkpoints (torch.save archive; plain pickle) and the markers they would create.

    Copies aimed at control markers are loaded unsafely here, to show the payloads really work.
    """
    d = tmp_path_factory.mktemp("evil")
    def write_both(name: str) -> SimpleNamespace:
        ns = SimpleNamespace(torch_marker=d / f"{name}_created_by_torch_pickle", torch_file=d / f"{name}_torch.pth",
                             shell_marker=d / f"{name}_created_by_shell", shell_file=d / f"{name}_pickle.pth")
        torch.save({"model": {"w": torch.zeros(2)}, "args": Touch(ns.torch_marker), "epoch": 0}, ns.torch_file)
        with open(ns.shell_file, "wb") as f:
            pickle.dump({"model": Shell(ns.shell_marker)}, f, protocol=2)
        return ns

    control = write_both("control")
    torch.load(control.torch_file, weights_only=False)
    with open(control.shell_file, "rb") as f:
        pickle.load(f)
    assert control.torch_marker.exists() and control.shell_marker.exists(), "the payloads must really run"
    return write_both("evil")


# ---------------------------------------------------------------- the scripts, run concurrently

def run(script: str, *flags: str, cwd: Path | None = None, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, flags)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode
    if ok == 0:
        subprocess.run(["umount", str(where)], check=True)
    return ok == 0


@pytest.fixture(scope="module")  # not autouse: the fast tier (-m "not slow") must not start these runs
def cli(media: Path, broken_list: Path, demo_root: Path, evil: SimpleNamespace,
        tmp_path_factory: pytest.TempPathFactory):
    """Start every script run of this module in a pool of 3; yields ``{name: Future[CompletedProcess]}``."""
    tmp = tmp_path_factory.mktemp("runs")
    a_file = write_text(tmp / "a_file", "not a folder")
    ft_lists = tmp / "ft_lists"
    ft_lists.mkdir()
    demo_test = (demo_root / "test.csv").read_text().splitlines()
    write_text(ft_lists / "test.csv", "\n".join(demo_test[:3] + ["videos/no_label.mp4", "videos/x.mp4 abc",
                                                                 "videos/y.mp4 8"]) + "\n")
    eval_lists = tmp / "eval_lists"  # validation and test: the 8 demo test clips and 4 broken videos
    eval_lists.mkdir()
    write_text(eval_lists / "train.csv", (demo_root / "train.csv").read_text())
    broken_eval = [f"{media / name} {i}" for i, name in enumerate(BROKEN)]
    for name in ("val.csv", "test.csv"):
        write_text(eval_lists / name, "\n".join(demo_test[:8] + broken_eval) + "\n")
    mnt = tmp / "tmpfs"
    mountable = can_mount_tmpfs(mnt)
    pool = ThreadPoolExecutor(3)
    jobs: dict[str, Future] = {}
    train_out = tmp / "train_broken"
    jobs["train_broken"] = pool.submit(
        run, "run_mae_pretraining.py", *PRETRAIN, "--data_path", broken_list, "--output_dir", train_out,
        "--batch_size", "8", "--epochs", "1", "--max_bad_fraction", "0.2", "--num_workers", "2")

    def after_training(name: str, fn):
        def job():
            result = jobs["train_broken"].result()
            assert result.returncode == 0, result.stderr[-3000:]
            return fn(train_out / "checkpoint-0.pth")
        jobs[name] = pool.submit(job)

    def nan_run(ckpt: Path):
        out = tmp / "nan"
        out.mkdir()
        shutil.copy(ckpt, out / ckpt.name)
        return run("run_mae_pretraining.py", *PRETRAIN, "--data_path", demo_root / "train.csv", "--data_root",
                   demo_root, "--output_dir", out, "--batch_size", "8", "--epochs", "3", "--lr", "1e8"), out, ckpt

    def disk_full_run(ckpt: Path):
        if not mountable:
            return None
        # room for one checkpoint and the logs, not for a second checkpoint
        size = ckpt.stat().st_size * 3 // 2 + 2 ** 20
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
        shutil.copy(ckpt, mnt / ckpt.name)
        return run("run_mae_pretraining.py", *PRETRAIN, "--data_path", demo_root / "train.csv", "--data_root",
                   demo_root, "--output_dir", mnt, "--batch_size", "8", "--epochs", "2"), mnt

    jobs["broken_eval"] = pool.submit(
        run, "run_class_finetuning.py", *FINETUNE, "--data_path", eval_lists, "--data_root", demo_root, "--nb_classes",
        "8", "--batch_size", "4", "--epochs", "1", "--test_num_segment", "2", "--test_num_crop", "2", "--output_dir",
        tmp / "broken_eval")
    jobs["too_many_bad"] = pool.submit(
        run, "run_mae_pretraining.py", *PRETRAIN, "--data_path", broken_list, "--output_dir", tmp / "too_many",
        "--batch_size", "8", "--epochs", "1")  # default --max_bad_fraction 0.05: 2 of 40
    jobs["check_broken"] = pool.submit(
        run, "run_mae_pretraining.py", *PRETRAIN, "--data_path", broken_list, "--output_dir", tmp / "check",
        "--check_data")
    # The flag checks report every problem at once, so one run per script covers many flags.
    jobs["flags_pretrain"] = pool.submit(
        run, "run_mae_pretraining.py", *PRETRAIN, "--data_path", demo_root / "train.csv", "--data_root", demo_root,
        "--batch_size", "17", "--mask_ratio", "1.0", "--output_dir", a_file / "sub", "--log_dir", "/proc/no/such/tb",
        "--amp", "fp16", "--max_bad_fraction", "-0.5", "--opt", "nosuch", "--lr", "-1", "--model",
        "pretrain_videomae_nano", "--resume", tmp / "no_such.pth", "--clip_grad", "-1", "--num_workers", "-1")
    jobs["flags_finetune"] = pool.submit(
        run, "run_class_finetuning.py", *FINETUNE, "--data_path", demo_root, "--input_size", "30", "--batch_size",
        "4", "--update_freq", "5", "--test_num_segment", "0", "--test_num_crop", "0", "--finetune",
        tmp / "no_such_ckpt.pth", "--layer_decay", "1.5", "--smoothing", "2", "--amp", "fp16", "--output_dir",
        "/proc/no/such/out", "--eval_data_path", tmp / "no_such_folder")
    jobs["lists_and_eval"] = pool.submit(  # --eval reads only the test list
        run, "run_class_finetuning.py", *FINETUNE, "--eval", "--data_path", ft_lists, "--nb_classes", "8",
        "--output_dir", tmp / "nothing_here")
    jobs["evil_finetune"] = pool.submit(
        run, "run_class_finetuning.py", *FINETUNE, "--data_path", demo_root, "--batch_size", "4", "--epochs", "1",
        "--finetune", evil.torch_file, "--output_dir", tmp / "evil_ft")
    jobs["evil_resume"] = pool.submit(
        run, "run_mae_pretraining.py", *PRETRAIN, "--data_path", demo_root / "train.csv", "--data_root", demo_root,
        "--batch_size", "4", "--resume", evil.shell_file, "--output_dir", tmp / "evil_resume")
    if (ROOT / "run_videomae_vis.py").is_file():
        jobs["evil_vis"] = pool.submit(
            run, "run_videomae_vis.py", "--img_path", demo_root / "videos" / "train_00000_move_right.mp4",
            "--model_path", evil.torch_file, "--save_path", tmp / "vis", "--device", "cpu")
    after_training("nan", nan_run)
    after_training("disk_full", disk_full_run)
    try:
        yield jobs
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if mountable:
            subprocess.run(["umount", str(mnt)], capture_output=True)


def failed_cleanly(result: subprocess.CompletedProcess) -> str:
    """stderr of a run that must have stopped with a message: non-zero status, no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr


# ---------------------------------------------------------------- 1. bad videos

def test_odd_but_readable_videos_are_used(media: Path) -> None:
    """Short (looped), single-frame, grayscale, odd-sized and variable-frame-rate videos all give clips."""
    write_text(media / "odd.csv", "\n".join(ODD_BUT_READABLE) + "\n")
    ds = VideoMAEPretrainDataset(media / "odd.csv", None, GRID, 2, MaskGenerator(GRID, "tube", 0.75), seed=0)
    ds.report_bad = True
    for i in range(len(ds)):
        (video, _, _), bad = ds[i]
        assert bad == () and video.shape == (3, 8, 32, 32) and torch.isfinite(video).all(), ODD_BUT_READABLE[i]


@pytest.mark.parametrize("name", sorted({**BROKEN, **EXTRA_BROKEN}))
def test_each_broken_video_has_its_reason(media: Path, name: str) -> None:
    reason = data_health.check_video(str(media / name))
    assert reason is not None and reason.startswith({**BROKEN, **EXTRA_BROKEN}[name]), reason


def test_unreadable_video_is_replaced_from_the_items_rng(media: Path) -> None:
    write_text(media / "mixed.csv", "zero bytes.mp4\nrandom_bytes.mp4\nshort 5 frames.mp4\nsingle_frame.mp4\n")
    ds = VideoMAEPretrainDataset(media / "mixed.csv", None, GRID, 2, MaskGenerator(GRID, "tube", 0.75), seed=3)
    ds.report_bad = True
    (first, _, _), bad = ds[0]
    (again, _, _), bad_again = ds[0]
    assert torch.equal(first, again) and bad == bad_again, "the replacement is drawn from the item's own RNG"
    assert bad[0] == (str(media / "zero bytes.mp4"), "empty file (0 bytes)")
    assert all(path != str(media / "short 5 frames.mp4") for path, _ in bad)

    ds.report_bad = False  # used directly: a warning per file, once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        ds[0]
        ds[0]
    zero = [w for w in caught if issubclass(w.category, UnreadableVideoWarning) and "zero bytes.mp4" in str(w.message)]
    assert len(zero) == 1


def test_no_readable_video_left_names_the_files(media: Path) -> None:
    write_text(media / "all_bad.csv", "\n".join(BROKEN) + "\n")
    ds = VideoMAEPretrainDataset(media / "all_bad.csv", None, GRID, 2, MaskGenerator(GRID, "tube", 0.75), seed=0)
    with pytest.raises(UnreadableDataError, match=r"no readable video for this item after trying 11: .*--check_data"):
        ds[0]


def test_eval_views_of_an_unreadable_video_are_left_out_never_replaced(media: Path) -> None:
    from patches.data.unreadable import CollateWithBad
    records = [VideoRecord(str(media / "random_bytes.mp4"), 0, "list", 1),
               VideoRecord(str(media / "short 5 frames.mp4"), 1, "list", 2)]
    ds = VideoClsEvalDataset(records, GRID, 2, num_segments=2, num_crops=3, with_view=True)
    ds.report_bad = True
    item, bad = ds[4]  # video 0, segment 1, crop 1
    assert item is None and len(bad) == 1 and bad[0][0].endswith("random_bytes.mp4")
    (videos, labels, video_index, views), bad = CollateWithBad()([ds[4], ds[1 * 6 + 4]])
    assert video_index.tolist() == [1] and views.tolist() == [4] and len(bad) == 1, "only the readable view"


def test_tracker_warns_once_counts_per_epoch_and_stops(capsys: pytest.CaptureFixture) -> None:
    epoch = [("b0", [("x.mp4", "file not found")]), ("b1", [("x.mp4", "file not found"), ("y.mp4", "empty")]),
             ("b2", [])]
    tracker = data_health.BadVideoTracker(epoch, num_videos=40, max_bad_fraction=0.05, source="list.csv")
    assert list(tracker) == ["b0", "b1", "b2"]
    assert tracker.end_epoch() == {"skipped_videos": 3, "bad_video_files": 2, "bad_videos": ["x.mp4", "y.mp4"]}
    assert list(tracker) == ["b0", "b1", "b2"]  # a second epoch: counted again, not warned again
    assert tracker.end_epoch()["skipped_videos"] == 3
    out = capsys.readouterr().out
    assert out.count("warning: skipping unreadable video x.mp4: file not found") == 1
    assert out.count("warning: skipping unreadable video y.mp4") == 1

    tracker.loader = [("b3", [("z.mp4", "truncated")])]  # a third file is more than 5% of 40
    with pytest.raises(data_health.TooManyBadVideos, match=r"(?s)3 of the 40 videos of list\.csv cannot be read, more "
                                                             r"than --max_bad_fraction 0\.05 allows \(2\).*x\.mp4"):
        list(tracker)


@pytest.mark.slow
def test_broken_tenth_of_the_data_is_skipped_and_reported_exactly(cli, media: Path) -> None:
    result = cli["train_broken"].result()
    assert result.returncode == 0, result.stderr[-3000:]
    broken = {str(media / name) for name in BROKEN}
    warned = re.findall(r"^warning: skipping unreadable video (.+?): ", result.stdout, flags=re.M)
    assert sorted(warned) == sorted(broken), "each broken file warned exactly once, and nothing else"
    assert not any(name in result.stdout for name in ODD_BUT_READABLE)
    out = Path(re.search(r"Saved (\S+)checkpoint-0\.pth", result.stdout).group(1))
    record = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert record["bad_videos"] == sorted(broken) and record["bad_video_files"] == 4
    assert record["skipped_videos"] >= 4  # a replacement may itself be broken

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("data/skipped_videos")] == [record["skipped_videos"]]


@pytest.mark.slow
def test_too_many_broken_videos_stop_the_run_with_examples(cli, media: Path) -> None:
    err = failed_cleanly(cli["too_many_bad"].result())
    assert "of the 40 videos of" in err and "more than --max_bad_fraction 0.05 allows (2)" in err
    assert any(str(media / name) in err for name in BROKEN)
    assert "--check_data" in err


@pytest.mark.slow
def test_evaluation_scores_readable_videos_only_and_names_the_rest(cli, media: Path) -> None:
    result = cli["broken_eval"].result()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert out.index(f"warning: 1 of the 12 validation videos do not exist: {media / 'missing.mp4'}") < \
        out.index("Epoch [1/1]"), "missing evaluation videos are named before training"
    assert "(left out of the figures; each file is reported once)" in out and "replaced by another" not in out
    folder = Path(re.search(r"Saved (\S+)checkpoint-0\.pth", out).group(1))
    epoch, test = [json.loads(line) for line in (folder / "log.txt").read_text().splitlines()]
    broken = sorted(str(media / name) for name in BROKEN)
    assert epoch["val_count"] + epoch["val_bad_video_files"] == 12 and epoch["val_bad_videos"] == \
        sorted(epoch["val_bad_videos"]) and set(epoch["val_bad_videos"]) >= set(broken) - {str(media / "cut_midstream.mp4")}
    assert (test["test_videos"], test["test_views_per_video"], test["test_left_out"]) == (8, 4.0, 4)
    assert test["test_left_out_videos"] == broken
    assert "Test (2 x 2 views per video, 8 videos; 4 unreadable videos left out: " in out
    assert read_pth_checkpoint(folder / "checkpoint-best.pth")["best_acc1"] == epoch["val_acc1"]


@pytest.mark.slow
def test_check_data_reports_every_bad_video(cli, media: Path, broken_list: Path) -> None:
    result = cli["check_broken"].result()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for line, (name, reason) in enumerate(BROKEN.items(), start=37):
        assert f"bad video: {media / name} ({broken_list}, line {line}): {reason}" in result.stdout
    assert not any(name in result.stdout for name in ODD_BUT_READABLE)
    assert "found 4 unreadable of 40 videos and 0 bad list lines" in result.stderr
    assert "Model" not in result.stdout, "no model is built"


def test_check_data_on_clean_data_passes(demo_root: Path, capsys: pytest.CaptureFixture) -> None:
    lists = VideoListsConfig(data_set="custom", data_path=str(demo_root))
    assert data_health.run_check_data(lists, num_workers=0, fname_tmpl="img_{:05}.jpg") == 32
    assert "check_data: all 32 videos are readable" in capsys.readouterr().out


def test_check_data_on_a_clean_pretraining_list_passes(demo_root: Path, capsys: pytest.CaptureFixture) -> None:
    data = PretrainingDataConfig(data_path=str(demo_root / "train.csv"), sampling_rate=2, data_root=str(demo_root))
    assert data_health.run_check_data(data, num_workers=0) == 16
    assert "check_data: all 16 videos are readable" in capsys.readouterr().out


# ---------------------------------------------------------------- 2 and 3. bad list lines and bad flags

@pytest.mark.slow
def test_bad_list_lines_stop_the_run_up_front(cli) -> None:
    err = failed_cleanly(cli["lists_and_eval"].result())
    assert "test.csv, line 4: no label in 'videos/no_label.mp4'" in err
    assert "test.csv, line 5: the last field 'abc' of 'videos/x.mp4 abc' is not an integer label" in err
    assert "test.csv, line 6: label 8 is out of range for --nb_classes 8" in err


def test_pretraining_list_is_checked_up_front(tmp_path: Path) -> None:
    from patches.config import checks as cli_args
    lst = write_text(tmp_path / "bad.csv", "a.mp4\nb.mp4 -4\nc.mp4\n")
    args = SimpleNamespace(data_path=str(lst), data_root=None, check_data=False, batch_size=2, update_freq=1)
    assert cli_args.pretraining_data_problems(args) == [f"{lst}, line 2: negative label -4"]
    write_text(lst, "a.mp4\nc.mp4\n")
    assert cli_args.pretraining_data_problems(args) == []
    args.batch_size = 3
    assert cli_args.pretraining_data_problems(args) == [
        f"--batch_size 3 x 1 processes = 3 videos per update, more than the 2 videos of {lst}"]


@pytest.mark.slow
@pytest.mark.parametrize("run_name, messages", [
    ("flags_pretrain", ["--batch_size 17 x 1 processes = 17 videos per update, more than the 16 videos",
                        "--mask_ratio must be inside (0, 1), got 1.0", "a_file/sub is not writable (Not a directory)",
                        "--log_dir /proc/no/such/tb is not writable", "--amp fp16 needs a CUDA device",
                        "--max_bad_fraction must be in [0, 1], got -0.5", "--opt 'nosuch' is not a timm optimizer",
                        "--lr must be positive, got -1.0", "--model 'pretrain_videomae_nano' is not a pre-training",
                        "--resume", "no_such.pth does not exist", "--clip_grad must be positive",
                        "--num_workers must be 0 or more, got -1"]),
    ("flags_finetune", ["--input_size height 30 is not divisible by --patch_size 8",
                        "--batch_size 4 x --update_freq 5 x 1 processes = 20 videos per update, more than the 16",
                        "--test_num_segment must be at least 1, got 0", "--test_num_crop must be at least 1, got 0",
                        "--finetune", "no_such_ckpt.pth does not exist", "--layer_decay must be in (0, 1], got 1.5",
                        "--smoothing must be in [0, 1], got 2.0", "--amp fp16 needs a CUDA device",
                        "--output_dir /proc/no/such/out is not writable", "--eval_data_path",
                        "no_such_folder does not exist"]),
    ("lists_and_eval", ["--eval has nothing to test: no --resume, no --finetune and no checkpoint"]),
])
def test_inconsistent_flags_fail_up_front_naming_each(cli, run_name: str, messages: list[str]) -> None:
    result = cli[run_name].result()
    err = failed_cleanly(result)
    for message in messages:
        assert message in err, f"{message!r} not in:\n{err}"
    assert err.startswith("error: ") and "Patch grid" not in result.stdout, "stopped before data and model"


# ---------------------------------------------------------------- 4. bad checkpoints

def test_bad_checkpoint_files_get_clear_messages(tmp_path: Path, evil: SimpleNamespace, media: Path) -> None:
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"model": {"w": torch.randn(1000)}, "epoch": 1})
    whole = good.read_bytes()
    cases = {
        "text.pth": (b"epoch 3, looks fine\n", "is not a PyTorch checkpoint"),
        "random.pth": (np.random.default_rng(2).bytes(4096), "is not a PyTorch checkpoint"),
        "video.pth": ((media / "whole.mp4").read_bytes(), "is not a PyTorch checkpoint"),
        "truncated.pth": (whole[:len(whole) // 2], "is truncated or corrupt"),
        "empty.pth": (b"", "is truncated or corrupt (0 bytes)"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(message)):
            read_pth_checkpoint(write_text(tmp_path / name, data))
    with pytest.raises(CheckpointError, match=r"refers to Python code or classes \(getattr\) .*nothing from "
                                                    r"the file was run"):
        read_pth_checkpoint(evil.torch_file)
    with pytest.raises(CheckpointError, match=r"\(posix\.system\)"):
        read_pth_checkpoint(evil.shell_file)
    assert not evil.torch_marker.exists() and not evil.shell_marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("run_name, flag", [("evil_finetune", "--finetune"), ("evil_resume", "--resume"),
                                            ("evil_vis", "--model_path")])
def test_pickle_with_code_never_runs(cli, evil: SimpleNamespace, run_name: str, flag: str) -> None:
    if run_name not in cli:
        pytest.skip("run_videomae_vis.py is not in this checkout")
    err = failed_cleanly(cli[run_name].result())
    assert "refused to load" in err and "nothing from the file was run" in err, err
    assert ("(posix.system)" if flag == "--resume" else "(getattr)") in err
    assert not evil.torch_marker.exists() and not evil.shell_marker.exists()


# ---------------------------------------------------------------- 5. failures while running

def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(cli) -> None:
    result, out, source = cli["nan"].result()
    err = failed_cleanly(result)
    assert re.search(r"error: loss is (nan|inf) at epoch 1, step \d+ of the epoch \(global step \d+\); stopping "
                     r"without saving, the last checkpoint on disk is intact", err), err
    assert "continuing at epoch 1" in result.stdout
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["checkpoint-0.pth"]
    assert digest(out / "checkpoint-0.pth") == digest(source)


@pytest.mark.slow
def test_full_disk_during_a_save_leaves_the_checkpoints_intact(cli) -> None:
    outcome = cli["disk_full"].result()
    if outcome is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    result, out = outcome
    err = failed_cleanly(result)
    assert (f"error: could not save checkpoint {out / 'checkpoint-1.pth'}: no space left on the device; nothing was "
            f"replaced; checkpoints saved earlier in {out} are intact") in err
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["checkpoint-0.pth"], "no temporary file left"
    assert read_pth_checkpoint(out / "checkpoint-0.pth")["epoch"] == 0


# ---------------------------------------------------------------- 6. signals in every phase (real processes)

@pytest.mark.slow
def test_a_stop_signal_during_the_final_test_exits_75_and_the_rerun_only_tests(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flags = [*lh.FINETUNE, "--data_path", str(demo_root), "--batch_size", "4", "--epochs", "1", "--num_workers", "0",
             "--output_dir", str(out), "--disable_eval_during_finetuning"]  # (stopping in validation: test_trainer)
    # 2 x 2 views of 8 videos, 8 test batches: the signal lands while batches are left, however loaded the CPU
    status, text = lh.run_and_signal("run_class_finetuning.py", flags, "Test [1/", signal.SIGUSR1)
    assert status == EXIT_REQUEUE, text[-3000:]
    assert "stopped by SIGUSR1 during the final test after saving" in text and "Traceback" not in text
    assert (out / "checkpoint-0.pth").is_file(), "training is kept"
    assert not list(out.glob("test_results_rank*")) and not list(out.glob(".*.tmp")), "no partial test results"

    again = lh.run("run_class_finetuning.py", flags)
    assert "continuing at epoch 1" in again.stdout and "Epoch [" not in again.stdout, "nothing is trained again"
    assert "Test (2 x 2 views per video, 8 videos)" in again.stdout
    logged = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r.get("epoch") for r in logged] == [0, None] and "test_acc1" in logged[1]


@pytest.mark.slow
def test_ctrl_c_saves_latest_and_exits_130_without_a_traceback(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stray = out / f".checkpoint-latest.pth.{2 ** 22 + 17}.tmp"  # above pid_max's default: its writer is gone
    stray.write_bytes(b"\0" * 3_000_000)
    flags = [*lh.PRETRAIN, "--data_path", str(demo_root / "train.csv"), "--data_root", str(demo_root), "--batch_size",
             "4", "--epochs", "1", "--num_workers", "0", "--output_dir", str(out)]
    status, text = lh.run_and_signal("run_mae_pretraining.py", flags, "Epoch [1/1] [1/4]", signal.SIGINT)
    assert status == EXIT_CTRL_C, text[-3000:]
    assert "Ctrl-C: stopping at the next step boundary (training saves checkpoint-latest first)" in text and "Traceback" not in text
    assert "stopped by SIGINT after saving" in text
    assert f"Removed 1 temporary files (3.0 MB) that interrupted saves left in {out}" in text
    assert not stray.exists()
    assert read_pth_checkpoint(out / "checkpoint-latest.pth")["next_batch"] >= 1


def test_a_second_ctrl_c_stops_at_once_with_status_130() -> None:
    from patches.train.trainer import launch

    def body(device: str | None) -> None:
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGINT)  # the first is recorded ...
            assert stop.received == signal.SIGINT
            signal.raise_signal(signal.SIGINT)  # ... the second stops
            raise AssertionError("not reached")

    with pytest.raises(SystemExit) as stopped:
        launch(body, "cpu")
    assert stopped.value.code == EXIT_CTRL_C


def test_flag_values_that_used_to_get_through_are_refused_naming_the_flag(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    from patches.cli import pretrain as run_mae_pretraining
    from patches.config import checks as cli_args
    a_file = write_text(tmp_path / "a_file", "not a folder")
    cases = {
        ("--lr", "nan"): "--lr must be a finite number, got nan",
        ("--lr", "inf"): "--lr must be a finite number, got inf",
        ("--lr", "1e-3", "--min_lr", "1e-2"): "--min_lr 0.01 is above --lr 0.001: the cosine would raise the learning",
        ("--output_dir", str(a_file)): f"--output_dir {a_file} is a file, not a folder",
    }
    for flags, message in cases.items():
        args = run_mae_pretraining.get_args_parser().parse_args(
            [*PRETRAIN, "--output_dir", str(tmp_path / "out"), *flags])
        assert any(message in problem for problem in cli_args.validate_common(args, ())[2]), flags
    long_warmup = run_mae_pretraining.get_args_parser().parse_args([*PRETRAIN, "--output_dir", str(tmp_path / "out"),
                                                                   "--warmup_epochs", "5", "--epochs", "1"])
    capsys.readouterr()
    assert cli_args.validate_common(long_warmup, ())[2] == []  # allowed, with a warning up front
    assert ("warning: --warmup_epochs 5 is longer than the run's --epochs 1: the warmup is cut to the run, so the "
            "learning rate rises all run long and never decays") in capsys.readouterr().out


def test_a_checkpoint_of_another_model_size_is_refused_before_data_and_model(demo_root: Path, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    from patches.cli import pretrain as run_mae_pretraining
    from patches.models.factory import create_video_model
    tiny = create_video_model("pretrain_videomae_tiny_patch16_224", grid=GRID, decoder_depth=1)
    args = run_mae_pretraining.get_args_parser().parse_args(
        [*PRETRAIN, "--data_path", str(demo_root / "train.csv"), "--data_root", str(demo_root), "--batch_size", "4",
         "--output_dir", str(tmp_path / "out"), "--resume", str(tmp_path / "tiny.pth")])
    save_checkpoint(tmp_path / "tiny.pth", checkpoint_state(tiny, GRID, args, 0))
    with pytest.raises(SystemExit, match=r"^error: .*tiny\.pth does not fit --model pretrain_videomae_micro_patch16_224 "
                                         r"at this grid \(\d+ tensors of another shape"):
        run_mae_pretraining.main(args)
    printed = capsys.readouterr().out
    assert "Patch grid" in printed and "Model " not in printed and "videos, " not in printed, printed
