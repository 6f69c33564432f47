"""VideoMAE's data and checkpoints in PATCHES's tools: SSv2 frame-folder lists pre-train and fine-tune, and
checkpoints in VideoMAE's format (no recorded grid, flags as an argparse.Namespace) visualise, export and test."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from launch_helpers import FINETUNE, PRETRAIN, run
from patches.cli import export_hf
from patches.cli import finetune as run_class_finetuning
from patches.cli import pretrain as run_mae_pretraining
from patches.cli import visualise as vis
from patches.cli.stages import run_stage
from patches.data.video_reader import VideoFile
from patches.grid import make_grid
from patches.models.factory import create_video_model

# VideoMAE's flags record frames and input size, never the patch grid itself
VIDEOMAE_ARGS = argparse.Namespace(model="pretrain_videomae_micro_patch16_224", num_frames=8, input_size=64,
                                   mask_ratio=0.9, batch_size=32)
GRID = make_grid(8, 2, 64, 16)


def as_frame_folders(demo_root: Path, out: Path) -> None:
    """The demo's training clips as VideoMAE's SSv2 frame list 'folder num_frames label' (frames img_00001.jpg
    ..., every other frame of the clip); validation and test list the first 8 of them."""
    from torchvision.io import write_jpeg
    lines = []
    for line in (demo_root / "train.csv").read_text().splitlines():
        video, label = line.rsplit(None, 1)
        frames = VideoFile(str(demo_root / video)).read(np.arange(0, 32, 2))
        folder = out / "frames" / Path(video).stem
        folder.mkdir(parents=True)
        for i, frame in enumerate(frames):
            write_jpeg(frame.permute(2, 0, 1).contiguous(), str(folder / f"img_{i + 1:05d}.jpg"), quality=90)
        lines.append(f"frames/{Path(video).stem} 16 {label}")
    (out / "train.csv").write_text("\n".join(lines) + "\n")
    for split in ("val", "test"):
        (out / f"{split}.csv").write_text("\n".join(lines[:8]) + "\n")


@pytest.mark.slow
def test_ssv2_frame_folders_pretrain_and_fine_tune(demo_root: Path, tmp_path: Path, capsys) -> None:
    as_frame_folders(demo_root, tmp_path)
    # in-process, as the demo runs its stages (the CLI itself is exercised by the other script tests)
    pre, _ = run_stage("pretrain", run_mae_pretraining, [
        *PRETRAIN, "--data_path", str(tmp_path / "train.csv"), "--batch_size", "4", "--update_freq", "2",
        "--epochs", "1", "--num_workers", "0", "--output_dir", str(tmp_path / "pre")])
    printed = capsys.readouterr().out
    # VideoMAE's rule: lr x batch 4 x update_freq 2 x 1 process / 256, printed in VideoMAE's words
    assert f"LR = {1e-3 * 8 / 256:.8f}" in printed and "Batch size = 8 " in printed
    assert "16 videos, 2 updates per epoch of 8 clips" in printed
    assert np.isfinite(pre["train_loss"]) and pre["skipped_videos"] == 0
    fine, _ = run_stage("finetune", run_class_finetuning, [
        *FINETUNE, "--data_set", "SSV2", "--nb_classes", "8", "--data_path", str(tmp_path),
        "--finetune", str(pre["checkpoint"]), "--batch_size", "4", "--epochs", "1", "--num_workers", "0",
        "--output_dir", str(tmp_path / "ft")])
    assert "segment sampling" in capsys.readouterr().out
    assert fine["videos"] == 8 and fine["skipped_videos"] == 0


def videomae_checkpoint(path: Path, kind: str) -> tuple[Path, torch.nn.Module]:
    """A checkpoint as VideoMAE's save_model writes it: state dict, epoch, flags as a Namespace, no grid."""
    torch.manual_seed(0)
    if kind == "pretrain":
        model = create_video_model("pretrain_videomae_micro_patch16_224", grid=GRID, decoder_depth=1)
        state = {"model": model.state_dict(), "epoch": 799, "args": VIDEOMAE_ARGS}
    else:
        model = create_video_model("vit_micro_patch16_224", grid=GRID, num_classes=8)
        state = {"module": model.state_dict(), "epoch": 99,
                 "args": argparse.Namespace(**{**vars(VIDEOMAE_ARGS), "model": "vit_micro_patch16_224"})}
    torch.save(state, path)
    return path, model


@pytest.mark.slow
def test_videomae_checkpoints_visualise_export_and_test(demo_root: Path, tmp_path: Path) -> None:
    ckpt, _ = videomae_checkpoint(tmp_path / "videomae_pretrain.pth", "pretrain")
    video = demo_root / (demo_root / "test.csv").read_text().split()[0]
    result = vis.main(["--img_path", str(video), "--model_path", str(ckpt), "--save_path", str(tmp_path / "vis"),
                       "--device", "cpu"])
    assert result["grid"] == GRID and result["png"].is_file()

    out = export_hf.main([str(ckpt), str(tmp_path / "hf")])
    config = json.loads((out / "config.json").read_text())
    assert (config["num_frames"], config["image_size"], config["patch_size"]) == (8, 64, 16)

    ft, model = videomae_checkpoint(tmp_path / "videomae_finetuned.pth", "finetune")
    result = run("run_class_finetuning.py", [*FINETUNE, "--input_size", "64", "--patch_size", "16", "--num_frames",
                                             "8", "--nb_classes", "8", "--data_path", str(demo_root), "--eval",
                                             "--resume", str(ft), "--num_workers", "0",
                                             "--output_dir", str(tmp_path / "eval")])
    assert "VideoMAE's layout, patch grid from the checkpoint's args" in result.stdout
    assert re.search(r"Test \(2 x 2 views per video, 8 videos\): acc@1", result.stdout), result.stdout
