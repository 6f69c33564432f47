"""The PATCHES demo on CPU: pre-train on built-in synthetic videos, fine-tune, test, and compare with training
from scratch.

The flags and the run live in :mod:`patches.cli.demo`; ``python run_demo.py --help`` lists them."""
from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.cli.demo import main

if __name__ == "__main__":
    main()
