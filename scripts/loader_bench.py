"""The data loader's clips per second, against a per-frame baseline, on generated or prepared videos.

The code lives in :mod:`patches.perf.loader_bench_cli`; ``python scripts/loader_bench.py --help`` lists the flags."""
from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.perf.loader_bench_cli import main

if __name__ == "__main__":
    main()
