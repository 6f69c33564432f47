"""Fine-tuning a video classifier: the run's body, from a resolved :class:`FinetuneRunConfig` to the test's
figures. ``--eval`` and ``--probe`` branch off to :mod:`patches.eval`.

The epoch loop itself is :meth:`patches.train.trainer.Trainer.fit`; the loss of a batch is in
:mod:`patches.train.classification`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.folder import FoundCheckpoint, choose_resume_checkpoint
from patches.checkpoints.for_finetuning import (FINETUNE_HINT, load_best_of_run, load_finetune, pretraining_model_hint,
                                                shared_run_id)
from patches.config.finetuning import FinetuneRunConfig
from patches.data.datasets import build_dataset
from patches.data.lists import class_names
from patches.data.loaders import classification_train_loader
from patches.errors import UsageError
from patches.eval.classifier_test import evaluate_only, evaluation_loader_for, run_test
from patches.eval.features import encoder_reference
from patches.eval.frozen_probes import knn_probe, probe_model
from patches.eval.validation import validate
from patches.models.factory import create_video_model
from patches.train.classification import Classification, classification_criterion, video_mixup
from patches.train.optim import build_optimizer
from patches.train.trainer import RunRecord, Trainer
from patches.utils.distributed import get_world_size


def run_finetuning(run: FinetuneRunConfig, device: str | None) -> dict[str, Any]:
    """Fine-tune and test, or only test (--eval), or probe (--probe), on ``device`` (what ``launch`` chose)."""
    run.check_world_size(get_world_size())
    evaluation, grid = run.evaluation, run.grid
    if not evaluation.eval_only:
        print(run.rates.report)
    with Trainer(dataclasses.replace(run.trainer, device=device), grid, run.recorded_flags()) as trainer:
        print(f"Patch grid: {grid.describe()}")
        # before data and model, so that a checkpoint of another grid is refused before any heavy work
        found = None if evaluation.eval_only else choose_resume_checkpoint(
            run.resume.resume, run.resume.auto_resume, run.resume.output_dir, grid, folders=run.resume.folders,
            other_grid_hint=FINETUNE_HINT)
        build_model = functools.partial(create_video_model, run.model.name, **run.model.options)
        if not evaluation.probe:  # a probe's checkpoint holds the probe alone
            refuse_misfit_early(trainer, found, build_model)
        train_set, nb_classes = build_dataset("train", run.data, grid)
        model = build_model(num_classes=0 if evaluation.probe else nb_classes)
        if evaluation.probe:
            model = probe_model(run, model)
        model = trainer.prepare_model(model)
        print(f"Model {run.model.name}: {trainer.n_parameters / 1e6:.2f} M parameters"
              f"{' trained (the probe)' if evaluation.probe else ''}, {nb_classes} classes")
        if evaluation.probe == "knn":
            return knn_probe(run, trainer)
        if evaluation.eval_only:
            return evaluate_only(run, trainer)
        if found is None and run.weights.path and not evaluation.probe:
            load_finetune(run.weights.path, model, trainer.ema, run.weights.model_key, run.weights.model_prefix,
                          run.weights.fc_norm_init)
        return train(run, trainer, train_set, found)


def refuse_misfit_early(trainer: Trainer, found: FoundCheckpoint | None, build_model: Callable[..., Any]) -> None:
    """A checkpoint of another model size is refused before any data is read: its trunk is checked against the
    model at the head size the file holds (the class count is checked against the data when loading)."""
    head = (found.state.get("model") or {}).get("head.weight") if found is not None else None
    try:
        trainer.refuse_misfit(found, functools.partial(build_model, num_classes=head.shape[0] if head is not None
                                                       and head.ndim == 2 else 2))
    except CheckpointError as e:
        raise CheckpointError(f"{e}{pretraining_model_hint(found.state)}") from None


def train_loader_for(run: FinetuneRunConfig, train_set: Any, trainer: Trainer) -> Any:
    """The training loader (``--num_sample`` clips a video, batches a multiple of ``--update_freq``); refused
    when one optimizer update needs more videos than the list has."""
    lists = run.data.lists
    loader = classification_train_loader(train_set, run.loader, run.num_sample, trainer.device, run.update_freq,
                                         f"the training list in {lists.eval_data_path or lists.data_path}")
    if loader.sampler.batches_per_epoch // run.update_freq == 0:
        raise UsageError(f"--batch_size {run.batch_size} x --update_freq {run.update_freq} x {run.world_size} "
                         f"processes is larger than the {len(train_set)} training videos")
    return loader


def train(run: FinetuneRunConfig, trainer: Trainer, train_set: Any, found: FoundCheckpoint | None
          ) -> dict[str, Any]:
    """Fine-tune with validation after every epoch, then test this run's best weights."""
    train_loader = train_loader_for(run, train_set, trainer)
    val_loader = None
    if run.evaluation.validate:
        val_set, _ = build_dataset("validation", run.data, trainer.grid)
        val_loader = evaluation_loader_for(run, val_set, trainer.device)
    print(f"{len(train_set)} training videos ({train_set.sampling} sampling), "
          f"{train_loader.sampler.batches_per_epoch // run.update_freq} updates per epoch of "
          f"{run.clips_per_step * run.update_freq} clips; lr {run.rates.lr:.3g}")
    trainer.setup_training(build_optimizer(run.optimizer, trainer.model_without_ddp), train_loader,
                           micro_batch=run.batch_size * run.num_sample, clips_per_step=run.clips_per_step)
    start_records(run, trainer, found)
    if found is not None:
        restore(trainer, found)
        del found
    m = run.mixup
    mixup_fn = video_mixup(m.mixup, m.cutmix, m.cutmix_minmax, m.prob, m.switch_prob, m.mode, m.smoothing,
                           run.nb_classes)
    loss = Classification(classification_criterion(mixup_fn, m.smoothing), trainer.device, trainer.amp_dtype,
                          mixup_fn)
    trainer.fit(loss, after_epoch=None if val_loader is None else functools.partial(
        validate, trainer, val_loader, run.evaluation.dist_eval))
    tested = load_best_of_run(run.output_dir, trainer.model_without_ddp, trainer.progress.run.run_id,
                              trainer.grid, run.model.name, run.weights.model_key)
    test = run_test(run, trainer)
    trainer.log({**{f"test_{k}": v for k, v in test.items()}, "checkpoint": tested})
    if trainer.tb is not None:
        trainer.tb.update("test", step=trainer.epoch_step(run.epochs - 1), acc1=test["acc1"], acc5=test["acc5"])
    return {**test, "checkpoint": tested}


def start_records(run: FinetuneRunConfig, trainer: Trainer, found: FoundCheckpoint | None) -> None:
    """What every checkpoint records beside the weights: the best accuracy, the class count and names, the run's
    id, and for a probe the encoder it reads."""
    # best_acc1 starts below any accuracy, so the first validation always writes checkpoint-best.pth, even at 0%.
    trainer.progress.run = RunRecord(best_acc1=-1.0, nb_classes=run.nb_classes, run_id=shared_run_id(found))
    names = class_names(run.data.lists.data_path, run.nb_classes)
    if names:  # so that run_inference.py can name the classes without --classes
        trainer.progress.run.class_names = names
    if run.evaluation.probe:  # the probe's checkpoints hold the probe only, and name the encoder it reads
        trainer.progress.run.probe = run.evaluation.probe
        trainer.progress.run.encoder = encoder_reference(run.weights.path)


def restore(trainer: Trainer, found: FoundCheckpoint) -> None:
    """Resume, with a pointer to --finetune when the file holds a pre-training model."""
    try:
        trainer.restore(found)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{pretraining_model_hint(found.state)}") from None
    trainer.progress.run.best_acc1 = float(found.state.get("best_acc1", -1.0))
