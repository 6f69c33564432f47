"""Masked-autoencoder pre-training: the run's body, from a resolved :class:`PretrainRunConfig` to its last record.

The epoch loop itself is :meth:`patches.train.trainer.Trainer.fit`; the loss of a batch is in
:mod:`patches.train.reconstruction`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

from patches.checkpoints.folder import FoundCheckpoint, choose_resume_checkpoint
from patches.config.pretraining import PretrainRunConfig
from patches.data.loaders import pretraining_loader
from patches.data.masking import build_mask_generator, no_masks
from patches.grid import PatchGrid, base_grid
from patches.models.factory import create_video_model
from patches.train.optim import build_optimizer
from patches.train.reconstruction import FlexibleReconstruction, MaskedReconstruction
from patches.train.trainer import Trainer
from patches.utils.distributed import get_rank, get_world_size


def print_grids(run: PretrainRunConfig) -> None:
    """The grids trained at and their masks; with ``--grids`` also which is the base grid."""
    m = run.masking
    for grid, c in zip(run.grids, run.mask_counts):
        masks = (f"{m.mask_type} {m.mask_ratio}: {c.num_visible} visible, {c.num_masked} masked, decoder "
                 f"reconstructs {c.num_decoded}")
        if not run.flexible:
            print(f"Patch grid: {grid.describe()}\nMasking: {masks}")
        else:
            print(f"  {grid.spec:>9}: {grid.shape[0]} x {grid.h} x {grid.w} = {grid.num_tokens} tokens "
                  f"({grid.patches_per_frame} per frame); masking {masks}")
    if run.flexible:
        grids = list(run.grids)
        (h, w), base = largest_size(grids).input_size, base_grid(grids)
        print(f"Flexible grids: one of these {len(grids)} per step, drawn from --seed and the step. Base grid "
              f"(the model's, with the largest patch; its kernel is resized to the others): {base.describe()}; "
              f"clips are loaded at {h}x{w} px and resized on the device")


def largest_size(grids: list[PatchGrid]) -> PatchGrid:
    """The grid with the largest frames: the loader's clips come at its size."""
    return max(grids, key=lambda g: g.input_size[0] * g.input_size[1])


def warn_if_other_grids(found: FoundCheckpoint | None, grids: list[PatchGrid]) -> None:
    """A flexible checkpoint resumed with another ``--grids`` list: allowed (the weights fit), but the steps from
    here on draw from the new list, so the run is no longer the one it would have been."""
    recorded = found.state.get("grids") if found is not None else None
    if recorded is not None and recorded != [g.to_dict() for g in grids]:
        specs = " ".join(PatchGrid.from_dict(g).spec for g in recorded)
        print(f"warning: {found.path} was trained at --grids {specs}; this run draws from "
              f"{' '.join(g.spec for g in grids)} from here on")


def train(run: PretrainRunConfig, device: str | None) -> dict[str, Any]:
    """Pre-train on ``device`` (what ``launch`` chose). Returns the last epoch's ``log.txt`` record with
    ``checkpoint``: the last epoch checkpoint written (None when there was nothing left to train)."""
    run.check_world_size(get_world_size())
    grid, grids = run.grid, list(run.grids)  # the model's grid (the only one without --grids)
    print(run.rates.report)
    with Trainer(dataclasses.replace(run.trainer, device=device), grid, run.recorded_flags()) as trainer:
        print_grids(run)
        build_model = functools.partial(create_video_model, run.model.name, **run.model.options)
        # another grid or model size is refused before data and model
        found = choose_resume_checkpoint(run.resume.resume, run.resume.auto_resume, run.resume.output_dir, grid,
                                  folders=run.resume.folders)
        trainer.refuse_misfit(found, build_model)
        warn_if_other_grids(found, grids)
        masks = no_masks if run.flexible else build_mask_generator(run.masking, grid)  # flexible: drawn per step
        dataset, loader = pretraining_loader(run.data, run.loader, largest_size(grids), masks, trainer.device,
                                             run.update_freq)
        model = trainer.prepare_model(build_model(), grids if run.flexible else ())
        print(f"Model {run.model.name}: {trainer.n_parameters / 1e6:.2f} M parameters")
        print(f"{len(dataset)} videos, {loader.sampler.batches_per_epoch // run.update_freq} updates per epoch of "
              f"{run.clips_per_step * run.update_freq} clips; lr {run.rates.lr:.3g}")
        trainer.setup_training(build_optimizer(run.optimizer, model), loader,
                               micro_batch=run.batch_size * run.num_sample, clips_per_step=run.clips_per_step)
        if found is not None:
            trainer.restore(found)
            del found
        return {**fit(run, trainer), "checkpoint": trainer.last_checkpoint}


def fit(run: PretrainRunConfig, trainer: Trainer) -> dict[str, Any]:
    """The epochs: at the one grid, or at one of ``--grids`` per step, drawn from the seed and the step."""
    settings = MaskedReconstruction(trainer.grid, trainer.device, trainer.amp_dtype, run.normlize_target)
    if not run.flexible:
        return trainer.fit(settings)
    grids = list(run.grids)
    loss = FlexibleReconstruction(grids, [build_mask_generator(run.masking, g) for g in grids], settings, run.seed,
                                  get_rank(), run.grid_weights)
    # every checkpoint records the grids beside "grid", the base (and, as for every 3d model, its
    # "pos_reference": here the finest grid's token rows and columns)
    trainer.progress.run.grids = [g.to_dict() for g in grids]
    return trainer.fit(loss, lambda epoch, r: r.update({f"train_{k}": v for k, v in loss.epoch_record().items()}))
