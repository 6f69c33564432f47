"""Where a list file's relative paths point: ``data_root`` when given; else the working directory when the path
exists there (as VideoMAE opens them), else the list file's folder. Absolute paths stay."""
from __future__ import annotations

import os
import re

_INT = re.compile(r"[+-]?[0-9]+")


class _ListFolder(str):
    """The folder of a list file read without ``data_root``: a relative path that exists under the working
    directory is taken from there first (see :func:`patches.data.lists.parse_list_file`)."""


def resolve(path: str, base: str) -> str:
    """``path`` joined to ``base`` (a folder; :func:`list_base`'s tries the working directory first)."""
    if os.path.isabs(path):
        return path
    if isinstance(base, _ListFolder):
        fields = path.rsplit(None, 1)  # 'folder num_frames' (a frame folder's line) names the folder first
        folder = fields[0] if len(fields) == 2 and _INT.fullmatch(fields[1]) else path
        if os.path.exists(path) or os.path.exists(folder):
            return os.path.abspath(path)
    return os.path.join(base, path)


def list_base(path: str, data_root: str | os.PathLike | None) -> str:
    """What the relative paths of list file ``path`` are relative to."""
    return os.fspath(data_root) if data_root is not None else _ListFolder(os.path.dirname(os.path.abspath(path)))
