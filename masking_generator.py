"""VideoMAE's ``masking_generator``: tube and random token masks sized from the grid, over
:mod:`patches.data.masking`."""
from __future__ import annotations

from patches.data.masking import (DECODER_MASK_TYPES, MASK_TYPES, NO_MASK, MaskCounts, MaskGenerator,
                                  build_mask_generator, mask_counts, no_masks, running_cell_pattern)
