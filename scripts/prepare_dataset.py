"""A dataset as downloaded (K400, SSv2, UCF101, HMDB51) to the folder the launchers read: prepared videos,
train.csv, val.csv, test.csv and classes.txt.

The flags live in :mod:`patches.cli.prepare_dataset`, the work in :mod:`patches.data.dataset_layouts`;
``python scripts/prepare_dataset.py --help`` lists the flags."""
import sys

from patches.cli.prepare_dataset import main

if __name__ == "__main__":
    sys.exit(main())
