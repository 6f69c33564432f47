"""scripts/selfcheck.py's report rows, in process. The quick CPU self-check as a user runs it is checked where the
suite runs it, in the offline install of tests/test_wheel_bundle.py (selfcheck_expectations.py: what it must pass)."""
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from patches.perf import selfcheck


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
