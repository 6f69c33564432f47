"""VideoMAE's own command lines, verbatim: every python line of its scripts/ folder (tests/fixtures/
videomae_scripts.json, with its source path and commit), run with --dry_run under its world size, resolves to
VideoMAE's recipe; and every flag of VideoMAE's two parsers (tests/fixtures/videomae_parsers.json) is accepted or
refused with one line."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from patches.cli import finetune as run_class_finetuning
from patches.cli import pretrain as run_mae_pretraining
from patches.config.videomae_flags import REFUSED_SWITCHES, REFUSED_VALUES
from patches.errors import UsageError

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent
SCRIPTS = json.loads((FIXTURES / "videomae_scripts.json").read_text())["scripts"]
PARSERS = json.loads((FIXTURES / "videomae_parsers.json").read_text())
ENTRY = {"run_mae_pretraining.py": run_mae_pretraining, "run_class_finetuning.py": run_class_finetuning}

# VideoMAE's parser defaults for the flags its scripts may leave out (run_mae_pretraining.py and
# run_class_finetuning.py, get_args(), at the fixture's commit).
VIDEOMAE_DEFAULTS = {
    "run_mae_pretraining.py": {"--lr": 1.5e-4, "--min_lr": 1e-5, "--warmup_lr": 1e-6, "--warmup_epochs": 40,
                               "--mask_type": "tube", "--mask_ratio": 0.75, "--sampling_rate": 4,
                               "--num_frames": 16, "--decoder_depth": 4, "--drop_path": 0.0},
    "run_class_finetuning.py": {"--lr": 1e-3, "--min_lr": 1e-6, "--warmup_lr": 1e-6, "--warmup_epochs": 5,
                                "--update_freq": 1, "--num_sample": 2, "--sampling_rate": 4, "--num_frames": 16,
                                "--layer_decay": 0.75, "--drop_path": 0.1, "--fc_drop_rate": 0.0,
                                "--test_num_segment": 5, "--test_num_crop": 3}}
# VideoMAE's fine-tuning augmentation (its run_class_finetuning.py defaults; kinetics.py and ssv2.py: crop scale
# (0.08, 1), no flip for SSV2): the same here, RandAugment's bicubic resampling included.
VIDEOMAE_AUGMENTATION = {"aa": "rand-m7-n4-mstd0.5-inc1", "train_crop_scale": [0.08, 1.0], "reprob": 0.25,
                         "remode": "pixel", "recount": 1, "mixup": 0.8, "cutmix": 1.0, "cutmix_minmax": None,
                         "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch", "smoothing": 0.1,
                         "train_interpolation": "bicubic"}


def videomae_environment(monkeypatch: pytest.MonkeyPatch, world: int, rank: int = 0) -> None:
    """The variables torch.distributed.launch gives one of ``world`` processes."""
    for var in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank % 8))


def filled(line: dict, folder: Path) -> list[str]:
    """The script's arguments with only its path variables filled in (paths that do not exist)."""
    args = line["args"]
    for var in ("DATA_PATH", "MODEL_PATH", "OUTPUT_DIR"):
        args = args.replace("${%s}" % var, str(folder / var.lower()))
    assert "$" not in args, args
    return shlex.split(args)


def videomae_value(tokens: list[str], script: str, flag: str):
    """A flag's value in VideoMAE: the script's, else its parser's default."""
    if flag in tokens:
        return tokens[tokens.index(flag) + 1]
    return VIDEOMAE_DEFAULTS[script][flag]


def dry_run(script: str, tokens: list[str], capsys: pytest.CaptureFixture) -> dict:
    """The entry point's --dry_run, in process: the JSON it prints (checked equal to what main returns)."""
    summary = ENTRY[script].main(ENTRY[script].get_args_parser().parse_args([*tokens, "--dry_run"]))
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(summary))
    return printed


@pytest.mark.parametrize("line", SCRIPTS, ids=[f"{s['source'].split('/')[1]}-{s['source'].split('/')[2][12:22]}-"
                                               f"{s['source'].split('/')[2].split('_')[-1]}-{s['script'][4:7]}"
                                               for s in SCRIPTS])
def test_videomae_script_line_resolves_to_videomae_recipe(line: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    script, world = line["script"], line["nproc_per_node"] * line["nnodes"]
    videomae_environment(monkeypatch, world, rank=world - 1)
    tokens = filled(line, tmp_path)
    run = dry_run(script, tokens, capsys)

    value = lambda flag: videomae_value(tokens, script, flag)  # noqa: E731
    pretraining = script == "run_mae_pretraining.py"
    # VideoMAE's rule: total batch = batch x processes (x update_freq when fine-tuning), LRs x total / 256
    total = int(value("--batch_size")) * world * (1 if pretraining else int(value("--update_freq")))
    assert (run["world_size"], run["rank"], run["total_batch"]) == (world, world - 1, total)
    for flag in ("lr", "min_lr", "warmup_lr"):
        assert run[flag] == pytest.approx(float(value(f"--{flag}")) * total / 256, rel=1e-12), flag
    assert (run["epochs"], run["warmup_epochs"]) == (int(value("--epochs")), int(value("--warmup_epochs")))
    assert run["opt"] == value("--opt") and run["opt_betas"] == [float(b) for b in tokens[
        tokens.index("--opt_betas") + 1:tokens.index("--opt_betas") + 3]]
    assert run["model"] == value("--model") and run["num_frames"] == int(value("--num_frames"))
    assert run["grid"] == {"num_frames": 16, "tubelet_size": 2, "input_size": [224, 224], "patch_size": 16,
                           "in_chans": 3}
    assert run["use_checkpoint"] == ("--use_checkpoint" in tokens)
    if pretraining:
        assert (run["mask_type"], run["mask_ratio"]) == (value("--mask_type"), float(value("--mask_ratio")))
        assert run["decoder_depth"] == int(value("--decoder_depth"))
        assert (run["sampling"], run["sampling_rate"], run["flip"]) == ("stride", int(value("--sampling_rate")),
                                                                        False)
        assert run["num_sample"] == 1 and run["decoder_mask_type"] == "none"
        return
    ssv2 = value("--data_set") == "SSV2"
    assert run["data_set"] == value("--data_set") and run["nb_classes"] == int(value("--nb_classes"))
    assert run["sampling"] == ("segment" if ssv2 else "stride")
    if not ssv2:
        assert run["sampling_rate"] == int(value("--sampling_rate"))
    assert run["num_sample"] == int(value("--num_sample"))
    assert run["augmentation"] == {**VIDEOMAE_AUGMENTATION, "flip": not ssv2}
    for flag in ("layer_decay", "drop_path", "fc_drop_rate"):
        assert run[flag] == float(value(f"--{flag}")), flag
    assert (run["test_num_segment"], run["test_num_crop"]) == (int(value("--test_num_segment")),
                                                               int(value("--test_num_crop")))
    assert run["short_side_size"] == 224 and run["dist_eval"] and run["validate"]
    assert run["fc_norm_init"] == "fresh" and run["deepspeed"]  # VideoMAE's fc_norm: ones and zeros


def test_the_ssv2_small_pretraining_script_launches_64_gpus_though_its_comment_says_32() -> None:
    from patches.config.recipes import RECIPES
    [line] = [s for s in SCRIPTS if "ssv2/videomae_vit_small" in s["source"] and s["script"] == "run_mae_pretraining.py"]
    assert (line["nproc_per_node"] * line["nnodes"], line["comment_gpus"]) == (64, 32)
    assert RECIPES["ssv2_small_2400"].pretrain_gpus == 64 and "32" in RECIPES["ssv2_small_2400"].note
    others = [s for s in SCRIPTS if s is not line]
    assert all(s["nproc_per_node"] * s["nnodes"] == s["comment_gpus"] for s in others)


def test_every_videomae_script_is_a_recipe_line() -> None:
    """scripts/recipes.py holds each script's flags verbatim, at the script's process count."""
    from patches.config.recipes import RECIPES
    by_source = {(r.source, stage): (r.flags(stage), r.gpus(stage)) for r in RECIPES.values()
                 for stage in ("pretrain", "finetune")}
    for line in SCRIPTS:
        stage = "pretrain" if line["script"] == "run_mae_pretraining.py" else "finetune"
        flags, gpus = by_source[(line["source"].rsplit("/", 1)[0], stage)]
        tokens = [t for t in shlex.split(line["args"]) if not t.startswith("${")]
        pairs = dict(zip(tokens, tokens[1:] + [""]))
        theirs = {t: (pairs[t] if not pairs[t].startswith("--") else "") for t in tokens if t.startswith("--")}
        theirs = {k: v for k, v in theirs.items() if k not in ("--data_path", "--finetune", "--log_dir",
                                                                "--output_dir")}
        ours_pairs = dict(zip(flags, flags[1:] + [""]))
        ours = {t: (ours_pairs[t] if not ours_pairs[t].startswith("--") else "") for t in flags if t.startswith("--")}
        assert ours == {k: theirs[k] for k in ours} and set(ours) == set(theirs), line["source"]
        assert gpus == line["nproc_per_node"] * line["nnodes"], line["source"]


# ---------------------------------------------------------------- every flag of VideoMAE's two parsers

# A value for each VideoMAE flag that takes one and has no PATCHES default to reuse (paths need not exist).
SAMPLE_VALUES = {"--opt_betas": ["0.9", "0.999"], "--cutmix_minmax": ["0.2", "0.8"], "--input_size": ["224"],
                 "--clip_grad": ["1.0"], "--weight_decay_end": ["0.05"], "--crop_pct": ["0.9"], "--nb_classes": ["400"],
                 "--short_side_size": ["224"], "--world_size": ["64"], "--device": ["cpu"], "--deepspeed_config": ["ds.json"],
                 "--deepscale_config": ["ds.json"], "--data_path": ["train.csv"], "--eval_data_path": ["lists"],
                 "--finetune": ["checkpoint.pth"], "--resume": ["checkpoint.pth"], "--log_dir": ["tb"],
                 "--normlize_target": ["True"], "--output_dir": ["out"]}
REFUSED = {*REFUSED_SWITCHES, *REFUSED_VALUES}


def flag_command(parser, flag: str) -> list[str]:
    """``flag`` with a value as a VideoMAE user would give it."""
    [action] = [a for a in parser._actions if flag in a.option_strings]
    if flag in SAMPLE_VALUES:
        return [flag, *SAMPLE_VALUES[flag]]
    if action.nargs in (0, "?"):
        return [flag]
    default = action.default
    return [flag, *(str(v) for v in default)] if isinstance(default, list) else [flag, str(default)]


@pytest.mark.parametrize("script", list(ENTRY))
def test_every_videomae_flag_is_accepted_or_refused_with_one_line(script: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    videomae_environment(monkeypatch, 8)
    monkeypatch.chdir(tmp_path)
    flags = PARSERS["parsers"][script] + PARSERS["deepspeed_config_arguments"]
    parser = ENTRY[script].get_args_parser()
    accepted, refused = [], []
    for flag in flags:
        command = flag_command(parser, flag)
        args = parser.parse_args(command + ["--dry_run"])  # argparse's own refusal would exit here
        try:
            ENTRY[script].main(args)
            accepted.append(flag)
        except SystemExit as stop:  # the entry point's one error line, and the usage error's status
            message = capsys.readouterr().err.strip()
            assert stop.code == 2 and message.startswith(f"error: {flag}") and "\n" not in message, (flag, message)
            refused.append(flag)
        capsys.readouterr()
    expected_refused = [f for f in flags if f in REFUSED]
    assert refused == expected_refused, refused
    assert len(accepted) + len(refused) == len(flags) and len(accepted) > 40


def test_videomae_values_without_an_equivalent_are_refused_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from patches.config.finetuning import resolve_finetuning
    videomae_environment(monkeypatch, 1)
    parser = run_class_finetuning.get_args_parser()
    for command, start in ((["--dist_url", "tcp://node0:23456"], "--dist_url tcp://node0:23456"),
                           (["--num_segments", "2"], "--num_segments 2"),
                           (["--data_set", "image_folder"], "--data_set image_folder")):
        args = parser.parse_args(command + ["--dry_run", "--nb_classes", "10"])
        with pytest.raises(UsageError) as refusal:
            resolve_finetuning(args)
        assert str(refusal.value).startswith(start) and "\n" not in str(refusal.value)
    for command in (["--dist_url", "env://"], ["--num_segments", "1"]):  # what VideoMAE runs with is accepted
        resolve_finetuning(parser.parse_args(command + ["--dry_run", "--nb_classes", "10"]))


def test_videomae_flags_keep_their_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    from patches.config.finetuning import resolve_finetuning
    from patches.config.pretraining import resolve_pretraining
    videomae_environment(monkeypatch, 4)
    pre = resolve_pretraining(run_mae_pretraining.get_args_parser().parse_args(
        ["--no_pin_mem", "--world_size", "1", "--dry_run"]))
    assert pre.loader.pin_memory is False and pre.world_size == 4  # the launcher's environment decides
    fine = resolve_finetuning(run_class_finetuning.get_args_parser().parse_args(
        ["--save_ckpt", "--color_jitter", "0.4", "--imagenet_default_mean_and_std", "--crop_pct", "0.9",
         "--resplit", "--deepspeed", "--deepspeed_config", "ds.json", "--dry_run", "--nb_classes", "10"]))
    assert fine.loader.pin_memory is True and fine.nb_classes == 10
    assert run_class_finetuning.get_args_parser().parse_args(["--save_ckpt"]).save_ckpt is True


@pytest.mark.slow
def test_a_refused_videomae_flag_ends_the_entry_script_with_one_error_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "run_class_finetuning.py"), "--dist_on_itp",
                             "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {REFUSED_SWITCHES['--dist_on_itp']}"]
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.slow
def test_dry_run_under_slurm_prints_one_json_object_and_exits_0(tmp_path: Path) -> None:
    """As srun starts it: the process count and rank from Slurm's variables, no process group, nothing read."""
    line = next(s for s in SCRIPTS if "kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_800" in
                s["source"] and s["script"] == "run_mae_pretraining.py")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(SLURM_PROCID="5", SLURM_NTASKS="64", SLURM_LOCALID="5", SLURM_NODELIST="node[0-7]",
               PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(ROOT / line["script"]), *filled(line, tmp_path), "--dry_run"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    run = json.loads(result.stdout)  # stdout holds the JSON object alone
    assert (run["world_size"], run["rank"], run["total_batch"]) == (64, 5, 2048)
    assert run["lr"] == pytest.approx(1.5e-4 * 2048 / 256) and (run["epochs"], run["mask_ratio"]) == (801, 0.9)
    assert f"warning: --data_path {tmp_path / 'data_path'} is not a file" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output folder, no demo data: nothing written
