"""Masked-autoencoder pre-training on videos (VideoMAE's recipe) at any patch grid.

The flags and the run live in :mod:`patches.cli.pretrain`; ``python run_mae_pretraining.py --help`` lists them."""
from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.cli.pretrain import get_args_parser, main

if __name__ == "__main__":
    main(get_args_parser().parse_args())
