"""VideoMAE's reference pre-training loader (decord, per-frame PIL crops), the baseline the loader bench compares
with."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

# ---- the reference pipeline ---------------------------------------------------------------------------

class ReferencePretrainDataset(Dataset):
    """VideoMAE's reference pre-training loading, for comparison: items as :class:`datasets.VideoMAEPretrainDataset`.

    Per video (one decode; ``num_sample`` clips are ``num_sample`` augmentations of it, as in VideoMAE V2's
    pre-training dataset): decord reads all ``num_frames * sampling_rate`` frames of a span starting uniformly in
    ``[0, len - span]``; the clip's ``num_frames`` frames (every ``sampling_rate``-th) become PIL images
    (``.convert("RGB")`` as in VideoMAE). Per clip, GroupMultiScaleCrop cuts the same box (same scales and fixed
    positions as ours) from each and resizes it to ``input_size`` with PIL bilinear; Stack, ToTorchFormatTensor
    (``/255``) and GroupNormalize (one channel at a time) make ``[T*3, H, W]``, viewed as ``[3, T, H, W]``. No flip (the
    reference's pre-training has none). Items are ``(item, ())`` so that ``CollateWithBad`` batches them.
    """

    def __init__(self, paths: Sequence[str], grid: Any, sampling_rate: int, mask_generator: Any,
                 num_sample: int = 1) -> None:
        from patches.data.transforms import PRETRAIN_SCALES

        self.paths, self.grid, self.sampling_rate = list(paths), grid, sampling_rate
        self.mask_generator, self.num_sample, self.scales = mask_generator, num_sample, PRETRAIN_SCALES

    def __len__(self) -> int:
        return len(self.paths)

    def frames(self, path: str, rng: np.random.Generator) -> list:
        """One clip's ``num_frames`` frames as PIL RGB images: decord reads the whole span, every
        ``sampling_rate``-th frame is kept."""
        import decord
        from PIL import Image

        reader = decord.VideoReader(path, num_threads=1)
        span = self.grid.num_frames * self.sampling_rate
        start = int(rng.integers(max(len(reader) - span, 0) + 1))
        frames = reader.get_batch([(start + i) % len(reader) for i in range(span)]).asnumpy()
        return [Image.fromarray(frames[i]).convert("RGB") for i in range(0, span, self.sampling_rate)]

    def augment(self, images: list, rng: np.random.Generator) -> torch.Tensor:
        """One augmentation of a clip's PIL frames: crop, resize, stack, scale and normalise, ``[3, T, H, W]``."""
        from PIL import Image
        from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        from patches.data.transforms import multi_scale_crop_params

        t, (out_h, out_w) = self.grid.num_frames, self.grid.input_size
        # GroupMultiScaleCrop: one box for the group, PIL crop + bilinear resize per frame
        top, left, ch, cw = multi_scale_crop_params(images[0].height, images[0].width, (out_h, out_w),
                                                    self.scales, rng=rng)
        images = [im.crop((left, top, left + cw, top + ch)).resize((out_w, out_h), Image.BILINEAR)
                  for im in images]
        stacked = np.concatenate(images, axis=2)  # Stack: [H, W, 3T]
        tensor = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)  # ToTorchFormatTensor
        for channel, m, s in zip(tensor, IMAGENET_DEFAULT_MEAN * t, IMAGENET_DEFAULT_STD * t):  # GroupNormalize
            channel.sub_(m).div_(s)
        return tensor.view(t, 3, out_h, out_w).transpose(0, 1)

    def __getitem__(self, index: int):
        from patches.data.clip_sampling import torch_seeded_rng

        rng = torch_seeded_rng()
        images = self.frames(self.paths[index], rng)
        videos, enc, dec = [], [], []
        for _ in range(self.num_sample):
            videos.append(self.augment(images, rng))
            e, d = self.mask_generator()
            enc.append(e)
            dec.append(d)
        if self.num_sample == 1:
            return (videos[0], enc[0], dec[0]), ()
        return (videos, enc, dec), ()


# ---- the RGB-first path the YUV crops replaced ---------------------------------------------------------

def rgb_first_clips(source: Any, picks: Sequence[np.ndarray], transform: Any,
                    rng: np.random.Generator) -> list[torch.Tensor]:
    """Pre-training clips as the loader made them before :mod:`patches.data.yuv_crops`: every needed frame
    converted whole to RGB, then each clip cut, resized and flipped (``transform``, a ``PretrainTransform``).
    :func:`patches.data.pretraining_clips.pretraining_clips` must give the same clips, within rounding."""
    from patches.data.video_reader import decode_clips

    return [transform(clip, rng) for clip in decode_clips(source, picks)]
