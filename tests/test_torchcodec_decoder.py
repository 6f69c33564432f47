"""--decoder torchcodec: torchcodec's CPU decoder gives the loader the frames PyAV gives.

torchcodec loads the system's FFmpeg shared libraries (none here); the slow test lends it PyAV's own FFmpeg (the
libraries of the av wheel, under their plain names on LD_LIBRARY_PATH) in a fresh process. Without torchcodec
installed that test cannot run (it is an optional package), and only the error test runs."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patches.data.torchcodec_reader import check_decoder, torchcodec_problem
from patches.errors import UsageError
from patches.perf.selfcheck_context import QUICK, Context, Skip
from patches.perf.selfcheck_decoders import check_decoders

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import numpy as np, torch
from patches.data.datasets import VideoMAEPretrainDataset
from patches.data.torchcodec_reader import TorchCodecVideo, check_decoder
from patches.data.video_reader import VideoFile
from patches.grid import make_grid
check_decoder("torchcodec")
path, listing = sys.argv[1], sys.argv[2]
wanted = np.array([0, 3, 4, 17, 29])
ours, theirs = VideoFile(path).read(wanted), TorchCodecVideo(path).read(wanted)
assert len(TorchCodecVideo(path)) == 30 and theirs.shape == ours.shape, (theirs.shape, ours.shape)
assert (theirs.int() - ours.int()).abs().max().item() <= 1
grid = make_grid(num_frames=4, tubelet_size=2, input_size=32, patch_size=16)
masks = lambda: (torch.zeros(1), torch.zeros(1))
clips = [VideoMAEPretrainDataset(listing, None, grid, 2, masks, seed=5, decoder=d)[0][0] for d in ("pyav", "torchcodec")]
assert clips[0].shape == (3, 4, 32, 32) and (clips[0].int() - clips[1].int()).abs().max().item() <= 1
from patches.data.encoding import EncodeConfig, transcode_pyav
half = path.replace(".mp4", "_k2.mp4")  # a recipe-rate file: torchcodec's reader reports its K as PyAV's does
transcode_pyav(path, half, EncodeConfig(keep_every=2, gop=4))
assert TorchCodecVideo(half).keep_every == VideoFile(half).keep_every == 2 and TorchCodecVideo(path).keep_every == 1
print("same frames")
import pathlib, tempfile
from patches.perf.selfcheck_context import QUICK, Context
from patches.perf.selfcheck_decoders import check_decoders
row = check_decoders(Context(torch.device("cpu"), QUICK, pathlib.Path(tempfile.mkdtemp())))
assert row["pyav_clips_per_s"] > 0 and row["torchcodec_cpu_clips_per_s"] > 0, row
print("self-check row", row)
"""


def _pyav_ffmpeg(folder: Path) -> str:
    """A folder of links libavcodec.so.N -> the av wheel's libavcodec-<hash>.so.N..., and the wheel's folder."""
    import av
    libs = Path(av.__file__).resolve().parents[1] / "av.libs"
    folder.mkdir()
    for lib in libs.glob("lib*.so*"):
        match = re.match(r"(lib(?:av|sw)[a-z]+)-[0-9a-f]+\.so\.([0-9]+)", lib.name)
        if match:
            (folder / f"{match.group(1)}.so.{match.group(2)}").symlink_to(lib)
    return f"{folder}{os.pathsep}{libs}"


def test_an_unusable_torchcodec_is_a_usage_error_up_front(tmp_path: Path) -> None:
    problem = torchcodec_problem()
    if problem is not None:  # not installed, or no FFmpeg libraries on this machine's library path
        with pytest.raises(UsageError, match="--decoder torchcodec"):
            check_decoder("torchcodec")
        with pytest.raises(Skip, match="PyAV only"):  # the self-check row says why it cannot compare
            check_decoders(Context(torch.device("cpu"), QUICK, tmp_path))
    with pytest.raises(UsageError, match="must be one of"):
        check_decoder("nvdec")
    check_decoder("pyav")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torchcodec") is None, reason="torchcodec (optional) is not installed")
def test_torchcodec_cpu_reads_the_frames_pyav_reads(tmp_path: Path) -> None:
    import av
    import numpy as np

    path = tmp_path / "v.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt, stream.options = 48, 64, "yuv420p", {"threads": "1"}
        for _ in range(30):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    (tmp_path / "train.csv").write_text("v.mp4\n")
    env = {**os.environ, "LD_LIBRARY_PATH": _pyav_ffmpeg(tmp_path / "ffmpeg")}
    done = subprocess.run([sys.executable, "-c", "import sys\n" + PROBE, str(path), str(tmp_path / "train.csv")],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0 and "same frames" in done.stdout and "self-check row" in done.stdout, \
        done.stderr[-3000:]
