"""Shared fixtures. ``demo_root`` is used across test files: keep its signature stable."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.data.demo import make_demo_dataset

# --attn_impl auto's cache of timed choices: one per test session (and its subprocesses), not the user's.
os.environ.setdefault("PATCHES_CACHE_DIR", tempfile.mkdtemp(prefix="patches-cache-"))

@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset (16/8/8 clips of 32 frames at 64x64, no unlabelled pool) made once per test session.

    Holds ``train.csv``, ``val.csv``, ``test.csv`` (paths relative to the root), ``classes.txt``
    and ``videos/``; its parameters are in ``.complete`` (JSON). Treat it as read-only.
    """
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0, num_train=16, num_val=8, num_test=8, num_unlabeled=0,
                             num_frames=32, size=(64, 64), verbose=False)["root"]
