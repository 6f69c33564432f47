"""Re-encoding one video for training: H.264 mp4 at a smaller size, capped frame rate and a fixed keyframe
interval, without audio, the display rotation applied (PyAV, or the ffmpeg binary); checking a prepared file.
``scripts/prepare_videos.py`` runs it over a dataset."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

import numpy as np

from patches.data.recipe_rate import keep_every_tag


@dataclass(frozen=True)
class EncodeConfig:
    """How each video is re-encoded (see the module docstring)."""

    short_side: int | None = 320
    max_side: int | None = None
    max_fps: float | None = None
    gop: int = 16
    crf: int = 23
    preset: str = "veryfast"
    ffmpeg: str | None = None  # the ffmpeg binary to run instead of PyAV
    keep_every: int = 1  # keep source frames 0, K, 2K, ... at 1/K of the source's rate (recipe-rate files)


def output_size(height: int, width: int, config: EncodeConfig) -> tuple[int, int]:
    """``(height, width)`` after scaling (down only) to the short side or the long-side cap, both even."""
    if config.max_side is not None:
        scale = config.max_side / max(height, width)
    else:
        scale = config.short_side / min(height, width)
    scale = min(1.0, scale)
    even = lambda x: max(2, int(round(x * scale / 2)) * 2)  # noqa: E731
    return even(height), even(width)


def _rotation(frame: Any) -> int:
    """Quarter turns (counterclockwise) the display matrix asks for."""
    return int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4


def _source_frames(container: Any, stream: Any, max_fps: Fraction | None, keep_every: int = 1) -> Iterator[Any]:
    """The decoded frames to keep (at most ``max_fps`` per second, by timestamp, or every ``keep_every``-th
    decoded frame from the first); raises for a file cut short."""
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    decoded, kept, last_time = 0, 0, 0.0
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001  (PyAV's decoding errors)
            raise ValueError(f"frames cannot be decoded after frame {decoded}, the file is probably truncated or "
                             f"corrupt ({getattr(e, 'strerror', None) or e})") from e
        t = frame.time if frame.time is not None else decoded / float(rate)
        decoded, last_time = decoded + 1, t
        if keep_every > 1:
            if (decoded - 1) % keep_every == 0:
                yield frame
            continue
        # output frame `kept` shows at kept / max_fps: the input frame on screen then is the one to keep
        if max_fps is None or kept / float(max_fps) < t + 1 / float(rate) - 1e-6:
            kept += 1
            yield frame
    if decoded == 0:
        raise ValueError("no frame could be decoded")
    if stream.frames and decoded < stream.frames:
        raise ValueError(f"truncated: decoded {decoded} of the {stream.frames} frames the container lists")
    if not stream.frames and container.duration and last_time + 2.5 / float(rate) < container.duration / 1e6:
        raise ValueError(f"truncated: frames end at {last_time:.2f} s of the container's "
                         f"{container.duration / 1e6:.2f} s")


def _x264_options(config: EncodeConfig) -> dict[str, str]:
    params = f"keyint={config.gop}:min-keyint={config.gop}:scenecut=0"
    if config.keep_every > 1:
        # x264's CRF gives a frame more bits the longer it is shown (its complexity is divided by the frame's
        # duration), so a file at 1/K of the rate came out as large as the full-rate one, at higher quality.
        # Rate control at the source's frame rate (force-cfr: fps only, not timestamps) keeps the full-rate
        # file's quality per frame; the timestamps still carry each frame's real moment.
        params += ":force-cfr=1"
    return {"crf": str(config.crf), "preset": config.preset, "threads": "1", "x264-params": params}


def transcode_pyav(src: str, dst: str, config: EncodeConfig) -> tuple[int, float]:
    """Re-encode ``src`` into the mp4 ``dst`` with PyAV; returns (frames written, seconds of video)."""
    import av

    with av.open(src) as inp:
        if not inp.streams.video:
            raise ValueError("no video stream")
        stream = inp.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        out_rate = Fraction(rate).limit_denominator(1001)
        if config.max_fps is not None and out_rate > config.max_fps:
            out_rate = Fraction(config.max_fps).limit_denominator(1001)
        step = config.keep_every  # output frame j is source frame j * K, shown at the same moment
        if step > 1:
            out_rate = Fraction(rate).limit_denominator(1001) / step
        with av.open(dst, "w", format="mp4") as out:
            out.metadata.update(keep_every_tag(step))
            video, count = None, 0
            for frame in _source_frames(inp, stream, out_rate if out_rate != rate and step == 1 else None, step):
                turns = _rotation(frame)
                if turns:
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(
                        np.rot90(frame.to_ndarray(format="rgb24"), turns)), format="rgb24")
                if video is None:
                    h, w = output_size(frame.height, frame.width, config)
                    video = out.add_stream("libx264", rate=out_rate * step)
                    video.width, video.height, video.pix_fmt = w, h, "yuv420p"
                    video.options = _x264_options(config)
                small = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA")
                small.pts, small.time_base = count * step, 1 / (out_rate * step)
                _mux(out, video.encode(small), step)
                count += 1
            _mux(out, video.encode(None), step)
    return count, float(count / out_rate)


def _mux(container: Any, packets: list[Any], duration: int) -> None:
    """Mux ``packets``, each lasting ``duration`` ticks of the encoder's time base (a recipe-rate file's K: the
    container's frame rate is then the kept frames', its last frame included)."""
    for packet in packets:
        packet.duration = duration
        container.mux(packet)


def transcode_ffmpeg(src: str, dst: str, config: EncodeConfig) -> tuple[int, float]:
    """The same re-encoding by the ffmpeg binary ``config.ffmpeg`` (which applies rotation itself); not for
    ``keep_every`` > 1 (PyAV only)."""
    import av

    if config.keep_every > 1:
        raise ValueError("keep_every > 1 is written by PyAV only, not by the ffmpeg binary")
    with av.open(src) as inp:
        if not inp.streams.video:
            raise ValueError("no video stream")
    side, cap = ("gte", config.max_side) if config.max_side is not None else ("lt", config.short_side)
    # the side that is capped: min(side, cap) rounded down to even; the other follows the aspect (-2: even)
    scale = (f"scale=w='if({side}(iw,ih),trunc(min(iw,{cap})/2)*2,-2)':"
             f"h='if({side}(iw,ih),-2,trunc(min(ih,{cap})/2)*2)'")
    filters = scale + (f",fps='min(source_fps,{config.max_fps})'" if config.max_fps else "")
    params = _x264_options(config)
    cmd = [config.ffmpeg, "-nostdin", "-v", "error", "-y", "-i", src, "-an", "-sn", "-dn", "-vf", filters,
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", params["preset"], "-crf", params["crf"],
           "-threads", "1", "-x264-params", params["x264-params"], "-f", "mp4", dst]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"ffmpeg failed: {(done.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
    return probe_prepared(dst)


def probe_prepared(path: str) -> tuple[int, float]:
    """(frames, seconds) of a prepared mp4, if it opens with its frame count and its last frame decodes."""
    from patches.data.video_reader import PyAVVideo

    video = PyAVVideo.open(path)
    if video is None:
        raise ValueError("the output does not open with the frame count its container lists")
    try:
        if video.read(np.array([len(video) - 1])) is None:
            raise ValueError("the output's last frame does not decode")
        rate = video.stream.average_rate or Fraction(25)
        return len(video), float(len(video) / rate)
    finally:
        video.close()
