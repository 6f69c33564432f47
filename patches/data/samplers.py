"""The data order and per-item seeds of exact resume: a training order that is a pure function of ``(seed,
epoch)`` and resumes mid-epoch (:class:`ResumableSampler`), items computed from ``(seed, epoch, index)`` alone
(:class:`SeededItems`), a step's place for losses that draw at random (:class:`StepPosition`), and evaluation
shards without padding (:class:`ShardSampler`)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def _entropy(*values: int) -> list[int]:
    return [int(v) % 2 ** 63 for v in values]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index`` in ``epoch``: a hash of the three, so nearby triples give unrelated streams."""
    words = np.random.SeedSequence(_entropy(seed, epoch, index)).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@dataclass(frozen=True)
class StepPosition:
    """Where a training step is: local batch ``batch`` of ``epoch``, the same on every process. Randomness drawn
    from :meth:`rng` is a function of the position alone, so it repeats exactly after a resume."""

    epoch: int
    batch: int

    def rng(self, seed: int, *more: int) -> np.random.Generator:
        """A generator seeded from ``(seed, epoch, batch, *more)`` alone."""
        return np.random.default_rng(_entropy(seed, self.epoch, self.batch, *more))


class ResumableSampler(Sampler[tuple[int, int]]):
    """Training order as a pure function of ``(seed, epoch)``, sharded over processes, resumable mid-epoch.

    Each epoch permutes all items with a generator seeded from ``(seed, epoch)``. Global batch ``b``
    is items ``[b * B * W, (b + 1) * B * W)`` of that permutation (``B`` items per process, ``W``
    processes) and process ``r`` takes the ``r``-th block of ``B``; so one process with batch
    ``B * W`` sees exactly the same global batches. The tail that does not fill a global batch is
    dropped, and the batch count is rounded down to a multiple of ``batches_multiple`` (gradient
    accumulation). Keys are ``(epoch, index)`` pairs for :class:`SeededItems`.
    """

    def __init__(self, num_items: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, batches_multiple: int = 1) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_items, self.batch_size = num_items, batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        full = num_items // (batch_size * num_replicas)
        self.batches_per_epoch = full - full % max(1, batches_multiple)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate ``epoch`` from local batch ``start_batch`` on (the batches before it are skipped unread)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside the epoch's {self.batches_per_epoch} batches")
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of all item indices."""
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng(_entropy(self.seed, epoch)).permutation(self.num_items)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order(self.epoch)
        per_global = self.batch_size * self.num_replicas
        for b in range(self.start_batch, self.batches_per_epoch):
            first = b * per_global + self.rank * self.batch_size
            for index in order[first:first + self.batch_size]:
                yield self.epoch, int(index)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class SeededItems(Dataset):
    """``dataset[index]`` computed with the global RNGs seeded from ``(seed, epoch, index)``, restored after.

    The wrapped datasets draw their clip positions, crops, flips, augmentations and masks from torch's
    RNG (and the transforms from Python's ``random``); seeding all three per item makes the item a
    function of its key alone, whichever process or DataLoader worker computes it.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = item_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also queue a lazy CUDA/XPU/MTIA seeding, each
            # recording a stack trace (~0.6 ms per item), for generators the data pipeline never uses.
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def __repr__(self) -> str:
        return f"SeededItems({self.dataset!r}, seed={self.seed})"


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding: process ``r`` of ``W`` takes items ``r, r + W, ...``.

    Unlike DistributedSampler nothing is repeated to even out the shards, so sums over processes
    count every item exactly once.
    """

    def __init__(self, num_items: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = range(rank, num_items, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
