"""Fine-tuning's extra augmentation of a clip: video RandAugment (one torchvision call on the whole uint8 clip, so
every frame gets the same ops at the same magnitude) after crop and flip, and random erasing of one box shared by
all frames after normalising; both draw from the global RNGs, which :func:`seeded_global_rngs` governs."""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from patches.errors import UsageError


class AugmentFlagError(UsageError, ValueError):
    """An ``--aa`` policy or ``--train_interpolation`` that cannot be used. (Still a ValueError.)"""


# Fill for pixels that geometric RandAugment ops uncover: the mean colour, which normalises to ~0.
MEAN_PIXEL = tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN)

_IGNORED_RAND_AUGMENT_KEYS = ("mstd", "mmax", "inc")


def parse_rand_augment(policy: str | None) -> tuple[int, int] | None:
    """``(num_ops, magnitude)`` from a timm RandAugment string ``rand-m{M}-n{N}[-mstd..][-mmax..][-inc1]``.

    ``None``, ``""`` and ``"none"`` mean no RandAugment. Defaults are timm's (``n`` 2, ``m`` 10);
    ``M`` must be an integer in 0..10. ``mstd``, ``mmax`` and ``inc`` are accepted for
    compatibility with timm/VideoMAE command lines but have no effect: torchvision's
    RandAugment uses a fixed magnitude and its own per-op sign and increasing-strength rules.
    """
    if policy is None or policy.strip().lower() in ("", "none"):
        return None
    parts = policy.strip().lower().split("-")
    if parts[0] != "rand":
        raise AugmentFlagError(f"RandAugment policy {policy!r}: only 'rand-...' policies are supported")
    num_ops, magnitude = 2, 10
    for part in parts[1:]:
        key = part.rstrip("0123456789.")
        value = part[len(key):]
        if key in _IGNORED_RAND_AUGMENT_KEYS and value:
            continue
        if key not in ("m", "n") or not value.isdigit():
            raise AugmentFlagError(f"RandAugment policy {policy!r}: cannot read {part!r} "
                                   f"(expected m<int>, n<int>, mstd<float>, mmax<float> or inc<0|1>)")
        if key == "m":
            magnitude = int(value)
        else:
            num_ops = int(value)
    if not 0 <= magnitude <= 10:
        raise AugmentFlagError(f"RandAugment policy {policy!r}: magnitude must be in 0..10, got {magnitude}")
    return num_ops, magnitude


_GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _grid_interpolation(name: str):
    """The torchvision mode of ``--train_interpolation``; ``random`` is kept as the string, drawn per op."""
    name = name.lower()
    if name == "random":
        return name
    if name in ("nearest", "bilinear", "bicubic"):
        return InterpolationMode(name)
    raise AugmentFlagError(f"unknown interpolation {name!r} (use nearest, bilinear, bicubic or random)")


class _RandAugment(v2.RandAugment):
    """torchvision's RandAugment, with bicubic resampling for its geometric ops (its tensor kernels have only
    nearest and bilinear: a bicubic op runs frame by frame through PIL, as VideoMAE's RandAugment does), and
    ``random`` drawing bilinear or bicubic per op (VideoMAE's 'random')."""

    def _apply_image_or_video_transform(self, image, transform_id, magnitude, interpolation, fill):
        if transform_id not in _GEOMETRIC_OPS:
            return super()._apply_image_or_video_transform(image, transform_id, magnitude, interpolation, fill)
        if interpolation == "random":
            modes = (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
            interpolation = modes[int(torch.randint(2, ()))]
        if interpolation != InterpolationMode.BICUBIC or not isinstance(image, torch.Tensor):
            return super()._apply_image_or_video_transform(image, transform_id, magnitude, interpolation, fill)
        frames = [super(_RandAugment, self)._apply_image_or_video_transform(
            F.to_pil_image(frame), transform_id, magnitude, interpolation, fill) for frame in image]
        return torch.stack([F.pil_to_tensor(frame) for frame in frames])


class VideoRandAugment:
    """RandAugment on a whole uint8 ``TCHW`` clip in one call: the same ops and magnitudes hit every frame.

    Wraps ``torchvision.transforms.v2.RandAugment`` with 11 magnitude bins (timm's 0..10 scale).
    Geometric ops resample with ``interpolation``: nearest, bilinear, bicubic (frame by frame through PIL), or
    random (bilinear or bicubic per op, as VideoMAE's); they fill with :data:`MEAN_PIXEL`.
    Draws from torch's global RNG; see :func:`seeded_global_rngs`.
    """

    def __init__(self, num_ops: int, magnitude: int, interpolation: str = "bilinear") -> None:
        self.num_ops, self.magnitude = num_ops, magnitude
        self.op = _RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=11,
                               interpolation=_grid_interpolation(interpolation), fill=list(MEAN_PIXEL))

    @classmethod
    def from_policy(cls, policy: str | None, interpolation: str = "bilinear") -> "VideoRandAugment | None":
        """The transform for a timm policy string (see :func:`parse_rand_augment`), or None for no RandAugment."""
        parsed = parse_rand_augment(policy)
        return None if parsed is None else cls(*parsed, interpolation=interpolation)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dtype != torch.uint8 or clip.ndim != 4:
            raise ValueError(f"expected a uint8 [T, C, H, W] clip, got {clip.dtype} {tuple(clip.shape)}")
        return self.op(clip)

    def __repr__(self) -> str:
        return f"VideoRandAugment(num_ops={self.num_ops}, magnitude={self.magnitude})"


class ClipRandomErasing:
    """timm's RandomErasing on a float ``CTHW`` clip seen as one ``C*T``-channel image.

    So the erased box sits at the same place in every frame (``mode="pixel"`` still draws
    fresh noise for each frame). Draws from Python's ``random`` and torch's RNG.
    """

    def __init__(self, probability: float, mode: str = "pixel", max_count: int = 1) -> None:
        from timm.data.random_erasing import RandomErasing

        self.eraser = RandomErasing(probability=probability, mode=mode, max_count=max_count, device="cpu")

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        c, t, h, w = clip.shape
        clip = clip.contiguous()
        self.eraser(clip.view(c * t, h, w))  # erases in place, through the view
        return clip

    def __repr__(self) -> str:
        return f"ClipRandomErasing({self.eraser!r})"


@contextlib.contextmanager
def seeded_global_rngs(rng: np.random.Generator) -> Iterator[None]:
    """Seed torch's CPU RNG and Python's ``random`` from ``rng`` inside the block, restoring both after.

    torchvision's RandAugment and timm's RandomErasing only use those global RNGs; this keeps
    them governed by the caller's Generator without shifting anyone else's random streams.
    """
    seed = int(rng.integers(2 ** 63))
    state = random.getstate()
    # Only the CPU generator: torch.manual_seed would also reseed (and not restore) CUDA's.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)
