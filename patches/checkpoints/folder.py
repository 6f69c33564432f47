"""Choosing a checkpoint in an output folder, and keeping the folder tidy.

Choosing: :func:`choose_resume_checkpoint` (``--resume``, else with ``--auto_resume`` :func:`find_checkpoint`,
the newest that loads), :func:`best_checkpoint_file` (``checkpoint-best.pth``), :func:`latest_checkpoint_file`
(``checkpoint-latest``) and :func:`checkpoint_to_evaluate` (``--eval``'s: the given one, else the best, else
the newest epoch's). Upkeep: linking ``checkpoint-latest``, pruning old epochs, and removing what interrupted
saves left behind.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch.distributed as dist

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.file_format import BEST, DEEPSPEED_META, LATEST, TEMP_FILE
from patches.checkpoints.model_state import check_checkpoint_grid
from patches.checkpoints.reading import read_pth_checkpoint
from patches.checkpoints.resume_state import resume_position
from patches.grid import PatchGrid
from patches.utils.distributed import is_dist, is_main_process, process_alive
from patches.utils.files import temp_path


class CheckpointName(NamedTuple):
    """A parsed ``checkpoint-N`` name: the epoch N and what follows it (``""`` for a DeepSpeed folder,
    ``".pth"``, or the ``".tmp"``/``".old"`` of an interrupted folder swap)."""

    epoch: int
    suffix: str


def parse_checkpoint_name(name: str) -> CheckpointName | None:
    """N and the rest for ``checkpoint-N[.suffix...]``; None for any other name (``checkpoint-latest`` too)."""
    stem, dot, rest = name.partition(".")
    tail = stem.split("-", 1)[1] if stem.startswith("checkpoint-") else ""
    return CheckpointName(int(tail), dot + rest) if tail.isdigit() else None


@dataclass(frozen=True)
class FoundCheckpoint:
    """A checkpoint chosen to resume from: its file (``checkpoint.pth`` inside a DeepSpeed folder) and contents."""

    path: Path
    state: dict[str, Any]


def _candidates(output_dir: Path, folders: bool) -> list[tuple[Path, tuple[int, int] | None]]:
    """Checkpoints in ``output_dir`` with their position when the name tells it (None: read the file)."""
    found: list[tuple[Path, tuple[int, int] | None]] = []
    if folders:
        for d in output_dir.glob("checkpoint-*"):
            if not d.is_dir():
                continue
            name = parse_checkpoint_name(d.name)
            if name is not None or d.name.split(".", 1)[0] == LATEST:
                found.append((d / DEEPSPEED_META, None if name is None else (name.epoch + 1, 0)))
    else:
        latest = output_dir / f"{LATEST}.pth"
        if latest.is_file():
            found.append((latest, None))
        found += [(p, (n + 1, 0)) for n, p in epoch_checkpoint_files(output_dir)]
    return found


def epoch_checkpoint_files(output_dir: str | Path, folders: bool = False) -> list[tuple[int, Path]]:
    """``checkpoint-N.pth`` files, or with ``folders`` the ``checkpoint-N/checkpoint.pth`` of complete
    DeepSpeed folders, sorted by epoch."""
    found = []
    if not folders:
        for p in Path(output_dir).glob("checkpoint-*.pth"):
            if (name := parse_checkpoint_name(p.name)) is not None and name.suffix == ".pth":
                found.append((name.epoch, p))
        return sorted(found)
    for meta in Path(output_dir).glob(f"checkpoint-*/{DEEPSPEED_META}"):
        if (name := parse_checkpoint_name(meta.parent.name)) is not None and not name.suffix:
            found.append((name.epoch, meta))
    return sorted(found)


def _try_load(path: Path, folders: bool, failures: list[str]) -> dict[str, Any] | None:
    """``path``'s contents, or None with a warning, and why added to ``failures``."""
    if folders and not path.exists():
        failure = f"{path.parent}: it has no {path.name} (a save that did not finish)"
    else:
        try:
            return read_pth_checkpoint(path)
        except CheckpointError as e:
            failure = f"{path}: {e}"
    print(f"warning: skipping {failure}")
    failures.append(failure)
    return None


def find_checkpoint(output_dir: str | Path, folders: bool = False) -> FoundCheckpoint | None:
    """The checkpoint furthest into training that loads, and its contents; None when there is no checkpoint.

    ``checkpoint-latest`` is preferred unless an epoch checkpoint is further on; a file that does not
    load (truncated, corrupt, failing its checksum) is skipped with a warning naming it, and the fall-back is
    said. Checkpoints that exist but of which none loads raise :class:`CheckpointError` listing each file and
    why, rather than starting over on top of the old run. With ``folders`` the candidates are DeepSpeed
    checkpoint folders, judged by the ``checkpoint.pth`` written last into each.
    """
    unknown, known = [], []
    for path, pos in _candidates(Path(output_dir), folders):
        (unknown if pos is None else known).append((path, pos))
    best: tuple[tuple[int, int], Path, dict[str, Any]] | None = None
    failures: list[str] = []
    for path, _ in unknown:
        ckpt = _try_load(path, folders, failures)
        if ckpt is not None and (best is None or resume_position(ckpt) > best[0]):
            best = (resume_position(ckpt), path, ckpt)
    for path, pos in sorted(known, key=lambda c: c[1], reverse=True):  # type: ignore[arg-type, return-value]
        if best is not None and pos <= best[0]:
            break
        ckpt = _try_load(path, folders, failures)
        if ckpt is not None:
            best = (resume_position(ckpt), path, ckpt)
            break
    if best is None and failures:
        raise CheckpointError(
            f"--auto_resume: none of the {len(failures)} checkpoints in {output_dir} loads:\n  "
            + "\n  ".join(failures) + "\nTo start afresh, pass --no_auto_resume (the files stay, a new run "
            "overwrites them) or choose another --output_dir; to resume, restore a good checkpoint there")
    if best is not None and failures:
        print(f"Auto-resume: falling back to {best[1]}, the newest checkpoint that loads")
    return None if best is None else FoundCheckpoint(best[1], best[2])


def choose_resume_checkpoint(resume_path: str, auto_resume: bool, output_dir: str | Path, grid: PatchGrid,
                             folders: bool = False, other_grid_hint: str = "") -> FoundCheckpoint | None:
    """The checkpoint to resume from: ``--resume`` (``resume_path``, a file or a DeepSpeed folder) if given,
    else (``--auto_resume``) the newest good checkpoint in ``--output_dir``; None when there is none.

    Rank 0 chooses and tells the others, so all ranks load the same file. Raises :class:`CheckpointError`
    when none loads, or the chosen one does not, or it was made at another patch grid than ``grid``
    (``other_grid_hint`` ends that message).
    """
    choice: list[Any] = [None]
    if is_main_process():
        if resume_path:
            path = Path(resume_path)
            choice[0] = str(path / DEEPSPEED_META if path.is_dir() else path)
        elif auto_resume:
            try:
                found = find_checkpoint(output_dir, folders)
            except CheckpointError as e:
                found, choice[0] = None, f"error: {e}"
            choice[0] = str(found.path) if found else choice[0]
    if is_dist():
        dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    if choice[0].startswith("error: "):
        raise CheckpointError(choice[0].removeprefix("error: "))
    ckpt = read_pth_checkpoint(choice[0])
    fresh = "leave out --resume" if resume_path else "use another --output_dir or --no_auto_resume"
    check_checkpoint_grid(ckpt, grid, choice[0], f"A resumed run keeps its grid: pass the file's values, "
                          f"or {fresh} to start afresh.{other_grid_hint}")
    return FoundCheckpoint(Path(choice[0]), ckpt)




def best_checkpoint_file(output_dir: str | Path) -> Path | None:
    """``checkpoint-best.pth`` (the best validation accuracy of a fine-tuning run), or None when absent."""
    path = Path(output_dir) / BEST
    return path if path.is_file() else None


def latest_checkpoint_file(output_dir: str | Path, folders: bool = False) -> Path | None:
    """The file of ``checkpoint-latest`` (``checkpoint-latest.pth``, or with ``folders`` the DeepSpeed folder's
    ``checkpoint.pth``), or None when absent. Not checked: :func:`find_checkpoint` finds the newest that loads."""
    path = Path(output_dir) / (f"{LATEST}/{DEEPSPEED_META}" if folders else f"{LATEST}.pth")
    return path if path.is_file() else None


def checkpoint_to_evaluate(resume_path: str, output_dir: str | Path, folders: bool = False) -> Path | None:
    """What ``--eval`` evaluates: ``resume_path`` (a DeepSpeed folder: its ``checkpoint.pth``), else
    ``checkpoint-best.pth``, else the newest epoch checkpoint; None when there is none."""
    if resume_path:
        return Path(resume_path) / DEEPSPEED_META if Path(resume_path).is_dir() else Path(resume_path)
    best = best_checkpoint_file(output_dir)
    if best is not None:
        return best
    found = epoch_checkpoint_files(output_dir, folders=folders)
    return found[-1][1] if found else None


# ---------------------------------------------------------------- links, pruning, leftovers

def link_atomically(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link to ``src`` (a copy where links are impossible), replacing it atomically."""
    tmp = temp_path(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)


def prune_epoch_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``checkpoint-N`` files or folders; best and latest are never touched."""
    if keep <= 0:
        return []
    import shutil
    out = Path(output_dir)
    numbered = sorted((name.epoch, p) for p in out.glob("checkpoint-*")
                      if (name := parse_checkpoint_name(p.name)) is not None
                      and (name.suffix == ".pth" or (not name.suffix and p.is_dir())))
    removed = [p for _, p in numbered[:-keep]]
    for p in removed:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed


def remove_stale_temp_files(output_dir: str | Path) -> tuple[int, int]:
    """Remove the temporary files our writers left in ``output_dir`` (and in its DeepSpeed ``checkpoint-*``
    folders) when killed: ``.{name}.{pid}.tmp`` of a checkpoint or safetensors file whose writing process
    is gone (and those of extract_features.py's shards). Returns (files removed, bytes freed).

    Files of a live process are kept, and so is everything else, including DeepSpeed's ``checkpoint-*.tmp``
    and ``.old`` folders: they may hold the only complete checkpoint, which auto-resume accepts. The pid is
    checked on this machine: call it from the process that writes the checkpoints.
    """
    out = Path(output_dir)
    if not out.is_dir():
        return 0, 0
    folders = [out, *(d for d in out.glob("checkpoint-*") if d.is_dir() and not d.is_symlink())]
    count = freed = 0
    for folder in folders:
        for p in folder.iterdir():
            match = TEMP_FILE.match(p.name)
            if match is None or process_alive(int(match.group(2))):
                continue
            try:
                info = p.lstat()
                if not stat.S_ISREG(info.st_mode):  # we only ever write plain files
                    continue
                p.unlink()
            except FileNotFoundError:
                continue
            count, freed = count + 1, freed + info.st_size
    return count, freed
