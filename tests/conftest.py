"""Shared fixtures. ``demo_root`` is used across test files: keep its signature stable."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# One torch thread a process (this one and every process a test starts) unless the caller chose: the models are
# tiny, and the suite runs on 2 workers (pytest -n 2) whose processes share the cores; more threads only contend.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.data.demo import make_demo_dataset

# --attn_impl auto's cache of timed choices: one per test session (its workers and subprocesses share it; it is
# written atomically), not the user's.
os.environ.setdefault("PATCHES_CACHE_DIR", tempfile.mkdtemp(prefix="patches-cache-"))

@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset (16/8/8 clips of 32 frames at 64x64, no unlabelled pool) made once per test session.

    Holds ``train.csv``, ``val.csv``, ``test.csv`` (paths relative to the root), ``classes.txt``
    and ``videos/``; its parameters are in ``.complete`` (JSON). Treat it as read-only.
    """
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0, num_train=16, num_val=8, num_test=8, num_unlabeled=0,
                             num_frames=32, size=(64, 64), verbose=False)["root"]



# --- the order of a run on several workers (README's test command: pytest -n 2 --dist loadgroup) -------------------
# The slowest tests start first, so that the workers end together rather than one starting a five-minute test as
# the other runs out. Seconds, roughly (their order is what counts), on 2 cores with pytest -n 2, the module's
# fixture included; every other slow test counts as DEFAULT_SLOW_S, the fast tier as 0. A name matches a test and
# each of its parameters.
SLOWEST_S = {
    "test_wheel_bundle.py::test_the_bundle_installs_offline_next_to_torch_alone_and_the_quick_selfcheck_passes": 340,
    "test_patch_sweep_launchers.py::test_the_rehearsal_through_torchrun_resumes_after_a_kill_to_the_same_json": 200,
    "test_speed.py::test_benchmark_writes_pretraining_and_finetuning_rows": 150,
    "test_patch_sweep_launchers.py::test_the_rehearsal_as_slurm_jobs_chains_them_and_requeues_a_stopped_one": 110,
    "test_distributed.py::test_deepspeed_zero_pretrains_on_cpu_and_resumes_from_its_own_checkpoint": 85,
    "test_code_shape.py::test_each_console_script_shows_its_help_as_pip_runs_it": 80,
    "test_patch_sweep.py::test_flexible_sweep_pretrains_once_evaluates_every_grid_and_resumes": 75,
    "test_distributed.py::test_dist_eval_validates_each_clip_once_and_tests_like_one_process": 75,
    "test_visualisation.py::test_png_grid_and_gif_have_the_grid_geometry": 70,
    "test_compile.py::test_six_flexible_grids_compile_once_each_and_never_reach_the_recompile_limit": 65,
    "test_compile.py::test_two_process_ddp_with_compile_trains_as_eager_ddp": 60,
    "test_frozen_features.py::test_linear_probe_cli_at_a_non_square_grid_keeps_the_probe_and_names_the_encoder": 95,
    "test_resume.py::test_finetuning_killed_mid_epoch_resumes_to_the_same_weights_and_ema": 57,
    "test_finetuning.py::test_final_test_never_takes_a_best_checkpoint_another_run_left": 56,
    "test_finetuning.py::test_eval_and_resume_refuse_a_checkpoint_of_another_grid": 54,
    "test_feature_reruns.py::test_a_rerun_with_uneven_shards_left_shares_them_and_matches_an_uninterrupted_run": 53,
    "test_elastic.py::test_a_job_killed_three_times_once_mid_save_restarts_in_place_to_the_uninterrupted_weights": 53,
    "test_speed.py::test_compiled_pretraining_matches_eager": 39,
    "test_resume.py::test_sigterm_under_torchrun_saves_latest_and_the_run_resumes": 37,
    "test_launchers.py::test_two_torchrun_nodes_train_like_one_node_with_two_processes": 36,
    "test_distributed.py::test_two_processes_give_the_loss_sequence_of_one_with_the_same_global_batch": 34,
    "test_flexible_grids.py::test_a_flexible_run_stopped_mid_epoch_resumes_to_the_same_losses_grids_and_weights": 32,
    "test_faults.py::test_broken_tenth_of_the_data_is_skipped_and_reported_exactly": 30,
    "test_api.py::test_the_installed_package_works_from_another_folder": 29,
    "test_resume.py::test_sigusr1_exits_75_with_a_checkpoint_to_resume_from": 29,
    "test_gpu_paths.py::test_ddp_accumulation_all_reduces_once_per_update": 28,
    "test_faults.py::test_a_stop_signal_during_the_final_test_exits_75_and_the_rerun_only_tests": 28,
    "test_finetuning.py::test_finetune_cli_then_eval_reproduces_logged_accuracy": 28,
    "test_resume.py::test_sigkill_mid_epoch_then_same_command_ends_with_the_same_weights": 26,
    "test_faults.py::test_bad_list_lines_stop_the_run_up_front": 26,
    "test_safetensors.py::test_pretraining_writes_safetensors_next_to_each_checkpoint": 25,
    "test_frozen_features.py::test_knn_probe_cli_at_324_patches_per_frame": 24,
    "test_faults.py::test_check_data_reports_every_bad_video": 24,
    "test_update_sync.py::test_a_rank_local_error_stops_every_rank_with_its_message": 24,
}
DEFAULT_SLOW_S = 10.0


def expected_seconds(item: pytest.Item) -> float:
    name = f"{Path(item.path).name}::{getattr(item, 'originalname', item.name)}"
    return SLOWEST_S.get(name, DEFAULT_SLOW_S if item.get_closest_marker("slow") else 0.0)


def shared_fixture_group(item: pytest.Item) -> str | None:
    """The module's name for a slow test that uses a module- or class-scoped fixture (a pre-training its module's
    tests read): those tests run on one worker, so the fixture is made once."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None or not item.get_closest_marker("slow"):
        return None
    scopes = {d.scope for defs in info.name2fixturedefs.values() for d in defs}
    return Path(item.path).stem if scopes & {"module", "class"} else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first: each group (tests sharing a module's fixture, one worker's work) by its total. Stable: what
    ties keeps pytest's order."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        group = shared_fixture_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
        units.setdefault(group or item.nodeid, []).append(item)
    ordered = sorted(units.values(), key=lambda unit: -sum(map(expected_seconds, unit)))
    items[:] = [item for unit in ordered for item in unit]


def pytest_configure(config: pytest.Config) -> None:
    # --dist loadgroup hands out the work in the order above; by default it would put the largest groups first.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
