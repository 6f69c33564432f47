"""patches.checkpoints: atomic saves, safe reads of every supported source (read_any_checkpoint), names, choosing
in an output folder, pruning and leftovers."""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patches.checkpoints import errors, file_format
from patches.checkpoints import folder as checkpoint_folder
from patches.checkpoints import model_state, reading, writing
from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.model_state import check_checkpoint_grid
from patches.checkpoints.resume_state import resume_position
from patches.errors import PatchesError
from patches.grid import make_grid

GRID = make_grid(8, 2, 32, 8)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------- writing and reading

def test_full_disk_when_replacing_a_checkpoint_keeps_the_old_one(tmp_path: Path) -> None:
    """/dev/full fails every write with ENOSPC: point the temporary file of the save at it."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "checkpoint-latest.pth"
    writing.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = digest(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the name save_checkpoint writes first
    tmp.symlink_to("/dev/full")
    with pytest.raises(errors.CheckpointSaveError, match=r"no space left on the device; the previous "
                                                             r"checkpoint-latest\.pth is intact"):
        writing.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(100_000)})
    assert digest(path) == before and not tmp.is_symlink()


def test_checkpoint_of_another_model_size_is_refused_before_loading() -> None:
    from patches.models.factory import create_video_model
    small = create_video_model("pretrain_videomae_micro_patch16_224", grid=GRID, decoder_depth=1)
    tiny = create_video_model("pretrain_videomae_tiny_patch16_224", grid=GRID, decoder_depth=1)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"x\.pth does not fit --model tiny at this grid \(\d+ tensors of "
                                              r"another shape, e\.g\. .*from another model size or grid"):
        model_state.load_model_state(tiny, {"model": small.state_dict()}, "x.pth", "tiny")
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    with pytest.raises(CheckpointError, match="holds no 'model' state dict"):
        model_state.load_model_state(tiny, {"epoch": 3}, "x.pth", "tiny")


def test_the_check_against_a_run_names_each_differing_flag():
    saved = make_grid(6, 3, (48, 72), 12)
    check_checkpoint_grid({"grid": saved.to_dict()}, saved, "a.pth")  # the same grid passes
    check_checkpoint_grid({"model": {}}, saved, "a.pth")  # no record: left to the shape check
    with pytest.raises(CheckpointError, match=r"^a\.pth was made at another patch grid than this run's "
                                              r"\(--num_frames 6 vs 9; --input_size 48 72 vs 60 96: the file's "
                                              r"value first\)\. Try again\.$"):
        check_checkpoint_grid({"grid": saved.to_dict()}, make_grid(9, 3, (60, 96), 12), "a.pth", "Try again.")
    with pytest.raises(CheckpointError, match=r"^a\.pth: the checkpoint's grid entry"):
        check_checkpoint_grid({"grid": {"num_frames": "x"}}, saved, "a.pth")


def test_checkpoint_state_records_format_flags_and_grid():
    model = torch.nn.Linear(2, 3)
    flags = argparse.Namespace(lr=0.1, input_size=[32, 32], device=torch.device("cpu"))
    state = writing.checkpoint_state(model, GRID, flags, epoch=4, extra_entry=7)
    assert state["format"] == file_format.CHECKPOINT_FORMAT and state["epoch"] == 4 and state["extra_entry"] == 7
    assert state["args"] == {"lr": 0.1, "input_size": [32, 32], "device": "cpu"}
    assert state["grid"] == GRID.to_dict() and set(state["model"]) == {"weight", "bias"}


def test_one_reader_for_pth_safetensors_and_folders(tmp_path, capsys):
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    state = {"model": weights, "epoch": 2, "grid": GRID.to_dict()}
    pth = writing.save_checkpoint(tmp_path / "checkpoint-2.pth", state)
    writing.print_saved_and_export_safetensors(pth, state, GRID, {"lr": 0.5}, export=False)
    assert capsys.readouterr().out == f"Saved {pth}\n" and not pth.with_suffix(".safetensors").exists()
    writing.print_saved_and_export_safetensors(pth, state, GRID, argparse.Namespace(lr=0.5), export=True)
    st = pth.with_suffix(".safetensors")
    assert capsys.readouterr().out == f"Saved {pth}\nSaved {st}\n"

    from_pth = reading.read_any_checkpoint(pth)
    assert from_pth.contents["epoch"] == 2 and from_pth.source_format == "pth" and from_pth.path == pth
    loaded = reading.read_any_checkpoint(st)
    from_st = loaded.contents
    assert loaded.source_format == "safetensors" and loaded.recorded_grid() == GRID
    assert torch.equal(from_st["model"]["w"], weights["w"]) and loaded.model_state is from_st["model"]
    assert from_st["grid"] == GRID.to_dict() and from_st["args"] == {"lr": 0.5} == loaded.recorded_args
    with pytest.raises(CheckpointError, match="is a folder but not a transformers model folder"):
        reading.read_any_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        reading.read_any_checkpoint(tmp_path / "nothing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        reading.read_any_checkpoint(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------- names and discovery

def test_one_parser_of_checkpoint_names():
    parse = checkpoint_folder.parse_checkpoint_name
    assert parse("checkpoint-12.pth") == (12, ".pth")
    assert parse("checkpoint-3") == (3, "")
    assert parse("checkpoint-3.tmp") == (3, ".tmp") and parse("checkpoint-3.old") == (3, ".old")
    assert parse("checkpoint-3.tmp").epoch == 3
    for other in ("checkpoint-latest.pth", "checkpoint-best.pth", "checkpoint-.pth", "checkpoint-x-3.pth",
                  "ckpt-3.pth", ".checkpoint-3.pth.123.tmp", "checkpoint.pth"):
        assert parse(other) is None, other


def test_epoch_files_ignore_other_names(tmp_path):
    for name in ("checkpoint-2.pth", "checkpoint-10.pth", "checkpoint-3.old.pth", "checkpoint-latest.pth",
                 "checkpoint-best.pth", "checkpoint-4.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert [(n, p.name) for n, p in checkpoint_folder.epoch_checkpoint_files(tmp_path)] == [
        (2, "checkpoint-2.pth"), (10, "checkpoint-10.pth")]


def test_unreadable_newest_checkpoints_are_skipped_with_a_warning(tmp_path, capsys):
    save_checkpoint = writing.save_checkpoint

    def state(epoch: int, **position: int) -> dict:
        return {"model": {"w": torch.tensor([float(epoch)])}, "epoch": epoch, **position}

    save_checkpoint(tmp_path / "checkpoint-0.pth", state(0))
    save_checkpoint(tmp_path / "checkpoint-1.pth", state(1))
    save_checkpoint(tmp_path / "checkpoint-latest.pth", state(2, next_epoch=2, next_batch=3))
    assert checkpoint_folder.find_checkpoint(tmp_path).path.name == "checkpoint-latest.pth"

    # A truncated latest (say a copy cut short) and a corrupt checkpoint-1: checkpoint-0 is the newest good one.
    data = (tmp_path / "checkpoint-latest.pth").read_bytes()
    (tmp_path / "checkpoint-latest.pth").write_bytes(data[:len(data) // 2])
    (tmp_path / "checkpoint-1.pth").write_bytes(b"not a checkpoint")
    found = checkpoint_folder.find_checkpoint(tmp_path)
    assert found.path.name == "checkpoint-0.pth" and resume_position(found.state) == (1, 0)
    warnings = capsys.readouterr().out
    assert f"warning: skipping {tmp_path / 'checkpoint-latest.pth'}" in warnings
    assert f"warning: skipping {tmp_path / 'checkpoint-1.pth'}" in warnings

    # An epoch file further on than latest wins over it.
    save_checkpoint(tmp_path / "checkpoint-latest.pth", state(0, next_epoch=0, next_batch=2))
    save_checkpoint(tmp_path / "checkpoint-1.pth", state(1))
    assert checkpoint_folder.find_checkpoint(tmp_path).path.name == "checkpoint-1.pth"


def test_deepspeed_folders_are_judged_by_the_checkpoint_pth_written_last(tmp_path, capsys):
    save_checkpoint = writing.save_checkpoint
    save_checkpoint(tmp_path / "checkpoint-0" / "checkpoint.pth", {"epoch": 0})
    # A save into checkpoint-latest died before its checkpoint.pth; the previous latest had been moved
    # aside to checkpoint-latest.old by the folder swap and is still complete.
    (tmp_path / "checkpoint-latest").mkdir()
    (tmp_path / "checkpoint-latest" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    save_checkpoint(tmp_path / "checkpoint-latest.old" / "checkpoint.pth", {"epoch": 1, "next_epoch": 1,
                                                                          "next_batch": 2})
    found = checkpoint_folder.find_checkpoint(tmp_path, folders=True)
    assert found.path == tmp_path / "checkpoint-latest.old" / "checkpoint.pth"
    assert f"warning: skipping {tmp_path / 'checkpoint-latest'}: it has no checkpoint.pth" in capsys.readouterr().out
    assert [n for n, _ in checkpoint_folder.epoch_checkpoint_files(tmp_path, folders=True)] == [0]


def test_choose_checkpoint_takes_resume_else_auto_resume_and_keeps_the_grid(tmp_path):
    assert checkpoint_folder.choose_resume_checkpoint("", True, tmp_path, GRID) is None
    path = writing.save_checkpoint(tmp_path / "checkpoint-0.pth", {"epoch": 0, "grid": GRID.to_dict()})
    assert checkpoint_folder.choose_resume_checkpoint("", False, tmp_path, GRID) is None
    found = checkpoint_folder.choose_resume_checkpoint("", True, tmp_path, GRID)
    assert found == checkpoint_folder.FoundCheckpoint(path, found.state) and found.state["epoch"] == 0
    with pytest.raises(AttributeError):
        found.path = tmp_path  # frozen
    other = writing.save_checkpoint(tmp_path / "x" / "checkpoint.pth", {"epoch": 5, "grid": GRID.to_dict()})
    assert checkpoint_folder.choose_resume_checkpoint(str(other.parent), True, tmp_path, GRID).path == other  # a folder's .pth
    with pytest.raises(CheckpointError, match=r"another patch grid.* or use another --output_dir or "
                                              r"--no_auto_resume to start afresh\. HINT$"):
        checkpoint_folder.choose_resume_checkpoint("", True, tmp_path, make_grid(4, 2, 32, 8), other_grid_hint=" HINT")
    with pytest.raises(CheckpointError, match=r"or leave out --resume to start afresh\.$"):
        checkpoint_folder.choose_resume_checkpoint(str(path), False, tmp_path, make_grid(4, 2, 32, 8))


# ---------------------------------------------------------------- links, pruning, leftovers

def test_link_atomically_replaces_the_target(tmp_path):
    src = tmp_path / "checkpoint-1.pth"
    src.write_bytes(b"new")
    (tmp_path / "checkpoint-latest.pth").write_bytes(b"old")
    checkpoint_folder.link_atomically(src, tmp_path / "checkpoint-latest.pth")
    assert (tmp_path / "checkpoint-latest.pth").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1.pth", "checkpoint-latest.pth"]


def test_pruning_keeps_the_newest_epochs_best_latest_and_unfinished_swaps(tmp_path):
    for name in ("checkpoint-0.pth", "checkpoint-1.pth", "checkpoint-2.pth", "checkpoint-best.pth",
                 "checkpoint-latest.pth", "checkpoint-9"):
        (tmp_path / name).write_bytes(b"")  # a file without .pth is not a checkpoint
    for name in ("checkpoint-3", "checkpoint-4.tmp", "checkpoint-5.old"):
        (tmp_path / name).mkdir()
    assert checkpoint_folder.prune_epoch_checkpoints(tmp_path, 0) == []
    removed = checkpoint_folder.prune_epoch_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["checkpoint-0.pth", "checkpoint-1.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-2.pth", "checkpoint-3", "checkpoint-4.tmp", "checkpoint-5.old", "checkpoint-9",
        "checkpoint-best.pth", "checkpoint-latest.pth"]


@pytest.mark.slow
def test_stale_temp_files_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    gone, alive = dead_pid(), os.getpid()
    stale = [tmp_path / f".checkpoint-3.pth.{gone}.tmp", tmp_path / f".checkpoint-latest.pth.{gone}.tmp",
             tmp_path / f".checkpoint-3.safetensors.{gone}.tmp",
             tmp_path / "checkpoint-4.tmp" / f".checkpoint.pth.{gone}.tmp"]  # inside a DeepSpeed folder
    kept = [tmp_path / f".checkpoint-5.pth.{alive}.tmp",  # a live writer
            tmp_path / f".notes.txt.{gone}.tmp", tmp_path / f"checkpoint-3.pth.{gone}.tmp",  # not our names
            tmp_path / "checkpoint-3.pth", tmp_path / "log.txt",
            tmp_path / "other" / f".checkpoint-3.pth.{gone}.tmp"]  # not a checkpoint folder
    for i, p in enumerate(stale + kept):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x" * (i + 1))
    (tmp_path / "checkpoint-6.old").mkdir()  # DeepSpeed's swap folders may hold the only complete checkpoint
    link = tmp_path / f".checkpoint-7.pth.{gone}.tmp"
    link.symlink_to(tmp_path / "log.txt")  # we never write links

    assert checkpoint_folder.remove_stale_temp_files(tmp_path) == (len(stale), sum(range(1, len(stale) + 1)))
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept) and link.is_symlink() and (tmp_path / "checkpoint-6.old").is_dir()
    assert checkpoint_folder.remove_stale_temp_files(tmp_path) == (0, 0)
    assert checkpoint_folder.remove_stale_temp_files(tmp_path / "missing") == (0, 0)


# ---------------------------------------------------------------- corruption (issue 16)

def flip_middle(path: Path, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + size] = bytes(b ^ 0xFF for b in data[middle:middle + size])
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_refused_by_the_checksum_and_auto_resume_falls_back(tmp_path, capsys):
    weights = {"encoder_to_decoder.weight": torch.randn(512, 512)}  # 1 MB: the flip lands in tensor data
    save_checkpoint = writing.save_checkpoint
    save_checkpoint(tmp_path / "checkpoint-0.pth", {"model": weights, "epoch": 0})
    latest = save_checkpoint(tmp_path / "checkpoint-latest.pth", {"model": weights, "epoch": 1, "next_epoch": 1,
                                                                  "next_batch": 3})
    flip_middle(latest)
    with pytest.raises(errors.CheckpointError, match=r"is corrupt: its tensors do not match the checksum"):
        reading.read_pth_checkpoint(latest)
    found = checkpoint_folder.find_checkpoint(tmp_path)
    assert found.path == tmp_path / "checkpoint-0.pth" and torch.equal(found.state["model"]["encoder_to_decoder.weight"],
                                                                       weights["encoder_to_decoder.weight"])
    assert f"Auto-resume: falling back to {tmp_path / 'checkpoint-0.pth'}" in capsys.readouterr().out


def test_a_file_without_checksum_loads_with_a_note(tmp_path, capsys):
    torch.save({"model": {"w": torch.ones(3)}, "epoch": 0}, tmp_path / "videomae.pth")  # as VideoMAE writes them
    assert torch.equal(reading.read_pth_checkpoint(tmp_path / "videomae.pth")["model"]["w"], torch.ones(3))
    assert "carries no checksum of its tensors" in capsys.readouterr().out


def test_auto_resume_refuses_when_checkpoints_exist_but_none_loads(tmp_path):
    (tmp_path / "checkpoint-latest.pth").write_bytes(b"")
    (tmp_path / "checkpoint-2.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(errors.CheckpointError) as refused:
        checkpoint_folder.find_checkpoint(tmp_path)
    message = str(refused.value)
    assert f"none of the 2 checkpoints in {tmp_path} loads" in message
    assert f"{tmp_path / 'checkpoint-latest.pth'}: " in message and "truncated or corrupt (0 bytes" in message
    assert f"{tmp_path / 'checkpoint-2.pth'}: " in message and "is not a PyTorch checkpoint" in message
    assert "--no_auto_resume" in message and "another --output_dir" in message
    with pytest.raises(CheckpointError, match="^--auto_resume: none of the 2 checkpoints"):
        checkpoint_folder.choose_resume_checkpoint("", True, tmp_path, GRID)


# ---------------------------------------------------------------- the reading API and the typed errors

def test_checkpoint_errors_are_patches_errors():
    assert issubclass(CheckpointError, PatchesError) and issubclass(CheckpointError, ValueError)
    assert issubclass(errors.CheckpointSaveError, PatchesError) and issubclass(errors.ExportError, CheckpointError)


def test_read_any_checkpoint_tells_format_kind_and_grid(tmp_path):
    """One reader for every format: a plain VideoMAE state dict, ours (pre-training, fine-tuning, probe), and a
    DeepSpeed folder (its checkpoint.pth); the kind from the tensors, the grid as recorded."""
    videomae = tmp_path / "videomae.pth"
    torch.save({"module": {"blocks.0.norm1.weight": torch.ones(2)}, "args": argparse.Namespace(num_frames=16)},
               videomae)
    loaded = reading.read_any_checkpoint(videomae)
    assert (loaded.source_format, loaded.kind, loaded.recorded_args) == ("pth", "finetune", {"num_frames": 16})
    assert loaded.recorded_grid() is None and list(loaded.model_state) == ["blocks.0.norm1.weight"]
    plain = writing.save_checkpoint(tmp_path / "plain.pth", {"patch_embed.proj.weight": torch.ones(1)})
    assert reading.read_any_checkpoint(plain).model_state == {"patch_embed.proj.weight": torch.ones(1)}
    pretrain = writing.save_checkpoint(tmp_path / "checkpoint-0" / "checkpoint.pth",
                                       {"model": {"encoder.patch_embed.proj.weight": torch.ones(1)},
                                        "grid": GRID.to_dict()})
    folder = reading.read_any_checkpoint(pretrain.parent)
    assert (folder.source_format, folder.kind, folder.recorded_grid()) == ("deepspeed", "pretrain", GRID)
    probe = writing.save_checkpoint(tmp_path / "probe.pth", {"model": {"probe.weight": torch.ones(1)}, "probe": "linear"})
    assert reading.read_any_checkpoint(probe).kind == "probe"
    bad_grid = writing.save_checkpoint(tmp_path / "bad_grid.pth", {"model": {}, "grid": {"num_frames": 3}})
    with pytest.raises(CheckpointError, match="bad_grid.pth"):
        reading.read_any_checkpoint(bad_grid).recorded_grid()


def test_choosing_best_latest_and_what_to_evaluate(tmp_path):
    assert checkpoint_folder.best_checkpoint_file(tmp_path) is None
    assert checkpoint_folder.latest_checkpoint_file(tmp_path) is None
    assert checkpoint_folder.checkpoint_to_evaluate("", tmp_path) is None
    for n in (0, 1):
        writing.save_checkpoint(tmp_path / f"checkpoint-{n}.pth", {"epoch": n})
    assert checkpoint_folder.checkpoint_to_evaluate("", tmp_path) == tmp_path / "checkpoint-1.pth"
    best = writing.save_checkpoint(tmp_path / "checkpoint-best.pth", {"epoch": 0})
    assert checkpoint_folder.best_checkpoint_file(tmp_path) == best
    assert checkpoint_folder.checkpoint_to_evaluate("", tmp_path) == best
    assert checkpoint_folder.checkpoint_to_evaluate(str(tmp_path / "x.pth"), tmp_path) == tmp_path / "x.pth"
    assert checkpoint_folder.checkpoint_to_evaluate(str(tmp_path), tmp_path) == tmp_path / "checkpoint.pth"
    latest = writing.save_checkpoint(tmp_path / "checkpoint-latest" / "checkpoint.pth", {"epoch": 1})
    assert checkpoint_folder.latest_checkpoint_file(tmp_path, folders=True) == latest
