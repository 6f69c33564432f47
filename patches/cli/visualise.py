"""See what a pre-trained model reconstructs: original frames, the masked input, and the reconstruction.

    python run_videomae_vis.py --img_path clip.mp4 --model_path output/pretrain/checkpoint-799.pth \\
        --save_path vis/ --mask_ratio 0.9 --mask_type tube

writes ``vis/clip_reconstruction.png`` (rows: original / masked / reconstruction; one column per frame)
and ``vis/clip_reconstruction.gif`` (the three side by side, one GIF frame per clip frame). A
``--save_path`` ending in ``.png`` names the picture itself; the GIF goes next to it.

The patch grid is the checkpoint's own (any granularity it was trained at); only the frame sampling
(``--sampling_rate``) may differ from training. A flexible-grid checkpoint (``run_mae_pretraining.py --grids``)
also reconstructs at any other ``--grid SIZE/PATCH``, trained or not (the kernel PI-resized on the fly, the
3-D table on the checkpoint's reference). ``.safetensors`` weights written with
``--save_safetensors`` work too (their grid and flags are in the file's metadata).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.models import pretrain_model_from_checkpoint
from patches.cli.exits import exits_on_error
from patches.data.masking import MASK_TYPES, MaskGenerator
from patches.data.transforms import EvalTransform, denormalize
from patches.errors import UsageError
from patches.grid import GridError, PatchGrid, make_grid, parse_grid_spec
from patches.models.pretrain import MaskedVideoAutoencoder, mask_to_index, patchify, unpatchify
from patches.utils.devices import resolve_device

MASK_FILL = 0.5  # hidden patches are shown mid-grey
GIF_FRAME_MS = 250


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PATCHES reconstruction visualisation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img_path", required=True, help="the video to reconstruct")
    p.add_argument("--save_path", required=True, help="output folder, or a .png file name")
    p.add_argument("--model_path", required=True, help="pre-training checkpoint (.pth or .safetensors)")
    p.add_argument("--mask_ratio", type=float, default=None, help="share of tokens hidden (default: the checkpoint's)")
    p.add_argument("--mask_type", choices=MASK_TYPES, default=None, help="default: the checkpoint's")
    p.add_argument("--num_frames", type=int, default=None,
                   help="frames per clip; must equal the checkpoint grid's (it is part of the grid)")
    p.add_argument("--sampling_rate", type=int, default=None, help="frame stride (default: the checkpoint's)")
    p.add_argument("--grid", default=None, metavar="SIZE/PATCH",
                   help="reconstruct at this grid (e.g. 96/8); needs a flexible-grid checkpoint (pre-trained with "
                        "--grids), whose grids it need not be among (default: the checkpoint's grid)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mask")
    p.add_argument("--scale", type=int, default=1, help="enlarge the pictures by this factor (nearest neighbour)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    return p


# ---------------------------------------------------------------- model

def chosen_grid(spec: str, model: MaskedVideoAutoencoder, grids: list[PatchGrid]) -> PatchGrid:
    """``--grid SIZE/PATCH`` at the model's frames and tubelet: any grid for a flexible-grid checkpoint (one
    that records several ``grids``), only its own otherwise. Raises GridError saying why."""
    size, patch = parse_grid_spec(spec)
    base = model.grid
    grid = make_grid(base.num_frames, base.tubelet_size, size, patch, base.in_chans)
    if grid != base and len(grids) < 2:
        raise GridError(f"--grid {spec}: the checkpoint was pre-trained at {base.spec} only; other grids need a "
                        f"flexible-grid checkpoint (run_mae_pretraining.py --grids)")
    if grid != base and model.pos_embed_type != "3d":
        raise GridError(f"--grid {spec}: the model's '{model.pos_embed_type}' position table is for "
                        f"{base.spec} only (flexible grids need --pos_embed 3d)")
    return grid


# ---------------------------------------------------------------- clip and reconstruction

def load_clip(path: str | Path, grid: PatchGrid, sampling_rate: int) -> torch.Tensor:
    """The middle clip of a video: ``grid.num_frames`` frames ``sampling_rate`` apart (looping a short video),
    short side resized and centre-cropped to the grid's input size. Normalised float ``[C, T, H, W]``."""
    from patches.data.video_reader import open_video, read_frames
    reader = open_video(str(path))
    n = len(reader)
    span = grid.num_frames * sampling_rate
    start = max(0, (n - span) // 2)
    picks = (start + np.arange(grid.num_frames) * sampling_rate) % n
    needed = np.unique(picks)
    frames = read_frames(reader, needed, str(path))[torch.from_numpy(np.searchsorted(needed, picks))]
    return EvalTransform(grid.input_size)(frames)[0]


def unnormalize_patches(pred: torch.Tensor, truth: torch.Tensor, in_chans: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """Undo the per-patch target normalisation of :func:`modeling_pretrain.pixel_targets` with the mean and
    std (per patch and channel) of the true pixels ``truth``; both [..., tubelet*p*p*C], channel last."""
    t = truth.unflatten(-1, (-1, in_chans))
    mean, std = t.mean(dim=-2, keepdim=True), t.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps
    return (pred.unflatten(-1, (-1, in_chans)) * std + mean).flatten(-2)


@torch.no_grad()
def reconstruct(model: MaskedVideoAutoencoder, video: torch.Tensor, mask: torch.Tensor, grid: PatchGrid,
                normalize_target: bool) -> dict[str, torch.Tensor]:
    """Original, masked input and reconstruction of one normalised clip ``[C, T, H, W]``, as ``[C, T, H, W]``
    pixels in [0, 1]. ``mask`` [N] is True for the hidden tokens.

    With normalised targets the model predicts each hidden patch standardised per channel, so its
    prediction is mapped back with the mean and std of that patch's true pixels (as VideoMAE's
    visualisation does); visible patches always show their true pixels.
    """
    device = next(model.parameters()).device
    pixels = (denormalize(video.float()) / 255.0).clamp(0, 1)
    patches = patchify(pixels[None], grid)  # [1, N, q*p*p*C], channel last
    hidden = mask_to_index(mask[None], select=True)
    pred = model(video[None].to(device), mask_to_index(mask[None], select=False).to(device),
                 hidden.to(device), grid=grid).float().cpu()
    pred = pred[0]
    if normalize_target:
        pred = unnormalize_patches(pred, patches[0, hidden[0]], grid.in_chans)
    recon, masked = patches.clone(), patches.clone()
    recon[0, hidden[0]] = pred.clamp(0, 1)
    masked[0, hidden[0]] = MASK_FILL
    return {"original": pixels, "masked": unpatchify(masked, grid)[0],
            "reconstruction": unpatchify(recon, grid)[0], "mask": mask}


def hidden_pixel_mse(views: dict[str, torch.Tensor], grid: PatchGrid, name: str) -> float:
    """Mean squared error against the original over the hidden patches only."""
    hidden = views["mask"]
    diff = patchify(views[name][None], grid)[0, hidden] - patchify(views["original"][None], grid)[0, hidden]
    return float(diff.pow(2).mean())


# ---------------------------------------------------------------- pictures

def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """[C, T, H, W] in [0, 1] -> uint8 [T, H, W, C]."""
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def frame_grid(views: dict[str, torch.Tensor], scale: int = 1):
    """One PIL image: rows original / masked / reconstruction, one column per frame."""
    from PIL import Image
    rows = [np.concatenate(list(_to_uint8(views[k])), axis=1) for k in ("original", "masked", "reconstruction")]
    img = Image.fromarray(np.concatenate(rows, axis=0))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def side_by_side_frames(views: dict[str, torch.Tensor], scale: int = 1) -> list:
    """One PIL image per clip frame: original | masked | reconstruction."""
    from PIL import Image
    clips = [_to_uint8(views[k]) for k in ("original", "masked", "reconstruction")]
    out = []
    for t in range(clips[0].shape[0]):
        img = Image.fromarray(np.concatenate([c[t] for c in clips], axis=1))
        out.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img)
    return out


def output_paths(save_path: str | Path, video_path: str | Path) -> tuple[Path, Path]:
    save_path = Path(save_path)
    png = save_path if save_path.suffix.lower() == ".png" else save_path / f"{Path(video_path).stem}_reconstruction.png"
    return png, png.with_suffix(".gif")


@exits_on_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Returns the written paths, the grid, and the hidden-patch MSE of the masked input and of the reconstruction.
    Exit status 2 for a usage error (a flag, the grid), 1 for a checkpoint or video that cannot be read."""
    a = get_args_parser().parse_args(argv)
    if not Path(a.img_path).is_file():
        raise UsageError(f"--img_path {a.img_path} does not exist")
    if a.scale < 1:
        raise UsageError(f"--scale must be at least 1, got {a.scale}")
    try:
        device = resolve_device(a.device)
        loaded = pretrain_model_from_checkpoint(a.model_path)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: --model_path: {e}")
    model, grid, args, trained = loaded.model.to(device), loaded.grid, loaded.recorded_args, loaded.trained_grids
    if a.grid is not None:
        grid = chosen_grid(a.grid, model, trained)  # a GridError: a usage error
    if a.num_frames is not None and a.num_frames != grid.num_frames:
        raise UsageError(f"--num_frames {a.num_frames}: the checkpoint's grid has {grid.num_frames} frames "
                         f"({grid.describe()}); only the sampling may change")
    sampling_rate = a.sampling_rate or int(args.get("sampling_rate") or 4)
    mask_type = a.mask_type or args.get("mask_type") or "tube"
    mask_ratio = a.mask_ratio if a.mask_ratio is not None else float(args.get("mask_ratio") or 0.75)
    normalize_target = bool(args.get("normlize_target", True))
    try:
        mask = MaskGenerator(grid, mask_type, mask_ratio, rng=np.random.default_rng(a.seed))()[0]
        video = load_clip(a.img_path, grid, sampling_rate)
    except RuntimeError as e:  # the video cannot be decoded (a GridError is a usage error: status 2)
        raise SystemExit(f"error: {e}")
    views = reconstruct(model, video, mask, grid, normalize_target)

    png, gif = output_paths(a.save_path, a.img_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    frame_grid(views, a.scale).save(png)
    frames = side_by_side_frames(views, a.scale)
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0)
    result = {"png": png, "gif": gif, "grid": grid,
              "mse_masked": hidden_pixel_mse(views, grid, "masked"),
              "mse_reconstruction": hidden_pixel_mse(views, grid, "reconstruction")}
    if len(trained) > 1:
        print(f"Flexible-grid checkpoint trained on grids {', '.join(g.spec for g in trained)}; run at {grid.spec}")
    print(f"Grid: {grid.describe()}; {mask_type} mask {mask_ratio}: {int(mask.sum())} of {grid.num_tokens} tokens "
          f"hidden; {'normalised' if normalize_target else 'raw'} pixel targets")
    print(f"MSE over hidden patches: masked input {result['mse_masked']:.4f}, "
          f"reconstruction {result['mse_reconstruction']:.4f}")
    print(f"Wrote {png} and {gif}")
    return result


if __name__ == "__main__":
    main()
