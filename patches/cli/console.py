"""The console scripts ``pip install`` makes (see ``[project.scripts]`` in pyproject.toml) whose entry point
returns a result: pip's wrapper passes the return value to ``sys.exit``, so a returned list, dict or path would
be printed and read as exit status 1. Each function here runs its entry point and returns nothing instead."""
from __future__ import annotations

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)


def sweep() -> None:
    """``patches-sweep``: scripts/patch_sweep.py."""
    from patches.sweep.patch_sweep import main
    main()


def export_hf() -> None:
    """``patches-export-hf``: scripts/export_hf.py."""
    from patches.cli.export_hf import main
    main()


def visualise() -> None:
    """``patches-vis``: run_videomae_vis.py."""
    from patches.cli.visualise import main
    main()
