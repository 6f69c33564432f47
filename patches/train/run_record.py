"""Where a run stands (:class:`Progress`) and what a run script records of itself in every checkpoint
(:class:`RunRecord`): both saved with each checkpoint and carried across a resume."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class RunRecord:
    """What a run script records in every checkpoint beside the weights, as top-level checkpoint keys of the same
    names. A field left None is not written, so that checkpoints hold exactly the keys they always held.

    ``grids``: flexible-grid pre-training's grids (``PatchGrid.to_dict()`` each); ``best_acc1``: fine-tuning's
    best validation accuracy so far; ``nb_classes`` and ``class_names``: the classifier's classes; ``run_id``: the
    name that ties ``checkpoint-best.pth`` to its run; ``probe`` and ``encoder``: a probe's kind and the encoder
    checkpoint it reads (:func:`patches.eval.features.encoder_reference`)."""

    grids: list[dict[str, Any]] | None = None
    best_acc1: float | None = None
    nb_classes: int | None = None
    run_id: str | None = None
    class_names: list[str] | None = None
    probe: str | None = None
    encoder: dict[str, str] | None = None

    def checkpoint_fields(self) -> dict[str, Any]:
        """The fields that are set, by name: the keys a checkpoint gets."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class Progress:
    """Where training stands, saved with every checkpoint and restored on resume; ``run``: the run script's
    record, saved with it."""

    epoch: int = 0
    batch: int = 0
    run: RunRecord = field(default_factory=RunRecord)
