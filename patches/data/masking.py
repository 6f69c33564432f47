"""Token masks for masked video pre-training, sized from the patch grid.

A generator returns ``(encoder_mask, decoder_mask)``, two bool tensors over the
``grid.num_tokens`` tokens in (t, h, w) order:

* ``encoder_mask``: True where a token is hidden from the encoder.
* ``decoder_mask``: True where the decoder reconstructs pixels (and the loss is
  taken). Without decoder masking it equals ``encoder_mask``; with it, it is a
  subset of the hidden tokens (VideoMAE V2's dual masking).

Every call hides exactly the same number of tokens, and the decoder reconstructs
exactly the same number, so batches stack and the model can gather by index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from patches.grid import GridError, PatchGrid

MASK_TYPES = ("tube", "random")
DECODER_MASK_TYPES = ("none", "run_cell")


@dataclass(frozen=True)
class MaskCounts:
    """How many tokens each mask covers, per sample."""

    num_tokens: int
    num_masked: int
    num_decoded: int

    @property
    def num_visible(self) -> int:
        return self.num_tokens - self.num_masked


def mask_counts(grid: PatchGrid, mask_type: str, mask_ratio: float,
                decoder_mask_type: str = "none", decoder_mask_ratio: float = 0.0) -> MaskCounts:
    """Token counts for these flags; raises :class:`GridError` naming the flag when impossible.

    Counts are floored as in VideoMAE, so a ratio below 1 always leaves a visible token; a ratio too
    small to hide a single token is refused.
    """
    if mask_type not in MASK_TYPES:
        raise GridError(f"--mask_type must be one of {', '.join(MASK_TYPES)}, got {mask_type!r}")
    if decoder_mask_type not in DECODER_MASK_TYPES:
        raise GridError(f"--decoder_mask_type must be one of {', '.join(DECODER_MASK_TYPES)}, "
                        f"got {decoder_mask_type!r}")
    if not 0.0 < mask_ratio < 1.0:
        raise GridError(f"--mask_ratio must be inside (0, 1), got {mask_ratio}")
    if mask_type == "tube":
        per_frame = int(mask_ratio * grid.patches_per_frame)
        pool, masked = grid.patches_per_frame, per_frame * grid.t
    else:
        pool, masked = grid.num_tokens, int(mask_ratio * grid.num_tokens)
        per_frame = masked
    if per_frame == 0:
        raise GridError(f"--mask_ratio {mask_ratio} masks no token of the {pool} in "
                        f"{'each frame' if mask_type == 'tube' else 'the clip'} ({grid.describe()})")
    decoded = masked
    if decoder_mask_type != "none":
        if not 0.0 < decoder_mask_ratio < 1.0:
            raise GridError(f"--decoder_mask_ratio must be inside (0, 1) with --decoder_mask_type "
                            f"{decoder_mask_type}, got {decoder_mask_ratio}")
        decoded = int(round((1.0 - decoder_mask_ratio) * masked))
        if decoded == 0:
            raise GridError(f"--decoder_mask_ratio {decoder_mask_ratio} leaves the decoder no token to "
                            f"reconstruct out of {masked} masked")
    return MaskCounts(grid.num_tokens, masked, decoded)


class MaskGenerator:
    """Callable drawing ``(encoder_mask, decoder_mask)`` for one clip."""

    def __init__(self, grid: PatchGrid, mask_type: str = "tube", mask_ratio: float = 0.9,
                 decoder_mask_type: str = "none", decoder_mask_ratio: float = 0.0,
                 rng: np.random.Generator | None = None):
        self.grid = grid
        self.mask_type = mask_type
        self.decoder_mask_type = decoder_mask_type
        self.counts = mask_counts(grid, mask_type, mask_ratio, decoder_mask_type, decoder_mask_ratio)
        self._rng = rng

    def __repr__(self) -> str:
        c = self.counts
        return (f"MaskGenerator({self.mask_type}, {c.num_masked}/{c.num_tokens} masked, "
                f"{c.num_visible} visible, decoder {self.decoder_mask_type}: {c.num_decoded} reconstructed)")

    def __call__(self, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw from ``rng``, else the generator's own, else one seeded from torch."""
        # Without an rng, each call is seeded from torch, so torch.manual_seed and the
        # DataLoader's per-worker seeding make masks reproducible and different across workers.
        rng = rng or self._rng or np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        enc = self._encoder_mask(rng)
        dec = enc if self.decoder_mask_type == "none" else self._decoder_mask(enc, rng)
        return torch.from_numpy(enc), torch.from_numpy(dec)

    def _encoder_mask(self, rng: np.random.Generator) -> np.ndarray:
        g, c = self.grid, self.counts
        if self.mask_type == "tube":
            per_frame = c.num_masked // g.t
            frame = np.zeros(g.patches_per_frame, dtype=bool)
            frame[rng.permutation(g.patches_per_frame)[:per_frame]] = True
            return np.tile(frame, g.t)
        mask = np.zeros(g.num_tokens, dtype=bool)
        mask[rng.permutation(g.num_tokens)[:c.num_masked]] = True
        return mask

    def _decoder_mask(self, enc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Keep a fixed number of hidden tokens for the decoder, preferring a running-cell pattern.

        The running cell (VideoMAE V2) tiles each frame with 2x2 cells and keeps the same share of
        every cell, the kept positions shifting by one step each temporal slice, so that the decoded
        tokens cover space evenly over time. Intersected with a random encoder mask that pattern does
        not give a fixed count, so the kept hidden tokens are ranked (pattern first, random order
        within) and the first ``num_decoded`` taken.
        """
        g = self.grid
        preferred = running_cell_pattern(g, 1.0 - self.counts.num_decoded / self.counts.num_masked)
        noise = rng.random(g.num_tokens)
        score = np.where(enc, preferred.astype(np.float64) + noise, -1.0)
        keep = np.argsort(-score, kind="stable")[:self.counts.num_decoded]
        dec = np.zeros(g.num_tokens, dtype=bool)
        dec[keep] = True
        return dec


def running_cell_pattern(grid: PatchGrid, drop_ratio: float) -> np.ndarray:
    """Bool [num_tokens]: True where a 2x2 running cell keeps a token for the decoder."""
    cell = 4
    kept_per_cell = min(cell, max(1, int(round((1.0 - drop_ratio) * cell))))
    order = np.array([0, 1, 3, 2])  # walk the cell's corners in a cycle: (0,0) (0,1) (1,1) (1,0)
    ys, xs = np.meshgrid(np.arange(grid.h), np.arange(grid.w), indexing="ij")
    corner = (ys % 2) * 2 + (xs % 2)
    pattern = np.zeros((grid.t, grid.h, grid.w), dtype=bool)
    for t in range(grid.t):
        kept = order[(np.arange(kept_per_cell) + t) % cell]
        pattern[t] = np.isin(corner, kept)
    return pattern.reshape(-1)


def build_mask_generator(args, grid: PatchGrid) -> MaskGenerator:
    """Mask generator from --mask_type/--mask_ratio/--decoder_mask_type/--decoder_mask_ratio."""
    return MaskGenerator(grid, args.mask_type, args.mask_ratio,
                         getattr(args, "decoder_mask_type", "none"),
                         getattr(args, "decoder_mask_ratio", 0.0))


NO_MASK = torch.zeros(0, dtype=torch.bool)


def no_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """A loader's mask generator when the masks are drawn elsewhere (flexible grids: per step, at its grid)."""
    return NO_MASK, NO_MASK
