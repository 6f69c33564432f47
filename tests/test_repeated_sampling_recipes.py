"""scripts/recipes.py --repeated_sampling K: the opt-in loader-bound variant of each pre-training recipe."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from patches.config.recipes import (RECIPES, effective_values, launcher_flags, repeated_sampling_flags,
                                    repeated_sampling_gain, repeated_sampling_rows, table)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", [n for n in RECIPES])
def test_the_variant_keeps_clips_and_lr_per_update(name: str) -> None:
    recipe = effective_values(name, "pretrain")
    variant = effective_values(name, "pretrain", flags=repeated_sampling_flags(RECIPES[name].flags("pretrain"), 4))
    assert variant["num_sample"] == 4 and variant["batch_per_gpu"] * 4 == recipe["batch_per_gpu"]
    assert variant["total_batch"] * 4 == recipe["total_batch"]  # videos per update
    assert variant["lr"] == pytest.approx(recipe["lr"]) and variant["epochs"] == recipe["epochs"]
    assert variant["mask_ratio"] == recipe["mask_ratio"]


def test_the_variant_is_opt_in_and_marked() -> None:
    plain = launcher_flags("k400_base_800", "pretrain", 8)
    assert "--num_sample" not in plain  # VideoMAE's line stays the default
    rows = table(["k400_base_800"], "224/16", 100.0, count_flops=False)
    extra = repeated_sampling_rows(["k400_base_800"], rows, 4)
    assert [r["recipe"] for r in extra] == ["k400_base_800 (num_sample 4)"]
    assert "departs from VideoMAE" in extra[0]["note"]
    with pytest.raises(ValueError, match="must divide"):
        repeated_sampling_flags(RECIPES["ucf101_base_3200"].flags("pretrain"), 5)


def test_the_variants_gpu_hours_credit_the_loaders_clips_per_decode() -> None:
    base = table(["k400_base_800"], "224/16", 100.0)[0]
    assert base["bound"] == "loader"  # 12 cores x 7 clips/s against a ViT-B step at 100 TFLOP/s
    variant = repeated_sampling_rows(["k400_base_800"], [base], 4)[0]
    clips = variant["clips_per_epoch"] / base["clips_per_epoch"]
    assert clips == pytest.approx(4, rel=0.01)  # the steps of an epoch round apart
    assert 3.5 < repeated_sampling_gain(4) < 3.7 and repeated_sampling_gain(1) == 1
    assert variant["loader_clips_per_s"] == pytest.approx(base["loader_clips_per_s"] * repeated_sampling_gain(4))
    # 4x the clips at 3.6x the loader's rate: a little more than the base, not 4x it
    assert variant["gpu_hours"] == pytest.approx(base["gpu_hours"] * clips / repeated_sampling_gain(4), rel=1e-6)
    assert variant["gpu_hours_step"] == pytest.approx(clips * base["gpu_hours_step"], rel=1e-6)


@pytest.mark.slow
def test_the_command_line_prints_the_variant_flags() -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "recipes.py"), "--flags", "k400_base_800", "pretrain", "--world",
           "8", "--repeated_sampling", "4"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    flags = done.stdout.split()
    values = {f: flags[flags.index(f) + 1] for f in ("--batch_size", "--num_sample", "--update_freq", "--lr_scale_by")}
    assert values == {"--batch_size": "8", "--num_sample": "4", "--update_freq": "8", "--lr_scale_by": "clips"}
    assert "departs from VideoMAE's published line" in done.stderr
