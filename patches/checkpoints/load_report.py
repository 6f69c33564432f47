"""How :func:`finetune_weights.load_finetune_weights` reports what it did with every tensor: a table with a row per
category (loaded, resized, missing, unexpected, dropped, rebuilt) and tensor names listed compactly."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from patches.grid import PatchGrid


def format_shape(shape: Any) -> str:
    """``(2, 3, 4)`` -> ``"2x3x4"``."""
    return "x".join(str(s) for s in shape)


def _fmt_indices(idx: list[int]) -> str:
    if len(idx) == 1:
        return str(idx[0])
    if idx == list(range(idx[0], idx[-1] + 1)):
        return f"{{{idx[0]}..{idx[-1]}}}"
    return "{" + ",".join(map(str, idx)) + "}"


def _merge_weight_bias(names: list[str]) -> list[str]:
    """``x.weight`` + ``x.bias`` -> ``x.{weight,bias}``, order kept."""
    present = set(names)
    out = []
    for n in names:
        stem, _, last = n.rpartition(".")
        if last == "weight" and f"{stem}.bias" in present:
            out.append(f"{stem}.{{weight,bias}}")
        elif last == "bias" and f"{stem}.weight" in present:
            continue
        else:
            out.append(n)
    return out


_BLOCK_RE = re.compile(r"^(.*?blocks)\.(\d+)\.(.+)$")


def compact_names(names: list[str]) -> list[str]:
    """Short listing: ``blocks.N.x`` over many N becomes ``blocks.{0..11}.x`` (or ``.*`` for whole blocks)."""
    matches = {n: _BLOCK_RE.match(n) for n in names}
    per_rest: dict[tuple[str, str], set[int]] = {}
    for n, m in matches.items():
        if m:
            per_rest.setdefault((m.group(1), m.group(3)), set()).add(int(m.group(2)))
    # Rests sharing a stem and the same set of blocks are listed together, where the first appears.
    groups: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for (stem, rest), idx in per_rest.items():
        groups.setdefault((stem, tuple(sorted(idx))), []).append(rest)
    plain = [n for n in names if not matches[n]]
    merged = set(_merge_weight_bias(plain))
    out: list[str] = []
    emitted: set[tuple[str, tuple[int, ...]]] = set()
    for n in names:
        m = matches[n]
        if m is None:
            stem, _, last = n.rpartition(".")
            if n in merged:
                out.append(n)
            elif last == "weight":
                out.append(f"{stem}.{{weight,bias}}")
            continue
        gkey = (m.group(1), tuple(sorted(per_rest[(m.group(1), m.group(3))])))
        if gkey in emitted:
            continue
        emitted.add(gkey)
        rests, idx = groups[gkey], _fmt_indices(list(gkey[1]))
        if len(rests) > 3:
            out.append(f"{gkey[0]}.{idx}.* ({len(rests)} each)")
        else:
            out.extend(f"{gkey[0]}.{idx}.{r}" for r in _merge_weight_bias(rests))
    return out


def split_entry(entry: str) -> tuple[str, str]:
    """``"name (detail)"`` -> (name, detail)."""
    if entry.endswith(")") and " (" in entry:
        name, detail = entry.split(" (", 1)
        return name, detail[:-1]
    return entry, ""


def _compact_entries(entries: list[str]) -> list[str]:
    """Group ``name (detail)`` entries by detail: ``[detail] name, name, ...;`` with the names compacted."""
    by_detail: dict[str, list[str]] = {}
    for e in entries:
        name, detail = split_entry(e)
        by_detail.setdefault(detail, []).append(name)
    out: list[str] = []
    for detail, names in by_detail.items():
        short = compact_names(names)
        if out:
            out[-1] += ";"
        out.extend([f"[{detail}] {short[0]}" if detail else short[0], *short[1:]])
    return out


def _describe(grid: PatchGrid) -> str:
    h, w = grid.input_size
    return (f"{grid.num_frames} frames x {h}x{w} px, tubelet {grid.tubelet_size}, patch {grid.patch_size} -> "
            f"{grid.t}x{grid.h}x{grid.w} = {grid.num_tokens} tokens ({grid.patches_per_frame} per frame)")


@dataclass
class LoadReport:
    """What :func:`load_finetune_weights` did with every tensor.

    ``loaded``: copied unchanged; ``resized``: loaded after resampling (``"name (old -> new)"``);
    ``missing``: model tensors the checkpoint did not provide (left at their initialisation);
    ``unexpected``: checkpoint tensors with no counterpart in the model; ``dropped``: checkpoint tensors
    discarded on purpose (``"name (why)"``); ``rebuilt``: model tensors set from the model's own grid
    instead of the checkpoint (``"name (how)"``). ``notes`` holds warnings worth reading. ``trained_grids``: the
    grids a flexible-grid pre-training recorded; ``pos_reference``: the checkpoint's '3d' table reference, applied.
    """

    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    source_grid: PatchGrid | None = None
    grid_note: str = ""
    path: str = ""
    model_grid: PatchGrid | None = None
    notes: list[str] = field(default_factory=list)
    trained_grids: list[PatchGrid] = field(default_factory=list)
    pos_reference: list[int] | None = None

    CATEGORIES: ClassVar[tuple[str, ...]] = ("loaded", "resized", "missing", "unexpected", "dropped", "rebuilt")

    def counts(self) -> dict[str, int]:
        return {c: len(getattr(self, c)) for c in self.CATEGORIES}

    def table(self, width: int = 110) -> str:
        """One aligned table: a row per category with its count and (compacted) tensor names."""
        lines = [f"--finetune {self.path}"]
        if self.source_grid is not None:
            lines.append(f"  checkpoint grid: {_describe(self.source_grid)}")
        if self.grid_note:
            lines.append(f"                   ({self.grid_note})")
        if self.trained_grids:
            lines.append(f"  trained on:      grids {', '.join(g.spec for g in self.trained_grids)} (flexible)"
                         + (f"; loaded at {self.model_grid.spec}" if self.model_grid is not None else ""))
        if self.model_grid is not None:
            lines.append(f"  model grid:      {_describe(self.model_grid)}")
        name_w = max(len(c) for c in self.CATEGORIES)
        count_w = max(5, *(len(str(n)) for n in self.counts().values()))
        indent = " " * (2 + name_w + 2 + count_w + 2)
        lines.append(f"  {'category':<{name_w}}  {'count':>{count_w}}  tensors")
        for cat in self.CATEGORIES:
            entries = getattr(self, cat)
            if cat == "dropped":
                items = _compact_entries(entries)
            elif cat in ("resized", "rebuilt"):
                items = list(entries)  # few, and each has its own detail
            else:
                items = compact_names(entries)
            items = items or ["-"]
            current = f"  {cat:<{name_w}}  {len(entries):>{count_w}}  "
            fresh = True
            for i, item in enumerate(items):
                piece = item if item.endswith(";") or i == len(items) - 1 else item + ","
                if not fresh and len(current) + 1 + len(piece) > width:
                    lines.append(current)
                    current, fresh = indent, True
                current += piece if fresh else " " + piece
                fresh = False
            lines.append(current)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)
