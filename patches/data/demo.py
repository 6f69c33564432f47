"""The built-in demo dataset: short synthetic clips whose classes differ only in motion.

Eight classes in four time-reversal pairs: a smooth random colour texture drifts right / left, up /
down, up-right / down-left or up-left / down-right, as if the camera panned. The second class of each
pair is *exactly* the first one played backwards, so the set of frames of a clip does not depend on
which class of its pair it is: no single frame can tell the two apart, only motion can.

Masked pre-training learns this motion from unlabelled clips: to fill in the hidden tubes it must work
out where the texture went. With a handful of labels per class a ViT trained from scratch stays at
chance, while one fine-tuned from the pre-trained encoder does not (run_demo.py shows both).

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
    "move_right", "move_left",
    "move_up", "move_down",
    "move_up_right", "move_down_left",
    "move_up_left", "move_down_right",
]
# Direction of the first class of each pair, in degrees anticlockwise from "right" (on screen).
_PAIR_DIRECTIONS = (0.0, 90.0, 45.0, 135.0)
SPLITS = ("train", "val", "test")
# Clips without labels, for pre-training only: the label-efficient setting that masked pre-training is for.
UNLABELED = "unlabeled"
MARKER = ".complete"
# Bump whenever rendering changes, so datasets made by an older generator are rebuilt.
GENERATOR_VERSION = 3


def _freqs(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.fftfreq(h).astype(np.float32)[:, None], np.fft.rfftfreq(w).astype(np.float32)[None, :]


def _smooth_noise_spectrum(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Real-FFT coefficients of a periodic smooth colour texture in [-1, 1], complex64 [3, H, W//2+1].

    A Gaussian low-pass of ``sigma`` cycles/px gives blobs about 1 / (2 pi sigma) px wide.
    """
    spec = np.fft.rfft2(rng.standard_normal((3, h, w)).astype(np.float32))
    fy, fx = _freqs(h, w)
    spec *= np.exp(-(fx ** 2 + fy ** 2) / (2 * sigma ** 2))
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


def _render_pan(seed: int, pair: int, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """All frames of the first class of pair ``pair``, uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    h, w = size
    px = min(h, w) / 32.0  # sizes and speeds below are for a 32-px frame
    # The texture's period is twice the frame, so no content wraps back into view within a clip.
    period = (2 * h, 2 * w)
    spec = _smooth_noise_spectrum(rng, *period, sigma=0.025 / px)
    contrast = rng.uniform(60, 110)
    mean = rng.uniform(80, 170, size=3).astype(np.float32)
    speed = rng.uniform(0.5, 0.8) * px  # px per frame: 2-3 px between frames 4 apart
    oy, ox = rng.uniform(0, period[0]), rng.uniform(0, period[1])
    angle = np.deg2rad(_PAIR_DIRECTIONS[pair])
    t = np.arange(num_frames, dtype=np.float64)
    # Content moving up moves towards smaller row indices.
    dy = (oy - speed * np.sin(angle) * t).astype(np.float32)
    dx = (ox + speed * np.cos(angle) * t).astype(np.float32)
    frames = _shifted_textures(spec, period, dy, dx)[:, :h, :w] * np.float32(contrast) + mean
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8)


def render_clip(label: int, seed: int, num_frames: int = 48, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Render one clip of class ``label`` as uint8 [T, H, W, 3].

    Classes ``2k`` and ``2k + 1`` with the same seed are exact time reversals of each other.
    """
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}")
    if num_frames < 1 or min(size) < 2:
        raise ValueError(f"need num_frames >= 1 and sides >= 2 px, got {num_frames}, {size}")
    frames = _render_pan(seed, label // 2, num_frames, (int(size[0]), int(size[1])))
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


def make_demo_dataset(root: str | os.PathLike, seed: int = 0, num_train: int = 64, num_val: int = 40,
                      num_test: int = 200, num_frames: int = 48, size: tuple[int, int] = (64, 64),
                      verbose: bool = True, num_unlabeled: int = 800) -> dict[str, Path]:
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
    p.add_argument("--num_train", type=int, default=64, help="labelled training clips (8 per class)")
    p.add_argument("--num_val", type=int, default=40)
    p.add_argument("--num_test", type=int, default=200)
    p.add_argument("--num_unlabeled", type=int, default=800, help="clips without labels, listed in pretrain.csv")
    p.add_argument("--num_frames", type=int, default=48)
    p.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"))
    a = p.parse_args(argv)
    out = make_demo_dataset(a.root, a.seed, a.num_train, a.num_val, a.num_test, a.num_frames, tuple(a.size),
                            num_unlabeled=a.num_unlabeled)
    print(f"demo dataset ready: {out['root']} (train/val/test/pretrain lists and classes.txt)")


if __name__ == "__main__":
    main()
