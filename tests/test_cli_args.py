"""The flags layer's translation into data and loader configs, and the demo-data fallback."""
from __future__ import annotations

from pathlib import Path

import pytest

from patches.config import flags as cli_args
from patches.data import demo as demo_data
from patches.cli import finetune as run_class_finetuning
from patches.cli import pretrain as run_mae_pretraining
from patches.data.loaders import LoaderConfig
from patches.data.datasets import ClassificationDataConfig, PretrainingDataConfig
from patches.data.lists import VideoListsConfig


def test_fine_tuning_flags_become_the_data_configs() -> None:
    args = run_class_finetuning.get_args_parser().parse_args(
        ["--data_path", "/d", "--data_set", "UCF101", "--split", "2", "--nb_classes", "7", "--eval_data_path", "/e",
         "--flip", "false", "--train_crop_scale", "0.2", "0.9", "--batch_size", "3", "--pin_mem", "false"])
    lists = VideoListsConfig(data_set="UCF101", data_path="/d", eval_data_path="/e", data_root=None, split=2,
                             nb_classes=7)
    assert cli_args.video_lists_config(args) == lists
    assert cli_args.classification_data_config(args) == ClassificationDataConfig(
        lists=lists, sampling_rate=4, num_sample=2, aa="rand-m7-n4-mstd0.5-inc1", train_crop_scale=(0.2, 0.9),
        flip=False, train_interpolation="bilinear", reprob=0.25, remode="pixel", recount=1, short_side_size=None,
        test_num_segment=5, test_num_crop=3, fname_tmpl="img_{:05}.jpg")
    assert cli_args.loader_config(args) == LoaderConfig(batch_size=3, num_workers=10, pin_memory=False, seed=0,
                                                        max_bad_fraction=0.05)


def test_pre_training_flags_become_the_data_config() -> None:
    args = run_mae_pretraining.get_args_parser().parse_args(["--data_path", "/l.csv", "--data_root", "/v",
                                                             "--num_sample", "2", "--sampling_rate", "3"])
    assert cli_args.pretraining_data_config(args) == PretrainingDataConfig(data_path="/l.csv", sampling_rate=3,
                                                                           data_root="/v", num_sample=2)


@pytest.fixture
def fake_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    made = {"root": tmp_path / "demo", "pretrain": tmp_path / "demo" / "pretrain.csv"}
    monkeypatch.setattr(demo_data, "ensure_demo_dataset", lambda root: made if root == "somewhere" else None)
    return tmp_path / "demo"


def test_demo_data_for_fine_tuning(fake_demo: Path, capsys: pytest.CaptureFixture) -> None:
    parser = run_class_finetuning.get_args_parser()
    args = parser.parse_args(["--demo_root", "somewhere"])
    cli_args.use_demo_data_if_no_data_path(args, finetuning=True)
    assert (args.data_path, args.data_set, args.flip, args.data_root) == (str(fake_demo), "custom", False,
                                                                          str(fake_demo))
    assert capsys.readouterr().out == f"No --data_path: using the demo dataset in {fake_demo}\n"
    args = parser.parse_args(["--demo_root", "somewhere", "--flip", "--data_root", "/v"])
    cli_args.use_demo_data_if_no_data_path(args, finetuning=True)
    assert (args.flip, args.data_root) == (True, "/v")  # given flags are kept


def test_demo_data_for_pre_training(fake_demo: Path, capsys: pytest.CaptureFixture) -> None:
    args = run_mae_pretraining.get_args_parser().parse_args(["--demo_root", "somewhere", "--data_root", "/v"])
    cli_args.use_demo_data_if_no_data_path(args, finetuning=False)
    assert (args.data_path, args.data_root) == (str(fake_demo / "pretrain.csv"), str(fake_demo))
    assert capsys.readouterr().out == f"No --data_path: using the demo dataset in {fake_demo}\n"


def test_a_given_data_path_is_kept(fake_demo: Path, capsys: pytest.CaptureFixture) -> None:
    args = run_class_finetuning.get_args_parser().parse_args(["--data_path", "/d", "--demo_root", "somewhere"])
    cli_args.use_demo_data_if_no_data_path(args, finetuning=True)
    assert (args.data_path, args.data_set, args.flip) == ("/d", "Kinetics-400", None)
    assert capsys.readouterr().out == ""


def test_lr_is_scaled_by_videos_per_update_as_videomae_or_by_clips_when_asked() -> None:
    parser = run_class_finetuning.get_args_parser()
    args = parser.parse_args(["--batch_size", "8", "--num_sample", "2", "--update_freq", "4", "--lr", "1e-3"])
    printed = cli_args.scale_lr(args, 2)
    assert args.lr == pytest.approx(1e-3 * 64 / 256) and "LR = 0.00025000" in printed
    assert "Batch size = 64 (8 x update_freq 4 x 2 processes; 128 clips per update)" in printed
    args = parser.parse_args(["--batch_size", "8", "--num_sample", "2", "--lr_scale_by", "clips", "--min_lr", "1e-5"])
    cli_args.scale_lr(args, 1)
    assert (args.lr, args.min_lr) == pytest.approx((1e-3 * 16 / 256, 1e-5 * 16 / 256))


def test_help_shows_each_default_once() -> None:
    for script in (run_class_finetuning, run_mae_pretraining):
        text = " ".join(script.get_args_parser().format_help().split())
        assert "(default: None)" not in text and "default: cuda when present) (default" not in text
    text = " ".join(run_class_finetuning.get_args_parser().format_help().split())
    assert "--use_cls classify a cls token instead of mean pooling --model_ema" in text  # not "(default: True)"
    assert "--no_auto_resume start fresh --start_epoch" in text
    assert "--flip" in run_mae_pretraining.get_args_parser().format_help()
