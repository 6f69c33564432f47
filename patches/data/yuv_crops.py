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
    """One clip's crop still in YUV 4:2:0, as the workers of a CUDA run hand it to the collate step. ``luma``, ``u``
    and ``v`` are, for each frame, views of the crop's :func:`even_box` in the frame's planes (``h x w`` and
    ``h / 2 x w / 2``; nothing is copied until :meth:`copy_into`); ``box`` ``(top, left, height, width)`` is the
    clip's crop inside that even box, ``flip`` whether the clip is mirrored, ``colour`` the frames' ``(colorspace,
    full_range)`` (:func:`yuv_rgb.frame_colour`)."""

    luma: Sequence[np.ndarray]
    u: Sequence[np.ndarray]
    v: Sequence[np.ndarray]
    box: tuple[int, int, int, int]
    flip: bool
    colour: tuple[int, bool]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(T, h, w)``: frames, and the even box's rows and columns."""
        return (len(self.luma), *self.luma[0].shape)

    def copy_into(self, out: np.ndarray) -> None:
        """Copy the planes into ``out`` uint8 ``[T, rows, columns]`` (at least ``3 h / 2 x w``), as one crop of a
        batch is laid out (:class:`device_transforms.YuvCrops`): luma at the top left, below it U, and V from the
        middle column on (``columns // 2``)."""
        h, w = self.luma[0].shape
        height, half = out.shape[1] * 2 // 3, out.shape[2] // 2
        for t, (luma, u, v) in enumerate(zip(self.luma, self.u, self.v)):
            out[t, :h, :w] = luma
            out[t, height:height + h // 2, :w // 2] = u
            out[t, height:height + h // 2, half:half + w // 2] = v

    def to_rgb(self) -> torch.Tensor:
        """The clip's crop in RGB, uint8 ``[T, H, W, 3]``, mirrored where drawn: what :func:`crop_clip_rgb` gives."""
        from patches.data.yuv_rgb import coefficients_tensor, yuv420_to_rgb

        planes = [torch.from_numpy(np.stack(p))[None] for p in (self.luma, self.u, self.v)]
        rgb = yuv420_to_rgb(*planes, coefficients_tensor([self.colour]))[0]
        top, left, ch, cw = self.box
        rgb = rgb[:, top:top + ch, left:left + cw]
        return (rgb.flip(2) if self.flip else rgb).contiguous()


def frame_planes(frames: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The Y, U and V planes of each PyAV YUV 4:2:0 frame (see :func:`convertible`) as numpy views, made once and
    shared by all the clips cut from these frames (they keep the frames' buffers alive)."""
    return [(_plane(frame, 0), _plane(frame, 1), _plane(frame, 2)) for frame in frames]


def crop_clip_yuv(planes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], box: tuple[int, int, int, int],
                  flip: bool, colour: tuple[int, bool]) -> YuvCrop:
    """``box`` of every frame of :func:`frame_planes`, unconverted and uncopied: a :class:`YuvCrop`."""
    top, left, ch, cw = box
    t0, l0, hh, ww = even_box(box)
    rows, cols = slice(t0 // 2, (t0 + hh) // 2), slice(l0 // 2, (l0 + ww) // 2)
    return YuvCrop([y[t0:t0 + hh, l0:l0 + ww] for y, _, _ in planes], [u[rows, cols] for _, u, _ in planes],
                   [v[rows, cols] for _, _, v in planes], (top - t0, left - l0, ch, cw), bool(flip), colour)
