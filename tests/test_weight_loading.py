import argparse

import pytest
import torch
import torch.nn.functional as F

from patches.checkpoints import errors, file_format, model_state, reading, writing
from patches.checkpoints.finetune_weights import load_finetune_weights
from patches.checkpoints.resampling import interpolate_pos_embed, resize_patch_embed
from patches.grid import make_grid
from patches.models.factory import create_video_model
from patches.models.layers import build_pos_table

MICRO = "vit_micro_patch16_224"
PRETRAIN_MICRO = "pretrain_videomae_micro_patch16_224"
DIM, DEPTH = 128, 4
BLOCK_PARAMS = {  # name -> shape, for a block of width d (VideoMAE's release layout)
    "norm1.weight": lambda d: (d,), "norm1.bias": lambda d: (d,),
    "attn.qkv.weight": lambda d: (3 * d, d), "attn.q_bias": lambda d: (d,), "attn.v_bias": lambda d: (d,),
    "attn.proj.weight": lambda d: (d, d), "attn.proj.bias": lambda d: (d,),
    "norm2.weight": lambda d: (d,), "norm2.bias": lambda d: (d,),
    "mlp.fc1.weight": lambda d: (4 * d, d), "mlp.fc1.bias": lambda d: (4 * d,),
    "mlp.fc2.weight": lambda d: (d, 4 * d), "mlp.fc2.bias": lambda d: (d,),
}


def save(path, model, grid, **args):
    return writing.save_checkpoint(path, writing.checkpoint_state(model, grid, argparse.Namespace(**args), epoch=1))


def classifier(grid, **kw):
    return create_video_model(MICRO, grid=grid, **{"num_classes": 5, **kw})


def core_equal(model, sd, prefix=""):
    """Every patch_embed.* / blocks.* tensor of the model whose shape matches equals the checkpoint's."""
    compared = 0
    for name, value in model.state_dict().items():
        if name.startswith(("patch_embed.", "blocks.")) and sd[prefix + name].shape == value.shape:
            assert torch.equal(value, sd[prefix + name]), name
            compared += 1
    return compared


def release_trunk(d=DIM, depth=DEPTH, prefix="", tubelet=2, patch=16):
    gen = torch.Generator().manual_seed(0)
    sd = {f"{prefix}patch_embed.proj.weight": torch.randn(d, 3, tubelet, patch, patch, generator=gen),
          f"{prefix}patch_embed.proj.bias": torch.randn(d, generator=gen)}
    for i in range(depth):
        for name, shape in BLOCK_PARAMS.items():
            sd[f"{prefix}blocks.{i}.{name}"] = torch.randn(shape(d), generator=gen)
    return sd


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory):
    """Our pre-training model's checkpoint at 16 frames x 224/16 (196 patches per frame)."""
    torch.manual_seed(0)
    grid = make_grid(16, 2, 224, 16)
    model = create_video_model(PRETRAIN_MICRO, grid=grid, decoder_depth=1)
    path = save(tmp_path_factory.mktemp("ckpt") / "pretrain.pth", model, grid, pos_embed="1d")
    return path, model.state_dict(), grid


@pytest.mark.parametrize("frames,size,per_frame", [(16, 288, 324), (8, 224, 196)])
def test_pretrain_checkpoint_loads_at_another_grid(pretrain_ckpt, frames, size, per_frame):
    path, sd, src = pretrain_ckpt
    grid = make_grid(frames, 2, size, 16)
    assert grid.patches_per_frame == per_frame and src.patches_per_frame == 196
    model = classifier(grid)
    report = load_finetune_weights(model, path, verbose=False)
    assert report.source_grid == src
    assert core_equal(model, sd, "encoder.") == 2 + 13 * DEPTH
    assert torch.equal(model.fc_norm.weight, sd["encoder.norm.weight"])
    assert sorted(report.missing) == ["head.bias", "head.weight"]
    assert not report.unexpected and not report.resized
    assert any(d.startswith("mask_token") for d in report.dropped)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, frames, size, size))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_norm_to_fc_norm_can_be_switched_off(pretrain_ckpt):
    path, sd, _ = pretrain_ckpt
    model = classifier(pretrain_ckpt[2])
    report = load_finetune_weights(model, path, verbose=False, norm_to_fc_norm=False)
    assert "fc_norm.weight" in report.missing
    assert torch.equal(model.fc_norm.weight, torch.ones(DIM))


def embed_no_bias(model, x):
    return model.patch_embed.proj(x) - model.patch_embed.proj.bias.view(1, -1, 1, 1, 1)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def per_frame_resize(x, size):
    b, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    out = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=False)
    return out.reshape(b, t, c, *out.shape[-2:]).permute(0, 2, 1, 3, 4)


def one_patch_checkpoint(tmp_path, tubelet, patch):
    """A classifier whose clips are one patch per frame, saved; returns (path, model)."""
    grid = make_grid(2, tubelet, patch, patch)
    old = classifier(grid)
    return save(tmp_path / f"p{patch}.pth", old, grid), old


def test_patch_upsampling_resize_is_exact(tmp_path):
    path, old = one_patch_checkpoint(tmp_path, 2, 8)
    new = classifier(make_grid(2, 2, 16, 16))
    report = load_finetune_weights(new, path, verbose=False)
    assert [r.split(" ")[0] for r in report.resized] == ["patch_embed.proj.weight"]
    x_old = torch.randn(6, 3, 2, 8, 8)
    with torch.no_grad():
        err = rel_err(embed_no_bias(new, per_frame_resize(x_old, 16)), embed_no_bias(old, x_old))
    assert err < 1e-3


def test_patch16_starts_patch12_model(tmp_path):
    path, old = one_patch_checkpoint(tmp_path, 2, 16)
    new = classifier(make_grid(2, 2, 12, 12))
    load_finetune_weights(new, path, verbose=False)
    # Exact case of the theory when shrinking: patches in the row space of the 16 -> 12 resize, i.e.
    # x = R^T y, built here as the gradient of the resize (independent of the module's matrix).
    probe = torch.zeros(6 * 2, 3, 16, 16, requires_grad=True)
    shrunk = F.interpolate(probe, size=12, mode="bilinear", align_corners=False, antialias=False)
    (rows,) = torch.autograd.grad(shrunk, probe, grad_outputs=torch.randn(6 * 2, 3, 12, 12))
    x_old = rows.reshape(6, 2, 3, 16, 16).permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        assert rel_err(embed_no_bias(new, per_frame_resize(x_old, 12)), embed_no_bias(old, x_old)) < 1e-4
        # Smooth content (bilinear upsampling of a 4x4 pattern) is approximately preserved.
        smooth = per_frame_resize(torch.randn(6, 3, 2, 4, 4), 16)
        assert rel_err(embed_no_bias(new, per_frame_resize(smooth, 12)), embed_no_bias(old, smooth)) < 0.1


@pytest.mark.parametrize("t_old,t_new", [(2, 1), (1, 2), (4, 2), (2, 3)])
def test_tubelet_resize_preserves_still_clips(t_old, t_new):
    w = torch.randn(16, 3, t_old, 4, 4, dtype=torch.float64)
    w_new = resize_patch_embed(w, (t_new, 4, 4))
    assert w_new.shape == (16, 3, t_new, 4, 4)
    assert torch.allclose(w_new.sum(2), w.sum(2))
    frame = torch.randn(5, 3, 1, 4, 4, dtype=torch.float64)
    old = F.conv3d(frame.expand(-1, -1, t_old, -1, -1), w)
    new = F.conv3d(frame.expand(-1, -1, t_new, -1, -1), w_new)
    assert torch.allclose(old, new)
    if (t_old, t_new) == (2, 1):
        assert torch.allclose(w_new[:, :, 0], w[:, :, 0] + w[:, :, 1])
    if (t_old, t_new) == (1, 2):
        assert torch.allclose(w_new[:, :, 0], w[:, :, 0] / 2) and torch.allclose(w_new[:, :, 1], w[:, :, 0] / 2)


def test_tubelet_change_through_the_loader(pretrain_ckpt):
    path, sd, _ = pretrain_ckpt
    new = classifier(make_grid(1, 1, 16, 16))
    report = load_finetune_weights(new, path, verbose=False)
    assert "kernel 2x16x16 -> 1x16x16" in report.resized[0]
    frame = torch.randn(3, 3, 1, 16, 16)
    with torch.no_grad():
        still = F.conv3d(frame.expand(-1, -1, 2, -1, -1), sd["encoder.patch_embed.proj.weight"],
                         sd["encoder.patch_embed.proj.bias"], stride=(2, 16, 16))
        assert rel_err(new.patch_embed.proj(frame), still) < 1e-5


def videomae_pretrain_release(d=DIM, depth=DEPTH, dec=64, dec_depth=2):
    sd = release_trunk(d, depth, prefix="encoder.")
    sd["encoder.norm.weight"], sd["encoder.norm.bias"] = torch.rand(d) + 0.5, torch.randn(d)
    sd["encoder_to_decoder.weight"] = torch.randn(dec, d)
    sd["mask_token"] = torch.randn(1, 1, dec)
    for i in range(dec_depth):
        for name, shape in BLOCK_PARAMS.items():
            sd[f"decoder.blocks.{i}.{name}"] = torch.randn(shape(dec))
    sd["decoder.norm.weight"], sd["decoder.norm.bias"] = torch.ones(dec), torch.zeros(dec)
    sd["decoder.head.weight"], sd["decoder.head.bias"] = torch.randn(1536, dec), torch.zeros(1536)
    return sd


def test_videomae_pretrain_release_layout(tmp_path):
    sd = videomae_pretrain_release()
    path = writing.save_checkpoint(tmp_path / "videomae_pretrain.pth", {"model": sd})
    model = classifier(make_grid(8, 2, 112, 16))
    report = load_finetune_weights(model, path, verbose=False)
    assert set(report.missing) <= {"head.weight", "head.bias"}
    assert not report.unexpected
    assert core_equal(model, sd, "encoder.") == 2 + 13 * DEPTH
    assert "assumed" in report.grid_note and report.source_grid == make_grid(16, 2, 224, 16)
    dropped = {d.split(" ")[0] for d in report.dropped}
    assert {"mask_token", "encoder_to_decoder.weight", "decoder.head.weight"} <= dropped


def videomae_finetuned_release(num_classes=10):
    sd = release_trunk()
    sd["fc_norm.weight"], sd["fc_norm.bias"] = torch.rand(DIM), torch.randn(DIM)
    sd["head.weight"], sd["head.bias"] = torch.randn(num_classes, DIM), torch.randn(num_classes)
    return sd


def test_videomae_finetuned_release_layout(tmp_path):
    sd = videomae_finetuned_release()
    path = writing.save_checkpoint(tmp_path / "videomae_ft.pth", {"module": sd, "epoch": 3})
    model = classifier(make_grid(16, 2, 224, 16), num_classes=10)
    report = load_finetune_weights(model, path, model_key="module", verbose=False)
    assert not report.missing and not report.unexpected and not report.dropped
    for name in ("fc_norm.weight", "head.weight", "head.bias"):
        assert torch.equal(model.state_dict()[name], sd[name])
    assert core_equal(model, sd) == 2 + 13 * DEPTH


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "_orig_mod.encoder."])
def test_compiled_and_wrapped_names(tmp_path, prefix):
    sd = {prefix + k: v for k, v in videomae_finetuned_release().items()}
    path = writing.save_checkpoint(tmp_path / "compiled.pth", {"model": sd})
    model = classifier(make_grid(4, 2, 32, 16), num_classes=10)
    report = load_finetune_weights(model, path, verbose=False)
    assert not report.missing and not report.unexpected
    assert core_equal(model, sd, prefix) == 2 + 13 * DEPTH


def test_model_prefix_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    sd = {"student." + k: v for k, v in videomae_finetuned_release().items()}
    path = tmp_path / "weights.safetensors"
    save_file(sd, str(path))
    model = classifier(make_grid(4, 2, 32, 16), num_classes=10)
    report = load_finetune_weights(model, path, model_prefix="student", verbose=False)
    assert not report.missing and not report.unexpected
    assert core_equal(model, sd, "student.") == 2 + 13 * DEPTH


def test_head_dropped_when_class_count_differs(tmp_path):
    path = writing.save_checkpoint(tmp_path / "ft.pth", {"model": videomae_finetuned_release(num_classes=10)})
    model = classifier(make_grid(4, 2, 32, 16), num_classes=5)
    head_before = model.head.weight.detach().clone()
    report = load_finetune_weights(model, path, verbose=False)
    assert sorted(d.split(" ")[0] for d in report.dropped) == ["head.bias", "head.weight"]
    assert "10 classes in the checkpoint, 5 in the model" in report.dropped[0]
    assert sorted(report.missing) == ["head.bias", "head.weight"]
    assert torch.equal(model.head.weight, head_before)

    same = classifier(make_grid(4, 2, 32, 16), num_classes=10)
    report = load_finetune_weights(same, path, verbose=False)
    assert "head.weight" in report.loaded and not report.dropped


def test_interpolate_pos_embed_shapes_and_identity():
    pos = torch.randn(1, 2 * 3 * 4, 8)
    assert torch.equal(interpolate_pos_embed(pos, (2, 3, 4), (2, 3, 4)), pos)
    assert interpolate_pos_embed(pos, (2, 3, 4), (4, 5, 5)).shape == (1, 100, 8)
    with_cls = torch.cat([torch.randn(1, 1, 8), pos], 1)
    out = interpolate_pos_embed(with_cls, (2, 3, 4), (1, 6, 6))
    assert out.shape == (1, 37, 8) and torch.equal(out[:, 0], with_cls[:, 0])
    # A table that does not vary in time keeps its spatial layout when only T changes.
    spatial = torch.randn(1, 1, 12, 8).expand(1, 4, 12, 8).reshape(1, 48, 8)
    halved = interpolate_pos_embed(spatial, (4, 3, 4), (2, 3, 4)).reshape(2, 12, 8)
    assert torch.allclose(halved, spatial[0, :12].expand(2, 12, 8), atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        interpolate_pos_embed(pos, (2, 3, 5), (2, 3, 4))


def test_learned_pos_embed_follows_the_grid(tmp_path):
    src_grid = make_grid(8, 2, 64, 16)
    old = classifier(src_grid, pos_embed="learned")
    with torch.no_grad():
        old.pos_embed.normal_()
    path = save(tmp_path / "learned.pth", old, src_grid, pos_embed="learned")
    new_grid = make_grid(4, 2, 96, 16)
    new = classifier(new_grid, pos_embed="learned")
    report = load_finetune_weights(new, path, verbose=False)
    assert new.pos_embed.shape == (1, new_grid.num_tokens, DIM)
    assert any(r.startswith("pos_embed") and "4x4x4 -> 2x6x6" in r for r in report.resized)
    assert torch.allclose(new.pos_embed, interpolate_pos_embed(old.pos_embed, (4, 4, 4), (2, 6, 6)))

    same = classifier(src_grid, pos_embed="learned")
    report = load_finetune_weights(same, path, verbose=False)
    assert "pos_embed" in report.loaded and torch.equal(same.pos_embed, old.pos_embed)

    fixed = classifier(new_grid)  # fixed table: the checkpoint's learned one cannot be used
    report = load_finetune_weights(fixed, path, verbose=False)
    assert report.rebuilt and report.rebuilt[0].startswith("pos_embed")
    assert any("learned" in n for n in report.notes)
    assert torch.equal(fixed.pos_embed, build_pos_table(new_grid, DIM, "1d"))


def test_grid_inferred_from_a_bare_state_dict(tmp_path):
    sd = release_trunk()
    sd["pos_embed"] = torch.randn(1, 4 * 196, DIM)  # 8 frames x 224/16, tubelet 2
    path = writing.save_checkpoint(tmp_path / "bare.pth", sd)
    model = classifier(make_grid(8, 2, 112, 16), pos_embed="learned")
    report = load_finetune_weights(model, path, verbose=False)
    assert report.source_grid == make_grid(8, 2, 224, 16)
    assert "inferred" in report.grid_note
    assert model.pos_embed.shape == (1, 4 * 49, DIM)


def test_wrong_model_size_is_refused(tmp_path):
    path = writing.save_checkpoint(tmp_path / "narrow.pth", {"model": videomae_pretrain_release(d=64)})
    model = classifier(make_grid(4, 2, 32, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(errors.CheckpointError, match="checkpoint width 64 vs model width 128: wrong --model size") as e:
        load_finetune_weights(model, path, verbose=False)
    assert "narrow.pth" in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    other = writing.save_checkpoint(tmp_path / "other.pth", {"model": {"foo.weight": torch.zeros(3)}})
    with pytest.raises(errors.CheckpointError, match="other.pth.*--model_key"):
        load_finetune_weights(model, other, verbose=False)


def test_report_table(pretrain_ckpt, capsys):
    path, _, _ = pretrain_ckpt
    report = load_finetune_weights(classifier(make_grid(4, 1, 32, 8)), path)
    printed = capsys.readouterr().out
    table = report.table()
    assert table in printed
    for category in ("loaded", "resized", "missing", "unexpected", "dropped", "rebuilt"):
        assert category in table
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()
            if line.split() and line.split()[0] in report.counts()}
    assert rows == {c: str(n) for c, n in report.counts().items()}
    assert "blocks.{0..3}.* (13 each)" in table
    assert "patch_embed.proj.weight (128x3x2x16x16 -> 128x3x1x8x8" in table
    assert max(len(line) for line in table.splitlines()) <= 120


def test_grid_from_videomae_style_args(tmp_path):
    sd = release_trunk()
    sd["pos_embed"] = torch.randn(1, 4 * 49, DIM)
    args = {"num_frames": 8, "input_size": 112, "tubelet_size": 2}  # VideoMAE's flags have no patch size
    path = writing.save_checkpoint(tmp_path / "args.pth", {"model": sd, "args": args})
    model = classifier(make_grid(8, 2, 112, 16), pos_embed="learned")
    report = load_finetune_weights(model, path, verbose=False)
    assert report.source_grid == make_grid(8, 2, 112, 16) and "args" in report.grid_note
    assert "pos_embed" in report.loaded and torch.equal(model.pos_embed, sd["pos_embed"])


def test_stored_sincos_table_is_rebuilt_quietly(tmp_path):
    src = make_grid(16, 2, 224, 16)
    sd = videomae_finetuned_release()
    sd["pos_embed"] = build_pos_table(src, DIM, "1d")  # some fine-tuned releases store the fixed table
    path = writing.save_checkpoint(tmp_path / "ft_pos.pth", {"module": sd})
    grid = make_grid(8, 2, 160, 16)
    model = classifier(grid, num_classes=10)
    report = load_finetune_weights(model, path, verbose=False)
    assert [r.split(" ")[0] for r in report.rebuilt] == ["pos_embed"] and not report.notes
    assert torch.equal(model.pos_embed, build_pos_table(grid, DIM, "1d"))


def test_flexible_checkpoint_loads_at_an_untrained_grid(tmp_path, capsys):
    """A flexible-grid pre-training (base 32/16, grids 32/16 and 32/8) loads at 48/8: the kernel is PI-resized,
    the 3-D table takes the checkpoint's reference, the features are the pre-training encoder's at 48/8, the
    load table names the trained grids, and a resumed classifier keeps the reference."""
    torch.manual_seed(0)
    base, target = make_grid(4, 2, 32, 16), make_grid(4, 2, 48, 8)
    grids = [base, make_grid(4, 2, 32, 8)]
    pretrain = create_video_model(PRETRAIN_MICRO, grid=base, decoder_depth=1, pos_embed="3d")
    state = writing.checkpoint_state(pretrain, base, argparse.Namespace(pos_embed="3d"), epoch=1,
                                        grids=[g.to_dict() for g in grids])
    assert state["pos_reference"] == [2, 2]
    path = writing.save_checkpoint(tmp_path / "flexible.pth", state)
    model = classifier(target, pos_embed="3d").eval()
    report = load_finetune_weights(model, path)
    assert "trained on:      grids 32/16, 32/8 (flexible); loaded at 48/8" in capsys.readouterr().out
    assert [g.spec for g in report.trained_grids] == ["32/16", "32/8"]
    assert torch.equal(model.pos_embed, build_pos_table(target, DIM, "3d", reference=(2, 2)))
    assert not torch.equal(model.pos_embed, build_pos_table(target, DIM, "3d"))
    assert torch.allclose(model.patch_embed.proj.weight,
                          resize_patch_embed(pretrain.encoder.patch_embed.proj.weight, (2, 8, 8)), atol=1e-6)
    x = torch.randn(1, 3, 4, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model.run_blocks(model.embed(x)),
                              pretrain.encoder.forward_tokens(x, grid=target), atol=1e-4)
    # the same from the .safetensors export (--save_safetensors), whose metadata carries the records
    st = writing.save_safetensors(tmp_path / "flexible.safetensors", state["model"], base,
                                     argparse.Namespace(pos_embed="3d"), {k: state[k] for k in file_format.GRID_RECORDS})
    from_st = classifier(target, pos_embed="3d")
    assert [g.spec for g in load_finetune_weights(from_st, st, verbose=False).trained_grids] == ["32/16", "32/8"]
    assert torch.equal(from_st.pos_embed, model.pos_embed)
    # fine-tuning's own checkpoints carry the reference to a resume (the table is not in the state dict)
    ft = writing.save_checkpoint(tmp_path / "ft.pth",
                                    writing.checkpoint_state(model, target, argparse.Namespace(), epoch=1))
    resumed = classifier(target, pos_embed="3d")
    model_state.load_model_state(resumed, reading.read_pth_checkpoint(ft), ft, MICRO)
    assert torch.equal(resumed.pos_embed, model.pos_embed)


# ---------------------------------------------------------------- the model a checkpoint describes

def test_model_from_checkpoint_builds_the_checkpoints_model_at_its_grid(pretrain_ckpt, tmp_path):
    """Our pre-training checkpoint: the classifier of its size at its recorded grid, no head, encoder weights."""
    from patches.checkpoints.models import model_from_checkpoint
    path, pretrain_sd, grid = pretrain_ckpt
    built = model_from_checkpoint(path)
    assert built.grid == grid == built.model.grid and not built.model.training
    s = built.settings
    assert (s.model_name, s.pos_embed, s.num_classes, s.kind, s.sampling_rate) == (MICRO, "1d", 0, "pretrain", 4)
    assert core_equal(built.model, pretrain_sd, "encoder.") > 0
    # Given settings win; the same checkpoint already read is accepted.
    other = make_grid(8, 2, 112, 16)
    again = model_from_checkpoint(built.checkpoint, grid=other, num_classes=3)
    assert again.model.grid == other and again.model.head.out_features == 3 and again.checkpoint is built.checkpoint


def test_model_from_checkpoint_of_a_videomae_release_infers_size_and_grid(tmp_path):
    """VideoMAE's fine-tuned release records neither model nor grid: both come from its tensors."""
    from patches.checkpoints.models import model_from_checkpoint
    path = writing.save_checkpoint(tmp_path / "ft.pth", {"module": videomae_finetuned_release(num_classes=10)})
    built = model_from_checkpoint(path)
    assert built.settings.model_name == MICRO and built.settings.num_classes == 10
    assert built.grid == make_grid(16, 2, 224, 16) and "not recorded" in built.settings.grid_note
    missing = writing.save_checkpoint(tmp_path / "probe.pth", {"model": {"weight": torch.ones(1)}, "probe": "linear",
                                                               "encoder": {"path": str(tmp_path / "gone.pth")}})
    with pytest.raises(errors.CheckpointError, match="probe checkpoint.*gone.pth.* is not there"):
        model_from_checkpoint(missing)


def test_model_from_a_probe_checkpoint_is_its_encoder_with_the_probe(pretrain_ckpt, tmp_path):
    """A probe checkpoint holds the probe alone and names its encoder: both come back, the encoder as the probe's
    run built it; an encoder file changed since is refused."""
    from patches.checkpoints.models import model_from_checkpoint
    from patches.eval.features import encoder_reference
    from patches.models.probes import FrozenEncoderProbe, build_probe
    path, pretrain_sd, grid = pretrain_ckpt
    encoder = model_from_checkpoint(path, num_classes=0).model
    trained = FrozenEncoderProbe(encoder, build_probe("linear", encoder, 3))
    state = writing.checkpoint_state(trained, grid, argparse.Namespace(model=MICRO, pos_embed="1d", sampling_rate=2),
                                     epoch=0, probe="linear", encoder=encoder_reference(path), nb_classes=3,
                                     class_names=["a", "b", "c"])
    probe_path = writing.save_checkpoint(tmp_path / "probe.pth", state)
    built = model_from_checkpoint(probe_path)
    assert isinstance(built.model, FrozenEncoderProbe) and built.settings.kind == "probe"
    assert (built.settings.num_classes, built.settings.class_names, built.settings.sampling_rate) == (3, ("a", "b", "c"), 2)
    for name, value in trained.state_dict().items():
        assert torch.equal(built.model.state_dict()[name], value), name
    assert core_equal(built.model.encoder, pretrain_sd, "encoder.") > 0
    x = torch.randn(1, 3, *[grid.num_frames, *grid.input_size])
    assert torch.allclose(built.model(x), trained.eval()(x), atol=1e-5)
    changed = tmp_path / "encoder.pth"
    changed.write_bytes(path.read_bytes())
    state["encoder"] = {**encoder_reference(changed), "sha256": "0" * 64}
    with pytest.raises(errors.CheckpointError, match="has changed since the probe was trained"):
        model_from_checkpoint(writing.save_checkpoint(tmp_path / "probe2.pth", state))
