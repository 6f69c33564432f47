"""Validation after each fine-tuning epoch, and the best checkpoint it keeps."""
from __future__ import annotations

from typing import Any

from patches.eval.testing import evaluate
from patches.train.trainer import Trainer
from patches.utils.distributed import is_main_process


def validate(trainer: Trainer, loader: Any, sharded: bool, epoch: int, record: dict[str, Any]) -> None:
    """Validation after an epoch: into the epoch's record, and ``checkpoint-best.pth`` when it is the best. The
    figures are over the readable videos only (unreadable ones are left out and named, never replaced).
    ``sharded``: the loader shards the videos over the processes (``--dist_eval``)."""
    val = evaluate(trainer.stoppable(loader), trainer.model_without_ddp, trainer.device, trainer.amp_dtype,
                   sharded=sharded)
    data = loader.end_epoch()
    record.update({f"val_{k}": v for k, v in {**val, **data}.items()})
    if data["bad_video_files"] and is_main_process():
        print(f"Validation figures are over the {val['count']} readable clips; {data['bad_video_files']} unreadable "
              f"videos were left out")
    run = trainer.progress.run
    if val["acc1"] > run.best_acc1:
        run.best_acc1 = val["acc1"]
        trainer.save_weights("checkpoint-best.pth", epoch)
    print(f"Best val acc@1 so far: {run.best_acc1:.2f}")
    if trainer.tb is not None:
        trainer.tb.update("val", step=trainer.epoch_step(epoch), **{k: val[k] for k in ("acc1", "acc5", "loss")})
