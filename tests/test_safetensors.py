"""--save_safetensors: model-only weights with the grid in the metadata, loadable by both our models."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from patches.checkpoints import reading
from patches.checkpoints.finetune_weights import load_finetune_weights
from patches.grid import make_grid
from patches.models.factory import create_video_model

ROOT = Path(__file__).resolve().parents[1]
GRID = make_grid(4, 2, 32, 8)
GRID_FLAGS = ["--input_size", "32", "--patch_size", "8", "--num_frames", "4", "--sampling_rate", "4"]
COMMON = ["--num_workers", "0", "--device", "cpu", "--print_freq", "1000", "--batch_size", "8", "--epochs", "1",
          "--warmup_epochs", "0", *GRID_FLAGS]


def run(script: str, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest on shared cores
    result = subprocess.run([sys.executable, str(ROOT / script), *flags], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def pretrained(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("st_pretrain")
    run("run_mae_pretraining.py", "--model", "pretrain_videomae_micro_patch16_224", "--decoder_depth", "1",
        "--data_path", str(demo_root / "train.csv"), "--data_root", str(demo_root), "--output_dir", str(out),
        "--save_safetensors", *COMMON)
    return out


@pytest.mark.slow
def test_pretraining_writes_safetensors_next_to_each_checkpoint(pretrained):
    st = pretrained / "checkpoint-0.safetensors"
    assert st.is_file() and (pretrained / "checkpoint-0.pth").is_file()
    assert not list(pretrained.glob(".*.tmp")), "the temporary file was renamed over the target"
    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["grid"]) == GRID.to_dict()
    assert json.loads(meta["args"])["model"] == "pretrain_videomae_micro_patch16_224"


@pytest.mark.slow
def test_safetensors_load_exactly_into_the_pretraining_model(pretrained):
    ckpt = reading.read_safetensors_checkpoint(pretrained / "checkpoint-0.safetensors")
    reference = reading.read_pth_checkpoint(pretrained / "checkpoint-0.pth")["model"]
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=make_grid(**{
        k: v for k, v in ckpt["grid"].items() if k != "in_chans"}), decoder_depth=1)
    model.load_state_dict(ckpt["model"], strict=True)
    assert ckpt["model"].keys() == reference.keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference[name]), name


@pytest.mark.slow
def test_safetensors_start_a_classifier(pretrained):
    reference = reading.read_pth_checkpoint(pretrained / "checkpoint-0.pth")["model"]
    model = create_video_model("vit_micro_patch16_224", grid=GRID, num_classes=8)
    report = load_finetune_weights(model, pretrained / "checkpoint-0.safetensors", verbose=False)
    assert report.source_grid == GRID and "checkpoint's grid" in report.grid_note  # from the metadata
    compared = 0
    for name, value in model.state_dict().items():
        if name.startswith(("patch_embed.", "blocks.")):
            assert torch.equal(value, reference["encoder." + name]), name
            compared += 1
    assert compared == 2 + 13 * 4


@pytest.mark.slow
def test_finetuning_from_safetensors_writes_safetensors(pretrained, demo_root, tmp_path):
    """The whole --finetune path from a .safetensors file, and --save_safetensors in fine-tuning."""
    out = tmp_path / "ft"
    result = run("run_class_finetuning.py", "--model", "vit_micro_patch16_224", "--finetune",
                 str(pretrained / "checkpoint-0.safetensors"), "--data_path", str(demo_root),
                 "--data_root", str(demo_root), "--data_set", "custom", "--output_dir", str(out),
                 "--save_safetensors", "--aa", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0",
                 "--num_sample", "1", "--test_num_segment", "1", "--test_num_crop", "1",
                 "--disable_eval_during_finetuning", *COMMON)
    assert "checkpoint grid:" in result.stdout
    st = reading.read_safetensors_checkpoint(out / "checkpoint-0.safetensors")
    pth = reading.read_pth_checkpoint(out / "checkpoint-0.pth")["model"]
    assert st["grid"] == GRID.to_dict() and st["model"].keys() == pth.keys()
    assert all(torch.equal(st["model"][k], v) for k, v in pth.items())
