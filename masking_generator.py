"""VideoMAE's ``masking_generator``: tube and random token masks sized from the grid, over
:mod:`patches.data.masking`."""
from __future__ import annotations

from patches.data.masking import (MASK_TYPES, DECODER_MASK_TYPES, MaskCounts, mask_counts, MaskGenerator,
                                  running_cell_pattern, build_mask_generator, NO_MASK, no_masks)
