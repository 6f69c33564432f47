"""The pre-training command end to end: real mp4s, real process, checkpoint, log.txt and TensorBoard read back."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patches.checkpoints.reading import read_pth_checkpoint
from patches.grid import make_grid

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "pretrain_videomae_micro_patch16_224", "--decoder_depth", "1", "--num_workers", "0",
        "--print_freq", "2", "--warmup_epochs", "1", "--device", "cpu"]


def run_pretraining(demo_root: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "run_mae_pretraining.py"), *TINY, "--data_path", str(demo_root / "train.csv"),
           "--data_root", str(demo_root), "--output_dir", str(out), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, timeout=600)


def read_scalars(event_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "out"
    result = run_pretraining(demo_root, out, "--input_size", "32", "48", "--patch_size", "8", "--num_frames", "8",
                             "--sampling_rate", "2", "--batch_size", "4", "--epochs", "12", "--lr", "0.1",
                             "--mask_ratio", "0.75", "--normlize_target", "false", "--save_ckpt_freq", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


@pytest.mark.slow
def test_loss_falls_well_below_its_start(trained):
    out, _ = trained
    losses = [json.loads(line)["train_loss"] for line in (out / "log.txt").read_text().splitlines()]
    assert len(losses) == 12
    assert losses[-1] < 0.25 * losses[0], losses


@pytest.mark.slow
def test_checkpoint_holds_the_grid_of_the_flags(trained):
    out, stdout = trained
    assert sorted(p.name for p in out.glob("checkpoint-*.pth")) == ["checkpoint-11.pth", "checkpoint-4.pth",
                                                                    "checkpoint-9.pth", "checkpoint-latest.pth"]
    ckpt = read_pth_checkpoint(out / "checkpoint-11.pth")
    assert ckpt["grid"] == make_grid(8, 2, (32, 48), 8).to_dict()
    assert ckpt["epoch"] == 11
    assert ckpt["args"]["input_size"] == [32, 48]
    assert {"model", "optimizer", "args", "grid", "epoch"} <= set(ckpt)
    assert ckpt["model"]["decoder.head.weight"].shape == (2 * 8 * 8 * 3, 64)
    assert "8 frames x 32x48 px, tubelet 2, patch 8 -> 4 x 4 x 6 = 96 tokens (24 patches per frame)" in stdout
    assert not list(out.glob("*.tmp")), "no temporary files left behind"


@pytest.mark.slow
def test_tensorboard_events_and_progress_lines(trained):
    out, stdout = trained
    losses = read_scalars(out / "tb", "train/loss")
    assert len(losses) == 12 * 4  # 16 clips / batch 4, every step
    assert losses[-1] < losses[0]
    lrs = read_scalars(out / "tb", "train/lr")
    assert max(lrs) > lrs[0], "warmup raises the learning rate"
    assert "clips/s" in stdout and "eta" in stdout


@pytest.mark.slow
def test_auto_resume_continues_after_the_last_checkpoint(trained, demo_root, tmp_path):
    out, _ = trained
    resumed = tmp_path / "out"
    resumed.mkdir()
    ckpt = read_pth_checkpoint(out / "checkpoint-4.pth")
    torch.save(ckpt, resumed / "checkpoint-4.pth")
    result = run_pretraining(demo_root, resumed, "--input_size", "32", "48", "--patch_size", "8", "--num_frames",
                             "8", "--sampling_rate", "2", "--batch_size", "4", "--epochs", "6",
                             "--normlize_target", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing at epoch 5" in result.stdout
    assert [json.loads(line)["epoch"] for line in (resumed / "log.txt").read_text().splitlines()] == [5]



@pytest.mark.slow
@pytest.mark.parametrize("changed,named", [
    (["--input_size", "48", "32", "--num_frames", "8"], "--input_size 32 48 vs 48 32"),
    (["--input_size", "32", "48", "--num_frames", "4"], "--num_frames 8 vs 4"),
])
def test_resume_at_another_grid_is_refused_before_data_and_model(trained, demo_root, tmp_path, changed, named):
    # Neither change alters a saved tensor's shape (the position tables are fixed, not saved).
    out, _ = trained
    resumed = tmp_path / "out"
    resumed.mkdir()
    torch.save(read_pth_checkpoint(out / "checkpoint-4.pth"), resumed / "checkpoint-4.pth")
    result = run_pretraining(demo_root, resumed, *changed, "--patch_size", "8", "--sampling_rate", "2",
                             "--batch_size", "4", "--epochs", "6", "--normlize_target", "false")
    assert result.returncode != 0
    assert f"checkpoint-4.pth was made at another patch grid than this run's ({named}: the file's value first)" \
        in result.stderr
    assert "--no_auto_resume" in result.stderr and "Traceback" not in result.stderr
    assert "M parameters" not in result.stdout

@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [
    (["--input_size", "30", "--patch_size", "8"], "--input_size height 30 is not divisible by --patch_size 8"),
    (["--mask_ratio", "1.5"], "--mask_ratio must be inside (0, 1)"),
    (["--num_frames", "7"], "--num_frames 7 is not divisible by --tubelet_size 2"),
    (["--amp", "fp16"], "--amp fp16 needs a CUDA device"),
    (["--data_path", "/nonexistent/list.csv"], "--data_path /nonexistent/list.csv is not a file"),
    (["--input_size", "8", "--patch_size", "1", "--tubelet_size", "1", "--num_frames", "2"],
     "with --patch_size 1 --tubelet_size 1 a token has one; pass --normlize_target false"),
    (["--decoder_mask_ratio", "0.5"], "--decoder_mask_ratio 0.5 does nothing with --decoder_mask_type none"),
])
def test_bad_flags_fail_fast_with_a_message(flags, message, tmp_path):
    cmd = [sys.executable, str(ROOT / "run_mae_pretraining.py"), *TINY, "--output_dir", str(tmp_path / "o"), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
