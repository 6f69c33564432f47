"""The patch sweep (scripts/patch_sweep.py) end to end at tiny settings, and its report (patches/sweep/report.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from patches.errors import UsageError
from patches.sweep import report as sweep_report

# Two grids (4 and 16 patches per frame), one seed, one pre-training epoch (4 steps) on the 16 clips, k-NN (no
# training).
TINY = ["--model", "micro", "--num_frames", "4", "--sampling_rate", "2", "--grids", "32/16", "32/8", "--seeds", "0",
        "--eval", "knn", "--pretrain_epochs", "1", "--device", "cpu", "--threads", "1", "--data_set", "custom",
        "--bench_iters", "1", "--bench_batch_size", "2",
        "--pretrain_args", "--batch_size 4 --decoder_depth 1 --num_workers 0 --warmup_epochs 0 --print_freq 50",
        "--finetune_args", "--batch_size 8 --num_workers 0 --test_num_segment 1 --test_num_crop 1 --knn_k 5"]


def run_sweep(demo_root: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "patch_sweep.py"), *TINY, "--data_path", str(demo_root),
           "--data_root", str(demo_root), "--output_dir", str(out), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def check_rows(out: Path, mode: str) -> list[dict]:
    rows = json.loads((out / "sweep.json").read_text())
    assert [(r["grid"], r["patches_per_frame"], r["tokens"], r["mode"], r["eval"]) for r in rows] == [
        ("32/16", 4, 8, mode, "knn"), ("32/8", 16, 32, mode, "knn")]
    for r in rows:
        assert r["seeds"] == [0] and len(r["top1"]) == 1 and 0 <= r["top1"][0] <= 100
        assert r["pretrain_loss"][0] > 0 and r["step_s"] > 0 and r["clips_per_s"] > 0 and r["peak_mem_gb"] > 0
    assert rows[1]["gflop_per_step"] > rows[0]["gflop_per_step"] > 0  # 4x the tokens
    table = (out / "sweep.md").read_text()
    assert f"| 32/8 | 16 | 32 | {mode} | " in table and "top-1 k-NN" in table and "half the min-max range" in table
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rows


@pytest.mark.slow
def test_flexible_sweep_pretrains_once_evaluates_every_grid_and_resumes(demo_root, tmp_path):
    out = tmp_path / "sweep"
    first = run_sweep(demo_root, out)  # --mode flexible is the default
    rows = check_rows(out, "flexible")
    assert first.stdout.count("$ python run_mae_pretraining.py") == 1 and "--grids 32/16 32/8" in first.stdout
    checkpoint = str(out / "flexible" / "seed0" / "pretrain" / "checkpoint-0.pth")
    evals = [line for line in first.stdout.splitlines() if line.startswith("$ python run_class_finetuning.py")]
    assert len(evals) == 2 and all(f"--finetune {checkpoint}" in line for line in evals)
    record = json.loads((out / "flexible" / "seed0" / "pretrain" / "log.txt").read_text().splitlines()[-1])
    for r in rows:  # each grid's own loss (the grids a step drew), not the run's mean
        assert r["pretrain_loss"] == [pytest.approx(record[f"train_loss_{r['grid']}"])]

    again = run_sweep(demo_root, out)  # every stage done: read back, nothing re-run
    assert "$ python" not in again.stdout and again.stdout.count("done earlier") == 3
    assert json.loads((out / "sweep.json").read_text()) == rows
    replot = subprocess.run([sys.executable, str(ROOT / "scripts" / "patch_sweep.py"), "--plot_only", "--output_dir",
                             str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert replot.returncode == 0 and "| 32/16 | 4 | 8 | flexible |" in replot.stdout


@pytest.mark.slow
def test_a_bad_grid_is_refused_by_name_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "patch_sweep.py"), "--grids", "32/8", "40/16",
                             "--output_dir", str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0
    assert "--grids: grid 40/16: the frame side 40 is not divisible by the patch 16" in result.stderr
    assert not (tmp_path / "x").exists()


def _row(grid: str, ppf: int, mode: str, top1: list[float]) -> dict:
    return {"grid": grid, "patches_per_frame": ppf, "tokens": ppf * 4, "mode": mode, "eval": "knn", "seeds": [0, 1],
            "top1": top1, "pretrain_loss": [0.5, 0.7], "step_s": 0.1, "clips_per_s": 320.0, "gflop_per_step": 1.0,
            "peak_mem_gb": 0.5, "bench_batch": 32}


def test_report_gathers_both_modes_with_mean_and_half_range(tmp_path):
    fixed = [_row("32/8", 16, "fixed", [80.0, 90.0]), _row("32/16", 4, "fixed", [50.0, 60.0])]
    flexible = [_row("32/8", 16, "flexible", [70.0, 74.0])]
    rows = sweep_report.merge_rows(fixed, flexible)
    assert [(r["grid"], r["mode"]) for r in rows] == [("32/16", "fixed"), ("32/8", "fixed"), ("32/8", "flexible")]
    assert sweep_report.merge_rows(rows, [_row("32/8", 16, "flexible", [10.0, 10.0])])[2]["top1"] == [10.0, 10.0]
    table = sweep_report.write_reports(rows, tmp_path, "test")
    assert "| 32/8 | 16 | 64 | fixed | 85.0 ± 5.0 | 0.6000 ± 0.1000 |" in table
    assert "| 32/8 | 16 | 64 | flexible | 72.0 ± 2.0 |" in table
    assert sweep_report.read_rows(tmp_path / "sweep.json") == rows
    (tmp_path / "old.json").write_text(json.dumps([{"grid": "32/8", "acc1": 50}]))
    with pytest.raises(UsageError, match="not a sweep.json of this version"):
        sweep_report.read_rows(tmp_path / "old.json")
