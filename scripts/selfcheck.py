"""The self-check for a new machine (a GPU node first): the training paths that only run there, then step timings.

The code lives in :mod:`patches.perf.selfcheck`; ``python scripts/selfcheck.py --help`` lists the flags."""
import sys

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.perf.selfcheck import main

if __name__ == "__main__":
    sys.exit(main())
