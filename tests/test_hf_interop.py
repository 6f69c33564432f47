"""Hugging Face transformers interop: our checkpoints -> VideoMAE folders -> the same outputs, and back."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from patches.checkpoints import errors, writing
from patches.checkpoints.finetune_weights import load_finetune_weights
from patches.checkpoints.hf_videomae import hf_to_ours, read_hf_dir
from patches.cli import export_hf
from patches.data.masking import MaskGenerator
from patches.grid import make_grid
from patches.models.classifier import VideoClassifier
from patches.models.factory import create_video_model
from patches.models.pretrain import MaskedVideoAutoencoder, mask_to_index

# 2 frames, tubelet 2: one time slice of 196 or 324 patches.
GRIDS = {196: make_grid(2, 2, 224, 16), 324: make_grid(2, 2, 288, 16)}
TOL = 1e-4


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its initial value (zero biases, unit norms) so a swapped tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def save_ours(path: Path, net: torch.nn.Module, grid, **args) -> Path:
    state = writing.checkpoint_state(net, grid, argparse.Namespace(**args), epoch=3)
    return writing.save_checkpoint(path, state)


def clip_and_mask(grid, batch: int = 2):
    torch.manual_seed(1)
    videos = torch.randn(batch, 3, grid.num_frames, *grid.input_size)
    gen = MaskGenerator(grid, "random", 0.75, rng=np.random.default_rng(0))
    return videos, torch.stack([gen()[0] for _ in range(batch)])


def to_hf_layout(videos: torch.Tensor) -> torch.Tensor:
    return videos.permute(0, 2, 1, 3, 4)  # ours [B, C, T, H, W], transformers [B, T, C, H, W]


@pytest.mark.parametrize("per_frame", sorted(GRIDS))
def test_pretraining_export_matches_transformers(per_frame, tmp_path):
    grid = GRIDS[per_frame]
    model = perturb(MaskedVideoAutoencoder(grid, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                                              decoder_depth=1, decoder_num_heads=2))
    ckpt = save_ours(tmp_path / "pretrain.pth", model, grid, model="custom", normlize_target=False)
    out = export_hf.main([str(ckpt), str(tmp_path / "hf"), "--num_heads", "2", "--decoder_num_heads", "2"])

    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["image_size"], cfg["patch_size"], cfg["num_frames"], cfg["tubelet_size"]) == (
        grid.input_size[0], 16, 2, 2)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["decoder_hidden_size"],
            cfg["decoder_num_hidden_layers"]) == (32, 2, 16, 1)
    assert cfg["norm_pix_loss"] is False and cfg["use_mean_pooling"] is False

    hf, info = transformers.VideoMAEForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    videos, mask = clip_and_mask(grid)
    with torch.no_grad():
        ours = model(videos, mask_to_index(mask, False), mask_to_index(mask, True))
        theirs = hf(pixel_values=to_hf_layout(videos), bool_masked_pos=mask).logits
    assert ours.shape == theirs.shape == (2, int(0.75 * grid.num_tokens), grid.target_dim)
    assert (ours - theirs).abs().max().item() < TOL

    # And back: the folder's tensors, renamed to ours, are exactly the model we started from.
    back = hf_to_ours(read_hf_dir(out)[1])
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("per_frame", sorted(GRIDS))
def test_classifier_export_matches_transformers(per_frame, tmp_path):
    grid = GRIDS[per_frame]
    model = perturb(create_video_model("vit_micro_patch16_224", grid=grid, num_classes=5), seed=per_frame)
    # The heads (4) come from the model size named in the checkpoint's args.
    ckpt = save_ours(tmp_path / "ft.pth", model, grid, model="vit_micro_patch16_224", use_mean_pooling=True)
    labels = tmp_path / "classes.txt"
    labels.write_text("".join(f"class_{i}\n" for i in range(5)))
    out = export_hf.main([str(ckpt), str(tmp_path / "hf"), "--labels", str(labels)])

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_attention_heads"] == 4 and cfg["use_mean_pooling"] is True
    assert cfg["id2label"]["4"] == "class_4"
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(out).eval()
    assert hf.config.num_labels == 5
    videos, _ = clip_and_mask(grid)
    with torch.no_grad():
        diff = (model(videos) - hf(pixel_values=to_hf_layout(videos)).logits).abs().max().item()
    assert diff < TOL


def hf_classifier_dir(path: Path, grid, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A classifier made and saved by transformers itself (independent of our exporter)."""
    config = transformers.VideoMAEConfig(
        image_size=grid.input_size[0], patch_size=grid.patch_size, num_frames=grid.num_frames,
        tubelet_size=grid.tubelet_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, layer_norm_eps=1e-6, use_mean_pooling=True, num_labels=5)
    torch.manual_seed(seed)
    hf = perturb(transformers.VideoMAEForVideoClassification(config), seed)
    hf.save_pretrained(path)
    return path, hf


@pytest.mark.parametrize("per_frame", sorted(GRIDS))
def test_transformers_folder_as_finetune_source(per_frame, tmp_path):
    grid = GRIDS[per_frame]
    folder, hf = hf_classifier_dir(tmp_path / "hf", grid, seed=per_frame)
    model = VideoClassifier(grid, num_classes=5, embed_dim=32, depth=2, num_heads=2)
    report = load_finetune_weights(model, folder, verbose=False)
    assert not report.missing and not report.unexpected and not report.dropped
    assert report.source_grid == grid
    model.eval()
    videos, _ = clip_and_mask(grid)
    with torch.no_grad():
        diff = (model(videos) - hf(pixel_values=to_hf_layout(videos)).logits).abs().max().item()
    assert diff < TOL


def test_transformers_folder_at_another_grid_and_older_names(tmp_path):
    """An HF folder at 196 patches/frame starts a 324-patch model; older q_bias/v_bias names are read too."""
    from safetensors.torch import load_file, save_file
    folder, hf = hf_classifier_dir(tmp_path / "hf", GRIDS[196])
    weights = folder / "model.safetensors"
    renamed = {k.replace("attention.attention.query.bias", "attention.attention.q_bias")
               .replace("attention.attention.value.bias", "attention.attention.v_bias"): v
               for k, v in load_file(str(weights)).items()}
    assert any(k.endswith("q_bias") for k in renamed)
    save_file(renamed, str(weights), metadata={"format": "pt"})

    model = VideoClassifier(GRIDS[324], num_classes=5, embed_dim=32, depth=2, num_heads=2)
    report = load_finetune_weights(model, folder, verbose=False)
    assert report.source_grid == GRIDS[196] and report.model_grid == GRIDS[324]
    assert not report.missing and not report.unexpected
    q_bias = hf.videomae.encoder.layer[1].attention.attention.query.bias
    assert torch.equal(model.blocks[1].attn.q_bias, q_bias)


def test_bad_folders_and_unexportable_models_are_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.CheckpointError, match="model.safetensors missing"):
        load_finetune_weights(VideoClassifier(GRIDS[196], num_classes=5, embed_dim=32, depth=1, num_heads=2),
                              tmp_path / "empty", verbose=False)
    learned = VideoClassifier(GRIDS[196], num_classes=5, embed_dim=32, depth=1, num_heads=2, pos_embed="learned")
    ckpt = save_ours(tmp_path / "learned.pth", learned, GRIDS[196], pos_embed="learned", num_heads=2)
    with pytest.raises(SystemExit, match="only has the fixed 1-D sin-cos table"):
        export_hf.main([str(ckpt), str(tmp_path / "out")])
    flexible = VideoClassifier(GRIDS[196], num_classes=5, embed_dim=32, depth=1, num_heads=2, pos_embed="3d")
    state = writing.checkpoint_state(flexible, GRIDS[196], argparse.Namespace(num_heads=2), epoch=3,
                                        grids=[GRIDS[196].to_dict(), make_grid(2, 2, 224, 8).to_dict()])
    with pytest.raises(SystemExit, match="'3d' position table.*A flexible-grid checkpoint"):
        export_hf.main([str(writing.save_checkpoint(tmp_path / "flexible.pth", state)), str(tmp_path / "out")])
    plain = save_ours(tmp_path / "plain.pth", VideoClassifier(GRIDS[196], num_classes=5, embed_dim=48, depth=1,
                                                                num_heads=2), GRIDS[196], model="custom")
    with pytest.raises(SystemExit) as stop:  # a flag only the user can give: a usage error
        export_hf.main([str(plain), str(tmp_path / "out")])
    assert stop.value.code == 2 and "pass --num_heads" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_export_hf_exits_2_for_a_path_it_cannot_use_and_1_for_a_checkpoint_it_cannot_read(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    for argv in ([str(tmp_path / "missing.pth"), str(tmp_path / "out")],
                 [str(tmp_path / "a_file"), str(tmp_path / "a_file")],
                 [str(tmp_path / "a_file"), str(tmp_path / "out"), "--labels", str(tmp_path / "no_labels.txt")]):
        with pytest.raises(SystemExit) as stop:
            export_hf.main(argv)
        assert stop.value.code == 2, argv
    assert "missing.pth: no such checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        export_hf.main([str(tmp_path / "a_file"), str(tmp_path / "out")])
    assert "is not a PyTorch checkpoint" in str(stop.value.code)  # status 1, with its message
