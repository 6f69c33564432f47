"""extract_features.py rerun under torchrun after an interrupted run: what is left is shared by every rank, and a
rank with nothing left waits for the others without timing out."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

import launch_helpers as lh
from patches.checkpoints.writing import checkpoint_state, save_checkpoint
from patches.data.demo import render_clip, write_mp4
from patches.grid import make_grid
from patches.models.factory import create_video_model

# Ranks that reach a collective further apart than this fail it: the rank left with nothing to do once waited
# at the final barrier while the other extracted 12 videos (several seconds here), and failed.
SHORT_TIMEOUT_S = "4"
VIDEOS = 24


@pytest.fixture(scope="module")
def encoder_and_videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A micro encoder's checkpoint (random weights, 4 frames of 32x32, patch 8) and 24 tiny generated videos."""
    import argparse
    root = tmp_path_factory.mktemp("features")
    grid = make_grid(4, 2, 32, 8)
    model = create_video_model("vit_micro_patch16_224", grid=grid, num_classes=0)
    args = argparse.Namespace(model="vit_micro_patch16_224", sampling_rate=2, pos_embed="1d")
    ckpt = save_checkpoint(root / "encoder.pth", checkpoint_state(model, grid, args, 0))
    videos = root / "videos"
    videos.mkdir()
    for i in range(VIDEOS):
        write_mp4(videos / f"v{i:02d}.mp4", render_clip(i % 8, i, num_frames=16, size=(48, 48)))
    return ckpt, videos


def flags(ckpt: Path, videos: Path, out: Path) -> list[str]:
    # 48 views of 96x96 a video: 12 one-video shards take longer than the short timeout.
    return ["--finetune", str(ckpt), "--data_path", str(videos), "--output_dir", str(out), "--device", "cpu",
            "--num_workers", "0", "--shard_size", "1", "--input_size", "96", "--test_num_segment", "16",
            "--test_num_crop", "3", "--save_tokens"]


def extract_here(*flags: str) -> dict:
    """extract_features.py in this process, on one thread as each torchrun worker runs."""
    import torch

    from patches.cli import extract_features
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return extract_features.main(extract_features.get_args_parser().parse_args(list(flags)))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_rerun_with_uneven_shards_left_shares_them_and_matches_an_uninterrupted_run(encoder_and_videos, tmp_path,
                                                                                      monkeypatch):
    ckpt, videos = encoder_and_videos
    whole, rerun = tmp_path / "whole", tmp_path / "rerun"
    extract_here(*flags(ckpt, videos, whole))
    shards = sorted(p.name for p in whole.iterdir() if p.name.startswith("shard-"))
    assert len(shards) == 2 * VIDEOS  # one video a shard: an array file and a record each

    # An interrupted 2-process run that finished rank 1's shards (the odd ones) and none of rank 0's: on the rerun
    # rank 1 has none of its own left and rank 0 all 12 of its own.
    rerun.mkdir()
    shutil.copy(whole / "features.json", rerun)
    for name in shards:
        if int(name.split("-")[1].split(".")[0]) % 2:
            shutil.copy(whole / name, rerun)
    monkeypatch.setenv("PATCHES_PROCESS_GROUP_TIMEOUT", SHORT_TIMEOUT_S)
    started = time.monotonic()
    result = lh.run("extract_features.py", flags(ckpt, videos, rerun), nproc=2, check=False, timeout=300)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert f"{VIDEOS} shards, {VIDEOS // 2} already done" in result.stdout
    print(f"rerun of {VIDEOS // 2} shards left, under torchrun with 2 processes: {took:.1f} s")

    assert sorted(p.name for p in rerun.iterdir()) == sorted(p.name for p in whole.iterdir())
    for name in shards + ["index.json"]:
        assert (rerun / name).read_bytes() == (whole / name).read_bytes(), name
    assert json.loads((rerun / "index.json").read_text())["videos"] == VIDEOS
