"""Recipe-rate files (``prepare_videos.py --keep_every K``): source frames 0, K, 2K, ... at 1/K of the source's
rate. Each carries its K in the container's ``comment`` tag, and the loaders read it with the recipe's own
``--sampling_rate`` R as R / K frames apart: the same moments in time as R on the full-rate file."""
from __future__ import annotations

import re
from typing import Any, Mapping

from patches.errors import UsageError

TAG_KEY = "comment"
_TAG = "patches keep_every={}"
_TAG_PATTERN = re.compile(r"patches keep_every=(\d+)")


def keep_every_tag(keep_every: int) -> dict[str, str]:
    """The container metadata a recipe-rate file is written with (none for a full-rate file)."""
    return {TAG_KEY: _TAG.format(keep_every)} if keep_every > 1 else {}


def keep_every_of(metadata: Mapping[str, str]) -> int:
    """K from a container's metadata: 1 unless ``prepare_videos.py --keep_every`` tagged it."""
    found = _TAG_PATTERN.fullmatch(str(metadata.get(TAG_KEY, "")).strip())
    return max(1, int(found.group(1))) if found else 1


def read_keep_every(path: str) -> int:
    """K of the file at ``path``, from its metadata alone (PyAV opens it, decodes nothing); 1 if it has no tag or
    PyAV cannot open it (the decoder then says what is wrong with it)."""
    try:
        import av

        with av.open(path) as container:
            return keep_every_of(container.metadata)
    except Exception:  # noqa: BLE001  (PyAV's errors for a file it cannot open: reading it will name them)
        return 1


def file_sampling_rate(sampling_rate: int, source: Any) -> int:
    """The frames apart in ``source`` (a video reader; its ``keep_every``, 1 when it has none) of the recipe's
    ``--sampling_rate``. A :class:`UsageError` names the file when its K does not divide the rate."""
    keep_every = getattr(source, "keep_every", 1)
    if keep_every == 1:
        return sampling_rate
    if sampling_rate % keep_every:
        raise UsageError(f"{getattr(source, 'path', 'a video')}: prepared with --keep_every {keep_every}, which does "
                         f"not divide --sampling_rate {sampling_rate}; re-prepare it with a K that divides the rate")
    return sampling_rate // keep_every
