"""The built-in demo dataset: short synthetic clips whose classes differ only in motion.

Eight classes in four time-reversal pairs (move left/right, move up/down, rotate
clockwise/anticlockwise, grow/shrink). A textured polygon of random colour moves
over a smooth-noise background that drifts in a random direction. The second class
of each pair is *exactly* the first one played backwards (background included), so
the set of frames of a clip does not depend on which class of its pair it is: no
single frame can tell the two apart, only motion can.

Usage: ``python demo_data.py --root data/demo`` or :func:`ensure_demo_dataset`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

CLASS_NAMES: list[str] = [
    "move_left", "move_right",
    "move_up", "move_down",
    "rotate_clockwise", "rotate_anticlockwise",
    "grow", "shrink",
]
SPLITS = ("train", "val", "test")
# Clips without labels, for pre-training only: the label-efficient setting that masked pre-training is for.
UNLABELED = "unlabeled"
MARKER = ".complete"
# Bump whenever rendering changes, so datasets made by an older generator are rebuilt.
GENERATOR_VERSION = 2

_TRANSLATE_X, _TRANSLATE_Y, _ROTATE, _SCALE = range(4)


def _freqs(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.fftfreq(h).astype(np.float32)[:, None], np.fft.rfftfreq(w).astype(np.float32)[None, :]


def _smooth_noise_spectrum(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Real-FFT coefficients of a periodic smooth colour texture in [-1, 1], complex64 [3, H, W//2+1]."""
    spec = np.fft.rfft2(rng.standard_normal((3, h, w)).astype(np.float32))
    fy, fx = _freqs(h, w)
    # A Gaussian low-pass (sigma 0.04 cycle/px) gives blobs a few px wide: texture, not pixel noise.
    spec *= np.exp(-(fx ** 2 + fy ** 2) / (2 * 0.04 ** 2))
    spec[:, 0, 0] = 0.0
    spec /= np.abs(np.fft.irfft2(spec, s=(h, w))).max() + 1e-8
    return spec.astype(np.complex64)


def _shifted_textures(spec: np.ndarray, size: tuple[int, int], dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """The texture shifted by (dy[t], dx[t]) px, float32 [T, H, W, 3].

    A Fourier phase shift gives exact sub-pixel motion that wraps around seamlessly.
    """
    fy, fx = _freqs(*size)
    phase = np.exp(-2j * np.pi * (fy[None] * dy[:, None, None] + fx[None] * dx[:, None, None]))
    tex = np.fft.irfft2(spec[None] * phase.astype(np.complex64)[:, None], s=size)
    return tex.transpose(0, 2, 3, 1)


def _polygon_radius(theta: np.ndarray, angles: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Distance from the centre to the edge of a star-shaped polygon along direction ``theta``."""
    a = np.concatenate([angles, angles[:1] + 2 * np.pi]).astype(np.float32)
    r = np.concatenate([radii, radii[:1]]).astype(np.float32)
    theta = np.mod(theta - a[0], np.float32(2 * np.pi)) + a[0]
    i = np.clip(np.searchsorted(a, theta, side="right") - 1, 0, len(angles) - 1)
    a0, a1, r0, r1 = a[i], a[i + 1], r[i], r[i + 1]
    # Ray/segment intersection in polar form (law of sines).
    return r0 * r1 * np.sin(a1 - a0) / (r0 * np.sin(theta - a0) + r1 * np.sin(a1 - theta))


class _Scene:
    """Everything random about one clip, drawn in a fixed order so that the seed alone decides it."""

    def __init__(self, seed: int, num_frames: int, size: tuple[int, int]) -> None:
        rng = np.random.default_rng(seed)
        h, w = size
        s = min(h, w)
        px = s / 96.0  # speeds below are for a 96-px frame
        self.size, self.num_frames = size, num_frames
        self.bg_spec = _smooth_noise_spectrum(rng, h, w)
        self.bg_mean = rng.uniform(60, 190, size=3)
        self.bg_contrast = rng.uniform(35, 60)
        self.bg_dir = rng.uniform(0, 2 * np.pi)
        self.bg_speed = rng.uniform(0.5, 1.5) * px

        n = int(rng.integers(5, 9))
        gaps = rng.uniform(0.5, 1.5, size=n)
        gaps *= 2 * np.pi / gaps.sum()  # every gap < pi keeps the polygon star-shaped around its centre
        self.poly_angles = np.cumsum(gaps) - gaps[0]
        self.poly_radii = rng.uniform(0.6, 1.0, size=n)
        self.color_a = rng.uniform(0, 255, size=3)
        self.color_b = 255 - self.color_a * rng.uniform(0.3, 0.8)
        self.checker = rng.uniform(0.35, 0.6)  # checker period, in shape radii
        self.cy, self.cx = rng.uniform(0, h), rng.uniform(0, w)
        self.angle0 = rng.uniform(0, 2 * np.pi)
        # Log-uniform over about the range grow/shrink sweeps, so shape size alone hints at no class.
        self.radius0 = np.exp(rng.uniform(np.log(0.09), np.log(0.38))) * s
        self.move_speed = rng.uniform(1.6, 2.6) * px
        self.spin_speed = np.deg2rad(rng.uniform(5.0, 8.0))
        self.grow_from = rng.uniform(0.08, 0.13) * s
        self.grow_to = rng.uniform(0.33, 0.40) * s

    def trajectory(self, motion: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-frame (cy, cx, angle, radius) for the first class of a pair, each float32 [T, 1, 1]."""
        t = np.arange(self.num_frames, dtype=np.float64)
        cy, cx = np.full_like(t, self.cy), np.full_like(t, self.cx)
        angle, radius = np.full_like(t, self.angle0), np.full_like(t, self.radius0)
        if motion == _TRANSLATE_X:
            cx = self.cx - self.move_speed * t  # left
        elif motion == _TRANSLATE_Y:
            cy = self.cy - self.move_speed * t  # up: image rows grow downwards
        elif motion == _ROTATE:
            angle = self.angle0 + self.spin_speed * t  # clockwise on screen, again because y points down
        else:
            radius = np.geomspace(self.grow_from, self.grow_to, self.num_frames)
        return tuple(v.astype(np.float32)[:, None, None] for v in (cy, cx, angle, radius))

    def render(self, motion: int) -> np.ndarray:
        """All frames of the first class of pair ``motion``, uint8 [T, H, W, 3]."""
        h, w = self.size
        t = np.arange(self.num_frames, dtype=np.float64)
        bg_dy = (self.bg_speed * np.sin(self.bg_dir) * t).astype(np.float32)
        bg_dx = (self.bg_speed * np.cos(self.bg_dir) * t).astype(np.float32)
        bg = _shifted_textures(self.bg_spec, self.size, bg_dy, bg_dx)
        bg = bg * np.float32(self.bg_contrast) + self.bg_mean.astype(np.float32)

        cy, cx, angle, radius = self.trajectory(motion)
        yy = np.arange(h, dtype=np.float32)[None, :, None] + 0.5
        xx = np.arange(w, dtype=np.float32)[None, None, :] + 0.5
        # Offsets on a torus: the shape wraps around the borders, so every position is equally likely.
        dy = np.mod(yy - cy + h / 2, h) - h / 2
        dx = np.mod(xx - cx + w / 2, w) - w / 2
        c, s = np.cos(angle), np.sin(angle)
        u = (c * dx + s * dy) / radius
        v = (c * dy - s * dx) / radius
        edge = _polygon_radius(np.arctan2(v, u), self.poly_angles, self.poly_radii)
        alpha = np.clip((edge - np.hypot(u, v)) * radius + 0.5, 0.0, 1.0)[..., None]  # 1-px soft edge
        k = np.float32(np.pi / self.checker)
        checker = ((np.sin(k * u) * np.sin(k * v)) > 0)[..., None]
        shape = np.where(checker, self.color_a.astype(np.float32), self.color_b.astype(np.float32))
        out = bg + alpha * (shape - bg)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def render_clip(label: int, seed: int, num_frames: int = 48, size: tuple[int, int] = (96, 96)) -> np.ndarray:
    """Render one clip of class ``label`` as uint8 [T, H, W, 3].

    Classes ``2k`` and ``2k + 1`` with the same seed are exact time reversals of each other.
    """
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}")
    if num_frames < 1 or min(size) < 2:
        raise ValueError(f"need num_frames >= 1 and sides >= 2 px, got {num_frames}, {size}")
    frames = _Scene(seed, num_frames, (int(size[0]), int(size[1]))).render(label // 2)
    return np.ascontiguousarray(frames[::-1]) if label % 2 else frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 25) -> None:
    """Write uint8 [T, H, W, 3] RGB frames as H.264 (yuv420p) mp4. H and W must be even."""
    import av  # imported lazily: rendering alone does not need PyAV

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sides, got {h}x{w}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # Near-lossless and one thread: the clips are tiny, and per-file threads only add overhead.
        stream.options = {"crf": "16", "preset": "veryfast", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _check_decodable(path: Path, shape: tuple[int, ...]) -> None:
    """Fail early if decord cannot read what we wrote (it mis-sizes some frame widths, e.g. 48 and 72 px)."""
    try:
        import decord
    except ImportError:  # the dataset is still valid for other decoders
        return
    try:
        got = decord.VideoReader(str(path), num_threads=1).get_batch([0]).asnumpy().shape[1:]
    except Exception as e:
        got = f"an error ({str(e).splitlines()[0][:120]})"
    if got != shape:
        raise ValueError(f"decord reads {path} as {got}, not {shape}: pick another frame size for the demo "
                         f"data (decord 0.6 fails on some widths, e.g. 48 and 72 px; multiples of 32 are safe)")


def _clip_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, (*SPLITS, UNLABELED).index(split), index]).generate_state(1)[0])


def _params(seed: int, counts: dict[str, int], num_frames: int, size: tuple[int, int]) -> dict:
    return {"version": GENERATOR_VERSION, "seed": seed, "counts": counts,
            "num_frames": num_frames, "size": list(size)}


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _result(root: Path) -> dict[str, Path]:
    return {"root": root, **{split: root / f"{split}.csv" for split in SPLITS}, "pretrain": root / "pretrain.csv"}


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root`` so that processes started together (e.g. DDP ranks) make it once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_demo_dataset(root: str | os.PathLike, seed: int = 0, num_train: int = 160, num_val: int = 40,
                      num_test: int = 40, num_frames: int = 48, size: tuple[int, int] = (96, 96),
                      verbose: bool = True, num_unlabeled: int = 0) -> dict[str, Path]:
    """Write the demo dataset under ``root`` unless an identical one is already complete there.

    Writes ``videos/<split>_<index>_<class>.mp4``, ``train.csv``/``val.csv``/``test.csv``
    (lines ``videos/x.mp4 label``, relative to ``root``) and ``classes.txt``. Labels are
    balanced (cycled over the classes). ``num_unlabeled`` more clips, drawn the same way,
    go to ``videos/unlabeled_<index>.mp4`` with no label, not even in the name; ``pretrain.csv``
    lists the training clips and these (paths only): the videos to pre-train on. The marker
    file ``.complete`` holding the parameters is written last, so an interrupted run is redone
    rather than trusted. Returns ``{"root", "train", "val", "test", "pretrain"}`` as paths.
    """
    root = Path(root)
    size = (int(size[0]), int(size[1]))
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test), UNLABELED: int(num_unlabeled)}
    if min(counts.values()) < 0:
        raise ValueError(f"clip counts must be >= 0, got {counts}")
    params = _params(seed, counts, num_frames, size)
    if _read_marker(root) == params:
        return _result(root)
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root):
        if _read_marker(root) != params:  # another process may have made it while we waited
            _generate(root, params, verbose)
    return _result(root)


def _generate(root: Path, params: dict, verbose: bool) -> None:
    seed, counts, num_frames, size = params["seed"], params["counts"], params["num_frames"], tuple(params["size"])
    marker = root / MARKER
    marker.unlink(missing_ok=True)
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for split in (*SPLITS, UNLABELED):  # only our own files: stale clips from other parameters must not linger
        for old in videos.glob(f"{split}_*.mp4"):
            old.unlink()

    total, done, start = sum(counts.values()), 0, time.perf_counter()
    lists: dict[str, list[str]] = {}
    for split in (*SPLITS, UNLABELED):
        lines = lists[split] = []
        for i in range(counts.get(split, 0)):
            label = i % len(CLASS_NAMES)
            name = f"{split}_{i:05d}" if split == UNLABELED else f"{split}_{i:05d}_{CLASS_NAMES[label]}"
            rel = f"videos/{name}.mp4"
            write_mp4(root / rel, render_clip(label, _clip_seed(seed, split, i), num_frames, size))
            if done == 0:
                _check_decodable(root / rel, (*size, 3))
            lines.append(rel if split == UNLABELED else f"{rel} {label}")
            done += 1
            if verbose and (done % 40 == 0 or done == total):
                print(f"demo data: {done}/{total} clips in {time.perf_counter() - start:.1f}s -> {root}",
                      flush=True)
        if split != UNLABELED:
            (root / f"{split}.csv").write_text("".join(f"{line}\n" for line in lines))
    pretrain = [line.split()[0] for line in lists["train"]] + lists[UNLABELED]
    (root / "pretrain.csv").write_text("".join(f"{line}\n" for line in pretrain))
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES))
    marker.write_text(json.dumps(params))


def ensure_demo_dataset(root: str | os.PathLike | None = None, **kw) -> dict[str, Path]:
    """:func:`make_demo_dataset` with ``root`` defaulting to ``data/demo`` under the working directory."""
    return make_demo_dataset(Path.cwd() / "data" / "demo" if root is None else root, **kw)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="data/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_train", type=int, default=160)
    p.add_argument("--num_val", type=int, default=40)
    p.add_argument("--num_test", type=int, default=40)
    p.add_argument("--num_unlabeled", type=int, default=0, help="clips without labels, listed in pretrain.csv")
    p.add_argument("--num_frames", type=int, default=48)
    p.add_argument("--size", type=int, nargs=2, default=[96, 96], metavar=("H", "W"))
    a = p.parse_args(argv)
    out = make_demo_dataset(a.root, a.seed, a.num_train, a.num_val, a.num_test, a.num_frames, tuple(a.size),
                            num_unlabeled=a.num_unlabeled)
    print(f"demo dataset ready: {out['root']} (train/val/test/pretrain lists and classes.txt)")


if __name__ == "__main__":
    main()
