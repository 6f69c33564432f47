"""``--probe``: a trained encoder, frozen, evaluated by a new linear or attentive probe, or by k-NN."""
from __future__ import annotations

from typing import Any

import torch

from patches.checkpoints.for_finetuning import load_finetune
from patches.config.finetuning import FinetuneRunConfig
from patches.data.datasets import VideoClsEvalDataset
from patches.data.lists import read_records
from patches.data.loaders import evaluation_loader
from patches.eval.classifier_test import run_test
from patches.eval.features import encoder_reference
from patches.models.probes import FrozenEncoderProbe, build_probe, fit_knn
from patches.train.trainer import Trainer


def probe_model(run: FinetuneRunConfig, encoder: torch.nn.Module) -> FrozenEncoderProbe:
    """--probe: --finetune's encoder, frozen, with a new linear or attentive probe (k-NN's comes later)."""
    weights = run.weights
    load_finetune(weights.path, encoder, None, weights.model_key, weights.model_prefix)
    probe = (torch.nn.Identity() if run.evaluation.probe == "knn"
             else build_probe(run.evaluation.probe, encoder, run.nb_classes))
    return FrozenEncoderProbe(encoder, probe)


def knn_probe(run: FinetuneRunConfig, trainer: Trainer) -> dict[str, Any]:
    """--probe knn: the training videos' centre views are the bank, the test views vote."""
    records, _ = read_records("train", run.data.lists)
    bank_set = VideoClsEvalDataset(records, trainer.grid, run.data.sampling_rate, run.data.short_side_size,
                                   fname_tmpl=run.data.fname_tmpl)
    loader = evaluation_loader(bank_set, run.loader, trainer.device, False,
                               f"the training list in {run.data.lists.data_path}")
    model, evaluation = trainer.model_without_ddp, run.evaluation
    model.probe = fit_knn(model.encoder, loader, trainer.device, run.nb_classes, evaluation.knn_k,
                          evaluation.knn_temperature, trainer.amp_dtype, evaluation.knn_feature)
    print(f"k-NN bank: {len(model.probe.labels)} training videos, {evaluation.knn_feature} features; k "
          f"{model.probe.k}, temperature {evaluation.knn_temperature}")
    stats = run_test(run, trainer)
    trainer.log({**{f"test_{k}": v for k, v in stats.items()}, "probe": "knn", "knn_feature": evaluation.knn_feature,
                 "encoder": encoder_reference(run.weights.path)})
    if trainer.tb is not None:
        trainer.tb.update("test", step=0, acc1=stats["acc1"], acc5=stats["acc5"])
    return {**stats, "checkpoint": run.weights.path}
