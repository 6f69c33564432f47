"""Checkpoints written by the code before the one-driver redesign (e228dd5) still resume, --eval and --finetune.

tests/fixtures/checkpoints_e228dd5/ holds one epoch of pre-training and one of fine-tuning made by that code, the
clips they were trained on (data/), and what that code printed when it resumed and tested them (expected.json).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from launch_helpers import run

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints_e228dd5"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
DATA = FIXTURES / "data"


def flags(kind: str, *extra: str) -> list[str]:
    return [*EXPECTED["flags"], *EXPECTED[kind]["flags"], *extra]


def last_record(out: Path) -> dict:
    return json.loads((out / "log.txt").read_text().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_an_old_checkpoint_resumes_where_it_stopped(tmp_path: Path, kind: str) -> None:
    out = tmp_path / kind
    out.mkdir()
    shutil.copy(FIXTURES / f"{kind}-checkpoint-0.pth", out / "checkpoint-0.pth")
    # that code flipped every pre-training clip; flips are now off unless asked for (VideoMAE has none)
    data = (["--data_path", str(DATA / "train.csv"), "--data_root", str(DATA), "--flip"] if kind == "pretrain"
            else ["--data_path", str(DATA)])
    script = "run_mae_pretraining.py" if kind == "pretrain" else "run_class_finetuning.py"
    result = run(script, flags(kind, *data, "--epochs", "2", "--output_dir", str(out)))
    assert f"Resumed from {out / 'checkpoint-0.pth'} (epoch 0); continuing at epoch 1" in result.stdout
    epoch_1 = [json.loads(line) for line in (out / "log.txt").read_text().splitlines() if '"epoch": 1' in line]
    assert len(epoch_1) == 1
    assert epoch_1[0]["train_loss"] == pytest.approx(EXPECTED[kind]["resumed_epoch_1_train_loss"], rel=1e-4)


@pytest.mark.slow
def test_an_old_fine_tuning_checkpoint_tests_as_before(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    run("run_class_finetuning.py", flags("finetune", "--data_path", str(DATA), "--eval", "--resume",
                                         str(FIXTURES / "finetune-checkpoint-0.pth"), "--output_dir", str(out)))
    record = last_record(out)
    assert (record["eval_test_acc1"], record["eval_test_acc5"]) == (EXPECTED["finetune"]["eval_test_acc1"],
                                                                     EXPECTED["finetune"]["eval_test_acc5"])


@pytest.mark.slow
def test_an_old_pretraining_checkpoint_fine_tunes(tmp_path: Path) -> None:
    out = tmp_path / "ft"
    result = run("run_class_finetuning.py", flags("finetune", "--data_path", str(DATA), "--epochs", "1",
                                                  "--finetune", str(FIXTURES / "pretrain-checkpoint-0.pth"),
                                                  "--fc_norm_init", "encoder_norm", "--output_dir", str(out)))
    # What e228dd5 reported for this file (fc_norm from the encoder's norm, then the only way): every encoder
    # tensor loaded, only the new head missing.
    assert re.search(r"loaded +56 +blocks\.\{0\.\.3\}\.\* \(13 each\), patch_embed\.proj\.\{weight,bias\}, "
                     r"fc_norm\.\{weight,bias\}", result.stdout), result.stdout
    assert re.search(r"missing +2 +head\.\{weight,bias\}", result.stdout)
    assert "test_acc1" in last_record(out)
