"""The flags layer: its translation into data and loader configs, the demo-data fallback, LR scaling, and the
run scripts' flags and resolved values pinned to those of the code before the config redesign."""
from __future__ import annotations

from pathlib import Path

import pytest

from patches.cli import finetune as run_class_finetuning
from patches.cli import pretrain as run_mae_pretraining
from patches.config import library_configs as cli_args
from patches.config.demo_fallback import demo_data_values
from patches.config.lr_scaling import scaled_rates
from patches.data import demo as demo_data
from patches.data.datasets import ClassificationDataConfig, PretrainingDataConfig
from patches.data.lists import VideoListsConfig
from patches.data.loaders import LoaderConfig


def test_fine_tuning_flags_become_the_data_configs() -> None:
    args = run_class_finetuning.get_args_parser().parse_args(
        ["--data_path", "/d", "--data_set", "UCF101", "--split", "2", "--nb_classes", "7", "--eval_data_path", "/e",
         "--flip", "false", "--train_crop_scale", "0.2", "0.9", "--batch_size", "3", "--pin_mem", "false"])
    lists = VideoListsConfig(data_set="UCF101", data_path="/d", eval_data_path="/e", data_root=None, split=2,
                             nb_classes=7)
    assert cli_args.video_lists_config(args) == lists
    assert cli_args.classification_data_config(args) == ClassificationDataConfig(
        lists=lists, sampling_rate=4, num_sample=2, aa="rand-m7-n4-mstd0.5-inc1", train_crop_scale=(0.2, 0.9),
        flip=False, train_interpolation="bicubic", reprob=0.25, remode="pixel", recount=1, short_side_size=None,
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
    assert demo_data_values(args, finetuning=True) == {"data_path": str(fake_demo), "data_set": "custom",
                                                       "flip": False, "data_root": str(fake_demo)}
    assert args.data_path is None  # the parsed flags are only read
    assert capsys.readouterr().out == f"No --data_path: using the demo dataset in {fake_demo}\n"
    args = parser.parse_args(["--demo_root", "somewhere", "--flip", "--data_root", "/v"])
    values = demo_data_values(args, finetuning=True)
    assert "flip" not in values and "data_root" not in values  # given flags are kept


def test_demo_data_for_pre_training(fake_demo: Path, capsys: pytest.CaptureFixture) -> None:
    args = run_mae_pretraining.get_args_parser().parse_args(["--demo_root", "somewhere", "--data_root", "/v"])
    assert demo_data_values(args, finetuning=False) == {"data_path": str(fake_demo / "pretrain.csv"),
                                                        "data_root": str(fake_demo)}
    assert capsys.readouterr().out == f"No --data_path: using the demo dataset in {fake_demo}\n"


def test_a_given_data_path_is_kept(fake_demo: Path, capsys: pytest.CaptureFixture) -> None:
    args = run_class_finetuning.get_args_parser().parse_args(["--data_path", "/d", "--demo_root", "somewhere"])
    assert demo_data_values(args, finetuning=True) == {}
    assert capsys.readouterr().out == ""


def test_lr_is_scaled_by_videos_per_update_as_videomae_or_by_clips_when_asked() -> None:
    parser = run_class_finetuning.get_args_parser()
    args = parser.parse_args(["--batch_size", "8", "--num_sample", "2", "--update_freq", "4", "--lr", "1e-3"])
    rates = scaled_rates(args, 2)
    assert rates.lr == pytest.approx(1e-3 * 64 / 256) and "LR = 0.00025000" in rates.report
    assert "Batch size = 64 (8 x update_freq 4 x 2 processes; 128 clips per update)" in rates.report
    assert args.lr == 1e-3  # the flags stay as parsed
    args = parser.parse_args(["--batch_size", "8", "--num_sample", "2", "--lr_scale_by", "clips", "--min_lr", "1e-5"])
    rates = scaled_rates(args, 1)
    assert (rates.lr, rates.min_lr) == pytest.approx((1e-3 * 16 / 256, 1e-5 * 16 / 256))


def test_help_shows_each_default_once() -> None:
    for script in (run_class_finetuning, run_mae_pretraining):
        text = " ".join(script.get_args_parser().format_help().split())
        assert "(default: None)" not in text and "default: cuda when present) (default" not in text
    text = " ".join(run_class_finetuning.get_args_parser().format_help().split())
    assert "--use_cls classify a cls token instead of mean pooling --model_ema" in text  # not "(default: True)"
    assert "--no_auto_resume start fresh --start_epoch" in text
    assert "--flip" in run_mae_pretraining.get_args_parser().format_help()


# ---------------------------------------------------------------- pinned to the code before the config redesign

FIXTURES = Path(__file__).parent / "fixtures"


def parser_actions(parser) -> list[dict]:
    """Every flag of ``parser`` as tests/fixtures/cli_parsers.json records it (dumped from commit 0d56f94)."""
    def plain(v):
        if callable(v):
            return getattr(v, "__name__", repr(v))
        return list(v) if isinstance(v, tuple) else v
    return [{"option_strings": a.option_strings, "dest": a.dest, "default": plain(a.default), "type": plain(a.type),
             "choices": plain(list(a.choices)) if a.choices is not None else None, "nargs": a.nargs,
             "const": plain(a.const), "required": a.required, "help": a.help, "action": type(a).__name__,
             "metavar": plain(a.metavar)} for a in parser._actions]


def test_every_flag_keeps_its_name_default_type_choices_and_help() -> None:
    import json

    from patches.cli import extract_features, inference
    recorded = json.loads((FIXTURES / "cli_parsers.json").read_text())
    for name, script in (("pretrain", run_mae_pretraining), ("finetune", run_class_finetuning),
                         ("inference", inference), ("extract_features", extract_features)):
        parser = script.get_args_parser()
        now = json.loads(json.dumps({"actions": parser_actions(parser), "set_defaults": dict(
            sorted(parser._defaults.items()))}, default=str))
        assert now == recorded[name], name


def _lists(folder: Path, videos: int) -> None:
    """Train/val/test lists of ``videos`` lines (the videos need not exist for the flag checks)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (folder / f"{split}.csv").write_text("".join(f"v{i}.mp4 {i % 400}\n" for i in range(videos)))


@pytest.mark.parametrize("case", ["k400_pretrain_8", "k400_pretrain_1", "k400_finetune_8", "k400_finetune_2",
                                  "k400_pretrain_grids"])
def test_videomae_recipes_resolve_to_the_values_the_flags_gave_before(case: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The K400 ViT-B recipes' command lines resolve to the same LR after scaling, total batch, epochs, warmup,
    masks, grids and driver settings as the code before the config redesign computed (fixture dumped there)."""
    import dataclasses
    import json

    from patches.config.finetuning import resolve_finetuning
    from patches.config.pretraining import resolve_pretraining
    from patches.errors import PatchesError
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    expected = json.loads((FIXTURES / "resolved_run_flags.json").read_text())[case]
    flags = expected["flags"] + ["--output_dir", str(tmp_path / "out")]
    pretraining = "pretrain" in case
    _lists(tmp_path / "lists", 2048)
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    script = run_mae_pretraining if pretraining else run_class_finetuning
    paths = (["--data_path", str(tmp_path / "lists" / "train.csv")] if pretraining else
             ["--data_path", str(tmp_path / "lists"), "--finetune", str(tmp_path / "checkpoint.pth")])
    args = script.get_args_parser().parse_args(paths + flags)
    parsed = dict(vars(args))
    run = (resolve_pretraining if pretraining else resolve_finetuning)(args, world_size=expected["world"])
    assert vars(args) == parsed  # resolution only reads the flags
    run.check_world_size(expected["world"])
    with pytest.raises(PatchesError, match="resolved for"):  # the LRs were scaled for another process count
        run.check_world_size(expected["world"] + 1)

    trainer = json.loads(json.dumps(dataclasses.asdict(run.trainer), default=str))
    trainer.update(output_dir="OUT", log_dir=None)
    assert trainer == expected["trainer"]
    optimizer = json.loads(json.dumps(dataclasses.asdict(run.optimizer)))
    assert optimizer.pop("layer_decay") == (None if pretraining else args.layer_decay)
    expected["optimizer"].pop("layer_decay")
    assert optimizer == expected["optimizer"]
    assert run.rates.total_batch == expected["total_batch"]
    assert (run.rates.lr, run.flags["lr"]) == (expected["trainer"]["schedule"]["lr"],) * 2
    grid = run.grid if not pretraining else run.grid
    assert grid.to_dict() == expected["grid"]
    if pretraining:
        assert [g.to_dict() for g in run.grids if run.flexible] == expected["grids"]
        assert run.masking.mask_ratio == expected["mask_ratio"]
    for flag in ("input_size", "patch_size", "pos_embed", "amp"):
        assert run.flags[flag] == expected[flag], flag


def test_typed_errors_end_an_entry_point_with_an_error_line_and_their_status(capsys: pytest.CaptureFixture) -> None:
    from patches.cli.exits import exit_status, exits_on_error
    from patches.config.checks import FlagError
    from patches.errors import PatchesError, SomeInputsFailed, UsageError

    @exits_on_error
    def main(error: Exception | None) -> str:
        if error is not None:
            raise error
        return "done"

    assert main(None) == "done"
    problems = FlagError(["--lr must be positive, got 0", "--epochs must be at least 1, got 0"])
    assert isinstance(problems, UsageError)
    with pytest.raises(SystemExit) as stop:  # a usage error: status 2 (as argparse's own refusals), no traceback
        main(problems)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: --lr must be positive, got 0\n       --epochs must be at least 1, got 0\n"
    assert exit_status(PatchesError("x")) == (1, "error: x") and exit_status(UsageError("y")) == (2, "error: y")
    with pytest.raises(SystemExit) as stop:  # a failure (here: some inputs failed): status 1, the message as code
        main(SomeInputsFailed([("a.mp4", "truncated")], 3))
    assert stop.value.code == "error: 1 of 3 videos failed (the others are done):\n  a.mp4: truncated"

    class Requeue(PatchesError):
        exit_status = 75

    with pytest.raises(SystemExit) as stop:
        main(Requeue("stopped"))
    assert stop.value.code == 75 and capsys.readouterr().err == "error: stopped\n"
    with pytest.raises(ValueError):  # anything else is a bug: its traceback is kept
        main(ValueError("bug"))
