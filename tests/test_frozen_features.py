"""A trained model used without fine-tuning: frozen-feature probes (run_class_finetuning.py --probe), feature
extraction (extract_features.py) and classifying video files (run_inference.py)."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from patches.checkpoints.reading import read_pth_checkpoint
from patches.checkpoints.writing import checkpoint_state, save_checkpoint
from patches.grid import make_grid
from patches.models.factory import create_video_model
from patches.models.probes import FrozenEncoderProbe, KNNProbe, build_probe, knn_feature

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu", "--num_workers", "0"]


def extract(*flags: str) -> dict:
    """extract_features.py in this process (the CLI itself runs in the first extraction test)."""
    from patches.cli import extract_features
    return extract_features.main(extract_features.get_args_parser().parse_args(list(flags)))


def run(script: str, *flags: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / script), *flags], capture_output=True, text=True, cwd=cwd,
                            timeout=600)
    if ok:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def pretrained(demo_root, tmp_path_factory):
    """A micro pre-training checkpoint (one short epoch at 4 frames of 32x32, patch 8)."""
    out = tmp_path_factory.mktemp("pre")
    run("run_mae_pretraining.py", *CPU, "--model", "pretrain_videomae_micro_patch16_224", "--decoder_depth", "1",
        "--data_path", str(demo_root / "train.csv"), "--data_root", str(demo_root), "--batch_size", "4",
        "--epochs", "1", "--input_size", "32", "--patch_size", "8", "--num_frames", "4", "--sampling_rate", "2",
        "--warmup_epochs", "0", "--output_dir", str(out), cwd=out)
    return out / "checkpoint-0.pth"


# ---------------------------------------------------------------- probes, in process

def test_frozen_encoder_probe_trains_and_saves_only_the_probe():
    encoder = create_video_model("vit_micro_patch16_224", grid=make_grid(4, 2, 32, 8), num_classes=0)
    for kind in ("linear", "attentive"):
        model = FrozenEncoderProbe(encoder, build_probe(kind, encoder, num_classes=5)).train()
        assert not encoder.training and model.probe.training
        before = {k: v.clone() for k, v in encoder.state_dict().items()}
        probe_before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 4, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
        assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())
        assert not any(k.startswith("encoder.") for k in model.state_dict())
        assert any(not torch.equal(v, model.state_dict()[k]) for k, v in probe_before.items())
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
            p.numel() for p in model.probe.parameters())


def test_knn_probe_votes_hand_checked():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    knn = KNNProbe(bank, torch.tensor([0, 0, 1, 2]), num_classes=3, k=2, temperature=1.0)
    scores = knn(None, torch.tensor([[2.0, 0.0], [0.0, 3.0]])).softmax(1)
    # Query 0: neighbours 0 (cos 1) and 1 (cos 0.994), both class 0. Query 1: neighbour 2 (cos 1, class 1) and
    # neighbour 1 (cos 0.110, class 0): votes e^1 and e^0.110.
    assert torch.allclose(scores[0], torch.tensor([1.0, 0.0, 0.0]))
    cos = 0.1 / np.hypot(0.9, 0.1)
    expected = torch.tensor([np.exp(cos), np.e, 0.0]) / (np.exp(cos) + np.e)
    assert torch.allclose(scores[1], expected.float(), atol=1e-6)


def test_knn_time_feature_keeps_the_order_of_time_slices():
    """Two clips whose time slices come in opposite orders have the same mean but different time features."""
    encoder = create_video_model("vit_micro_patch16_224", grid=make_grid(4, 2, 32, 8), num_classes=0)
    first, second = torch.randn(8, 128), torch.randn(8, 128)  # 2 time slices x 16 patches: tokens in time order
    forward = torch.cat([first.repeat(2, 1), second.repeat(2, 1)])[None]
    backward = torch.cat([second.repeat(2, 1), first.repeat(2, 1)])[None]
    # a mean over 16 tokens and one over 8 round differently: compare to float32's precision, not bit for bit
    assert torch.allclose(knn_feature("mean", encoder, forward), knn_feature("mean", encoder, backward), atol=1e-6)
    assert torch.allclose(knn_feature("time", encoder, forward),
                          torch.cat([first.mean(0), second.mean(0)])[None], atol=1e-6)
    assert not torch.allclose(knn_feature("time", encoder, forward), knn_feature("time", encoder, backward))


# ---------------------------------------------------------------- probes, CLI

PROBE = [*CPU, "--model", "vit_micro_patch16_224", "--data_set", "custom", "--sampling_rate", "2", "--batch_size",
         "4", "--num_sample", "1", "--epochs", "1", "--warmup_epochs", "0", "--test_num_segment", "2",
         "--test_num_crop", "1", "--mixup", "0", "--cutmix", "0", "--print_freq", "50"]


@pytest.mark.slow
def test_linear_probe_cli_at_a_non_square_grid_keeps_the_probe_and_names_the_encoder(pretrained, demo_root, tmp_path):
    out = tmp_path / "linear"
    result = run("run_class_finetuning.py", *PROBE, "--probe", "linear", "--finetune", str(pretrained), "--data_path",
                 str(demo_root), "--input_size", "32", "48", "--patch_size", "8", "--num_frames", "4",
                 "--output_dir", str(out), cwd=tmp_path)
    assert "Test (2 x 1 views per video, 8 videos)" in result.stdout
    ckpt = read_pth_checkpoint(out / "checkpoint-best.pth")
    assert sorted(ckpt["model"]) == ["bn.num_batches_tracked", "bn.running_mean", "bn.running_var", "head.bias",
                                     "head.weight"]
    assert ckpt["probe"] == "linear" and ckpt["encoder"]["path"] == str(pretrained.resolve())
    assert ckpt["grid"]["input_size"] == [32, 48]
    logged = json.loads((out / "log.txt").read_text().splitlines()[-1])
    again = run("run_class_finetuning.py", *PROBE, "--probe", "linear", "--finetune", str(pretrained), "--data_path",
                str(demo_root), "--input_size", "32", "48", "--patch_size", "8", "--num_frames", "4",
                "--output_dir", str(out), "--eval", cwd=tmp_path)
    assert "checkpoint-best.pth" in again.stdout
    assert json.loads((out / "log.txt").read_text().splitlines()[-1])["eval_test_acc1"] == logged["test_acc1"]


@pytest.mark.slow
def test_knn_probe_cli_at_324_patches_per_frame(pretrained, demo_root, tmp_path):
    result = run("run_class_finetuning.py", *PROBE, "--probe", "knn", "--knn_k", "5", "--finetune", str(pretrained),
                 "--data_path", str(demo_root), "--input_size", "144", "--patch_size", "8", "--num_frames", "2",
                 "--output_dir", str(tmp_path / "knn"), cwd=tmp_path)
    assert "324 patches per frame" in result.stdout and "k-NN bank: 16 training videos, time features; k 5" in result.stdout
    record = json.loads((tmp_path / "knn" / "log.txt").read_text().splitlines()[-1])
    assert record["probe"] == "knn" and record["test_videos"] == 8 and 0 <= record["test_acc1"] <= 100


@pytest.mark.slow
def test_a_probe_without_finetune_is_refused_by_name(demo_root, tmp_path):
    result = run("run_class_finetuning.py", *PROBE, "--probe", "attentive", "--data_path", str(demo_root),
                 "--output_dir", str(tmp_path / "x"), cwd=tmp_path, ok=False)
    assert result.returncode == 2  # a usage error
    assert "--probe attentive evaluates a trained encoder, frozen: give its checkpoint with --finetune" in result.stderr


# ---------------------------------------------------------------- extract_features.py

@pytest.mark.slow
def test_extraction_is_bit_identical_resumes_lists_bad_videos_and_guards_its_folder(pretrained, demo_root, tmp_path,
                                                                                    capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for video in sorted((demo_root / "videos").glob("test_*"))[:7]:
        shutil.copy(video, videos)
    (videos / "zz_broken.mp4").write_bytes(b"not a video")
    flags = [*CPU, "--finetune", str(pretrained), "--data_path", str(videos), "--input_size", "32", "48",
             "--save_tokens", "--shard_size", "3", "--test_num_segment", "2"]
    first = run("extract_features.py", *flags, "--output_dir", str(tmp_path / "a"), cwd=tmp_path, ok=False)
    assert "3 shards, 0 already done" in first.stdout
    # one input failed, named, the others written: status 1
    assert first.returncode == 1 and f"1 of 8 videos failed (the others are done):\n  {videos / 'zz_broken.mp4'}: " \
        in first.stderr, first.stderr[-3000:]
    with pytest.raises(SystemExit, match="1 of 8 videos failed"):
        extract(*flags, "--output_dir", str(tmp_path / "b"))
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert index["videos"] == 7 and [u["path"] for u in index["unreadable"]] == [str(videos / "zz_broken.mp4")]
    assert index["grid"]["input_size"] == [32, 48] and index["model"] == "vit_micro_patch16_224"
    from safetensors.numpy import load_file
    shard = load_file(str(tmp_path / "a" / index["shards"][0]["files"][0]))
    assert shard["pooled"].shape == (3, 2, 128) and shard["tokens"].shape == (3, 2, 2, 4, 6, 128)

    # A kill while shard 2 is written leaves shards 0-1 and a temporary file: the rerun redoes only shard 2.
    (tmp_path / "b" / "shard-00002.json").unlink()
    (tmp_path / "b" / "index.json").unlink()
    (tmp_path / "b" / "shard-00002.safetensors").rename(tmp_path / "b" / ".shard-00002.safetensors.999999.tmp")
    capsys.readouterr()
    with pytest.raises(SystemExit, match="1 of 8 videos failed"):
        extract(*flags, "--output_dir", str(tmp_path / "b"))
    resumed = capsys.readouterr().out
    assert "3 shards, 2 already done" in resumed and "Removed 1 temporary files" in resumed
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    with pytest.raises(SystemExit) as stop:  # a usage error: status 2
        extract(*flags[:-6], "--output_dir", str(tmp_path / "a"))
    assert stop.value.code == 2
    assert f"--output_dir {tmp_path / 'a'} holds features from another grid" in capsys.readouterr().err


@pytest.mark.slow
def test_extraction_at_324_patches_per_frame_from_a_list_file_as_npy(pretrained, demo_root, tmp_path):
    extract(*CPU, "--finetune", str(pretrained), "--data_path", str(demo_root / "val.csv"), "--input_size", "144",
            "--num_frames", "2", "--format", "npy", "--output_dir", str(tmp_path / "f"))
    index = json.loads((tmp_path / "f" / "index.json").read_text())
    pooled = np.load(tmp_path / "f" / "shard-00000.pooled.npy")
    assert pooled.shape == (8, 1, 128) and np.isfinite(pooled).all()
    assert index["shards"][0]["labels"] == [int(line.split()[-1]) for line in
                                            (demo_root / "val.csv").read_text().splitlines()]


@pytest.mark.slow
def test_extraction_under_torchrun_gives_the_shards_of_one_process(pretrained, demo_root, tmp_path):
    from launch_helpers import run as launch
    flags = [*CPU, "--finetune", str(pretrained), "--data_path", str(demo_root / "val.csv"), "--shard_size", "2"]
    extract(*flags, "--output_dir", str(tmp_path / "one"))
    launch("extract_features.py", [*flags, "--output_dir", str(tmp_path / "two")], nproc=2)
    from safetensors.torch import load_file
    shards = sorted(p.name for p in (tmp_path / "one").glob("shard-*"))
    assert len(shards) == 8 and shards == sorted(p.name for p in (tmp_path / "two").glob("shard-*"))
    for name in (n for n in shards if n.endswith(".safetensors")):
        one, two = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert json.loads((tmp_path / "one" / "index.json").read_text()) == json.loads(
        (tmp_path / "two" / "index.json").read_text())


# ---------------------------------------------------------------- run_inference.py

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A micro classifier checkpoint as fine-tuning writes them (random weights; 8 classes, no class names)."""
    grid = make_grid(4, 2, 32, 8)
    model = create_video_model("vit_micro_patch16_224", grid=grid, num_classes=8)
    args = {"model": "vit_micro_patch16_224", "sampling_rate": 2, "test_num_segment": 2, "test_num_crop": 2,
            "pos_embed": "1d"}
    import argparse
    path = tmp_path_factory.mktemp("cls") / "checkpoint-best.pth"
    save_checkpoint(path, checkpoint_state(model, grid, argparse.Namespace(**args), 0))
    return path, model.eval()


@pytest.mark.slow
def test_inference_gives_the_multi_view_test_probabilities_as_table_and_json(classifier, demo_root, tmp_path, capsys):
    from patches.data.datasets import VideoClsEvalDataset
    from patches.data.lists import parse_list_file, read_labelled_list
    path, model = classifier
    from patches.cli import inference as run_inference
    videos = [v for v, _ in parse_list_file(demo_root / "test.csv", demo_root)][:3]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    truncated = tmp_path / "truncated.mp4"  # cut before its index (moov atom): decoders complain on stderr
    truncated.write_bytes(Path(videos[0]).read_bytes()[:2000])
    table = run("run_inference.py", *videos, str(bad), str(truncated), "--checkpoint", str(path), "--classes",
                str(demo_root / "classes.txt"), *CPU, cwd=tmp_path, ok=False)
    names = (demo_root / "classes.txt").read_text().split()
    assert "2 x 2 views per video" in table.stdout and f"| {Path(videos[0]).name} | " in table.stdout
    assert f"| bad.mp4 | unreadable | | cannot decode video {bad}" in table.stdout
    # Some inputs failed: status 1, each named on stderr, the others classified; no decoder noise in the output.
    assert table.returncode == 1, table.stderr[-3000:]
    assert f"2 of 5 videos failed (the others are done):\n  {bad}: cannot decode video" in table.stderr
    assert f"\n  {truncated}: cannot decode video {truncated}" in table.stderr
    output = table.stdout + table.stderr
    assert "moov atom" not in output and not re.search(r"^\[[0-9:]+\] \S+\.cc:[0-9]+", output, re.M), output
    capsys.readouterr()
    run_inference.main(run_inference.get_args_parser().parse_args(
        [*videos, "--checkpoint", str(path), "--classes", str(demo_root / "classes.txt"), "--json", "--topk", "3",
         *CPU]))
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # The fine-tuning test's views of the same videos, through the same model: softmax averaged over views.
    records = read_labelled_list(demo_root / "test.csv", demo_root)[:3]
    views = VideoClsEvalDataset(records, model.grid, 2, num_segments=2, num_crops=2)
    with torch.no_grad():
        probs = torch.stack([model(torch.stack([views[v * 4 + i][0] for i in range(4)])).softmax(1).mean(0)
                             for v in range(3)])
    for result, expected in zip(results, probs):
        top = expected.topk(3)
        assert [t["class"] for t in result["top"]] == [names[i] for i in top.indices.tolist()]
        assert [t["probability"] for t in result["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_inference_without_class_names_says_so(classifier, tmp_path, capsys):
    from patches.cli import inference as run_inference
    path, _ = classifier
    with pytest.raises(SystemExit) as stop:  # a usage error: status 2
        run_inference.main(run_inference.get_args_parser().parse_args([str(tmp_path), "--checkpoint", str(path)]))
    assert stop.value.code == 2
    assert f"--checkpoint {path} records no class names: pass --classes FILE" in capsys.readouterr().err


def test_inference_usage_errors_exit_2(classifier, tmp_path, capsys):
    """A flag argparse refuses and a flag PATCHES refuses (a missing --classes file) both end with status 2."""
    from patches.cli import inference as run_inference
    path, _ = classifier
    with pytest.raises(SystemExit) as stop:
        run_inference.get_args_parser().parse_args([str(tmp_path), "--checkpoint", str(path), "--no_such_flag"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        run_inference.main(run_inference.get_args_parser().parse_args(
            [str(tmp_path), "--checkpoint", str(path), "--classes", str(tmp_path / "missing.txt")]))
    assert stop.value.code == 2 and f"error: --classes {tmp_path / 'missing.txt'} does not exist" in capsys.readouterr().err
