"""The patch sweep: pre-train and evaluate at several patch grids, then the table, plot and JSON.

The code lives in :mod:`patches.sweep.patch_sweep`; ``python scripts/patch_sweep.py --help`` lists the flags."""
from patches.sweep.patch_sweep import main

if __name__ == "__main__":
    main()
