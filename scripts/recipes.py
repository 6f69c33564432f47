"""VideoMAE's published recipes: their effective values, their flags for any process count and grid.

The code lives in :mod:`patches.config.recipes`; ``python scripts/recipes.py --help`` lists the flags."""
from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.config.recipes import main

if __name__ == "__main__":
    main()
