"""The speed features keep results unchanged: visible-only patch embedding, attention paths, fused AdamW,
fast target normalisation, --compile, and the benchmark script itself (no timing assertions here)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from patches.data.masking import MaskGenerator
from patches.grid import make_grid
from patches.models.attention import BlockAttention, MatmulSoftmaxAttention, configure_attention
from patches.models.factory import create_video_model
from patches.models.layers import gather_tokens
from patches.models.pretrain import mask_to_index, pixel_targets
from patches.train.optim import OptimizerConfig, build_optimizer

ROOT = Path(__file__).resolve().parents[1]


def visible_index(grid, batch: int) -> torch.Tensor:
    gen = MaskGenerator(grid, "tube", 0.75, "none", 0.5, rng=np.random.default_rng(0))
    return mask_to_index(torch.stack([gen()[0] for _ in range(batch)]), select=False)


@pytest.mark.parametrize("frames,tubelet,size,patch", [(4, 2, 32, 8), (4, 1, (32, 48), 8), (6, 3, 36, 12)])
def test_embedding_only_visible_tubelets_equals_embedding_all_then_gathering(frames, tubelet, size, patch):
    g = make_grid(frames, tubelet, size, patch)
    torch.manual_seed(0)
    embed = create_video_model("pretrain_videomae_micro_patch16_224", grid=g).encoder.patch_embed
    x = torch.randn(2, 3, frames, *g.input_size)
    index = visible_index(g, 2)
    full = embed(x)
    expected = full.gather(1, index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    assert torch.allclose(embed.embed_selected(x, index), expected, atol=1e-5)


def test_auto_attention_times_both_paths_logs_the_choice_and_reuses_the_cache(tmp_path, monkeypatch, capsys):
    from patches.models import attention
    monkeypatch.setenv("PATCHES_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(attention, "_CHOICES", {})
    model = create_video_model("vit_micro_patch16_224", grid=make_grid(4, 2, 32, 8), num_classes=3)
    cpu = torch.device("cpu")
    path = configure_attention(model, "auto", cpu, torch.bfloat16)
    assert path in ("sdpa", "math")
    assert all(m.fused_attn == (path == "sdpa") for m in model.modules() if isinstance(m, BlockAttention))
    log = capsys.readouterr().out
    assert f"Attention auto: {path} (sdpa " in log and " ms, math " in log and "bf16 | 32 tokens x 128 dim" in log
    cached = json.loads((tmp_path / "attn_auto.json").read_text())
    assert list(cached.values()) == [path]
    # Another process (an empty in-process cache) reads the file instead of timing: make the cached
    # choice the other path, so that only reading the file can give it.
    other = "math" if path == "sdpa" else "sdpa"
    (tmp_path / "attn_auto.json").write_text(json.dumps({k: other for k in cached}))
    monkeypatch.setattr(attention, "_CHOICES", {})
    monkeypatch.setattr(attention, "time_attention_paths", lambda *a, **k: pytest.fail("timed despite the cache"))
    assert configure_attention(model, "auto", cpu, torch.bfloat16) == other
    assert "measured before" in capsys.readouterr().out
    assert configure_attention(model, "math", cpu, None) == "math"
    with pytest.raises(ValueError, match="--attn_impl"):
        configure_attention(model, "flash", cpu, None)


def test_attention_paths_give_the_same_bf16_outputs_and_gradients():
    g = make_grid(4, 2, 32, 8)
    torch.manual_seed(0)
    model = create_video_model("vit_micro_patch16_224", grid=g, num_classes=3)
    x = torch.randn(2, 3, 4, 32, 32)
    results = []
    for impl in ("sdpa", "math"):
        assert configure_attention(model, impl, torch.device("cpu"), torch.bfloat16) == impl
        assert all(b.attn.fused_attn == (impl == "sdpa") for b in model.blocks)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        results.append((out.float(), model.blocks[0].attn.qkv.weight.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=3e-2)
    assert torch.allclose(results[0][1], results[1][1], atol=3e-2, rtol=5e-2)


def test_adamw_uses_the_fused_kernel_and_matches_the_plain_update():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer(OptimizerConfig("adamw", lr=1e-2, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.95)),
                            models[0])
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW([
        {"params": [p for n, p in models[1].named_parameters() if p.ndim > 1], "weight_decay": 0.05},
        {"params": [p for n, p in models[1].named_parameters() if p.ndim <= 1], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    x = torch.randn(16, 8)
    for _ in range(5):
        for model, opt in zip(models, (fused, plain)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert (a - b).abs().max() < 2e-5  # the fused kernel rounds differently; each step moves ~1e-2
    assert not torch.equal(models[0][0].weight, torch.nn.Linear(8, 8).weight)


def test_normalised_targets_match_the_per_patch_channel_formula():
    g = make_grid(4, 2, (32, 48), 8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    x = torch.randn(2, 3, 4, 32, 48)
    pixels = x * std.view(1, 3, 1, 1, 1) + mean.view(1, 3, 1, 1, 1)
    # VideoMAE's formula: tokens [B, N, q*p*p, C], statistics over the pixels of each channel
    tokens = pixels.unfold(2, 2, 2).unfold(3, 8, 8).unfold(4, 8, 8)  # b c t h w q p1 p2
    tokens = tokens.permute(0, 2, 3, 4, 5, 6, 7, 1).reshape(2, g.num_tokens, -1, 3)
    expected = (tokens - tokens.mean(-2, keepdim=True)) / (tokens.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    got = pixel_targets(x, g, mean, std, normalize_target=True)
    assert torch.allclose(got, expected.flatten(-2), atol=1e-5)


def run_pretraining(demo_root: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "run_mae_pretraining.py"), "--model", "pretrain_videomae_micro_patch16_224",
           "--decoder_depth", "1", "--num_workers", "0", "--device", "cpu", "--data_path", str(demo_root / "train.csv"),
           "--data_root", str(demo_root), "--input_size", "32", "--patch_size", "8", "--num_frames", "4",
           "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0", "--output_dir", str(out), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (out / "log.txt").read_text().splitlines()]


def test_blocks_explicit_attention_equals_timms_and_keeps_parameter_names():
    from timm.models.beit import Attention
    model = create_video_model("vit_micro_patch16_224", num_classes=3, input_size=32, patch_size=8, num_frames=4)
    attn = model.blocks[0].attn
    assert type(attn) is BlockAttention
    assert {"qkv.weight", "q_bias", "v_bias", "proj.weight"} <= set(dict(attn.named_parameters()))
    torch.nn.init.normal_(attn.q_bias)
    torch.nn.init.normal_(attn.v_bias)
    x = torch.randn(2, 16, attn.qkv.in_features, requires_grad=True)
    attn.fused_attn = False
    ours = attn(x)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    attn.__class__ = Attention  # timm's own forward on the same parameters
    theirs = attn(x)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x)
    assert torch.allclose(ours, theirs, atol=1e-6) and torch.allclose(grad_ours, grad_theirs, atol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_in_place_attention_matches_plain_ops_forward_and_backward(dtype, tol):
    # head dim 24: a scale that is not a power of two, so scaling in the matmul is really checked
    q, k, v = (torch.randn(2, 3, 50, 24, dtype=torch.float64) for _ in range(3))
    grad_out = torch.randn(2, 3, 50, 24, dtype=torch.float64)
    scale = 24 ** -0.5

    def plain(q, k, v):
        return ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ v

    def run(fn, dtype):
        inputs = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*inputs)
        out.backward(grad_out.to(dtype))
        return [out.float()] + [t.grad.float() for t in inputs]

    ours = run(lambda q, k, v: MatmulSoftmaxAttention.apply(q, k, v, scale), dtype)
    # fp32 against float64; bf16 against the same plain ops in bf16, as a bf16 step ran them before
    reference = run(plain, torch.float64 if dtype == torch.float32 else dtype)
    for name, got, want in zip(("output", "grad q", "grad k", "grad v"), ours, reference):
        err = (got - want.float()).abs().max() / want.abs().max()
        assert err < tol, f"{name}: relative error {err:.2e}"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in a bf16 step: bf16 inputs, bf16 result
        inputs = [t.bfloat16().requires_grad_() for t in (q, k, v)]
        assert MatmulSoftmaxAttention.apply(*inputs, scale).dtype == torch.bfloat16


def test_attention_dropout_still_applies_on_the_explicit_path():
    model = create_video_model("vit_micro_patch16_224", num_classes=3, input_size=32, patch_size=8, num_frames=4,
                               attn_drop_rate=0.5)
    attn = model.blocks[0].attn
    attn.fused_attn = False
    x = torch.randn(2, 16, attn.qkv.in_features)
    torch.manual_seed(0)
    first = attn(x)
    assert not torch.allclose(first, attn(x)), "attention dropout was skipped in training"
    attn.eval()
    assert torch.equal(attn(x), attn(x))


@pytest.mark.parametrize("x_batch, index_batch", [(3, 3), (1, 3), (3, 1)])
def test_gather_tokens_equals_torch_gather_and_broadcasts(x_batch, index_batch):
    x = torch.randn(x_batch, 10, 6, requires_grad=True)
    index = torch.stack([torch.randperm(10)[:4] for _ in range(index_batch)])
    batch = max(x_batch, index_batch)
    expected = x.expand(batch, -1, -1).gather(1, index.expand(batch, -1).unsqueeze(-1).expand(-1, -1, 6))
    got = gather_tokens(x, index)
    assert torch.equal(got, expected)
    (grad,) = torch.autograd.grad(got.square().sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_targets_of_selected_tokens_equal_selecting_from_all_targets(normalize):
    g = make_grid(4, 2, 32, 8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    x = torch.randn(2, 3, 4, 32, 32)
    x[:, :, :2, :8, :8] = 0.0  # one token of constant pixels per channel: variance 0, targets 0, not noise
    index = torch.stack([torch.randperm(g.num_tokens)[:20] for _ in range(2)])
    index[:, 0] = 0
    full = pixel_targets(x, g, mean, std, normalize_target=normalize)
    got = pixel_targets(x, g, mean, std, normalize_target=normalize, index=index)
    expected = full.gather(1, index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    assert torch.allclose(got, expected, atol=1e-6)
    if normalize:
        assert got[:, 0].abs().max() < 0.1  # the mean rounds (VideoMAE's formula too): ~1e-8 / eps, not noise


@pytest.mark.slow
def test_compiled_pretraining_matches_eager(demo_root, tmp_path):
    eager = run_pretraining(demo_root, tmp_path / "eager", "--amp", "bf16", "--attn_impl", "math")
    assert eager.returncode == 0, eager.stderr[-3000:]
    assert "Attention: math" in eager.stdout
    compiled = run_pretraining(demo_root, tmp_path / "compiled", "--amp", "bf16", "--attn_impl", "math",
                               "--compile", "aot_eager")
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert "Attention: math; compiled with aot_eager" in compiled.stdout
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=2e-2)


@pytest.mark.slow
def test_unknown_compile_backend_is_refused_before_any_work(tmp_path):
    cmd = [sys.executable, str(ROOT / "run_mae_pretraining.py"), "--compile", "nonsense", "--device", "cpu",
           "--output_dir", str(tmp_path / "o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--compile nonsense: not a torch.compile backend" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o" / "log.txt").exists()


@pytest.mark.slow
def test_benchmark_writes_pretraining_and_finetuning_rows(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--tasks", "pretrain", "finetune",
           "--models", "micro", "--sizes", "32", "--patch_size", "8", "--num_frames", "4", "--dtypes", "fp32", "bf16",
           "--decoder_masks", "none", "run_cell", "--iters", "1", "--warmup", "0", "--no_loader", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert sorted({(r["task"], r["dtype"], r["decoder_mask"]) for r in rows}) == sorted(
        [("pretrain", d, m) for d in ("fp32", "bf16") for m in ("none", "run_cell")]
        + [("finetune", d, "-") for d in ("fp32", "bf16")])
    for r in rows:
        assert r["patches_per_frame"] == 16 and r["step_s"] > 0 and r["gflop_per_step"] > 0
        assert r["peak_mem_gb"] > 0 and 0 < r["fraction_of_matmul"]
        assert r["peak_tflops"] is None and r["mfu"] is None  # a CPU has no spec peak: MFU needs --peak_tflops
        assert r["attention"] in ("sdpa", "math")  # auto: whichever its timing found faster here
    # the same model FLOPs whatever the attention path; decoder masking lowers them
    pre = {(r["dtype"], r["decoder_mask"]): r["gflop_per_step"] for r in rows if r["task"] == "pretrain"}
    assert pre[("fp32", "none")] == pytest.approx(pre[("bf16", "none")], rel=1e-6)
    assert pre[("fp32", "run_cell")] < pre[("fp32", "none")]
    assert "| pretrain | ViT-M | 32/8 | 16 |" in result.stdout


def test_bf16_autocast_layer_norm_and_loss_are_computed_in_fp32():
    """On CPU autocast leaves LayerNorm to the input's dtype; torch's kernel then still computes the statistics
    in fp32, so its bf16 output is the fp32 result rounded once, as the next linear would round it anyway."""
    torch.manual_seed(0)
    model = create_video_model("vit_micro_patch16_224", grid=make_grid(4, 2, 32, 8), num_classes=3)
    norm = model.blocks[0].norm1
    x = (torch.randn(2, 16, 128) * 30 + 100).bfloat16()  # a large mean: bf16 statistics would lose it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = norm(x)
    expected = torch.nn.functional.layer_norm(x.float(), (128,), norm.weight, norm.bias, norm.eps)
    assert torch.equal(got.float(), expected.bfloat16().float())
    from patches.train.classification import Classification
    loss = Classification(torch.nn.CrossEntropyLoss(), torch.device("cpu"), torch.bfloat16)(
        model, (torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 2])))
    assert loss.dtype == torch.float32


def test_bound_table_says_whether_the_loader_or_the_step_is_slower():
    from patches.perf import benchmark
    step = [dict(task="pretrain", model="small", patches_per_frame=196, dtype="bf16", decoder_mask="none",
                 clips_per_s=5.0), dict(task="finetune", clips_per_s=1.0)]
    loader = [dict(pipeline="ours", workers=0, num_sample=1, clips_per_s=3.0),
              dict(pipeline="ours", workers=2, num_sample=1, clips_per_s=9.0),
              dict(pipeline="baseline", workers=2, num_sample=1, clips_per_s=1.0)]
    table = benchmark.bound_table(step, loader, cores_per_gpu=2)
    assert "| ViT-S 196 bf16 none | 5.00 | 9.0 | step |" in table and "2 workers (a GPU's cores)" in table
    assert "| ViT-S 196 bf16 none | 5.00 | 3.0 | loader |" in benchmark.bound_table(step, loader, cores_per_gpu=0)
    assert "finetune" not in table and table.count("\n") == 2


def test_mfu_is_against_the_spec_peak_of_the_named_gpu_or_the_flag():
    from patches.perf import peaks
    assert peaks.spec_peak("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert peaks.spec_peak("NVIDIA H100 PCIe").bf16 == 756.0 and peaks.spec_peak("NVIDIA H200").bf16 == 989.0
    assert peaks.spec_peak("NVIDIA A100-SXM4-80GB").name == "A100" and peaks.spec_peak("NVIDIA L40S").name == "L40S"
    assert peaks.spec_peak("NVIDIA L4").name == "L4" and peaks.spec_peak("some CPU") is None
    assert peaks.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == (989.0, "H100 SXM bf16 dense spec")
    assert peaks.peak_tflops("NVIDIA H100 80GB HBM3", "fp32")[0] == 494.5  # TF32
    assert peaks.peak_tflops("cpu", "bf16", override=2.5) == (2.5, "--peak_tflops")
    assert peaks.peak_tflops("cpu", "bf16")[0] is None
    assert peaks.mfu(400e12, 1.0, 989.0) == pytest.approx(400 / 989) and peaks.mfu(1.0, 1.0, None) is None


def test_the_loader_gets_the_cores_divided_by_the_gpus_per_node():
    from patches.perf import peaks
    assert peaks.cores_per_gpu(8, cores=96) == 12 and peaks.cores_per_gpu(None, cores=96) == 96  # no GPU here
    assert peaks.cores_per_gpu(16, cores=8) == 1
    assert peaks.bound(1000.0, 85.0) == "loader" and peaks.bound(50.0, 85.0) == "step"


def test_checkpointing_recompute_counts_in_hardware_flops_not_model_flops():
    from patches.perf import benchmark
    cfg = dict(num_frames=4, size=32, patch=8, model="micro", batch_size=2, mask_ratio=0.75, decoder_depth=1,
               decoder_mask="none", dtype="fp32", attn_impl="math", compile=None)
    _, forward_backward, _, plain = benchmark.pretrain_step_fn(cfg, torch.device("cpu"))
    _, forward_backward_ckpt, _, ckpt = benchmark.pretrain_step_fn({**cfg, "use_checkpoint": True},
                                                                  torch.device("cpu"))
    model = benchmark.count_model_flops(plain, forward_backward, "math")
    assert benchmark.count_model_flops(ckpt, forward_backward_ckpt, "math") == model
    hardware = benchmark.count_model_flops(ckpt, forward_backward_ckpt, "math", hardware=True)
    assert model < hardware < 1.5 * model  # the blocks' forward again: about a third of forward + backward


def test_benchmark_peak_memory_restarts_after_the_flop_count_and_matmul_rate_is_measured():
    # The FLOP count runs the explicit attention path; its peak must not be charged to the measured path.
    from patches.perf import benchmark
    cpu = torch.device("cpu")
    big = torch.ones(300_000_000 // 4)  # 300 MB, touched: an mmap of its own, returned on del
    with_big = benchmark.peak_memory(cpu)
    del big
    assert benchmark.peak_memory(cpu) > with_big - 10e6  # a peak, not the current size (counters are approximate)
    benchmark.reset_peak_memory(cpu)
    assert benchmark.peak_memory(cpu) < with_big - 200e6
    assert 1e6 < benchmark.matmul_rate(torch.float32, cpu, n=256, iters=3) < 1e15
