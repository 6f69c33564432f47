"""A classifier's test, as fine-tuning ends and as ``--eval`` runs it: every test view scored, merged into
per-video accuracy over the readable videos."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.folder import checkpoint_to_evaluate
from patches.checkpoints.for_finetuning import load_finetune, load_weights
from patches.config.finetuning import FinetuneRunConfig
from patches.data.datasets import build_dataset
from patches.data.lists import read_records
from patches.data.loaders import evaluation_loader
from patches.errors import PatchesError, UsageError
from patches.eval.testing import final_test, merge_test_results
from patches.train.trainer import Trainer
from patches.utils.distributed import get_rank, get_world_size, is_dist, is_main_process


class NoReadableTestVideos(PatchesError):
    """Not one test video could be read: there is no accuracy to report."""


def evaluation_loader_for(run: FinetuneRunConfig, dataset: Any, device: torch.device) -> Any:
    """The validation or test loader, sharded over processes with ``--dist_eval``, wrapped to report
    unreadable videos (see data_health.BadVideoTracker)."""
    lists = run.data.lists
    source = f"the evaluation list in {lists.eval_data_path or lists.data_path}"
    return evaluation_loader(dataset, run.loader, device, is_dist() and run.evaluation.dist_eval, source)


def run_test(run: FinetuneRunConfig, trainer: Trainer) -> dict[str, Any]:
    """Every test view scored into per-rank result files, merged into per-video accuracy over the videos whose
    views are all readable; the others are counted (``left_out``) and named (``left_out_videos``)."""
    test_set, _ = build_dataset("test", run.data, trainer.grid)
    loader = evaluation_loader_for(run, test_set, trainer.device)
    out_file = Path(run.output_dir) / f"test_results_rank{get_rank()}.jsonl"
    with trainer.phase("the final test" if trainer.checkpoints is not None else "the test"):
        final_test(trainer.stoppable(loader), trainer.model_without_ddp, trainer.device, out_file, trainer.amp_dtype,
                   run.evaluation.print_freq)
    data = loader.end_epoch()
    if is_dist():
        torch.distributed.barrier()
    files = [Path(run.output_dir) / f"test_results_rank{r}.jsonl" for r in range(get_world_size())]
    try:
        stats = {**merge_test_results(files, test_set.views_per_video), **data}
    except ValueError:
        raise NoReadableTestVideos(f"none of the {len(test_set.records)} test videos can be read (listed above); "
                                   f"the trained checkpoints in {run.output_dir} are kept") from None
    incomplete = {test_set.records[i].path for i in stats.pop("incomplete")}
    stats["left_out"] = len(test_set.records) - stats["videos"]
    stats["left_out_videos"] = sorted(incomplete | set(data["bad_videos"]))
    if is_main_process():
        left_out = (f"; {stats['left_out']} unreadable videos left out: {', '.join(stats['left_out_videos'][:5])}"
                    f"{' ...' if stats['left_out'] > 5 else ''}" if stats["left_out"] else "")
        print(f"Test ({run.evaluation.test_num_segment} x {run.evaluation.test_num_crop} views per video, "
              f"{stats['videos']} videos{left_out}): acc@1 {stats['acc1']:.2f}  acc@5 {stats['acc5']:.2f}")
    return stats


def evaluate_only(run: FinetuneRunConfig, trainer: Trainer) -> dict[str, Any]:
    """--eval: test the chosen checkpoint (see :func:`checkpoint_to_evaluate`), or --finetune's weights."""
    chosen = checkpoint_to_evaluate(run.resume.resume, run.output_dir, run.deepspeed)
    path = "" if chosen is None else str(chosen)
    if run.evaluation.probe and not path:
        raise UsageError(f"--eval --probe {run.evaluation.probe} tests a trained probe: none in --output_dir "
                         f"{run.output_dir}, and no --resume")
    weights = run.weights
    if path:
        load_weights(path, trainer.model_without_ddp, trainer.ema, trainer.grid, run.model.name, weights.model_key)
    elif weights.path:
        load_finetune(weights.path, trainer.model_without_ddp, trainer.ema, weights.model_key, weights.model_prefix,
                      weights.fc_norm_init)
    stats = run_test(run, trainer)
    trainer.log({f"eval_test_{k}": v for k, v in stats.items()})
    return {**stats, "checkpoint": path or weights.path}


def warn_missing_evaluation_videos(run: FinetuneRunConfig) -> None:
    """Before any training: name the validation and test videos that do not exist (a cheap check; --check_data
    also decodes them). The evaluations will leave them out."""
    if run.uses_demo_data or run.check_data:
        return
    evaluation = run.evaluation
    modes = ("test",) if evaluation.eval_only or not evaluation.validate else ("validation", "test")
    for mode in modes:
        try:
            records = read_records(mode, run.data.lists)[0]
        except (OSError, ValueError):
            continue  # reported by the flag checks
        missing = [r for r in records if not os.path.exists(r.path)]
        if missing:
            named = ", ".join(f"{r.path} ({r.where})" for r in missing[:3]) + (" ..." if len(missing) > 3 else "")
            print(f"warning: {len(missing)} of the {len(records)} {mode} videos do not exist: {named}; the {mode} "
                  f"will leave them out (--check_data also checks that every video decodes)")
