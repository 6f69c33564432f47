"""scripts/loader_bench.py on two tiny generated videos: both pipelines deliver clips of the right shape,
and the JSON and the table are written. No timing is checked (figures depend on the machine)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from patches.perf import bench_videos, loader_bench, loader_bench_cli, reference_loader

# 8 frames at sampling rate 2, 32 px, patch 8: what the tiny videos can hold
SMALL = ["--model", "pretrain_videomae_micro_patch16_224", "--input_size", "32", "--patch_size", "8",
         "--num_frames", "8", "--sampling_rate", "2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return bench_videos.make_videos(tmp_path_factory.mktemp("lb"), 2, short_side=64, seconds=1.6, fps=25)


def test_videos_are_h264_of_the_asked_size_and_cached(videos: list[str]) -> None:
    import av
    with av.open(videos[0]) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height, s.frames) == ("h264", 114, 64, 40)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
    assert frames.std(axis=0).mean() > 1, "the content moves"
    mtime = Path(videos[0]).stat().st_mtime_ns
    assert bench_videos.make_videos(Path(videos[0]).parent, 2, short_side=64, seconds=1.6) == videos
    assert Path(videos[0]).stat().st_mtime_ns == mtime, "reused, not rewritten"


@pytest.mark.parametrize("pipeline", loader_bench.PIPELINES)
@pytest.mark.parametrize("num_sample", [1, 2])
def test_both_pipelines_deliver_clips(videos: list[str], pipeline: str, num_sample: int) -> None:
    row = loader_bench.measure_loader(videos, 0, num_sample, pipeline, batch_size=2, seconds=0, min_batches=2,
                                      warmup_batches=1, extra_args=SMALL)
    # ours hands uint8 clips to the step, which normalises them on its device; the baseline normalises here;
    # device hands over the crops' YUV 4:2:0 planes, [B, T, 3 H / 2, W], converted and resized on the device
    if pipeline == "device":
        assert row["batch_shape"][:2] == [2 * num_sample, 8] and row["batch_shape"][2] % 3 == 0
    else:
        assert row["batch_shape"] == [2 * num_sample, 3, 8, 32, 32]
    assert row["dtype"] == ("float32" if pipeline == "baseline" else "uint8")
    assert row["clips"] == 2 * 2 * num_sample and row["clips_per_s"] > 0 and row["clips_per_cpu_s"] > 0


def test_baseline_clip_matches_the_reference_recipe(videos: list[str]) -> None:
    from patches.data.masking import MaskGenerator
    from patches.grid import make_grid
    grid = make_grid(8, 2, 32, 8)
    ds = reference_loader.ReferencePretrainDataset(videos, grid, 2, MaskGenerator(grid, "tube", 0.9), num_sample=2)
    torch.manual_seed(0)
    (clips, enc, dec), bad = ds[0]
    assert bad == () and len(clips) == len(enc) == 2
    assert all(c.shape == (3, 8, 32, 32) and c.dtype == torch.float32 for c in clips)
    assert -2.2 < clips[0].min() and clips[0].max() < 2.7 and clips[0].std() > 0.05  # normalised


def test_run_writes_json_and_table(videos: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "loader.json"
    argv = ["--workers", "0", "1", "--num_sample", "1", "--videos", "2", "--video_dir", str(Path(videos[0]).parent),
            "--short_side", "64", "--seconds", "1.6", "--batch_size", "2", "--time", "0", "--json", str(out),
            "--extra_args", *SMALL]
    loader_bench_cli.main(argv)
    rows = json.loads(out.read_text())
    assert [(r["pipeline"], r["workers"]) for r in rows] == [("baseline", 0), ("ours", 0), ("baseline", 1), ("ours", 1)]
    assert all(r["speedup"] > 0 for r in rows if r["pipeline"] == "ours")
    assert rows[2]["clips_per_cpu_s"] is None and rows[2]["clips_per_s_per_worker"] == rows[2]["clips_per_s"]
    table = capsys.readouterr().out
    assert "| pipeline | workers | num_sample | clips/s | clips/s per worker | speed-up over baseline" in table
    assert table.count("| ours |") == 2 and "wrote" in table


def files_bench(videos: list[str], tmp_path: Path, workers: list[str], pipelines: list[str]) -> dict:
    """``loader_bench.py --data_path`` on ``videos`` (num_sample 1 and 2, tiny clips): the JSON it writes."""
    (tmp_path / "list.csv").write_text("".join(f"{Path(v).name}\n" for v in videos))
    out = tmp_path / "files.json"
    loader_bench_cli.main(["--data_path", str(tmp_path / "list.csv"), "--data_root", str(Path(videos[0]).parent),
                           "--workers", *workers, "--num_sample", "1", "2", "--pipelines", *pipelines, "--time", "0",
                           "--batch_size", "2", "--json", str(out), "--extra_args", *SMALL])
    return json.loads(out.read_text())


def test_files_mode_reports_the_decode_only_limit_the_share_and_worker_memory(videos: list[str], tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    result = files_bench(videos, tmp_path, ["0", "1"], ["ours"])
    rows, limits = result["rows"], {d["num_sample"]: d for d in result["decode_only"]}
    assert [(r["workers"], r["num_sample"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert set(limits) == {1, 2} and all(d["clips_per_cpu_s"] > 0 and d["clips"] >= 4 for d in limits.values())
    for r in rows:
        assert r["decode_limit_per_core"] == limits[r["num_sample"]]["clips_per_cpu_s"] and r["cores"] == 1
        assert r["share_of_limit"] == pytest.approx(r["clips_per_s"] / r["decode_limit_per_core"])
        assert r["cpu_share_of_limit"] > 0 and len(r["worker_rss_mb"]) == r["workers"]
        assert r["vs_num_sample_1"] == pytest.approx(r["clips_per_s"] / rows[2 * (r["workers"])]["clips_per_s"])
    assert all(mb > 10 for mb in rows[2]["worker_rss_mb"])
    assert "| ours | 1 | 2 |" in capsys.readouterr().out


def test_device_pipeline_hands_over_yuv_crops_and_reports_per_cpu_second_ratios(videos: list[str], tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    """--pipelines device: the loader as a CUDA run builds it (YUV crop planes, converted later on the device)."""
    result = files_bench(videos, tmp_path, ["1"], ["ours", "device"])
    rows = {(r["pipeline"], r["num_sample"]): r for r in result["rows"]}
    assert set(rows) == {("ours", 1), ("ours", 2), ("device", 1), ("device", 2)}
    assert rows[("ours", 2)]["batch_shape"][1:] == [3, 8, 32, 32]  # resized RGB clips
    batch, frames, rows_yuv, width = rows[("device", 2)]["batch_shape"]
    assert (batch, frames) == (4, 8) and rows_yuv % 3 == 0 and rows_yuv >= 48 and width >= 32  # YUV 4:2:0 crops
    for r in rows.values():
        assert r["best_clips_per_cpu_s"] == max(r["cpu_runs"]) > 0
        expected = r["best_clips_per_cpu_s"] / rows[(r["pipeline"], 1)]["best_clips_per_cpu_s"]
        assert r["vs_num_sample_1_cpu"] == pytest.approx(expected)
    assert "| device | 1 | 2 |" in capsys.readouterr().out


def test_leak_check_samples_each_workers_memory_over_the_run(videos: list[str], tmp_path: Path) -> None:
    out = tmp_path / "leak.json"
    loader_bench_cli.main(["--leak_clips", "12", "--workers", "1", "--num_sample", "2", "--batch_size", "2",
                           "--videos", "2", "--video_dir", str(Path(videos[0]).parent), "--short_side", "64",
                           "--seconds", "1.6", "--json", str(out), "--extra_args", *SMALL])
    result = json.loads(out.read_text())
    assert result["clips"] == 12 and len(result["rss_mb_samples"]) == 3 and not result["leak"]
    assert all(len(s) == 1 and s[0] > 10 for s in result["rss_mb_samples"])


def test_rss_growth_ignores_start_up_and_single_peaks() -> None:
    from patches.perf.loader_limits import rss_growth
    assert rss_growth([[100.0, 90.0]] * 3) == 0.0  # too few samples to tell
    assert rss_growth([[50.0]] + [[100.0]] * 6 + [[160.0]] + [[100.0]] * 4) == 0.0
    assert rss_growth([[100.0 + 10 * i, 50.0] for i in range(12)]) == pytest.approx(200.0 - 140.0)
