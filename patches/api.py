"""The Python API: a trained model from any checkpoint PATCHES reads, with the grid and preprocessing it was
trained with; a video's features and class probabilities exactly as extract_features.py and run_inference.py
give them; and any registered model built at any grid.

    import patches
    model = patches.load("output/finetune/checkpoint-best.pth")
    model.features("clip.mp4")           # float32 [views, dim], as extract_features.py stores them
    model.classify("clip.mp4", top_k=5)  # [{"class", "index", "probability"}, ...], as run_inference.py prints
    patches.create_model("vit_small_patch16_224", grid="288/16", num_classes=10)
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from patches.checkpoints.models import model_from_checkpoint
from patches.checkpoints.reading import read_any_checkpoint
from patches.config.checkpoint_defaults import checkpoint_flag_values
from patches.data.transforms import EvalTransform
from patches.data.video_reader import FrameArray
from patches.errors import UsageError
from patches.eval.features import VideoSource, VideoViews, encode_views, find_videos, head_classes, read_class_names
from patches.eval.predict import CHECKPOINT_FALLBACK, class_probabilities, recorded_test_views, top_classes
from patches.grid import PatchGrid, make_grid, parse_grid_spec
from patches.utils.devices import autocast_dtype, resolve_device

__all__ = ["VideoModel", "Preprocessing", "load", "create_model", "NotAClassifierError", "VideoInputError"]

# A video file or frame folder, or its decoded frames: uint8 [T, H, W, 3].
Video = Union[str, Path, np.ndarray, torch.Tensor]
# A grid: a PatchGrid, or "SIZE/PATCH" (e.g. "288/16") keeping the frames and tubelet.
GridLike = Union[PatchGrid, str]
PROBES_WITH_WEIGHTS = ("linear", "attentive")


class NotAClassifierError(UsageError):
    """``.classify`` on a model without a classification head (a pre-training checkpoint), or without names."""


class VideoInputError(UsageError):
    """A video that cannot be used: missing, unreadable, several where one is wanted, or a wrong array."""


@dataclass(frozen=True)
class Preprocessing:
    """How a video becomes the model's input, as in the fine-tuning test: clips of ``grid.num_frames`` frames
    ``sampling_rate`` apart, the short side resized to ``short_side`` (None: the crop's), square crops of
    ``grid.input_size``, normalised with ImageNet's ``mean`` and ``std``. ``test_views``: the (segments, crops)
    :meth:`VideoModel.classify` takes by default (the checkpoint's test)."""

    grid: PatchGrid
    sampling_rate: int
    test_views: tuple[int, int] = (1, 1)
    short_side: int | None = None
    fname_tmpl: str = "img_{:05}.jpg"

    @property
    def num_frames(self) -> int:
        return self.grid.num_frames

    @property
    def input_size(self) -> tuple[int, int]:
        return self.grid.input_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(IMAGENET_DEFAULT_MEAN)

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(IMAGENET_DEFAULT_STD)

    def transform(self, crops: int = 1) -> EvalTransform:
        """The eval transform: uint8 [T, H, W, 3] clip -> ``crops`` float32 [C, T, H, W] views."""
        return EvalTransform(self.grid.input_size, self.short_side, crops)

    def views(self, video: Video, segments: int = 1, crops: int = 1) -> torch.Tensor:
        """Every test view of ``video``, [segments x crops, C, T, H, W], as extract_features.py takes them."""
        source = _video_source(video)
        views, _, reason = VideoViews([source], self.grid, self.sampling_rate, segments, crops, self.short_side,
                                      self.fname_tmpl)[0]
        if views is None:
            raise VideoInputError(reason)
        return views


@dataclass(frozen=True, eq=False)
class _ArrayVideo:
    """Decoded frames standing in for a :class:`VideoSource` (what :class:`VideoViews` opens)."""

    frames: FrameArray
    path: str = "<array>"
    label: int | None = None

    def open(self, fname_tmpl: str = "") -> FrameArray:
        return self.frames


def _video_source(video: Video) -> VideoSource | _ArrayVideo:
    if isinstance(video, (np.ndarray, torch.Tensor)):
        try:
            return _ArrayVideo(FrameArray(video))
        except ValueError as e:
            raise VideoInputError(f"video array: {e}") from None
    try:
        found = find_videos([str(video)])
    except ValueError as e:
        raise VideoInputError(str(e)) from None
    if len(found) != 1:
        raise VideoInputError(f"{video} holds {len(found)} videos; give one video file or frame folder")
    return found[0]


class VideoModel:
    """A PATCHES video model ready to use: ``network`` in eval mode (a ``VideoClassifier``, or a frozen encoder
    with its probe), the :class:`Preprocessing` it was trained with, and its ``class_names`` (None if unknown)."""

    def __init__(self, network: torch.nn.Module, preprocessing: Preprocessing, num_classes: int = 0,
                 class_names: Sequence[str] | None = None, checkpoint: str | None = None) -> None:
        self.network = network.eval()
        self.preprocessing = preprocessing
        self.num_classes = num_classes
        self.class_names = None if class_names is None else list(class_names)
        self.checkpoint = checkpoint

    @property
    def grid(self) -> PatchGrid:
        return self.preprocessing.grid

    @property
    def encoder(self) -> torch.nn.Module:
        """The encoder the features come from (a probe's frozen encoder, else the network itself)."""
        return getattr(self.network, "encoder", self.network)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> "VideoModel":
        self.network.to(_device(str(device)))
        return self

    def features(self, video: Video, segments: int = 1, crops: int = 1, amp: str = "none") -> np.ndarray:
        """float32 [segments x crops, dim]: the pooled features of every view, the row extract_features.py
        stores for this video with ``--test_num_segment segments --test_num_crop crops --amp amp``."""
        views = self.preprocessing.views(video, segments, crops)
        try:
            amp_dtype = autocast_dtype(amp, self.device)
        except ValueError as e:
            raise UsageError(_as_keywords(str(e))) from None
        pooled, _ = encode_views(self.encoder, views[None], amp_dtype)
        return pooled[0].cpu().numpy()

    def classify(self, video: Video, top_k: int = 5, segments: int | None = None, crops: int | None = None
                 ) -> list[dict[str, Any]]:
        """The ``top_k`` likeliest classes, ``{"class", "index", "probability"}``, from the softmax averaged over
        the test views (default: the checkpoint's), as run_inference.py prints them."""
        if not self.num_classes:
            raise NotAClassifierError(f"{self.checkpoint or 'this model'} has no classification head (a "
                                      f"pre-training checkpoint?): classify needs a fine-tuned classifier or a "
                                      f"probe; features works on any model")
        if self.class_names is None:
            raise NotAClassifierError(f"{self.checkpoint or 'this model'} records no class names: pass "
                                      f"class_names= (a list, or a file with one per line) to patches.load")
        default_segments, default_crops = self.preprocessing.test_views
        views = self.preprocessing.views(video, segments or default_segments, crops or default_crops)
        return top_classes(class_probabilities(self.network, views[None]), self.class_names, top_k)[0]

    def __repr__(self) -> str:
        kind = f"{self.num_classes} classes" if self.num_classes else "no classification head"
        return f"VideoModel({self.checkpoint or type(self.network).__name__}: {self.grid.describe()}; {kind})"


def load(path: str | Path, *, device: str | None = None, class_names: Sequence[str] | str | Path | None = None,
         model: str | None = None, grid: GridLike | None = None, sampling_rate: int | None = None) -> VideoModel:
    """A model from any checkpoint PATCHES reads: pre-training, fine-tuning or probe checkpoints, VideoMAE's
    ``.pth``, ``.safetensors``, or a transformers folder.

    The model, grid and frame stride default to what the checkpoint records (as in extract_features.py);
    ``model``, ``grid`` and ``sampling_rate`` override them. ``class_names``: a list, or a file with one per
    line (default: the checkpoint's). ``device``: default cuda when present. Raises :class:`UsageError` (or
    ``CheckpointError``) naming what cannot be used."""
    path = str(path)
    if not Path(path).exists():
        raise UsageError(f"checkpoint {path} does not exist")
    loaded = read_any_checkpoint(path)  # read once: the model below is built from it, not from the file again
    ckpt = loaded.contents
    settings = _encoder_settings(ckpt, model, grid, sampling_rate)
    num_classes = head_classes(ckpt)
    names = _class_names(class_names, ckpt, path, num_classes)
    if ckpt.get("probe") in PROBES_WITH_WEIGHTS:  # the probe alone: its encoder is the checkpoint it names
        network = model_from_checkpoint(loaded).model
    else:  # the model extract_features.py builds for these settings (num_classes 0: no head)
        network = model_from_checkpoint(loaded, settings.model, settings.grid, settings.pos_embed,
                                        getattr(settings, "use_mean_pooling", None) is not False,
                                        num_classes=num_classes, model_key=settings.model_key).model
    preprocessing = Preprocessing(settings.grid, settings.sampling_rate, recorded_test_views(ckpt))
    return VideoModel(network.to(_device(device)), preprocessing, num_classes, names, path)


def create_model(name: str, grid: GridLike | None = None, **kwargs: Any) -> torch.nn.Module:
    """Any registered model (``vit_*`` classifiers, ``pretrain_videomae_*`` autoencoders) at ``grid``, with fresh
    weights. ``grid="SIZE/PATCH"`` keeps ``num_frames`` and ``tubelet_size`` (keywords, default 16 and 2);
    other keywords go to the model (``num_classes``, ``pos_embed``, ...)."""
    from patches.models.factory import create_video_model
    from patches.models.registry import DEFAULT_GRID
    if isinstance(grid, str):
        size, patch = parse_grid_spec(grid)
        grid = make_grid(kwargs.pop("num_frames", DEFAULT_GRID["num_frames"]),
                         kwargs.pop("tubelet_size", DEFAULT_GRID["tubelet_size"]), size, patch)
    elif grid is not None and not isinstance(grid, PatchGrid):
        raise UsageError(f"grid={grid!r}: pass a PatchGrid or 'SIZE/PATCH' such as '224/16'")
    try:
        return create_video_model(name, grid=grid, **kwargs)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _device(name: str | None) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as e:
        raise UsageError(_as_keywords(str(e))) from None
    except RuntimeError as e:  # torch's own, for a name that is no device
        raise UsageError(f"device {name}: {e}") from None


def _as_keywords(message: str) -> str:
    """A flag-worded message in this API's words: ``--amp`` -> ``amp``."""
    return re.sub(r"--(\w+)", r"\1", message)


def _encoder_settings(ckpt: dict[str, Any], model: str | None, grid: GridLike | None,
                      sampling_rate: int | None) -> argparse.Namespace:
    """The model, grid (``.grid``) and stride: the caller's, else the checkpoint's, else the fallback, resolved
    exactly as extract_features.py resolves its unset flags."""
    settings = argparse.Namespace(model=model, pos_embed=None, sampling_rate=sampling_rate, model_key="model|module",
                                  input_size=None, patch_size=None, num_frames=None, tubelet_size=None)
    if isinstance(grid, PatchGrid):
        settings.input_size, settings.patch_size = list(grid.input_size), grid.patch_size
        settings.num_frames, settings.tubelet_size = grid.num_frames, grid.tubelet_size
    elif grid is not None:
        size, settings.patch_size = parse_grid_spec(grid)
        settings.input_size = [size]
    values, grid = checkpoint_flag_values(settings, ckpt, CHECKPOINT_FALLBACK)
    return argparse.Namespace(**{**vars(settings), **values, "grid": grid})


def _class_names(given: Sequence[str] | str | Path | None, ckpt: dict[str, Any], path: str,
                 num_classes: int) -> list[str] | None:
    if isinstance(given, (str, Path)) and not Path(given).is_file():
        raise UsageError(f"class_names file {given} does not exist")
    if given is None or isinstance(given, (str, Path)):
        names = read_class_names(None if given is None else str(given), ckpt, path)
    else:
        names = [str(n) for n in given]
    if names is not None and num_classes and len(names) != num_classes:
        raise UsageError(f"{len(names)} class names for {path}, whose head has {num_classes} classes")
    return names
