"""Classify video files with a fine-tuned checkpoint: the top-k labels with their probabilities.

The flags and the run live in :mod:`patches.cli.inference`; ``python run_inference.py --help`` lists them."""
from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.cli.inference import get_args_parser, main

if __name__ == "__main__":
    main(get_args_parser().parse_args())
