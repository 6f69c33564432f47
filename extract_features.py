"""Per-video features from a trained encoder: pooled features, and optionally the token map.

The flags and the run live in :mod:`patches.cli.extract_features`; ``python extract_features.py --help`` lists them."""
from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.cli.extract_features import get_args_parser, main

if __name__ == "__main__":
    main(get_args_parser().parse_args())
