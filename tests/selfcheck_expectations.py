"""What scripts/selfcheck.py --quick --device cpu must report (tests/test_wheel_bundle.py runs it in the offline
install a GPU node gets; one run of the self-check serves both)."""
from __future__ import annotations

import json
from pathlib import Path

# What the quick CPU run must pass; the fp16 checks need CUDA and must say so.
MUST_PASS = ["environment", "decode", "loss_falls 16 bf16", "loss_falls 36 bf16", "compile 16 bf16",
             "finetune_multiview_test", "torchrun gloo", "resume_exact", "deepspeed_zero2 bf16", "timing 16 sdpa",
             "timing 16 math", "loader_vs_step", "device_path yuv crops"]
SKIPPED_ON_CPU = ["gpu_settings", "host_syncs", "loss_falls 16 fp16", "loss_falls 36 fp16",
                  "deepspeed fp16 (ZeRO-2 refused, ZeRO-0 steps)"]


def check_quick_cpu_report(out: Path, stdout: str) -> None:
    """Assert the report the quick CPU self-check wrote in ``out`` (its ``--output_dir``), ``stdout`` its output."""
    report = json.loads((out / "selfcheck.json").read_text())
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
    md = (out / "selfcheck.md").read_text()
    assert md.startswith("# PATCHES self-check: PASS") and "| resume_exact | pass |" in md
    assert "[17/19] loader_vs_step ..." in stdout
    device_path = checks["device_path yuv crops"]["figures"]
    assert device_path["max_pixel_error"] <= 2 and device_path["worker_yuv_clips_per_s"] > 0
    assert not (out / "selfcheck_work").exists(), "a passing run leaves no work files"
