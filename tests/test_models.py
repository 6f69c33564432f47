"""create_video_model: the registered names, VideoMAE's plain classifier names, grid keywords, old checkpoints."""
from pathlib import Path

import pytest
import timm
import torch

from patches.grid import make_grid
from patches.models.classifier import VideoClassifier
from patches.models.factory import create_video_model
from patches.models.pretrain import MaskedVideoAutoencoder
from patches.models.registry import VIT_SIZES

TINY = dict(decoder_depth=1)


def test_grid_flags_override_model_name_defaults():
    m = create_video_model("pretrain_videomae_micro_patch16_224", input_size=288)
    assert m.grid.patches_per_frame == 324 and m.grid.num_tokens == 8 * 324
    assert m.encoder.pos_embed.shape[1] == 8 * 324
    assert m.decoder.head.out_features == 2 * 16 * 16 * 3
    assert create_video_model("pretrain_videomae_micro_patch16_224").grid.patches_per_frame == 196


def test_plain_vit_names_build_the_classifier_and_pretrain_names_the_autoencoder():
    grid = dict(input_size=32, patch_size=16, num_frames=4)
    assert type(create_video_model("vit_micro_patch16_224", num_classes=3, **grid)) is VideoClassifier
    assert type(create_video_model("video_vit_micro_patch16_224", num_classes=3, **grid)) is VideoClassifier
    assert type(create_video_model("pretrain_videomae_micro_patch16_224", **grid, **TINY)) is MaskedVideoAutoencoder
    for size in VIT_SIZES:
        assert timm.is_model(f"video_vit_{size}_patch16_224")
        assert timm.is_model(f"pretrain_videomae_{size}_patch16_224")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"--model 'video_vit_giant_patch16_224' is not a PATCHES model; known: "
                                         r"pretrain_videomae_base_patch16_224, .*video_vit_tiny_patch16_224$"):
        create_video_model("vit_giant_patch16_224")


def test_pretrained_weights_are_not_downloaded():
    with pytest.raises(ValueError, match="no weights are downloaded"):
        create_video_model("vit_micro_patch16_224", pretrained=True)


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_checkpoints_written_before_the_renames_load_strictly(kind):
    fixtures = Path(__file__).resolve().parent / "fixtures" / "checkpoints_e228dd5"
    checkpoint = torch.load(fixtures / f"{kind}-checkpoint-0.pth", weights_only=True)
    args = checkpoint["args"]
    if kind == "pretrain":
        extra = dict(decoder_depth=args["decoder_depth"])
    else:
        extra = dict(num_classes=checkpoint["nb_classes"])
    model = create_video_model(args["model"], grid=make_grid(**checkpoint["grid"]), **extra)
    model.load_state_dict(checkpoint["model"], strict=True)
