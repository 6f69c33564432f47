"""The training driver in-process: the epoch loop, logs, checkpoints, exact resume, accumulation, stop signals and
exit statuses. (The run scripts over it are tested as real processes in test_pretraining_cli, test_finetuning,
test_resume and test_distributed.)"""
from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import Dataset

from patches.checkpoints.folder import choose_resume_checkpoint
from patches.checkpoints.reading import read_pth_checkpoint
from patches.data.health import BadVideoTracker
from patches.data.loaders import LoaderConfig, train_loader
from patches.data.samplers import StepPosition
from patches.data.unreadable import CollateWithBad, UnreadableDataError
from patches.grid import GridError, make_grid
from patches.train.stop_signals import EXIT_REQUEUE, Interrupted
from patches.train.trainer import RunRecord, Schedule, Trainer, TrainerConfig, launch

GRID = make_grid(4, 2, 32, 8)  # recorded in the checkpoints; the toy model below does not use it
WEIGHTS = torch.tensor([1.0, -2.0, 0.5, 3.0])


class NoisyLine(Dataset):
    """``y = x . WEIGHTS + noise`` with ``x`` drawn from torch's RNG, which the training loader seeds per item."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int):
        x = torch.randn(4)
        return (x, (x @ WEIGHTS + 0.01 * torch.randn(())).reshape(1)), []  # (item, unreadable videos)


def mse(model: torch.nn.Module, batch, position: StepPosition) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def config(out: Path, **changes) -> TrainerConfig:
    settings = dict(output_dir=str(out), model_name="toy", device="cpu", amp="none", epochs=3,
                    schedule=Schedule(lr=0.05, min_lr=0.01, warmup_epochs=1, weight_decay=0.0), print_freq=100)
    return TrainerConfig(**{**settings, **changes})


def start(cfg: TrainerConfig, batch_size: int = 4) -> Trainer:
    """A trainer set up over the toy model and data, resumed from ``cfg.output_dir`` when it holds a checkpoint."""
    trainer = Trainer(cfg, GRID, argparse.Namespace(model="toy", lr=cfg.schedule.lr))
    loader = train_loader(NoisyLine(), LoaderConfig(batch_size, 0, False, seed=0, max_bad_fraction=0.0),
                          CollateWithBad(), torch.device("cpu"), batches_multiple=cfg.update_freq)
    torch.manual_seed(0)
    model = trainer.prepare_model(torch.nn.Linear(4, 1))
    trainer.setup_training(torch.optim.SGD(model.parameters(), lr=cfg.schedule.lr), BadVideoTracker(
        loader, 32, 0.0, "toy data"), micro_batch=batch_size, clips_per_step=batch_size)
    found = choose_resume_checkpoint("", True, cfg.output_dir, GRID)
    if found is not None:
        trainer.restore(found)
    return trainer


def signal_at_call(n: int, loss_fn):
    """``loss_fn`` that sends this process SIGTERM during its ``n``-th call (the driver saves, then stops)."""
    calls = []

    def loss(model: torch.nn.Module, batch, position: StepPosition) -> torch.Tensor:
        calls.append(1)
        if len(calls) == n:
            signal.raise_signal(signal.SIGTERM)
        return loss_fn(model, batch, position)
    return loss


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def test_fit_trains_logs_and_saves(tmp_path: Path) -> None:
    with start(config(tmp_path, save_ckpt_freq=2)) as trainer:
        last = trainer.fit(mse)
    logged = records(tmp_path)
    assert [r["epoch"] for r in logged] == [0, 1, 2] and last == logged[-1]
    assert logged[-1]["train_loss"] < 0.2 * logged[0]["train_loss"], "the line is learned"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1.pth", "checkpoint-2.pth",
                                                                   "checkpoint-latest.pth"]
    assert trainer.last_checkpoint == tmp_path / "checkpoint-2.pth"
    state = read_pth_checkpoint(tmp_path / "checkpoint-2.pth")
    assert state["global_step"] == 24 and state["grid"] == GRID.to_dict() and state["args"]["model"] == "toy"
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert len(events.Scalars("train/loss")) == 24 and len(events.Scalars("epoch/loss")) == 3


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    with start(config(tmp_path / "straight")) as trainer:
        trainer.fit(mse)
    with start(config(tmp_path / "halves")) as trainer, pytest.raises(Interrupted):
        trainer.fit(signal_at_call(12, mse))  # stopped half-way through epoch 1 ...
    with start(config(tmp_path / "halves")) as trainer:  # ... and the same command goes on from there
        assert (trainer.progress.epoch, trainer.progress.batch) == (1, 4)
        trainer.fit(mse)
    straight, halves = (read_pth_checkpoint(tmp_path / d / "checkpoint-2.pth") for d in ("straight", "halves"))
    assert all(torch.equal(straight["model"][k], halves["model"][k]) for k in straight["model"])
    assert [r["epoch"] for r in records(tmp_path / "halves")] == [0, 1, 2]


def test_the_loss_gets_every_step_position_also_after_a_resume(tmp_path: Path) -> None:
    seen: list[StepPosition] = []

    def recording(model: torch.nn.Module, batch, position: StepPosition) -> torch.Tensor:
        seen.append(position)
        return mse(model, batch, position)

    with start(config(tmp_path, epochs=2)) as trainer, pytest.raises(Interrupted):
        trainer.fit(signal_at_call(11, recording))  # stopped after batch 2 of epoch 1 (8 batches an epoch)
    with start(config(tmp_path, epochs=2)) as trainer:
        trainer.fit(recording)
    # each step once, at its place: the resumed run goes on at batch 3 of epoch 1
    assert [(p.epoch, p.batch) for p in seen] == [(e, b) for e in range(2) for b in range(8)]


def test_the_run_record_is_saved_as_the_checkpoint_keys_it_names(tmp_path: Path) -> None:
    with start(config(tmp_path, epochs=1)) as trainer:
        trainer.progress.run = RunRecord(best_acc1=-1.0, nb_classes=3, run_id="abc", class_names=["a", "b", "c"])
        trainer.fit(mse)
        trainer.save_weights("checkpoint-best.pth", 0)
    for name in ("checkpoint-0.pth", "checkpoint-best.pth"):
        state = read_pth_checkpoint(tmp_path / name)
        assert (state["best_acc1"], state["nb_classes"], state["run_id"], state["class_names"]) == (
            -1.0, 3, "abc", ["a", "b", "c"])
        assert not {"grids", "probe", "encoder"} & set(state), "fields left unset are not written"
    with start(config(tmp_path, epochs=2)) as trainer:  # the run script sets its record again on resume
        assert trainer.progress.run == RunRecord() and (trainer.progress.epoch, trainer.progress.batch) == (1, 0)


def test_accumulation_makes_one_update_per_update_freq_batches(tmp_path: Path) -> None:
    with start(config(tmp_path, epochs=1, update_freq=2)) as trainer:
        assert (trainer.batches_per_epoch, trainer.steps_per_epoch) == (8, 4)
        trainer.fit(mse)
    assert read_pth_checkpoint(tmp_path / "checkpoint-0.pth")["global_step"] == 4


def test_a_stop_signal_saves_latest_mid_epoch_and_exits_75(tmp_path: Path) -> None:
    trainer = start(config(tmp_path))

    def body(device: str | None) -> None:
        with trainer:
            trainer.fit(signal_at_call(3, mse))

    with pytest.raises(SystemExit) as stop:
        launch(body, "cpu")
    assert stop.value.code == EXIT_REQUEUE
    latest = read_pth_checkpoint(tmp_path / "checkpoint-latest.pth")
    assert (latest["next_epoch"], latest["next_batch"]) == (0, 3)


def test_a_non_finite_loss_ends_with_an_error_line(tmp_path: Path) -> None:
    trainer = start(config(tmp_path))

    def body(device: str | None) -> None:
        with trainer:
            trainer.fit(lambda model, batch, position: mse(model, batch, position) * float("nan"))

    with pytest.raises(SystemExit, match=r"error: loss is nan at epoch 0, step 0 of the epoch \(global step 0\)"):
        launch(body, "cpu")
    assert not list(tmp_path.glob("checkpoint-*")), "nothing is saved from a broken state"


def test_launch_ends_a_known_failure_with_an_error_line_and_its_status(capsys: pytest.CaptureFixture) -> None:
    worker_text = ("Caught UnreadableDataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                   "last):\n  ...\npatches.data.unreadable.UnreadableDataError: no readable video for this item")

    def body(device: str | None) -> None:
        raise error

    error = UnreadableDataError(worker_text)
    with pytest.raises(SystemExit) as stop:
        launch(body, "cpu")
    # (a message as the code: Python prints it and exits with status 1)
    assert stop.value.code == "error: no readable video for this item"
    error = GridError("grid 7/3 is not SIZE/PATCH")  # a usage error: the line on stderr, status 2
    with pytest.raises(SystemExit) as stop:
        launch(body, "cpu")
    assert stop.value.code == 2 and capsys.readouterr().err == "error: grid 7/3 is not SIZE/PATCH\n"


def test_resuming_from_an_older_checkpoint_logs_each_epoch_once(tmp_path: Path, capsys) -> None:
    with start(config(tmp_path)) as trainer:
        trainer.fit(mse)
    for name in ("checkpoint-latest.pth", "checkpoint-2.pth"):  # both broken: auto-resume falls back to epoch 1
        (tmp_path / name).write_bytes(b"")
    with start(config(tmp_path)) as trainer:
        assert (trainer.progress.epoch, trainer.progress.batch) == (2, 0)
        trainer.fit(mse)
    assert f"Dropped 1 records of epoch 2 on from {tmp_path / 'log.txt'}" in capsys.readouterr().out
    assert [r["epoch"] for r in records(tmp_path)] == [0, 1, 2]
    events = EventAccumulator(str(tmp_path / "tb")).Reload()  # the first attempt's epoch 2 is purged
    assert [e.step for e in events.Scalars("train/loss")] == list(range(24))
    assert [e.step for e in events.Scalars("epoch/loss")] == [7, 15, 23]


def test_a_stop_during_validation_saves_the_epoch_and_the_rerun_validates_it(tmp_path: Path) -> None:
    with start(config(tmp_path / "straight")) as trainer:
        trainer.fit(mse)

    def validation(stop_in_epoch: int):
        def after_epoch(epoch: int, record: dict) -> None:
            for i in trainer.stoppable(range(3)):
                if epoch == stop_in_epoch and i == 1:
                    signal.raise_signal(signal.SIGUSR1)
            record["val_batches"] = 3
        return after_epoch

    out = tmp_path / "stopped"
    trainer = start(config(out))

    def body(device: str | None) -> None:
        with trainer:
            trainer.fit(mse, validation(stop_in_epoch=1))

    with pytest.raises(SystemExit) as stop:
        launch(body, "cpu")
    assert stop.value.code == EXIT_REQUEUE
    latest = read_pth_checkpoint(out / "checkpoint-latest.pth")
    assert (latest["next_epoch"], latest["next_batch"]) == (1, 8) and "train_loss" in latest["epoch_record"]
    with start(config(out)) as trainer:
        assert (trainer.progress.epoch, trainer.progress.batch) == (1, 8)
        trainer.fit(mse, validation(stop_in_epoch=-1))
    logged = records(out)
    assert [r["epoch"] for r in logged] == [0, 1, 2] and all(r["val_batches"] == 3 for r in logged)
    assert logged[1]["train_loss"] == latest["epoch_record"]["train_loss"]
    straight, resumed = (read_pth_checkpoint(d / "checkpoint-2.pth")["model"] for d in (tmp_path / "straight", out))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_non_finite_gradients_stop_the_run_before_anything_is_applied_or_saved(tmp_path: Path) -> None:
    # bf16 overflow: the loss is finite, its gradients are not; checkpoints are due after every update.
    class Overflow(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
            return torch.full_like(grad, float("inf"))

    trainer = start(config(tmp_path, save_ckpt_every_steps=1))
    calls = []

    def overflow_at_third(model: torch.nn.Module, batch, position: StepPosition) -> torch.Tensor:
        calls.append(1)
        x, y = batch
        out = model(x)
        return torch.nn.functional.mse_loss(Overflow.apply(out) if len(calls) == 3 else out, y)

    def body(device: str | None) -> None:
        with trainer:
            trainer.fit(overflow_at_third)

    with pytest.raises(SystemExit, match=r"error: gradient norm is (inf|nan) \(the loss is finite\) at epoch 0, step 2 of the epoch"):
        launch(body, "cpu")
    latest = read_pth_checkpoint(tmp_path / "checkpoint-latest.pth")
    assert latest["next_batch"] == 2, "the last save is the update before the overflow"
    assert all(torch.isfinite(v).all() for v in latest["model"].values())


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    from patches.train.updater import NonFiniteWeightsError
    trainer = start(config(tmp_path))
    with torch.no_grad():
        trainer.model_without_ddp.weight[0, 1] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="weight"):
        trainer.checkpoints.save_latest(0, 1)
    assert not list(tmp_path.glob("checkpoint-*"))
