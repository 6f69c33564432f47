"""Many processes on the CPU: torchrun and Slurm environments with gloo, equality with one process,
sharded evaluation, and DeepSpeed ZeRO with its checkpoints. Every run is a real process."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from launch_helpers import FINETUNE, PRETRAIN, ROOT, assert_same_weights, env, free_port, read_scalars, run, weights


def pretrain_flags(demo_root: Path, out: Path, batch_size: int, *extra: str) -> list[str]:
    return [*PRETRAIN, "--data_path", str(demo_root / "train.csv"), "--data_root", str(demo_root), "--num_workers",
            "0", "--batch_size", str(batch_size), "--epochs", "2", "--output_dir", str(out), *extra]


@pytest.mark.slow
def test_two_processes_give_the_loss_sequence_of_one_with_the_same_global_batch(demo_root, tmp_path):
    # The global batch is 4 clips: 1 process x 4, or 2 processes x 2. The sampler gives both the same global
    # batches, every clip's crop and mask come from (seed, epoch, index), and DDP averages the gradients.
    run("run_mae_pretraining.py", pretrain_flags(demo_root, tmp_path / "one", 4))
    two = run("run_mae_pretraining.py", pretrain_flags(demo_root, tmp_path / "two", 2), nproc=2)
    one_losses = read_scalars(tmp_path / "one" / "tb", "train/loss")
    two_losses = read_scalars(tmp_path / "two" / "tb", "train/loss")
    print("1 process: ", one_losses, "\n2 processes:", two_losses)
    assert len(one_losses) == len(two_losses) == 8
    torch.testing.assert_close(torch.tensor(two_losses), torch.tensor(one_losses), rtol=1e-5, atol=0)
    assert_same_weights(weights(tmp_path / "two" / "checkpoint-1.pth"), weights(tmp_path / "one" / "checkpoint-1.pth"),
                        atol=1e-6)
    # Only rank 0 prints, logs and saves.
    assert two.stdout.count("Patch grid:") == 1
    assert len((tmp_path / "two" / "log.txt").read_text().splitlines()) == 2
    assert len(list((tmp_path / "two" / "tb").glob("events.*"))) == 1


SLURM_PROBE = """
import sys
import torch, torch.distributed as dist
from patches.utils.distributed import cleanup_distributed, init_distributed
device = init_distributed("cpu")
t = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(t)
print(f"rank {{dist.get_rank()}} of {{dist.get_world_size()}} backend {{dist.get_backend()}} sum {{t.item():.0f}} "
      f"device {{device}}", force=True)
cleanup_distributed()
"""


@pytest.mark.slow
def test_slurm_environment_starts_a_gloo_group(tmp_path):
    # What srun --ntasks 2 sets for each task; no scontrol here, so the master comes from the node list.
    port = free_port()
    procs = []
    for rank in range(2):
        slurm = dict(env(), SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                     SLURM_NODELIST="localhost", SLURM_JOB_ID=str(port - 20000))
        procs.append(subprocess.Popen([sys.executable, "-c", SLURM_PROBE.format(root=str(ROOT))], env=slurm,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-2000:]
    assert [o.strip() for o, _ in outputs] == ["rank 0 of 2 backend gloo sum 3 device cpu",
                                                     "rank 1 of 2 backend gloo sum 3 device cpu"]


def finetune_flags(demo_root: Path, out: Path, *extra: str) -> list[str]:
    return [*FINETUNE, "--data_path", str(demo_root), "--batch_size", "2", "--epochs", "1", "--mixup", "0",
            "--cutmix", "0", "--aa", "none", "--reprob", "0", "--num_workers", "0", "--output_dir", str(out), *extra]


@pytest.mark.slow
def test_dist_eval_validates_each_clip_once_and_tests_like_one_process(demo_root, tmp_path):
    from patches.cli import finetune as run_class_finetuning
    from patches.config import library_configs as cli_args
    from patches.data.datasets import build_dataset
    from patches.eval.testing import evaluate
    from patches.grid import grid_from_args

    flags = finetune_flags(demo_root, tmp_path / "two")
    run("run_class_finetuning.py", flags, nproc=2)
    record, test = [json.loads(line) for line in (tmp_path / "two" / "log.txt").read_text().splitlines()]
    # 8 validation videos over 2 processes: a padding sampler would have counted one twice with 3 per rank.
    assert record["val_count"] == 8
    assert test["test_videos"] == 8 and test["test_views_per_video"] == 4

    # Validation of the same weights in this process, without any sharding.
    args = run_class_finetuning.get_args_parser().parse_args(flags)
    grid = grid_from_args(args)
    from patches.models.factory import create_video_model
    model = create_video_model(args.model, grid=grid, num_classes=8)
    model.load_state_dict(weights(tmp_path / "two" / "checkpoint-0.pth"))
    val_set, _ = build_dataset("validation", cli_args.classification_data_config(args), grid)
    loader = torch.utils.data.DataLoader(val_set, batch_size=2)
    alone = evaluate(loader, model, torch.device("cpu"))
    assert alone["count"] == 8 and alone["acc1"] == record["val_acc1"] and alone["acc5"] == record["val_acc5"]
    assert alone["loss"] == pytest.approx(record["val_loss"], rel=1e-5)

    # Testing the tested checkpoint again with 1 and with 2 processes gives the logged accuracy.
    for nproc in (1, 2):
        out = tmp_path / f"eval{nproc}"
        run("run_class_finetuning.py", finetune_flags(demo_root, out, "--eval", "--resume", test["checkpoint"]),
            nproc=nproc)
        again = json.loads((out / "log.txt").read_text().splitlines()[-1])
        assert (again["eval_test_acc1"], again["eval_test_acc5"]) == (test["test_acc1"], test["test_acc5"])
        assert len(list(out.glob("test_results_rank*.jsonl"))) == nproc


@pytest.fixture(scope="module")
def ddp_reference(demo_root, tmp_path_factory) -> Path:
    """Two processes x 4 clips for 2 epochs through DDP, gradients clipped at 1.0, as the DeepSpeed runs below."""
    out = tmp_path_factory.mktemp("ddp") / "out"
    run("run_mae_pretraining.py", pretrain_flags(demo_root, out, 4, "--clip_grad", "1.0"), nproc=2)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["1", "2"])
def test_deepspeed_zero_pretrains_on_cpu_and_resumes_from_its_own_checkpoint(demo_root, tmp_path, stage,
                                                                           ddp_reference):
    # 2 processes x 4 clips: 2 steps per epoch. One epoch, then the same command with --epochs 2 resumes.
    ds = ["--enable_deepspeed", "--zero_stage", stage, "--clip_grad", "1.0"]
    out = tmp_path / "resumed"
    first = run("run_mae_pretraining.py", pretrain_flags(demo_root, out, 4, *ds, "--epochs", "1"), nproc=2)
    assert f"ZeRO stage {stage}" in first.stdout
    assert {p.name for p in (out / "checkpoint-0").iterdir()} >= {
        "checkpoint.pth", "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    assert (out / "checkpoint-latest" / "checkpoint.pth").is_file()
    assert read_scalars(out / "tb", "train/grad_norm"), "the engine's gradient norm is logged"

    second = run("run_mae_pretraining.py", pretrain_flags(demo_root, out, 4, *ds), nproc=2)
    assert f"Resumed from {out / 'checkpoint-latest' / 'checkpoint.pth'} (epoch 0); continuing at epoch 1" \
        in second.stdout
    # Resumed ZeRO training ends where plain DDP training without a break does.
    assert_same_weights(weights(out / "checkpoint-1" / "checkpoint.pth"), weights(ddp_reference / "checkpoint-1.pth"),
                        atol=1e-6)


def test_deepspeed_loads_refuse_pickled_code(tmp_path):
    from patches.checkpoints.errors import CheckpointError
    from patches.train import deepspeed_engine as ds_utils

    class Payload:
        def __reduce__(self):
            return (print, ("this ran from a checkpoint",))

    torch.save({"module": {}, "x": Payload()}, tmp_path / "mp_rank_00_model_states.pt")
    loads = ds_utils.WeightsOnlyLoads(inner=None)
    with pytest.raises(CheckpointError, match="refused to load"):
        loads.load(str(tmp_path / "mp_rank_00_model_states.pt"))


@pytest.mark.slow
def test_missing_deepspeed_is_a_clear_error(tmp_path):
    hide = textwrap.dedent(f"""
        import runpy, sys
        sys.modules["deepspeed"] = None  # as if it were not installed
        sys.argv = ["run_mae_pretraining.py", "--enable_deepspeed", "--device", "cpu",
                    "--output_dir", {str(tmp_path)!r}]
        runpy.run_path({str(ROOT / "run_mae_pretraining.py")!r}, run_name="__main__")
    """)
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=120, env=env())
    assert result.returncode != 0
    assert "--enable_deepspeed needs the deepspeed package" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun.sh", "slurm.sbatch"])
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_launchers_give_the_entry_scripts_valid_flags_for_every_dataset_and_grid(launcher, stage, tmp_path):
    import shlex

    from patches.cli import finetune as run_class_finetuning
    from patches.cli import pretrain as run_mae_pretraining
    module = run_mae_pretraining if stage == "pretrain" else run_class_finetuning
    for dataset in ("k400", "ssv2", "ucf101", "hmdb51"):
        for grid in ("196", "216/12"):
            variables = dict(env(), DRY_RUN="1", DATASET=dataset, GRID=grid, DATA_ROOT=str(tmp_path),
                             SLURM_SUBMIT_DIR=str(ROOT))
            result = subprocess.run(["bash", str(ROOT / "scripts" / "launch" / launcher), stage, "--seed", "3"],
                                    env=variables, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr
            words = shlex.split(result.stdout.splitlines()[-1])
            assert words[0] == ("torchrun" if launcher == "torchrun.sh" else "srun")
            script = next(i for i, w in enumerate(words) if w.endswith(".py"))
            assert Path(words[script]) == ROOT / module.SCRIPT  # the entry script at the repository root
            args = module.get_args_parser().parse_args(words[script + 1:])
            assert (args.input_size[0] // args.patch_size) ** 2 == {"196": 196, "216/12": 324}[grid]
            assert args.seed == 3 and args.save_ckpt_every_steps > 0
            if stage == "finetune":
                assert args.data_set == {"k400": "Kinetics-400", "ssv2": "SSV2", "ucf101": "UCF101",
                                         "hmdb51": "HMDB51"}[dataset]
