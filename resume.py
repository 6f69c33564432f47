"""Exact resume: data order and per-item randomness as functions of (seed, epoch, index), RNG states in
checkpoints, positions inside an epoch, and stopping on SIGTERM/SIGUSR1. (Finding the newest checkpoint that loads
is checkpoint.py's; when to save is the driver's, trainer.Checkpointing.)

The contract: a run killed at any point and restarted with the same command continues from its newest
good checkpoint and ends with the weights an uninterrupted run would have (bit for bit on the CPU with
``--deterministic``), because

* the sampler's order is a pure function of ``(seed, epoch)`` and a resumed epoch skips the batches
  already trained without decoding them (:class:`ResumableSampler`);
* every training item is produced with torch's, numpy's and Python's global RNGs seeded from
  ``(seed, epoch, index)`` (:class:`SeededItems`), so crops, flips, RandAugment, erasing and masks
  do not depend on worker count, process count or what came before;
* the main process's RNG states (dropout, stochastic depth, mixup) are saved per rank and restored.
"""
from __future__ import annotations

import os
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

import utils
from checkpoint_folder import resume_position

# Exit status of a run stopped by SIGTERM/SIGUSR1 after saving checkpoint-latest: EX_TEMPFAIL from
# sysexits.h ("try again later"); the sbatch launchers requeue the job when they see it.
EXIT_REQUEUE = 75
# Exit status after a Ctrl-C (SIGINT): 128 + 2, what shells report for a command stopped by it.
EXIT_CTRL_C = 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


# ---------------------------------------------------------------- data order and per-item seeds

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


# ---------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and Python RNG states as tensors, lists and numbers,
    so that a checkpoint holding them still loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (a collective call under torch.distributed)."""
    mine = rng_state()
    if not utils.is_dist():
        return [mine]
    states: list[Any] = [None] * utils.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def restore_rng_states(ckpt: dict[str, Any]) -> None:
    """Set this rank's RNGs from a checkpoint's ``rng_states`` (saved by the same number of processes)."""
    states = ckpt.get("rng_states")
    if not states:
        return
    if len(states) != utils.get_world_size():
        print(f"warning: the checkpoint holds RNG states of {len(states)} processes, this run has "
              f"{utils.get_world_size()}: dropout and mixup draws will differ from an uninterrupted run")
        return
    set_rng_state(states[utils.get_rank()])


def set_deterministic(enabled: bool) -> None:
    """``--deterministic``: deterministic kernels where torch has them (a warning names any op without one)."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible matmuls
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def position_fields(next_epoch: int, next_batch: int, batches_per_epoch: int, update_freq: int = 1
                    ) -> dict[str, Any]:
    """The checkpoint entries that locate it in training, and every rank's RNG states (a collective call)."""
    return {"next_epoch": next_epoch, "next_batch": next_batch, "batches_per_epoch": batches_per_epoch,
            "global_step": (next_epoch * batches_per_epoch + next_batch) // update_freq,
            "world_size": utils.get_world_size(), "rng_states": gather_rng_states()}


def start_position(path: Path, ckpt: dict[str, Any], batches_per_epoch: int) -> tuple[int, int]:
    """Where a resumed run starts: the checkpoint's position, or the start of its epoch when the epoch's
    batches changed (another batch size or process count) so that the batch index means something else."""
    epoch, batch = resume_position(ckpt)
    saved = ckpt.get("batches_per_epoch", batches_per_epoch)
    if batch and saved != batches_per_epoch:
        print(f"warning: {path} was saved {batch} of {saved} batches into epoch {epoch}, but this run has "
              f"{batches_per_epoch} batches per epoch; epoch {epoch} starts over")
        batch = 0
    if batch >= batches_per_epoch and "epoch_record" not in ckpt:  # (with one: trained, not yet validated)
        epoch, batch = epoch + 1, 0
    return epoch, batch


# ---------------------------------------------------------------- stopping on signals

class Interrupted(Exception):
    """The run stopped on a signal during ``phase``, after saving ``path`` (None: nothing needed saving)."""

    def __init__(self, signum: int, path: Path | None, phase: str = "training") -> None:
        saved = f"after saving {path}" if path is not None else "with nothing new to save"
        during = "" if phase == "training" else f" during {phase}"
        super().__init__(f"stopped by {signal.Signals(signum).name}{during} {saved}")
        self.signum, self.path, self.phase = signum, path, phase

    @property
    def exit_status(self) -> int:
        return EXIT_CTRL_C if self.signum == signal.SIGINT else EXIT_REQUEUE


class StopRequested(Exception):
    """A stop signal came in between two batches of a phase that has nothing of its own to save (see
    :class:`StopChecked`); the driver turns it into :class:`Interrupted` after saving what it holds."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Record SIGTERM, SIGUSR1 and a first Ctrl-C (SIGINT) instead of dying; :meth:`agreed` tells every rank
    whether any rank got one. A second Ctrl-C stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.received:
                raise KeyboardInterrupt
            # os.write: print could re-enter a buffered write that the signal interrupted
            os.write(2, b"\nCtrl-C: stopping at the next step boundary (training saves checkpoint-latest first); "
                        b"press Ctrl-C again to stop at once, losing what was not saved\n")
        self.received = self.received or signum

    def agreed(self, device: torch.device) -> int:
        """The signal any rank received (0 if none): all ranks stop at the same step."""
        if not utils.is_dist():
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


class StopChecked:
    """``loader``'s batches, with a check for a stop signal before each (:class:`StopRequested` when any rank got
    one): evaluation and testing stop as promptly as training does.

    Evaluation shards may differ by a batch between ranks: every rank checks as often as the longest shard has
    batches, so that the collective checks pair up. Other attributes are the loader's."""

    def __init__(self, loader: Any, stop: StopSignals, device: torch.device) -> None:
        self.loader, self.stop, self.device = loader, stop, device

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        own = len(self.loader)
        checks = own
        if utils.is_dist():
            count = torch.tensor([own], dtype=torch.int64, device=self.device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            checks = int(count.item())
        batches = iter(self.loader)
        for _ in range(checks):
            signum = self.stop.agreed(self.device)
            if signum:
                raise StopRequested(signum)
            batch = next(batches, _END)  # (a loader may yield fewer: batches of unreadable videos only)
            if batch is not _END:
                yield batch


_END = object()
