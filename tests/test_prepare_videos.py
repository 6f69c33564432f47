"""scripts/prepare_videos.py: real H.264 / VP9 / text files in, H.264 mp4 out, through the real encoders."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parents[1]

from patches.cli.prepare_videos import main as prepare_videos_main
from patches.data import prepare as prepare_videos
from patches.data.encoding import EncodeConfig, transcode_pyav
from patches.perf import bench_videos

SCRIPT = str(ROOT / "scripts" / "prepare_videos.py")


def _write(path: Path, size: tuple[int, int], frames: int, codec: str = "h264", seed: int = 0, **options) -> None:
    """A real video; ``options`` are the container's (e.g. movflags) or ``rotation`` for the display matrix."""
    rotation = options.pop("rotation", None)
    name = {"h264": "libx264", "vp9": "libvpx-vp9"}[codec]
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(name, rate=25)
        stream.height, stream.width, stream.pix_fmt = *size, "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8"} if codec == "vp9" else {"threads": "1"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame in bench_videos.render_video(seed, size, frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _info(path: Path) -> tuple[int, int, int, list[int]]:
    """(height, width, frames decoded, indices of the keyframes)."""
    with av.open(str(path)) as c:
        keys = [i for i, p in enumerate(sorted((p for p in c.demux(video=0) if p.pts is not None),
                                               key=lambda p: p.pts)) if p.is_keyframe]
    with av.open(str(path)) as c:
        frames = [f for f in c.decode(video=0)]
    return frames[0].height, frames[0].width, len(frames), keys


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """H.264 landscape, VP9 WebM, portrait, a file cut mid-stream, a text file named .mp4, in class folders."""
    src = tmp_path_factory.mktemp("raw")
    (src / "walk").mkdir()
    (src / "run").mkdir()
    _write(src / "walk" / "land.mp4", (64, 96), 40)
    _write(src / "run" / "clip.webm", (48, 80), 30, codec="vp9", seed=1)
    _write(src / "run" / "portrait.mp4", (96, 64), 20, seed=2)
    _write(src / "walk" / "whole.mp4", (64, 96), 40, seed=3, movflags="faststart")
    data = (src / "walk" / "whole.mp4").read_bytes()
    (src / "walk" / "cut.mp4").write_bytes(data[:len(data) * 6 // 10])
    (src / "walk" / "whole.mp4").unlink()
    (src / "run" / "notes.mp4").write_text("not a video\n")
    return src


@pytest.mark.slow
def test_mixed_folder_end_to_end_and_a_rerun_does_nothing(mixed: Path, tmp_path: Path) -> None:
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in mixed.rglob("*") if p.is_file()}
    dst = tmp_path / "out"
    cmd = [sys.executable, SCRIPT, str(mixed), str(dst), "--short_side", "32", "--gop", "8", "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 1, first.stderr
    assert _info(dst / "walk" / "land.mp4") == (32, 48, 40, [0, 8, 16, 24, 32])
    assert _info(dst / "run" / "clip.mp4")[:3] == (32, 54, 30)
    assert _info(dst / "run" / "portrait.mp4")[:3] == (48, 32, 20)
    with open(dst / "failures.csv", newline="") as f:
        failures = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(failures) == {"cut.mp4", "notes.mp4"}
    assert "truncated" in failures["cut.mp4"] and "cannot be read as a video" in failures["notes.mp4"]
    assert f"failed: {mixed / 'run' / 'notes.mp4'}: cannot be read as a video" in first.stdout
    assert (dst / "list.csv").read_text() == "run/clip.mp4 0\nrun/portrait.mp4 0\nwalk/land.mp4 1\n"
    assert (dst / "classes.txt").read_text() == "0 run\n1 walk\n"
    assert "5 videos: 3 prepared now, 0 already prepared, 2 failed" in first.stdout and "h of video" in first.stdout
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in mixed.rglob("*") if p.is_file()}
    outputs = {p: p.stat().st_mtime_ns for p in dst.rglob("*.mp4")}
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and "nothing to do" in second.stdout
    assert "0 prepared now, 3 already prepared, 2 failed" in second.stdout
    assert outputs == {p: p.stat().st_mtime_ns for p in dst.rglob("*.mp4")}


@pytest.mark.slow
def test_a_killed_run_is_finished_by_the_rerun(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _write(src / "a_long.mp4", (240, 320), 450)
    _write(src / "b_short.mp4", (64, 96), 10, seed=1)
    cmd = [sys.executable, SCRIPT, str(src), str(dst), "--short_side", "48", "--quiet", "--preset", "slow"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while not list(dst.glob(".a_long.mp4.*.prep.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    # At once: on an idle machine the whole transcode can take a fraction of a second.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(dst.glob(".a_long.mp4.*.prep.tmp")) and not (dst / "a_long.mp4").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "removed 1 unfinished output(s) of an earlier run" in done.stdout
    assert not list(dst.glob(".*.tmp"))
    assert _info(dst / "a_long.mp4")[:3] == (48, 64, 450) and _info(dst / "b_short.mp4")[:3] == (48, 72, 10)


def test_frame_rate_cap_long_side_cap_and_display_rotation(tmp_path: Path) -> None:
    _write(tmp_path / "rotated.mp4", (64, 96), 30, rotation=90)
    frames, seconds = transcode_pyav(str(tmp_path / "rotated.mp4"), str(tmp_path / "o.mp4"),
                                     EncodeConfig(short_side=320, max_side=40, max_fps=10))
    assert (frames, seconds) == (12, 1.2)  # 30 frames at 25 fps are 1.2 s: 12 frames at 10 fps
    height, width, decoded, _ = _info(tmp_path / "o.mp4")
    assert (height, width, decoded) == (40, 26, 12)  # turned upright (portrait), long side 40, never upscaled
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert not c.streams.audio and c.streams.video[0].average_rate == 10


def test_list_file_and_label_csv_inputs_and_usage_errors(mixed: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    listing = tmp_path / "in.csv"
    listing.write_text(f"{mixed / 'walk' / 'land.mp4'} 7\n{mixed / 'run' / 'portrait.mp4'} 3\n")
    summary = prepare_videos.prepare(str(listing), str(tmp_path / "a"), EncodeConfig(short_side=32), progress=False)
    assert summary["prepared_now"] == 2 and summary["failed"] == 0 and summary["hours_of_video"] > 0
    assert (tmp_path / "a" / "list.csv").read_text() == "walk/land.mp4 7\nrun/portrait.mp4 3\n"  # in the list's order
    labels = tmp_path / "labels.csv"
    labels.write_text("video,label\nland,jump\nrun/portrait.mp4,sit\n")
    prepare_videos.prepare(str(listing), str(tmp_path / "b"), EncodeConfig(short_side=32), labels="csv",
                           label_csv=str(labels), progress=False)
    assert (tmp_path / "b" / "list.csv").read_text() == "walk/land.mp4 0\nrun/portrait.mp4 1\n"
    assert prepare_videos_main([str(mixed), str(mixed / "out"), "--quiet"]) == 2
    assert "must not be SRC" in capsys.readouterr().err
    (tmp_path / "twins").mkdir()
    for name in ("x.mp4", "x.webm"):
        (tmp_path / "twins" / name).write_bytes(b"0")
    assert prepare_videos_main([str(tmp_path / "twins"), str(tmp_path / "c"), "--quiet"]) == 2
    assert "would both be written to" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        prepare_videos_main([str(mixed), str(tmp_path / "d"), "--gop", "0"])
    assert e.value.code == 2
