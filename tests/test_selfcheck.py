"""scripts/selfcheck.py: the quick CPU self-check as a user runs it, and its report rows in-process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from patches.perf import selfcheck

# What the quick CPU run must pass; the fp16 checks need CUDA and must say so.
MUST_PASS = ["environment", "decode", "loss_falls 16 bf16", "loss_falls 36 bf16", "compile 16 bf16",
             "finetune_multiview_test", "torchrun gloo", "resume_exact", "deepspeed_zero2 bf16", "timing 16 sdpa",
             "timing 16 math", "loader_vs_step", "device_path yuv crops"]
SKIPPED_ON_CPU = ["gpu_settings", "host_syncs", "loss_falls 16 fp16", "loss_falls 36 fp16",
                  "deepspeed fp16 (ZeRO-2 refused, ZeRO-0 steps)"]


@pytest.mark.slow
def test_quick_cpu_selfcheck_passes_and_writes_its_table_and_json(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "selfcheck.py"), "--quick", "--device", "cpu",
                             "--output_dir", "tmp"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "tmp" / "selfcheck.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["passed"] and report["mode"] == "quick"
    for name in MUST_PASS:
        assert checks[name]["status"] == "pass", checks[name]
    for name in SKIPPED_ON_CPU:
        assert checks[name]["status"] == "skipped" and "CUDA" in checks[name]["detail"]
    # torchcodec against PyAV: runs where torchcodec loads its FFmpeg, else skipped with the reason
    decoders = checks.pop("decoders pyav vs torchcodec")
    assert decoders["status"] == "pass" or (decoders["status"] == "skipped" and "PyAV only" in decoders["detail"])
    assert set(checks) == set(MUST_PASS + SKIPPED_ON_CPU)
    assert checks["resume_exact"]["figures"]["max_abs_weight_diff"] == 0.0
    assert checks["loss_falls 36 bf16"]["figures"]["last_loss"] < checks["loss_falls 36 bf16"]["figures"]["first_loss"]
    loader = checks["loader_vs_step"]["figures"]
    assert loader["bound"] in ("loader", "step") and loader["workers_per_gpu"] == loader["cores"]  # no GPU here
    assert checks["timing 16 sdpa"]["figures"]["mfu_pct"] is None  # a CPU has no spec peak
    assert checks["timing 16 sdpa"]["figures"]["pct_of_matmul"] > 0
    assert {r["attention"] for r in report["timing"]} == {"sdpa", "math"}
    md = (tmp_path / "tmp" / "selfcheck.md").read_text()
    assert md.startswith("# PATCHES self-check: PASS") and "| resume_exact | pass |" in md
    assert "[17/19] loader_vs_step ..." in result.stdout
    device_path = checks["device_path yuv crops"]["figures"]
    assert device_path["max_pixel_error"] <= 2 and device_path["worker_yuv_clips_per_s"] > 0
    assert not (tmp_path / "tmp" / "selfcheck_work").exists(), "a passing run leaves no work files"


def test_gpu_settings_row_decides_for_cuda_without_a_gpu(monkeypatch):
    from patches.models import attention
    from patches.perf.selfcheck_steps import gpu_settings
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(attention, "time_attention_paths", None)  # timing would be a failure here
    assert gpu_settings(torch.device("cuda")) == {"tf32": True, "attn_auto_bf16": "sdpa", "python_h": True,
                                                  "sync_batch_norm": True}


def test_a_failing_check_fails_the_report_and_a_skip_keeps_its_reason(tmp_path):
    def broken() -> dict:
        raise ValueError("no such kernel")

    def absent() -> dict:
        raise selfcheck.Skip("deepspeed not installed")

    checks = [selfcheck.run_check("ok", lambda: {"x": 1.5}, 1, 3), selfcheck.run_check("broken", broken, 2, 3),
              selfcheck.run_check("absent", absent, 3, 3)]
    assert [c.status for c in checks] == ["pass", "fail", "skipped"]
    assert checks[1].detail == "ValueError: no such kernel" and checks[2].detail == "deepspeed not installed"
    meta = {"passed": False, "mode": "quick", "device": "cpu", "device_name": "cpu", "torch": "x", "seconds": 1.0}
    selfcheck.write_reports(tmp_path, checks, meta, [])
    assert json.loads((tmp_path / "selfcheck.json").read_text())["checks"][1]["status"] == "fail"
    md = (tmp_path / "selfcheck.md").read_text()
    assert md.startswith("# PATCHES self-check: FAIL")
    assert "| broken | fail |  (ValueError: no such kernel) |" in md and "| absent | skipped |" in md
    assert not list(tmp_path.glob(".*.tmp"))


def test_loader_check_gives_the_loader_the_cores_one_gpu_gets(tmp_path):
    import os

    from patches.perf.selfcheck_context import QUICK, Context
    from patches.perf.selfcheck_runs import check_loader
    cores = len(os.sched_getaffinity(0))
    ctx = Context(torch.device("cpu"), QUICK, tmp_path, gpus_per_node=cores)
    ctx.timing.append({"patches_per_frame": 16, "attention": "math", "clips_per_s": 1e6})
    figures = check_loader(ctx)
    assert (figures["cores"], figures["gpus"], figures["workers_per_gpu"]) == (cores, cores, 1)
    assert figures["loader_clips_per_s"] > 0 and figures["bound"] == "loader"  # against a step of 1e6 clips/s
