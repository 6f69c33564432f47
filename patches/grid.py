"""The patch grid: the one place where clip and patch geometry turn into token counts.

Every part of PATCHES (models, masks, pixel targets, checkpoints, visualisation,
benchmarks) takes a :class:`PatchGrid` instead of re-deriving sizes itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from patches.errors import UsageError


class GridError(UsageError, ValueError):
    """An impossible combination of grid or mask flags, or an unusable grid entry (still a ValueError, as it
    always was)."""


@dataclass(frozen=True)
class PatchGrid:
    """A clip of ``num_frames`` x ``input_size`` pixels cut into tubelet x patch x patch cubes."""

    num_frames: int
    tubelet_size: int
    input_size: tuple[int, int]
    patch_size: int
    in_chans: int = 3

    @property
    def t(self) -> int:
        return self.num_frames // self.tubelet_size

    @property
    def h(self) -> int:
        return self.input_size[0] // self.patch_size

    @property
    def w(self) -> int:
        return self.input_size[1] // self.patch_size

    @property
    def shape(self) -> tuple[int, int, int]:
        """Token grid T' x H' x W'."""
        return (self.t, self.h, self.w)

    @property
    def patches_per_frame(self) -> int:
        return self.h * self.w

    @property
    def num_tokens(self) -> int:
        return self.t * self.h * self.w

    @property
    def target_dim(self) -> int:
        """Pixel values in one token: channels x tubelet x patch x patch."""
        return self.in_chans * self.tubelet_size * self.patch_size * self.patch_size

    @property
    def spec(self) -> str:
        """The grid in the sweep's SIZE/PATCH notation: '224/16' (or '224x288/16' for a non-square frame)."""
        h, w = self.input_size
        return f"{h}/{self.patch_size}" if h == w else f"{h}x{w}/{self.patch_size}"

    def describe(self) -> str:
        h, w = self.input_size
        return (f"{self.num_frames} frames x {h}x{w} px, tubelet {self.tubelet_size}, "
                f"patch {self.patch_size} -> {self.t} x {self.h} x {self.w} = {self.num_tokens} tokens "
                f"({self.patches_per_frame} patches per frame), pixel target {self.target_dim} per token")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PatchGrid":
        return make_grid(d["num_frames"], d["tubelet_size"], d["input_size"], d["patch_size"],
                         d.get("in_chans", 3))

    def differences(self, other: "PatchGrid") -> list[str]:
        """Where ``other`` differs from this grid, one ``"--flag mine vs theirs"`` entry per flag."""
        flags = {"num_frames": "--num_frames", "tubelet_size": "--tubelet_size", "input_size": "--input_size",
                 "patch_size": "--patch_size", "in_chans": "input channels"}
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{flag} {_flag_value(mine[k])} vs {_flag_value(theirs[k])}" for k, flag in flags.items()
                if mine[k] != theirs[k]]


def recorded_grid(ckpt: dict[str, Any]) -> PatchGrid | None:
    """The grid a checkpoint records under ``"grid"`` (PATCHES writes one), or None when it records none.

    Raises :class:`GridError` when the entry is there but unusable.
    """
    entry = ckpt.get("grid")
    if not isinstance(entry, dict):
        return None
    try:
        return PatchGrid.from_dict(entry)
    except (KeyError, TypeError, ValueError) as e:  # GridError is a ValueError
        raise GridError(f"the checkpoint's grid entry {entry!r} is unusable ({e})") from None


def _flag_value(value: Any) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def as_hw(size: int | Sequence[int], flag: str = "--input_size") -> tuple[int, int]:
    """Accept one side (square) or ``H W``."""
    if isinstance(size, int):
        return (size, size)
    size = [int(s) for s in size]
    if len(size) == 1:
        return (size[0], size[0])
    if len(size) == 2:
        return (size[0], size[1])
    raise GridError(f"{flag} takes one value or two (H W), got {size}")


def make_grid(num_frames: int, tubelet_size: int, input_size: int | Sequence[int],
              patch_size: int, in_chans: int = 3) -> PatchGrid:
    """Build a grid, refusing any combination that does not tile exactly."""
    hw = as_hw(input_size)
    problems = []
    if num_frames < 1:
        problems.append(f"--num_frames must be positive, got {num_frames}")
    if tubelet_size < 1:
        problems.append(f"--tubelet_size must be positive, got {tubelet_size}")
    if patch_size < 1:
        problems.append(f"--patch_size must be positive, got {patch_size}")
    if min(hw) < 1:
        problems.append(f"--input_size must be positive, got {hw[0]} {hw[1]}")
    if not problems:
        if num_frames % tubelet_size:
            problems.append(f"--num_frames {num_frames} is not divisible by --tubelet_size {tubelet_size}")
        for side, name in zip(hw, ("height", "width")):
            if side % patch_size:
                problems.append(f"--input_size {name} {side} is not divisible by --patch_size {patch_size}")
    if problems:
        raise GridError("impossible patch grid: " + "; ".join(problems))
    return PatchGrid(num_frames, tubelet_size, hw, patch_size, in_chans)


def parse_grid_spec(text: str) -> tuple[int, int]:
    """'224/16' -> (224, 16): a square frame side and a patch side. Raises GridError naming the entry."""
    parts = str(text).split("/")
    try:
        size, patch = (int(x) for x in parts)
    except ValueError:
        raise GridError(f"grid {text!r} is not SIZE/PATCH (e.g. 224/16)") from None
    if size < 1 or patch < 1:
        raise GridError(f"grid {text}: SIZE and PATCH must be positive")
    if patch > size:
        raise GridError(f"grid {text}: the patch ({patch} px) is larger than the frame ({size} px)")
    if size % patch:
        raise GridError(f"grid {text}: the frame side {size} is not divisible by the patch {patch}")
    return size, patch


def grids_from_specs(specs: Sequence[str], num_frames: int, tubelet_size: int, in_chans: int = 3) -> list[PatchGrid]:
    """The grids named by SIZE/PATCH entries, all with the same frames and tubelet. Raises GridError naming the
    first bad entry (not SIZE/PATCH, patch larger than the frame, size not divisible, or repeated)."""
    grids: list[PatchGrid] = []
    for text in specs:
        size, patch = parse_grid_spec(text)
        grid = make_grid(num_frames, tubelet_size, size, patch, in_chans)
        if grid in grids:
            raise GridError(f"grid {text} is listed twice")
        grids.append(grid)
    if not grids:
        raise GridError("no grid given")
    return grids


def base_grid(grids: Sequence[PatchGrid]) -> PatchGrid:
    """The grid a flexible model is built at: the one with the largest patch (ties: the first listed).

    Its patch kernel is resized to every other patch; resizing to a smaller patch reaches every kernel of that
    size, to a larger one only a subspace, so the largest patch is the one to keep."""
    return max(grids, key=lambda g: g.patch_size)  # max keeps the first of equals


def position_reference(grids: Sequence[PatchGrid]) -> tuple[int, int]:
    """The token rows and columns a flexible model's 3-D position table is scaled to: the most of any of its grids.

    The finest grid's tokens then sit at integer positions, spaced as in a fixed run, and a coarser grid's
    tokens at the centres of the frame areas they cover. Scaling to a coarser grid instead would crowd the finest
    grid's positions into fractions of a unit, where only the few fastest sin-cos channels tell them apart."""
    return max(g.h for g in grids), max(g.w for g in grids)


def grid_from_args(args: Any) -> PatchGrid:
    """The grid named by an argparse namespace's --num_frames/--tubelet_size/--input_size/--patch_size."""
    return make_grid(args.num_frames, args.tubelet_size, args.input_size, args.patch_size)
