"""Export a PATCHES checkpoint as a Hugging Face transformers VideoMAE folder.

The code lives in :mod:`patches.cli.export_hf`; ``python scripts/export_hf.py --help`` lists the flags."""
from patches.cli.export_hf import main

if __name__ == "__main__":
    main()
