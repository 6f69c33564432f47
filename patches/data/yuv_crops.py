"""Crops cut from decoded YUV 4:2:0 frames before their colour conversion, so that only the kept pixels are
converted.

A decoder gives frames in YUV 4:2:0 (a full-size luma plane, two half-size chroma planes). Converting the
whole frame to RGB and then cutting a crop converts pixels that are thrown away; here the crop box is known
first, the crop is cut from the planes (widened to even rows and columns, so that each chroma sample keeps
the 2 x 2 luma pixels it belongs to), converted by the same swscale routine as a whole frame would be, and
the box's pixels are copied, mirrored when the clip is flipped, into one contiguous ``[T, H, W, 3]`` array.
The RGB values are those of the whole-frame conversion.

For a CUDA run the crop is not converted here: :func:`crop_clip_yuv` hands over the cut planes themselves
(:class:`YuvCrop`), and the step's device converts them (:mod:`patches.data.yuv_rgb`) with the resize.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

YUV420_FORMATS = ("yuv420p", "yuvj420p")


def convertible(frames: Sequence[Any]) -> bool:
    """Whether :func:`crop_clip_rgb` takes these PyAV frames: YUV 4:2:0, even width and height, all one size."""
    if not frames:
        return False
    first = frames[0]
    return all(f.format.name in YUV420_FORMATS and f.format.name == first.format.name
               and f.width == first.width and f.height == first.height for f in frames) \
        and first.width % 2 == 0 and first.height % 2 == 0


def _plane(frame: Any, i: int) -> np.ndarray:
    """Plane ``i`` of a PyAV frame as a numpy view ``[rows, columns]`` (its padding cut off)."""
    plane = frame.planes[i]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]


def even_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The smallest box ``(top, left, height, width)`` holding ``box`` whose corners sit on even pixels."""
    top, left, ch, cw = box
    t0, l0 = top - top % 2, left - left % 2
    bottom, right = top + ch + (top + ch) % 2, left + cw + (left + cw) % 2
    return t0, l0, bottom - t0, right - l0


def crop_clip_rgb(frames: Sequence[Any], box: tuple[int, int, int, int], flip: bool,
                  reformatter: Any) -> torch.Tensor:
    """``box`` of each PyAV YUV 4:2:0 frame (see :func:`convertible`) in RGB, uint8 ``[T, H, W, 3]``, contiguous;
    mirrored left-right when ``flip``. ``reformatter`` is the caller's ``av.video.reformatter.VideoReformatter``."""
    import av

    top, left, ch, cw = box
    t0, l0, hh, ww = even_box(box)
    fmt = frames[0].format.name
    buf = np.empty(hh * ww * 3 // 2, np.uint8)
    luma, quarter = hh * ww, hh * ww // 4
    y_out = buf[:luma].reshape(hh, ww)
    u_out = buf[luma:luma + quarter].reshape(hh // 2, ww // 2)
    v_out = buf[luma + quarter:].reshape(hh // 2, ww // 2)
    rows, cols = slice(top - t0, top - t0 + ch), slice(left - l0, left - l0 + cw)
    out = np.empty((len(frames), ch, cw, 3), np.uint8)
    for t, frame in enumerate(frames):
        y_out[:] = _plane(frame, 0)[t0:t0 + hh, l0:l0 + ww]
        u_out[:] = _plane(frame, 1)[t0 // 2:(t0 + hh) // 2, l0 // 2:(l0 + ww) // 2]
        v_out[:] = _plane(frame, 2)[t0 // 2:(t0 + hh) // 2, l0 // 2:(l0 + ww) // 2]
        cut = av.VideoFrame.from_ndarray(buf.reshape(-1, ww), format=fmt)
        cut.colorspace = frame.colorspace  # the conversion matrix and range the whole frame would get
        cut.color_range = frame.color_range
        rgb = reformatter.reformat(cut, format="rgb24", threads=1).to_ndarray()[rows, cols]
        out[t] = rgb[:, ::-1] if flip else rgb
    return torch.from_numpy(out)


@dataclass(frozen=True)
class YuvCrop:
    """One clip's crop still in YUV 4:2:0, as the workers of a CUDA run hand it over. ``planes`` uint8
    ``[T, 3 * h // 2, w]`` is the crop's :func:`even_box` of each frame: rows ``:h`` its luma, rows ``h:`` its two
    chroma planes side by side (U in columns ``:w // 2``, V after); ``box`` ``(top, left, height, width)`` is the
    clip's crop inside that luma, ``flip`` whether the clip is mirrored, ``colour`` the frames' ``(colorspace,
    full_range)`` (:func:`yuv_rgb.frame_colour`)."""

    planes: torch.Tensor
    box: tuple[int, int, int, int]
    flip: bool
    colour: tuple[int, bool]

    def to_rgb(self) -> torch.Tensor:
        """The clip's crop in RGB, uint8 ``[T, H, W, 3]``, mirrored where drawn: what :func:`crop_clip_rgb` gives."""
        from patches.data.yuv_rgb import coefficients_tensor, yuv420_to_rgb

        h, w = self.planes.shape[1] * 2 // 3, self.planes.shape[2]
        luma, chroma = self.planes[None, :, :h], self.planes[None, :, h:]
        rgb = yuv420_to_rgb(luma, chroma[..., :w // 2], chroma[..., w // 2:], coefficients_tensor([self.colour]))[0]
        top, left, ch, cw = self.box
        rgb = rgb[:, top:top + ch, left:left + cw]
        return (rgb.flip(2) if self.flip else rgb).contiguous()


def frame_planes(frames: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U and V planes of PyAV YUV 4:2:0 frames (see :func:`convertible`), each stacked over the frames:
    uint8 ``[T, H, W]``, ``[T, H / 2, W / 2]`` twice; made once, shared by all the clips cut from these frames."""
    return tuple(np.stack([_plane(frame, i) for frame in frames]) for i in range(3))  # type: ignore[return-value]


def crop_clip_yuv(planes: tuple[np.ndarray, np.ndarray, np.ndarray], box: tuple[int, int, int, int], flip: bool,
                  colour: tuple[int, bool]) -> YuvCrop:
    """``box`` of every frame of :func:`frame_planes`, unconverted: a :class:`YuvCrop` (three slicing copies)."""
    top, left, ch, cw = box
    t0, l0, hh, ww = even_box(box)
    luma, u, v = planes
    out = np.empty((len(luma), hh + hh // 2, ww), np.uint8)
    out[:, :hh] = luma[:, t0:t0 + hh, l0:l0 + ww]
    chroma_rows, chroma_cols = slice(t0 // 2, (t0 + hh) // 2), slice(l0 // 2, (l0 + ww) // 2)
    out[:, hh:, :ww // 2] = u[:, chroma_rows, chroma_cols]
    out[:, hh:, ww // 2:] = v[:, chroma_rows, chroma_cols]
    return YuvCrop(torch.from_numpy(out), (top - t0, left - l0, ch, cw), bool(flip), colour)
