"""Generated benchmark videos: smooth moving textures encoded as H.264 (x264 defaults, as ffmpeg makes them) or
VP9, cached by their parameters."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

# Bump when the rendering or encoding below changes, so cached files are rebuilt.
VIDEO_VERSION = 1
# libx264 with its defaults (preset medium: GOP up to 250 frames with scene-cut keyframes, 3 B-frames,
# CABAC) at crf 23, i.e. what `ffmpeg -i in.mp4 -vf scale=-2:320 out.mp4` gives: a 10 s, 25 fps video has one
# keyframe, so any clip is decoded from frame 0 on.
X264_OPTIONS = {"crf": "23", "threads": "1"}


# ---- videos -------------------------------------------------------------------------------------

def _texture(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """A smooth periodic colour texture in [-1, 1], float32 [H, W, 3] (low-passed noise)."""
    spec = np.fft.rfft2(rng.standard_normal((3, h, w)).astype(np.float32))
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    spec *= np.exp(-(fx ** 2 + fy ** 2) / (2 * sigma ** 2))
    spec[:, 0, 0] = 0
    tex = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
    return (tex / (np.abs(tex).max() + 1e-8)).transpose(1, 2, 0)


def render_video(seed: int, size: tuple[int, int], num_frames: int) -> np.ndarray:
    """Natural-ish moving content, uint8 [T, H, W, 3]: a textured background the camera pans over along a
    wandering path, three textured blobs moving on their own, a slow brightness drift and light grain."""
    rng = np.random.default_rng(seed)
    h, w = size
    big_h, big_w = 2 * h, 2 * w
    bg = (_texture(rng, big_h, big_w, 0.02) * 0.7 + _texture(rng, big_h, big_w, 0.08) * 0.3)
    bg = bg * rng.uniform(40, 70) + rng.uniform(70, 180, size=3).astype(np.float32)
    t = np.arange(num_frames, dtype=np.float64)
    # camera path: two sinusoids per axis, a few px per frame at most
    py = (h / 2 + 0.45 * h * np.sin(2 * np.pi * t / rng.uniform(120, 300) + rng.uniform(0, 6))
          + 0.1 * h * np.sin(2 * np.pi * t / rng.uniform(20, 60)))
    px = (w / 2 + 0.45 * w * np.sin(2 * np.pi * t / rng.uniform(120, 300) + rng.uniform(0, 6))
          + 0.1 * w * np.sin(2 * np.pi * t / rng.uniform(20, 60)))
    blobs = []
    for _ in range(3):
        r = rng.uniform(0.12, 0.25) * min(h, w)
        tex = _texture(rng, int(2 * r) + 2, int(2 * r) + 2, 0.1) * 60 + rng.uniform(30, 220, size=3)
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        vy, vx = rng.uniform(-3, 3), rng.uniform(-3, 3)
        blobs.append((r, tex.astype(np.float32), y0, x0, vy, vx))
    grain = rng.normal(0, 2.5, size=(8, h, w, 1)).astype(np.float32)
    gain = 1 + 0.08 * np.sin(2 * np.pi * t / rng.uniform(80, 200))
    out = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    for i in range(num_frames):
        y, x = int(np.clip(py[i], 0, h)), int(np.clip(px[i], 0, w))
        frame = bg[y:y + h, x:x + w] * np.float32(gain[i])
        for r, tex, y0, x0, vy, vx in blobs:
            cy, cx = (y0 + vy * i) % h, (x0 + vx * i) % w
            top, left = int(cy - r), int(cx - r)
            th, tw = tex.shape[:2]
            yy, xx = np.ogrid[:th, :tw]
            inside = ((yy - th / 2) ** 2 + (xx - tw / 2) ** 2 <= r * r)[..., None]
            t0, l0 = max(top, 0), max(left, 0)
            t1, l1 = min(top + th, h), min(left + tw, w)
            if t1 <= t0 or l1 <= l0:
                continue
            region = frame[t0:t1, l0:l1]
            sub = (slice(t0 - top, t1 - top), slice(l0 - left, l1 - left))
            frame[t0:t1, l0:l1] = np.where(inside[sub], tex[sub], region)
        frame += grain[i % len(grain)]
        np.clip(frame, 0, 255, out=frame)
        out[i] = frame.astype(np.uint8)
    return out


# libvpx-vp9 as ffmpeg's defaults would run it in constant quality, at libvpx's default keyframe distance (128),
# with its fastest "good" speed: like Something-Something V2's WebM files.
VP9_OPTIONS = {"crf": "32", "b": "0", "g": "128", "deadline": "good", "cpu-used": "5", "row-mt": "1", "threads": "2"}
CODECS = {"h264": ("libx264", ".mp4", X264_OPTIONS), "vp9": ("libvpx-vp9", ".webm", VP9_OPTIONS)}


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int, codec: str = "h264") -> None:
    """uint8 [T, H, W, 3] RGB frames as yuv420p H.264 mp4 (:data:`X264_OPTIONS`) or VP9 WebM (:data:`VP9_OPTIONS`)."""
    import av

    name, suffix, options = CODECS[codec]
    t, h, w, _ = frames.shape
    with av.open(str(path), mode="w", format={".mp4": "mp4", ".webm": "webm"}[suffix]) as container:
        stream = container.add_stream(name, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = dict(options)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def video_size(short_side: int, aspect: float) -> tuple[int, int]:
    """``(height, width)`` of a landscape frame with ``short_side`` rows and ``aspect`` = width / height, both even."""
    even = lambda x: max(2, int(round(x / 2)) * 2)  # noqa: E731
    return even(short_side), even(short_side * aspect)


def make_videos(folder: str | os.PathLike, count: int, short_side: int = 320, seconds: float = 10,
                fps: int = 25, aspect: float = 16 / 9, codec: str = "h264") -> list[str]:
    """``count`` H.264 mp4 (or, ``codec="vp9"``, VP9 WebM) files in ``folder`` (made once, then reused), their paths.

    Frames are ``short_side`` x ``short_side * aspect`` (568 x 320 by default, as Kinetics at 320 px short
    side), ``seconds * fps`` of them, rendered by :func:`render_video` and encoded as :data:`X264_OPTIONS`
    says (GOP 250: one keyframe per 10 s video). The parameters are in the file names, so files made with
    other settings are not mistaken for these; a file is written under a temporary name and renamed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = video_size(short_side, aspect)
    num_frames = max(1, int(round(seconds * fps)))
    paths = []
    for i in range(count):
        tag = "" if codec == "h264" else f"_{codec}"
        path = folder / f"v{VIDEO_VERSION}_{w}x{h}_{num_frames}f_{fps}fps{tag}_{i:03d}{CODECS[codec][1]}"
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(suffix=CODECS[codec][1], dir=folder)
            os.close(fd)
            try:
                write_video(tmp, render_video(i, (h, w), num_frames), fps, codec)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        paths.append(str(path))
    return paths
