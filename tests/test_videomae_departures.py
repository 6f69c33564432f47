"""The departures from VideoMAE that issue 30 removed or put behind a flag (RECIPES.md, "Where PATCHES departs"):
bicubic RandAugment where bicubic is asked, fc_norm's start, and where list files' relative paths point."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from patches.checkpoints import writing
from patches.checkpoints.for_finetuning import load_finetune
from patches.cli import finetune as run_class_finetuning
from patches.config.finetuning import resolve_finetuning
from patches.data.augment import MEAN_PIXEL, VideoRandAugment
from patches.data.lists import parse_list_file, read_labelled_list
from patches.grid import make_grid
from patches.models.factory import create_video_model


def _geometric(interpolation: str, clip: torch.Tensor, op: str = "Rotate", magnitude: float = 20.0) -> torch.Tensor:
    """One RandAugment op on ``clip``, as RandAugment applies it (degrees for Rotate, tan(angle) for shears)."""
    augment = VideoRandAugment(1, 9, interpolation)
    return augment.op._apply_image_or_video_transform(clip, op, magnitude, augment.op.interpolation,
                                                      augment.op._fill)


def test_bicubic_randaugment_resamples_bicubic_as_pil_does() -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F
    clip = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for op, magnitude in (("Rotate", 20.0), ("ShearX", 0.2)):
        bicubic, bilinear = _geometric("bicubic", clip, op, magnitude), _geometric("bilinear", clip, op, magnitude)
        assert bicubic.dtype == torch.uint8 and bicubic.shape == clip.shape
        assert (bicubic != bilinear).float().mean() > 0.3, op  # bicubic no longer runs as bilinear
    # VideoMAE's RandAugment rotates each frame's PIL image with PIL's bicubic filter: the same pixels
    pil = torch.stack([F.pil_to_tensor(F.rotate(F.to_pil_image(frame), 20.0, interpolation=InterpolationMode.BICUBIC,
                                                fill=list(MEAN_PIXEL))) for frame in clip])
    assert torch.equal(_geometric("bicubic", clip), pil)
    # random: bilinear or bicubic, drawn per op from torch's RNG
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = _geometric("random", clip)
        seen.add("bicubic" if torch.equal(out, pil) else "bilinear" if torch.equal(out, _geometric("bilinear", clip))
                 else "other")
    assert seen == {"bicubic", "bilinear"}
    colour = _geometric("bicubic", clip, "Brightness", 0.3)  # non-geometric ops are not resampled
    assert torch.equal(colour, _geometric("bilinear", clip, "Brightness", 0.3))


@pytest.fixture(scope="module")
def pretrain_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    grid = make_grid(4, 2, 32, 16)
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=grid, decoder_depth=1)
    with torch.no_grad():
        model.encoder.norm.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "pretrain.pth"
    writing.save_checkpoint(path, writing.checkpoint_state(model, grid, argparse.Namespace(pos_embed="1d"), epoch=1))
    return path, model.state_dict()


def test_fc_norm_starts_as_videomae_by_default_and_from_the_encoder_norm_on_request(
        pretrain_checkpoint: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, weights = pretrain_checkpoint
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    parser = run_class_finetuning.get_args_parser()
    common = ["--finetune", str(path), "--nb_classes", "5", "--dry_run", "--output_dir", str(tmp_path)]
    for flags, expected in (([], "fresh"), (["--fc_norm_init", "encoder_norm"], "encoder_norm")):
        run = resolve_finetuning(parser.parse_args(common + flags))
        assert run.weights.fc_norm_init == expected
        model = create_video_model("vit_micro_patch16_224", grid=make_grid(4, 2, 32, 16), num_classes=5)
        load_finetune(str(path), model, None, fc_norm_init=run.weights.fc_norm_init)
        assert torch.equal(model.blocks[0].norm1.weight, weights["encoder.blocks.0.norm1.weight"])
        if expected == "fresh":  # VideoMAE: the encoder's norm is ignored, fc_norm keeps ones and zeros
            assert torch.equal(model.fc_norm.weight, torch.ones_like(model.fc_norm.weight))
            assert torch.equal(model.fc_norm.bias, torch.zeros_like(model.fc_norm.bias))
        else:
            assert torch.equal(model.fc_norm.weight, weights["encoder.norm.weight"])


def test_list_paths_are_taken_from_the_working_directory_first(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    work, lists = tmp_path / "work", tmp_path / "lists"
    (work / "videos").mkdir(parents=True)
    (lists / "videos").mkdir(parents=True)
    (work / "videos" / "a.mp4").write_bytes(b"")  # exists under the working directory (as VideoMAE reads it)
    (lists / "videos" / "b.mp4").write_bytes(b"")  # exists only next to the list file
    (work / "frames" / "f1").mkdir(parents=True)  # a frame folder, relative to the working directory
    list_file = lists / "train.csv"
    list_file.write_text("videos/a.mp4 0\nvideos/b.mp4 1\nvideos/c.mp4 2\n/abs/d.mp4 3\n")
    monkeypatch.chdir(work)
    assert parse_list_file(list_file) == [(str(work / "videos" / "a.mp4"), 0), (str(lists / "videos" / "b.mp4"), 1),
                                          (str(lists / "videos" / "c.mp4"), 2), ("/abs/d.mp4", 3)]
    # --data_root wins over both
    assert parse_list_file(list_file, data_root="/root")[0] == (os.path.join("/root", "videos/a.mp4"), 0)
    frames = lists / "ssv2.csv"
    frames.write_text("frames/f1 30 4\n")
    [record] = read_labelled_list(frames, frame_folders=True)
    assert (record.path, record.num_frames, record.label) == (str(work / "frames" / "f1"), 30, 4)
