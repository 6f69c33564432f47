"""``--compile``: one graph per flexible grid and never Dynamo's recompile limit; no pinv or host copy in a
compiled step; under DDP the wrapper is compiled (so its all-reduces can overlap the backward), same result."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patches.grid import grids_from_specs
from patches.models.factory import create_video_model

ROOT = Path(__file__).resolve().parents[1]
GRIDS = ["64/16", "64/8", "48/16", "48/8", "32/16", "32/8"]
SEED_DRAWING_ALL_SIX = "4"  # with 8 steps of 2 of the 16 demo clips, seed 4 draws each of the 6 grids


def pretraining(demo_root: Path, out: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "run_mae_pretraining.py"), "--model", "pretrain_videomae_micro_patch16_224",
           "--decoder_depth", "1", "--num_workers", "0", "--device", "cpu", "--data_path",
           str(demo_root / "train.csv"), "--data_root", str(demo_root), "--num_frames", "4", "--batch_size", "2",
           "--epochs", "1", "--warmup_epochs", "0", "--output_dir", str(out), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_six_flexible_grids_compile_once_each_and_never_reach_the_recompile_limit(demo_root, tmp_path):
    result = pretraining(demo_root, tmp_path / "o", "--grids", *GRIDS, "--seed", SEED_DRAWING_ALL_SIX,
                         "--compile", "aot_eager", env={"TORCH_LOGS": "recompiles"})
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = [json.loads(line) for line in (tmp_path / "o" / "log.txt").read_text().splitlines()]
    assert sorted(k for k in record if k.startswith("train_steps_")) == sorted(f"train_steps_{g}" for g in GRIDS)
    recompiles = result.stderr.count("Recompiling function")
    assert recompiles <= len(GRIDS) - 1, f"{recompiles} recompiles for {len(GRIDS)} grids:\n{result.stderr[-4000:]}"
    assert "recompile_limit" not in result.stderr and "cache_size_limit" not in result.stderr


def test_a_compiled_step_at_a_prepared_grid_looks_the_resize_matrices_up():
    grids = grids_from_specs(["32/16", "32/8"], 4, 2)
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=grids[0], decoder_depth=1,
                               pos_embed="3d")
    model.prepare_grids(grids)
    graphs = []

    def recording(gm: torch.fx.GraphModule, inputs: list) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    g = grids[1]
    x = torch.randn(1, 3, 4, 32, 32)
    visible = torch.arange(0, g.num_tokens, 4).unsqueeze(0)
    target = torch.arange(1, g.num_tokens, 4).unsqueeze(0)
    compiled = torch.compile(model, backend=recording, dynamic=False, fullgraph=True)
    compiled(x, visible, target, g).sum().backward()
    ops = " ".join(str(n.target) for gm in graphs for n in gm.graph.nodes)
    assert graphs and "pinv" not in ops and "svd" not in ops, "the pseudo-inverse is made once, not per step"
    assert "float64" not in str([gm.code for gm in graphs])


def recording_backend(graphs: list):
    def backend(gm: torch.fx.GraphModule, inputs: list) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm
    return backend


def test_a_model_compiled_in_place_then_wrapped_by_ddp_is_split_at_the_gradient_buckets(tmp_path):
    """Dynamo's DDP optimizer finds the DDP module that is running and splits the compiled forward (and so its
    backward) at the buckets: each bucket's all-reduce can start while the rest of the backward runs."""
    import torch.distributed as dist

    from patches.utils.distributed import data_parallel
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        graphs: list = []
        model = create_video_model("vit_small_patch16_224", grid=grids_from_specs(["32/8"], 4, 2)[0], num_classes=3)
        torch._dynamo.reset()
        model.compile(backend=recording_backend(graphs))  # as compiling.compile_whole does, before wrapping
        ddp = data_parallel(model, torch.device("cpu"))
        assert torch._dynamo.config.optimize_ddp
        ddp(torch.randn(2, 3, 4, 32, 32)).sum().backward()
        assert len(graphs) >= 3, f"{len(graphs)} graphs for {sum(p.numel() for p in model.parameters())} parameters"
    finally:
        dist.destroy_process_group()
        torch._dynamo.reset()


def test_deepspeed_runs_compile_each_block_in_place_with_the_same_names_and_outputs():
    from patches.train import compiling
    grid = grids_from_specs(["32/8"], 4, 2)[0]
    torch.manual_seed(0)
    model = create_video_model("vit_micro_patch16_224", grid=grid, num_classes=3)
    names = list(model.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    expected = model(x)
    torch._dynamo.reset()
    compiling.compile_model(model, "eager", num_grids=1, blocks=True)
    assert list(model.state_dict()) == names and model._compiled_call_impl is None
    assert all(b._compiled_call_impl is not None for b in model.blocks)
    torch.testing.assert_close(model(x), expected)
    torch._dynamo.reset()


def test_several_grids_raise_the_recompile_limit_to_fit_every_grid():
    from patches.train import compiling
    before = torch._dynamo.config.recompile_limit
    try:
        assert compiling.raise_recompile_limit(2 * 12) >= 24 + 2
        assert compiling.compile_options("inductor", 6) == {"backend": "inductor", "dynamic": False}
        assert compiling.compile_options("inductor", 1) == {"backend": "inductor"}
    finally:
        torch._dynamo.config.recompile_limit = before


@pytest.mark.slow
def test_two_process_ddp_with_compile_trains_as_eager_ddp(demo_root, tmp_path):
    from launch_helpers import run
    flags = ["--model", "pretrain_videomae_micro_patch16_224", "--decoder_depth", "1", "--num_workers", "0",
             "--device", "cpu", "--data_path", str(demo_root / "train.csv"), "--data_root", str(demo_root),
             "--input_size", "32", "--patch_size", "8", "--num_frames", "4", "--batch_size", "2", "--epochs", "1",
             "--warmup_epochs", "0", "--attn_impl", "math"]
    eager = run("run_mae_pretraining.py", [*flags, "--output_dir", str(tmp_path / "eager")], nproc=2)
    compiled = run("run_mae_pretraining.py", [*flags, "--output_dir", str(tmp_path / "compiled"),
                                              "--compile", "aot_eager"], nproc=2)
    assert "compiled with aot_eager" in compiled.stdout and "compiled with" not in eager.stdout
    loss = [json.loads((tmp_path / o / "log.txt").read_text().splitlines()[0])["train_loss"]
            for o in ("eager", "compiled")]
    assert loss[1] == pytest.approx(loss[0], rel=1e-4)
