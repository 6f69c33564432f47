"""Files that appear whole or not at all: written under a temporary name beside the target, then renamed
(:func:`write_atomically`), and JSON-lines logs appended and pruned that way."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from patches.utils.distributed import is_main_process


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.{name}.{pid}.tmp`` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(temporary path)``, then rename it over ``path``: a kill leaves the old file or none, never half of
    one (at worst a stray ``.tmp``; checkpoint_folder.remove_stale_temp_files clears those of checkpoints and
    features)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``log.txt`` (main process only)."""
    if not is_main_process():
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def drop_jsonl_records(path: str | Path, drop: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite the JSON-lines file ``path`` (atomically) without the records ``drop`` selects; returns how many."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not (line.strip() and _parses_to_dict(line) and drop(json.loads(line)))]
    if len(kept) < len(lines):
        write_atomically(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))
    return len(lines) - len(kept)


def _parses_to_dict(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
