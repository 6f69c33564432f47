"""Checkpoints that survive: exact resume after SIGKILL, crashes while saving, SIGTERM/SIGUSR1, pruning.

Every run is a real process on the demo videos with a micro model (4 frames of 32x32); weights are
compared bit for bit, which ``--deterministic`` and per-item seeding make possible on the CPU.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from launch_helpers import FINETUNE, PRETRAIN, ROOT, assert_same_weights, run, run_and_signal, weights
from patches.checkpoints.folder import find_checkpoint
from patches.checkpoints.reading import read_pth_checkpoint
from patches.checkpoints.resume_state import rng_state, set_rng_state
from patches.checkpoints.writing import save_checkpoint
from patches.data.samplers import ResumableSampler, SeededItems
from patches.train.stop_signals import EXIT_REQUEUE


def pretrain_flags(demo_root: Path, out: Path, *extra: str) -> list[str]:
    # 16 videos, 4 per step: 4 steps per epoch, 2 epochs; checkpoint-latest after every step.
    return [*PRETRAIN, "--data_path", str(demo_root / "train.csv"), "--data_root", str(demo_root), "--batch_size", "4",
            "--epochs", "2", "--save_ckpt_every_steps", "1", "--save_ckpt_freq", "1", "--keep_ckpts", "1",
            "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def reference(demo_root, tmp_path_factory) -> Path:
    """An uninterrupted pre-training run (one worker process)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run("run_mae_pretraining.py", pretrain_flags(demo_root, out, "--num_workers", "0"))
    return out


@pytest.mark.slow
def test_keep_ckpts_keeps_the_newest_epoch_file_and_latest(reference):
    assert sorted(p.name for p in reference.glob("checkpoint-*")) == ["checkpoint-1.pth", "checkpoint-latest.pth"]
    latest = read_pth_checkpoint(reference / "checkpoint-latest.pth")
    assert (latest["next_epoch"], latest["next_batch"], latest["global_step"]) == (2, 0, 8)
    assert_same_weights(latest["model"], weights(reference / "checkpoint-1.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_sigkill_mid_epoch_then_same_command_ends_with_the_same_weights(reference, demo_root, tmp_path, workers):
    out = tmp_path / "out"
    flags = pretrain_flags(demo_root, out, "--num_workers", workers)
    status, _ = run_and_signal("run_mae_pretraining.py", flags, "checkpoint-latest.pth (epoch 0, batch 2,",
                               signal.SIGKILL)
    assert status == -signal.SIGKILL
    killed_at = read_pth_checkpoint(out / "checkpoint-latest.pth")
    assert killed_at["next_epoch"] == 0 and 2 <= killed_at["next_batch"] < 4, "killed inside epoch 0"
    assert not (out / "checkpoint-1.pth").exists()

    again = run("run_mae_pretraining.py", flags)
    assert f"Resumed from {out / 'checkpoint-latest.pth'} (epoch 0); continuing at epoch 0, batch " in again.stdout
    assert_same_weights(weights(out / "checkpoint-1.pth"), weights(reference / "checkpoint-1.pth"))
    # The optimizer state matches too, so training would go on identically.
    a, b = (read_pth_checkpoint(d / "checkpoint-1.pth")["optimizer"] for d in (out, reference))
    for key in a["state"]:
        assert_same_weights(a["state"][key], b["state"][key])


@pytest.mark.slow
def test_sigterm_under_torchrun_saves_latest_and_the_run_resumes(reference, demo_root, tmp_path):
    out = tmp_path / "out"
    # Two processes of 2 clips: the same global batches as the one-process reference of 4.
    flags = pretrain_flags(demo_root, out, "--num_workers", "0", "--batch_size", "2", "--save_ckpt_every_steps", "0")
    status, text = run_and_signal("run_mae_pretraining.py", flags, "Epoch [1/2] [1/4]", signal.SIGTERM, nproc=2)
    assert status != 0  # torchrun reports its own SIGTERM as a failure; the workers exited with 75
    assert f"exiting with status {EXIT_REQUEUE}" in text
    saved = read_pth_checkpoint(out / "checkpoint-latest.pth")
    assert saved["world_size"] == 2 and len(saved["rng_states"]) == 2
    assert saved["next_epoch"] == 0 and 1 <= saved["next_batch"] < 4

    again = run("run_mae_pretraining.py", flags, nproc=2)
    assert f"continuing at epoch 0, batch {saved['next_batch']}" in again.stdout
    assert_same_weights(weights(out / "checkpoint-1.pth"), weights(reference / "checkpoint-1.pth"), atol=1e-6)


@pytest.mark.slow
def test_sigusr1_exits_75_with_a_checkpoint_to_resume_from(demo_root, tmp_path):
    out = tmp_path / "out"
    flags = pretrain_flags(demo_root, out, "--num_workers", "1", "--save_ckpt_every_steps", "0", "--epochs", "1")
    status, text = run_and_signal("run_mae_pretraining.py", flags, "Epoch [1/1] [1/4]", signal.SIGUSR1)
    assert status == EXIT_REQUEUE, text[-2000:]
    assert "stopped by SIGUSR1 after saving" in text
    assert read_pth_checkpoint(out / "checkpoint-latest.pth")["next_batch"] >= 1
    again = run("run_mae_pretraining.py", flags)
    assert "continuing at epoch 0, batch" in again.stdout and (out / "checkpoint-0.pth").is_file()


SLOW_SAVE = """
import sys, torch
from patches.checkpoints import writing
# Many small tensors: pickling them keeps torch.save busy for a while, so the kill lands mid-write.
state = {{"model": {{f"w{{i}}": torch.full((64,), float(i)) for i in range(300_000)}}}}
print("writing", flush=True)
writing.save_checkpoint({target!r}, state)
print("done", flush=True)
"""


@pytest.mark.slow
def test_kill_during_a_save_leaves_the_previous_checkpoint_chosen_by_auto_resume(reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("checkpoint-1.pth", "checkpoint-latest.pth"):
        (out / name).write_bytes((reference / name).read_bytes())
    before = weights(out / "checkpoint-latest.pth")
    script = SLOW_SAVE.format(root=str(ROOT), target=str(out / "checkpoint-latest.pth"))
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    deadline = time.time() + 120
    while not list(out.glob(".checkpoint-latest.pth.*.tmp")) and time.time() < deadline:
        time.sleep(0.001)
    writer.kill()
    writer.wait()
    assert list(out.glob(".checkpoint-latest.pth.*.tmp")), "the kill landed mid-write: the temporary file is left"

    found = find_checkpoint(out)
    assert found.path == out / "checkpoint-latest.pth"
    assert_same_weights(found.state["model"], before)


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    import random
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves numpy with a cached gaussian
    save_checkpoint(tmp_path / "c.pth", {"rng_states": [rng_state()]})
    expected = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    set_rng_state(read_pth_checkpoint(tmp_path / "c.pth")["rng_states"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.standard_normal(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_sampler_order_is_a_function_of_seed_and_epoch_and_shards_global_batches():
    one = ResumableSampler(50, batch_size=6, seed=7)
    two = [ResumableSampler(50, batch_size=3, num_replicas=2, rank=r, seed=7) for r in range(2)]
    assert one.batches_per_epoch == two[0].batches_per_epoch == 8
    for epoch in (0, 1):
        one.set_epoch(epoch)
        whole = [i for _, i in one]
        assert whole == [i for _, i in one], "the same order every time"
        parts = []
        for s in two:
            s.set_epoch(epoch)
            parts.append([i for _, i in s])
        for b in range(8):  # each global batch holds the same items as the one-process batch
            assert parts[0][3 * b:3 * b + 3] + parts[1][3 * b:3 * b + 3] == whole[6 * b:6 * b + 6]
        one.set_epoch(epoch, start_batch=5)
        assert [i for _, i in one] == whole[30:] and len(one) == 18
    one.set_epoch(0)
    first = [i for _, i in one]
    one.set_epoch(1)
    assert first != [i for _, i in one]
    assert ResumableSampler(50, 6, seed=7, batches_multiple=3).batches_per_epoch == 6


def test_items_depend_only_on_their_key():
    class Draw(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(2)

    items = SeededItems(Draw(), seed=0)
    first = items[(3, 1)]
    torch.rand(5)  # whatever ran before
    assert torch.equal(items[(3, 1)], first)
    assert not torch.equal(items[(3, 2)], first) and not torch.equal(items[(4, 1)], first)
    state = torch.get_rng_state()
    items[(0, 0)]
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG stream is left alone"



def test_timing_the_attention_paths_leaves_the_rng_alone():
    # --attn_impl auto times the paths in a run that has no cached choice, and not in one that has: a draw
    # from the run's RNG there would make drop-path differ between the two.
    from patches.grid import make_grid
    from patches.models.attention import BlockAttention, time_attention_paths
    from patches.models.factory import create_video_model
    model = create_video_model("vit_micro_patch16_224", grid=make_grid(4, 2, 32, 8), num_classes=3)
    attn = [m for m in model.modules() if isinstance(m, BlockAttention)][-1]
    state = torch.get_rng_state()
    time_attention_paths(attn, torch.device("cpu"), None, batch_size=2, tokens=32, repeats=1)
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------- fine-tuning

def finetune_flags(demo_root: Path, out: Path) -> list[str]:
    # 16 videos, 2 per step, 2 steps per update: 4 updates per epoch; EMA, mixup, RandAugment, erasing and
    # stochastic depth all draw random numbers that a resume must repeat.
    return [*FINETUNE, "--data_path", str(demo_root), "--batch_size", "2", "--update_freq", "2", "--epochs", "2",
            "--model_ema", "--model_ema_decay", "0.9", "--mixup", "0.8", "--cutmix", "1.0", "--aa", "rand-m7-n2",
            "--reprob", "0.25", "--drop_path", "0.1", "--lr", "0.05", "--num_workers", "1",
            "--save_ckpt_every_steps", "1", "--save_ckpt_freq", "1", "--keep_ckpts", "1", "--test_num_segment", "1",
            "--test_num_crop", "1", "--output_dir", str(out)]


@pytest.mark.slow
def test_finetuning_killed_mid_epoch_resumes_to_the_same_weights_and_ema(demo_root, tmp_path, monkeypatch):
    # --attn_impl auto: the reference times the attention paths (an empty cache of its own), the interrupted run
    # and its resume read the choice from that cache; timing must not change what the runs draw at random.
    monkeypatch.setenv("PATCHES_CACHE_DIR", str(tmp_path / "attention-cache"))
    reference = tmp_path / "reference"
    timed = run("run_class_finetuning.py", finetune_flags(demo_root, reference))
    assert "per forward + backward of one attention layer" in timed.stdout, "the reference timed the paths"
    out = tmp_path / "out"
    flags = finetune_flags(demo_root, out)
    status, text = run_and_signal("run_class_finetuning.py", flags, "checkpoint-latest.pth (epoch 1, batch 2,",
                                  signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert "(measured before for " in text, "the interrupted run read the choice from the cache"
    killed_at = read_pth_checkpoint(out / "checkpoint-latest.pth")
    assert killed_at["next_epoch"] == 1 and killed_at["next_batch"] in (2, 4, 6)
    assert "model_ema" in killed_at

    again = run("run_class_finetuning.py", flags)
    assert "continuing at epoch 1, batch" in again.stdout
    for key in ("model", "model_ema"):
        assert_same_weights(weights(out / "checkpoint-1.pth", key), weights(reference / "checkpoint-1.pth", key))
    logs = [[json.loads(line) for line in (d / "log.txt").read_text().splitlines()] for d in (reference, out)]
    assert logs[0][-1]["test_acc1"] == logs[1][-1]["test_acc1"]
    # --keep_ckpts 1 removed checkpoint-0, never the best or the latest.
    names = sorted(p.name for p in out.glob("checkpoint-*.pth"))
    assert names == sorted(["checkpoint-1.pth", "checkpoint-latest.pth"] +
                           (["checkpoint-best.pth"] if (out / "checkpoint-best.pth").exists() else []))
    assert (reference / "checkpoint-best.pth").exists() == (out / "checkpoint-best.pth").exists()
