"""A patch sweep's table, plot and JSON, from its output folder.

The code lives in :mod:`patches.sweep.report`; ``python scripts/sweep_report.py --help`` lists the flags."""
from patches.sweep.report import main

if __name__ == "__main__":
    main()
