"""Fine-tuning: multi-view merging, and the CLI end to end from a pre-training checkpoint at another grid."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patches.checkpoints.reading import read_pth_checkpoint
from patches.eval.testing import merge_test_results, topk_correct

ROOT = Path(__file__).resolve().parents[1]


def write_views(path: Path, rows: list[tuple[int, int, int, list[float]]]) -> Path:
    with open(path, "w") as f:
        for vid, view, label, logits in rows:
            f.write(json.dumps({"id": vid, "view": view, "label": label, "logits": logits}) + "\n")
    return path


def test_merge_averages_softmax_over_views_hand_checked(tmp_path):
    import math

    # Video 0 (label 1; class 2 is out of the running), three views with p(class 1) = 1/730, 0.9 and 0.6: the mean is
    # 0.5005, so averaging softmax gets it right, while averaging logits (2.20 vs 0.87) would not.
    rank0 = write_views(tmp_path / "r0.jsonl", [
        (0, 0, 1, [3 * math.log(9.0), 0.0, -50.0]),
        (1, 0, 0, [0.0, 1.0, 2.0]),
    ])
    rank1 = write_views(tmp_path / "r1.jsonl", [
        (0, 1, 1, [0.0, math.log(9.0), -50.0]),
        (0, 2, 1, [0.0, math.log(1.5), -50.0]),
        (1, 1, 0, [0.0, 1.0, 2.0]),
        (1, 1, 0, [0.0, 1.0, 2.0]),  # a view repeated by a padding sampler counts once
    ])
    stats = merge_test_results([rank0, rank1])
    # Video 1 (label 0) is predicted class 2: wrong at top-1, right at top-5.
    assert stats["videos"] == 2
    assert stats["views_per_video"] == 2.5
    assert stats["acc1"] == pytest.approx(50.0)
    assert stats["acc5"] == pytest.approx(100.0)


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, (1, 2, 5)) == [1, 2, 3]


def test_evaluate_reads_nothing_back_per_batch_and_gives_the_same_statistics(monkeypatch):
    from patches.eval.testing import evaluate
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7))
    batches = [(torch.randn(n, 3, 4), torch.randint(0, 7, (n,))) for n in (5, 3, 6)]
    logits = torch.cat([model(v) for v, _ in batches])
    labels = torch.cat([t for _, t in batches])
    loss = sum(torch.nn.functional.cross_entropy(model(v), t, reduction="sum").item() for v, t in batches)
    top1, top5 = topk_correct(logits, labels)
    reads, copies = [], []

    def counted(name):
        real = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            reads.append(name)
            return real(self, *a, **k)
        return read

    real_to = torch.Tensor.to

    def to(self, *a, **k):
        copies.append(k.get("non_blocking", False))
        return real_to(self, *a, **k)

    for name in ("item", "__int__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    monkeypatch.setattr(torch.Tensor, "to", to)
    stats = evaluate(batches, model, torch.device("cpu"))
    monkeypatch.undo()
    assert reads == ["tolist"], "one read of the totals, after the last batch"
    assert copies and all(copies), "inputs copied without blocking"
    assert stats == {"loss": loss / 14, "acc1": 100 * top1 / 14, "acc5": 100 * top5 / 14, "count": 14}


def run(script: str, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / script), *flags], capture_output=True, text=True,
                            cwd=cwd, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


COMMON = ["--num_workers", "0", "--device", "cpu", "--print_freq", "5", "--warmup_epochs", "1"]


@pytest.fixture(scope="module")
def pretrained_196(demo_root, tmp_path_factory):
    """A micro pre-training checkpoint at 16 frames x 224/16 = 196 patches per frame (one short epoch)."""
    out = tmp_path_factory.mktemp("pre196")
    subset = out / "train4.csv"
    subset.write_text("".join((demo_root / "train.csv").read_text().splitlines(keepends=True)[:4]))
    run("run_mae_pretraining.py", *COMMON, "--model", "pretrain_videomae_micro_patch16_224", "--decoder_depth", "1",
        "--data_path", str(subset), "--data_root", str(demo_root), "--batch_size", "2", "--epochs", "1",
        "--sampling_rate", "1", "--mask_ratio", "0.9", "--output_dir", str(out / "run"), cwd=out)
    return out / "run" / "checkpoint-0.pth"


@pytest.mark.slow
@pytest.mark.parametrize("grid_flags,expect", [
    (["--input_size", "288", "--num_frames", "2"], "324 patches per frame"),
    (["--input_size", "224", "--num_frames", "8"], "196 patches per frame"),
])
def test_checkpoint_at_196_fine_tunes_at_another_grid(pretrained_196, demo_root, tmp_path, grid_flags, expect):
    from patches.checkpoints.finetune_weights import load_finetune_weights
    from patches.models.factory import create_video_model
    grid_kwargs = dict(input_size=int(grid_flags[1]), num_frames=int(grid_flags[3]))
    model = create_video_model("vit_micro_patch16_224", num_classes=8, **grid_kwargs)
    assert expect.split()[0] == str(model.grid.patches_per_frame)
    load_finetune_weights(model, pretrained_196, verbose=False)
    source = read_pth_checkpoint(pretrained_196)["model"]
    for name, tensor in model.state_dict().items():
        key = f"encoder.{name}"
        if key in source and source[key].shape == tensor.shape:
            assert torch.equal(source[key], tensor), name
    assert torch.isfinite(model(torch.randn(1, 3, model.grid.num_frames, *model.grid.input_size))).all()


@pytest.mark.slow
def test_finetune_cli_then_eval_reproduces_logged_accuracy(demo_root, tmp_path):
    out = tmp_path / "ft"
    flags = [*COMMON, "--model", "vit_micro_patch16_224", "--data_path", str(demo_root), "--data_set", "custom",
             "--input_size", "32", "--patch_size", "8", "--num_frames", "4", "--sampling_rate", "2",
             "--batch_size", "4", "--num_sample", "1", "--epochs", "2", "--test_num_segment", "2",
             "--test_num_crop", "2", "--flip", "false", "--mixup", "0.8", "--cutmix", "1.0", "--aa", "rand-m7-n2",
             "--reprob", "0.25", "--model_ema", "--update_freq", "2", "--output_dir", str(out)]
    trained = run("run_class_finetuning.py", *flags, cwd=tmp_path)
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in records if "epoch" in r] == [0, 1]
    logged = records[-1]
    assert logged["test_videos"] == 8 and logged["test_views_per_video"] == 4
    assert (out / "checkpoint-best.pth").is_file() and (out / "checkpoint-1.pth").is_file()
    assert "Test (2 x 2 views per video, 8 videos)" in trained.stdout
    evaluated = run("run_class_finetuning.py", *flags, "--eval", cwd=tmp_path)
    again = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert again["eval_test_acc1"] == pytest.approx(logged["test_acc1"])
    assert again["eval_test_acc5"] == pytest.approx(logged["test_acc5"])
    assert "checkpoint-best.pth" in evaluated.stdout
    ckpt = read_pth_checkpoint(out / "checkpoint-best.pth")
    assert ckpt["grid"]["input_size"] == [32, 32] and "model_ema" in ckpt


SMALL = [*COMMON, "--model", "vit_micro_patch16_224", "--data_set", "custom", "--patch_size", "8",
         "--sampling_rate", "2", "--batch_size", "4", "--epochs", "1", "--test_num_segment", "1",
         "--test_num_crop", "1"]


@pytest.mark.slow
def test_final_test_never_takes_a_best_checkpoint_another_run_left(demo_root, tmp_path):
    out = tmp_path / "ft"
    grid = ["--input_size", "32", "--num_frames", "4"]
    first = run("run_class_finetuning.py", *SMALL, *grid, "--data_path", str(demo_root), "--output_dir", str(out),
                cwd=tmp_path)
    logged = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert logged["checkpoint"] == str(out / "checkpoint-best.pth") and "Testing " in first.stdout
    left_behind = (out / "checkpoint-best.pth").read_bytes()

    # A new run in the same folder that validates nothing: its final weights are tested, not the old best.
    second = run("run_class_finetuning.py", *SMALL, *grid, "--data_path", str(demo_root), "--output_dir", str(out),
                 "--no_auto_resume", "--disable_eval_during_finetuning", "--seed", "7", cwd=tmp_path)
    assert "is another run's" in second.stdout
    tested = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert tested["checkpoint"] == "final weights"
    assert (out / "checkpoint-best.pth").read_bytes() == left_behind
    # The final weights are checkpoint-0.pth of the second run: testing that file gives the logged accuracy.
    again = run("run_class_finetuning.py", *SMALL, *grid, "--data_path", str(demo_root), "--output_dir",
                str(tmp_path / "eval"), "--eval", "--resume", str(out / "checkpoint-0.pth"), cwd=tmp_path)
    evaluated = json.loads((tmp_path / "eval" / "log.txt").read_text().splitlines()[-1])
    assert (evaluated["eval_test_acc1"], evaluated["eval_test_acc5"]) == (tested["test_acc1"], tested["test_acc5"])
    assert "Loaded" in again.stdout


@pytest.mark.slow
def test_eval_and_resume_refuse_a_checkpoint_of_another_grid(demo_root, tmp_path):
    out = tmp_path / "ft"
    run("run_class_finetuning.py", *SMALL, "--input_size", "32", "--num_frames", "4", "--data_path", str(demo_root),
        "--output_dir", str(out), "--disable_eval_during_finetuning", cwd=tmp_path)
    # 8 frames instead of 4: no saved tensor changes shape, so only the recorded grid tells them apart.
    for extra in (["--eval", "--resume", str(out / "checkpoint-0.pth")], ["--epochs", "2"]):
        result = subprocess.run([sys.executable, str(ROOT / "run_class_finetuning.py"), *SMALL, "--input_size", "32",
                                 "--num_frames", "8", "--data_path", str(demo_root), "--output_dir", str(out),
                                 *extra], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert result.returncode != 0
        assert ".pth was made at another patch grid than this run's (--num_frames 4 vs 8" in result.stderr
        assert "--finetune" in result.stderr and "Traceback" not in result.stderr
    assert "M parameters" not in result.stdout  # the resume is refused before the data and the model are built


@pytest.mark.slow
def test_resuming_from_a_pretraining_checkpoint_points_to_finetune(pretrained_196, demo_root, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "run_class_finetuning.py"), *COMMON, "--model",
                             "vit_micro_patch16_224", "--data_set", "custom", "--data_path", str(demo_root),
                             "--sampling_rate", "1", "--batch_size", "2", "--epochs", "1", "--output_dir",
                             str(tmp_path / "ft"), "--resume", str(pretrained_196)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "missing" in result.stderr and "It holds a pre-training model (encoder.* weights): start from it with " \
        "--finetune." in result.stderr
