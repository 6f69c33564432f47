"""See what a pre-trained model reconstructs: original frames, the masked input and the reconstruction.

The flags and the run live in :mod:`patches.cli.visualise`; ``python run_videomae_vis.py --help`` lists them."""
from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.cli.visualise import main

if __name__ == "__main__":
    main()
