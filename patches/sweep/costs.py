"""The patch sweep's costs before anything runs: FLOPs per clip at each grid, the FLOPs budget (epochs per grid in
fixed mode, the draw weights of flexible mode) and each stage's GPU-hours (:func:`patches.config.recipes.gpu_hours`).

FLOPs per clip are counted as scripts/recipes.py counts them (:func:`patches.config.recipes.flops_per_clip`, a
forward + backward on the CPU); the counts of VideoMAE's ViT-S/B at the usual grids are kept in
``flops_per_clip.json`` beside this module (``python -m patches.sweep.costs`` counts them again), others are counted
once and kept in OUTPUT_DIR/flops_per_clip.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from patches.config import recipes
from patches.utils.files import write_atomically

KNOWN_FLOPS = Path(__file__).with_name("flops_per_clip.json")


def flops_key(stage: str, model: str, grid: str, mask_ratio: float | None, decoder_depth: int | None) -> str:
    """The key of one count: what :func:`patches.config.recipes.flops_per_clip` depends on."""
    if stage != "pretrain":
        mask_ratio = decoder_depth = None  # the classifier sees every token and has no decoder
    return f"{stage} {model} {grid} mask={mask_ratio} decoder={decoder_depth}"


def _read(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.exists() else {}


def clip_flops(stage: str, model: str, grid: str, mask_ratio: float | None, decoder_depth: int | None,
               cache_dir: Path | None = None) -> float:
    """Forward + backward FLOPs of one training clip of ``stage`` at ``grid``: the kept count, or counted now
    (and kept in ``cache_dir``)."""
    key = flops_key(stage, model, grid, mask_ratio, decoder_depth)
    cache = cache_dir / "flops_per_clip.json" if cache_dir else None
    for known in (_read(KNOWN_FLOPS), _read(cache) if cache else {}):
        if key in known:
            return float(known[key])
    size, patch = recipes.parse_grid(grid)
    flops = recipes.flops_per_clip(stage, model, size, patch, mask_ratio, decoder_depth)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        counts = {**_read(cache), key: flops}
        write_atomically(cache, lambda tmp: tmp.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n"))
    return flops


def fixed_budget_epochs(flops: dict[str, float], reference: str, epochs: int) -> dict[str, int]:
    """Fixed mode's epochs per grid for the FLOPs of ``epochs`` epochs at ``reference``: a grid of fewer FLOPs per
    clip trains proportionally longer (at least one epoch)."""
    return {grid: max(1, round(epochs * flops[reference] / f)) for grid, f in flops.items()}


def equal_share_weights(flops: dict[str, float]) -> dict[str, float]:
    """Flexible mode's draw weights giving each grid the same share of the run's FLOPs: inverse to FLOPs per clip."""
    inverse = {grid: 1 / f for grid, f in flops.items()}
    return {grid: w / sum(inverse.values()) for grid, w in inverse.items()}


def mean_flops(flops: dict[str, float], weights: dict[str, float] | None) -> float:
    """FLOPs per clip of a flexible run, averaged over its draw (uniform without ``weights``)."""
    weights = weights or {grid: 1 / len(flops) for grid in flops}
    return sum(weights[grid] * f for grid, f in flops.items())


def flexible_budget_epochs(flops: dict[str, float], weights: dict[str, float], reference_flops: float,
                           epochs: int) -> int:
    """Flexible mode's epochs for the FLOPs of ``epochs`` epochs at the reference grid (one fixed point's budget),
    drawn with ``weights``."""
    return max(1, round(epochs * reference_flops / mean_flops(flops, weights)))


def stage_gpu_hours(flops_per_clip: float, clips_per_epoch: int, epochs: int, tflops: float) -> float:
    """A stage's GPU-hours at the slower of the step and the loader on the cores one GPU gets, from
    :func:`patches.config.recipes.gpu_hours` (the cost model scripts/recipes.py uses)."""
    loader = recipes.CORES_PER_GPU * recipes.LOADER_CLIPS_PER_CORE_S
    return recipes.gpu_hours(flops_per_clip, clips_per_epoch * epochs, tflops, loader)["gpu_hours"]


def main(argv: list[str] | None = None) -> None:
    """Count the FLOPs per clip of VideoMAE's ViT-S/B recipes at the usual grids again, into ``flops_per_clip.json``."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--grids", nargs="+", default=["224/16", "288/16", "216/12", "224/32"])
    p.add_argument("--models", nargs="+", default=["base"])
    args = p.parse_args(argv)
    counts = _read(KNOWN_FLOPS)
    for size in args.models:
        for grid in args.grids:
            for stage, model, mask in (("pretrain", f"pretrain_videomae_{size}_patch16_224", 0.9),
                                       ("finetune", f"vit_{size}_patch16_224", None)):
                key = flops_key(stage, model, grid, mask, 4)
                size_, patch = recipes.parse_grid(grid)
                counts[key] = recipes.flops_per_clip(stage, model, size_, patch, mask, 4)
                print(key, f"{counts[key] / 1e9:.1f} GFLOP", flush=True)
                write_atomically(KNOWN_FLOPS, lambda tmp: tmp.write_text(json.dumps(counts, indent=1, sort_keys=True)
                                                                         + "\n"))


if __name__ == "__main__":
    main()
