"""Step time, clips/s, FLOPs and peak memory of training configurations, each in its own process.

The code lives in :mod:`patches.perf.benchmark`; ``python scripts/benchmark.py --help`` lists the flags."""
from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.perf.benchmark import main

if __name__ == "__main__":
    main()
