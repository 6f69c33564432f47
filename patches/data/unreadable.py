"""Unreadable videos in a dataset: an item whose video cannot be read is replaced by another
(:class:`SkipsUnreadableVideos`), and the skipped files travel with the batches through the DataLoader's workers
(:class:`CollateWithBad`) to :class:`patches.data.health.BadVideoTracker`, which counts and reports them."""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
from torch.utils.data import default_collate

from patches.data.video_reader import VideoDecodeError


class UnreadableDataError(VideoDecodeError):
    """No readable video was found for an item, even after trying replacements."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class UnreadableVideoWarning(UserWarning):
    """A video was skipped (and replaced by another) because it cannot be read."""


MAX_REPLACEMENTS = 10


class SkipsUnreadableVideos:
    """Mixin for datasets: an item whose video cannot be read is replaced by another item.

    The replacement index comes from the item's own RNG (so runs stay reproducible), at most
    :attr:`max_replacements` times in a row; then :class:`UnreadableDataError` names the files tried.
    By default every skipped file is reported with an :class:`UnreadableVideoWarning` (shown once per
    file and process). With :attr:`report_bad` set, items instead become ``(item, bad)`` where ``bad``
    lists ``(path, reason)`` of the skipped files: batch those with :class:`CollateWithBad`, which
    carries the list through DataLoader worker processes to the main process. Without
    :attr:`replace_unreadable` (evaluation) nothing is replaced: such an item is ``(None, bad)``, which
    :class:`CollateWithBad` leaves out of its batch.
    """

    report_bad: bool = False
    replace_unreadable: bool = True
    max_replacements: int = MAX_REPLACEMENTS

    def _robust_item(self, index: int, load: Callable[[int], Any],
                     replacement: Callable[[int], int | None]) -> Any:
        bad: list[tuple[str, str]] = []
        for _ in range(self.max_replacements + 1):
            try:
                item = load(index)
            except VideoDecodeError as e:
                bad.append((str(e.path), e.reason))
                next_index = replacement(index) if self.replace_unreadable else None
                if next_index is None:
                    break
                index = next_index
                continue
            if self.report_bad:
                return item, tuple(bad)
            for path, reason in bad:
                # one fixed location: the warnings registry then shows each file's message once per process
                warnings.warn(f"skipped unreadable video {path}: {reason}", UnreadableVideoWarning, stacklevel=2)
            return item
        if self.report_bad and not self.replace_unreadable:
            return None, tuple(bad)
        tried = "; ".join(f"{path} ({reason})" for path, reason in bad[:5])
        raise UnreadableDataError(f"no readable video for this item after trying {len(bad)}: {tried}; "
                                  f"check the data with --check_data")


def other_index(rng: np.random.Generator, index: int, size: int) -> int | None:
    """A uniformly drawn index in ``[0, size)`` other than ``index``; None when there is no other."""
    if size < 2:
        return None
    j = int(rng.integers(size - 1))
    return j + (j >= index)


class CollateWithBad:
    """Collate ``(item, bad)`` pairs of a dataset with ``report_bad`` set into ``(batch, bad)``.

    ``batch`` is what ``inner`` makes of the items, ``bad`` the concatenated ``(path, reason)`` list.
    Items that are None (unreadable, not replaced) are left out; a batch of nothing else is None.
    A plain class rather than a closure, so that it pickles into spawned worker processes.
    """

    def __init__(self, inner: Callable[[list], Any] = default_collate) -> None:
        self.inner = inner

    def __call__(self, batch: list) -> tuple[Any, list[tuple[str, str]]]:
        items = [item for item, _ in batch if item is not None]
        return self.inner(items) if items else None, [b for _, bad in batch for b in bad]


def unreadable_data_message(error: BaseException) -> str:
    """The original message of an :class:`UnreadableDataError`, also when a DataLoader worker re-raised it (its
    text then holds the worker's traceback)."""
    text = str(error)
    marker = "UnreadableDataError: "
    return text.rsplit(marker, 1)[-1].strip() if marker in text else text
