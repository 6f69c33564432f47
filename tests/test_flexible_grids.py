"""Flexible-grid pre-training (``run_mae_pretraining.py --grids``): the flag's checks, the step at a drawn grid,
the records, and an exact resume after SIGTERM in a real process."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from launch_helpers import ROOT, assert_same_weights, read_scalars, run, run_and_signal, weights
from patches.checkpoints.reading import read_pth_checkpoint
from patches.cli import pretrain as run_mae_pretraining
from patches.config.checks import FlagError
from patches.config.pretraining import check_pretraining
from patches.data.masking import MaskGenerator
from patches.data.samplers import StepPosition
from patches.grid import grids_from_specs
from patches.models.factory import create_video_model
from patches.train.pretraining import warn_if_other_grids
from patches.train.reconstruction import FlexibleReconstruction, MaskedReconstruction, resize_clips
from patches.train.stop_signals import EXIT_REQUEUE

TINY = ["--model", "pretrain_videomae_micro_patch16_224", "--decoder_depth", "1", "--num_frames", "4",
        "--sampling_rate", "2", "--device", "cpu"]


def parsed(tmp_path: Path, *flags: str):
    return run_mae_pretraining.get_args_parser().parse_args([*TINY, "--output_dir", str(tmp_path / "o"), *flags])


@pytest.mark.slow
def test_a_bad_grids_entry_is_refused_by_the_cli_naming_it(tmp_path):
    cmd = [sys.executable, str(ROOT / "run_mae_pretraining.py"), *TINY, "--output_dir", str(tmp_path / "o"),
           "--grids", "32/16", "30/8"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr  # a usage error
    assert "--grids: grid 30/8: the frame side 30 is not divisible by the patch 8" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists(), "refused before any work"


@pytest.mark.parametrize("flags,message", [
    (["--grids", "32/16", "16/32"], "--grids: grid 16/32: the patch (32 px) is larger than the frame (16 px)"),
    (["--grids", "32/16", "--patch_size", "16"], "--grids replaces --patch_size: give one or the other"),
    (["--grids", "32/16", "--pos_embed", "learned"], "--grids needs --pos_embed 3d, not learned"),
    (["--grids", "32/8", "32/16", "--mask_ratio", "0.2"], "--grids 32/16: --mask_ratio 0.2 masks no token"),
    (["--grids", "4/2", "4/1", "--num_frames", "2", "--tubelet_size", "1"],
     "--grids 4/1: --normlize_target standardises each token's pixels"),
])
def test_grids_conflicting_with_other_flags_are_refused(flags, message, tmp_path, capsys):
    with pytest.raises(FlagError) as stop:
        check_pretraining(parsed(tmp_path, *flags))
    assert message in str(stop.value)


def test_grids_set_the_base_grid_and_3d_tables_and_fixed_runs_keep_their_defaults(tmp_path):
    args = parsed(tmp_path, "--grids", "32/8", "32/16", "48/8")
    flags, grids, counts = check_pretraining(args)
    assert [g.spec for g in grids] == ["32/8", "32/16", "48/8"]  # as listed: the draw indexes this order
    assert (flags.input_size, flags.patch_size, flags.pos_embed) == ([32], 16, "3d")  # the largest patch
    assert [c.num_tokens for c in counts] == [32, 8, 72]
    assert (args.input_size, args.patch_size, args.pos_embed) == (None, None, None)  # the parsed flags are only read
    flags, grids, _ = check_pretraining(parsed(tmp_path))
    assert (flags.input_size, flags.patch_size, flags.pos_embed) == ([224], 16, "1d") and grids[0].spec == "224/16"


def test_the_steps_grid_is_a_function_of_seed_epoch_and_batch():
    grids = grids_from_specs(["32/16", "32/8"], 4, 2)
    settings = MaskedReconstruction(grids[0], torch.device("cpu"))
    masks = [MaskGenerator(g, "tube", 0.75) for g in grids]
    draws = [FlexibleReconstruction(grids, masks, settings, seed=3, rank=r) for r in (0, 1)]
    positions = [StepPosition(e, b) for e in range(2) for b in range(20)]
    sequence = [draws[0].grid_index(p) for p in positions]
    assert sequence == [draws[1].grid_index(p) for p in positions], "the same on every process"
    assert set(sequence) == {0, 1}
    assert sequence == [int(np.random.default_rng([3, p.epoch, p.batch]).integers(2)) for p in positions]
    other_seed = FlexibleReconstruction(grids, masks, settings, seed=4)
    assert sequence != [other_seed.grid_index(p) for p in positions]


def micro_model_and_loss(monkeypatch, rank: int = 0) -> tuple[torch.nn.Module, FlexibleReconstruction, list]:
    """A micro model at 32/16, its flexible loss at 32/16 and 32/8, and the list of the model's calls:
    (clip shape, visible index, target index, grid) each."""
    torch.manual_seed(0)
    grids = grids_from_specs(["32/16", "32/8"], 4, 2)
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=grids[0], decoder_depth=1, pos_embed="3d")
    loss = FlexibleReconstruction(grids, [MaskGenerator(g, "tube", 0.75) for g in grids],
                                  MaskedReconstruction(grids[0], torch.device("cpu")), seed=0, rank=rank)
    calls: list = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, v, t, grid: calls.append((x.shape, v, t, grid))
                        or forward(x, v, t, grid=grid))
    return model, loss, calls


def test_a_flexible_step_trains_at_its_grid_and_the_epoch_record_counts_each(monkeypatch):
    model, loss, calls = micro_model_and_loss(monkeypatch)
    clips = torch.randint(0, 256, (2, 3, 4, 48, 48), dtype=torch.uint8)  # the loader's clips, larger than both
    values = [loss(model, (clips, None, None), StepPosition(0, b)) for b in range(6)]
    drawn = [loss.grid_index(StepPosition(0, b)) for b in range(6)]
    assert set(drawn) == {0, 1}
    for (clip, visible, target, grid), i in zip(calls, drawn):
        assert grid == loss.grids[i] and clip == (2, 3, 4, 32, 32)
        per_frame = grid.patches_per_frame
        assert visible.shape == (2, 2 * (per_frame - int(0.75 * per_frame)))
        assert visible.shape[1] + target.shape[1] == grid.num_tokens
    record = loss.epoch_record()
    assert {k: v for k, v in record.items() if k.startswith("steps_")} == {
        f"steps_{g.spec}": drawn.count(i) for i, g in enumerate(loss.grids)}
    for i, g in enumerate(loss.grids):
        mean = np.mean([float(v.detach()) for v, d in zip(values, drawn) if d == i])
        assert record[f"loss_{g.spec}"] == pytest.approx(mean)
    assert loss.epoch_record() == {}, "each epoch counts anew"


def test_a_steps_masks_follow_each_clips_place_in_the_global_batch_not_the_process_count(monkeypatch):
    clips = torch.randint(0, 256, (4, 3, 4, 32, 32), dtype=torch.uint8)
    model, one_process, calls = micro_model_and_loss(monkeypatch)
    one_process(model, (clips, None, None), StepPosition(1, 2))
    for rank in (0, 1):  # two processes of 2 clips: the same global batch
        _, loss, _ = micro_model_and_loss(monkeypatch, rank)
        loss(model, (clips[2 * rank:2 * rank + 2], None, None), StepPosition(1, 2))
    assert torch.equal(calls[0][1], torch.cat([calls[1][1], calls[2][1]]))
    assert not torch.equal(calls[0][1][0], calls[0][1][1]), "clips get their own masks"


def test_resize_clips_keeps_a_flat_frame_flat():
    clips = torch.full((1, 3, 2, 48, 48), 0.25)
    out = resize_clips(clips, (32, 32))
    assert out.shape == (1, 3, 2, 32, 32) and torch.allclose(out, clips[..., :32, :32])
    assert resize_clips(clips, (48, 48)) is clips


def flexible_flags(demo_root: Path, out: Path) -> list[str]:
    # 16 videos, 4 per step: 4 steps per epoch, 2 epochs, at two grids drawn per step.
    return [*TINY, "--grids", "32/16", "32/8", "--print_freq", "1", "--warmup_epochs", "1", "--lr", "1e-3",
            "--deterministic", "--num_workers", "0", "--data_path", str(demo_root / "train.csv"), "--data_root",
            str(demo_root), "--batch_size", "4", "--epochs", "2", "--output_dir", str(out)]


@pytest.mark.slow
def test_a_flexible_run_stopped_mid_epoch_resumes_to_the_same_losses_grids_and_weights(demo_root, tmp_path, capsys):
    reference = tmp_path / "reference"  # uninterrupted, in this process (the stop and resume below are the subject)
    run_mae_pretraining.main(run_mae_pretraining.get_args_parser().parse_args(flexible_flags(demo_root, reference)))
    printed = capsys.readouterr().out
    assert "Flexible grids: one of these 2 per step" in printed and "32/8: 2 x 4 x 4 = 32 tokens" in printed
    out = tmp_path / "out"
    status, text = run_and_signal("run_mae_pretraining.py", flexible_flags(demo_root, out), "Epoch [1/2] [2/4]",
                                  signal.SIGTERM)
    assert status == EXIT_REQUEUE, text[-2000:]
    assert 2 <= read_pth_checkpoint(out / "checkpoint-latest.pth")["next_batch"] < 4
    again = run("run_mae_pretraining.py", flexible_flags(demo_root, out))
    assert "continuing at epoch 0, batch" in again.stdout

    assert read_scalars(out / "tb", "train/loss") == read_scalars(reference / "tb", "train/loss")
    records = [[json.loads(line) for line in (d / "log.txt").read_text().splitlines()] for d in (reference, out)]
    per_grid = [{k: v for k, v in r[-1].items() if k.startswith(("train_loss_", "train_steps_"))} for r in records]
    assert per_grid[0] == per_grid[1] and sum(v for k, v in per_grid[0].items() if "steps" in k) == 4
    tags = _tags(out / "tb")
    assert all(f"epoch/{k[len('train_'):]}" in tags for k in per_grid[0]), (per_grid[0], tags)
    assert_same_weights(weights(out / "checkpoint-1.pth"), weights(reference / "checkpoint-1.pth"))
    ckpt = read_pth_checkpoint(out / "checkpoint-1.pth")
    assert [g["patch_size"] for g in ckpt["grids"]] == [16, 8] and ckpt["grid"]["patch_size"] == 16
    assert ckpt["pos_reference"] == [4, 4] and ckpt["args"]["grids"] == ["32/16", "32/8"]


def _tags(event_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_resuming_a_flexible_checkpoint_with_another_grids_list_warns(tmp_path, capsys):
    from patches.checkpoints.folder import FoundCheckpoint
    grids = grids_from_specs(["32/16", "32/8"], 4, 2)
    found = FoundCheckpoint(tmp_path / "checkpoint-3.pth", {"grids": [g.to_dict() for g in grids]})
    warn_if_other_grids(found, grids)
    assert capsys.readouterr().out == ""
    warn_if_other_grids(found, grids[:1])
    assert f"warning: {tmp_path / 'checkpoint-3.pth'} was trained at --grids 32/16 32/8; this run draws from 32/16 " \
           f"from here on" in capsys.readouterr().out
