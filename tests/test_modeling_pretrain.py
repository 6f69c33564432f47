"""The masked autoencoder: shapes at several grids, visible-only encoding, release key names, pixel targets."""
import numpy as np
import pytest
import torch

from patches.data.masking import MaskGenerator
from patches.grid import make_grid
from patches.models.factory import create_video_model
from patches.models.pretrain import mask_to_index, patchify, pixel_targets, unpatchify

TINY = dict(decoder_depth=1)


def batch_indices(grid, n, mask_type="tube", decoder="none"):
    gen = MaskGenerator(grid, mask_type, 0.75, decoder, 0.5, rng=np.random.default_rng(0))
    masks = [gen() for _ in range(n)]
    enc = torch.stack([m[0] for m in masks])
    dec = torch.stack([m[1] for m in masks])
    return enc, dec, mask_to_index(enc, False), mask_to_index(dec, True)


@pytest.mark.parametrize("frames,tubelet,size,patch", [
    (4, 2, 32, 8),          # 2 x 4 x 4
    (4, 1, (32, 48), 8),    # non-square: 4 x 4 x 6
    (8, 4, (48, 32), 16),   # 2 x 3 x 2
    (4, 2, 36, 12),         # patch 12
])
@pytest.mark.parametrize("decoder", ["none", "run_cell"])
def test_pretrain_shapes_at_several_grids(frames, tubelet, size, patch, decoder):
    g = make_grid(frames, tubelet, size, patch)
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=g, **TINY)
    enc, dec, vis, tgt = batch_indices(g, 2, decoder=decoder)
    x = torch.randn(2, 3, frames, *g.input_size)
    latent = model.encoder(x, vis)
    assert latent.shape == (2, int((~enc[0]).sum()), 128)
    out = model(x, vis, tgt)
    assert out.shape == (2, int(dec[0].sum()), g.target_dim)
    assert torch.isfinite(out).all()


def test_encoder_sees_only_visible_tokens():
    g = make_grid(4, 2, 32, 8)
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=g, **TINY).eval()
    enc, dec, vis, tgt = batch_indices(g, 1)
    x = torch.randn(1, 3, 4, 32, 32)
    before = model(x, vis, tgt)
    # change pixels of one hidden token only: the encoder output must not move
    hidden = int(tgt[0, 0])
    t, rest = divmod(hidden, g.patches_per_frame)
    h, w = divmod(rest, g.w)
    y = x.clone()
    y[:, :, t * 2:(t + 1) * 2, h * 8:(h + 1) * 8, w * 8:(w + 1) * 8] += 5.0
    assert torch.allclose(model(y, vis, tgt), before, atol=1e-6)


@pytest.mark.parametrize("size,patch,tubelet", [((32, 48), 8, 2), (36, 12, 1), (64, 16, 4)])
def test_unpatchify_inverts_patchify(size, patch, tubelet):
    g = make_grid(8, tubelet, size, patch)
    x = torch.randn(2, 3, 8, *g.input_size)
    p = patchify(x, g)
    assert p.shape == (2, g.num_tokens, g.target_dim)
    assert torch.equal(unpatchify(p, g), x)


def test_patchify_token_order_is_t_h_w():
    g = make_grid(4, 2, (16, 24), 8)
    x = torch.zeros(1, 3, 4, 16, 24)
    x[:, :, 2:4, 8:16, 16:24] = 1.0  # time slice 1, row 1, column 2
    p = patchify(x, g)
    lit = (p.abs().sum(-1) > 0).nonzero()[:, 1].tolist()
    assert lit == [1 * g.patches_per_frame + 1 * g.w + 2]


def test_normalised_targets_have_zero_mean_unit_std_per_patch_channel():
    g = make_grid(4, 2, 32, 8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    x = torch.randn(2, 3, 4, 32, 32)
    t = pixel_targets(x, g, mean, std, normalize_target=True).unflatten(-1, (-1, 3))
    assert torch.allclose(t.mean(-2), torch.zeros(()), atol=1e-5)
    assert torch.allclose(t.std(-2), torch.ones(()), atol=1e-3)
    raw = pixel_targets(x, g, mean, std, normalize_target=False)
    assert torch.allclose(unpatchify(raw, g), x * std.view(1, 3, 1, 1, 1) + mean.view(1, 3, 1, 1, 1), atol=1e-6)


def test_release_layout_key_names():
    m = create_video_model("pretrain_videomae_micro_patch16_224", input_size=32, patch_size=16, num_frames=4)
    keys = set(m.state_dict())
    for k in ["encoder.patch_embed.proj.weight", "encoder.blocks.0.norm1.weight", "encoder.blocks.0.attn.qkv.weight",
              "encoder.blocks.0.attn.q_bias", "encoder.blocks.0.attn.v_bias", "encoder.blocks.0.attn.proj.weight",
              "encoder.blocks.0.norm2.weight", "encoder.blocks.0.mlp.fc1.weight", "encoder.blocks.0.mlp.fc2.weight",
              "encoder.norm.weight", "encoder_to_decoder.weight", "mask_token", "decoder.blocks.0.attn.qkv.weight",
              "decoder.norm.weight", "decoder.head.weight"]:
        assert k in keys, k
    assert "encoder.blocks.0.attn.qkv.bias" not in keys
    assert "encoder_to_decoder.bias" not in keys
    assert m.encoder.patch_embed.proj.kernel_size == (2, 16, 16)


def test_mask_to_index_rejects_uneven_masks():
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError, match="different numbers"):
        mask_to_index(mask, True)


def test_forward_at_other_grids_of_one_model():
    """Flexible grids: one model at base 32/16 runs at 32/8 and 48/8 with the grid's targets; grid=None unchanged."""
    base = make_grid(4, 2, 32, 16)
    torch.manual_seed(0)
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=base, pos_embed="3d", **TINY)
    x = torch.randn(2, 3, 4, 32, 32)
    _, _, vis, tgt = batch_indices(base, 2)
    assert torch.equal(model(x, vis, tgt), model(x, vis, tgt, grid=base))
    mean, std = torch.zeros(3), torch.ones(3)
    for grid in (make_grid(4, 2, 32, 8), make_grid(4, 2, 48, 8)):
        model.zero_grad()
        _, _, vis, tgt = batch_indices(grid, 2)
        clip = torch.randn(2, 3, 4, *grid.input_size)
        pred = model(clip, vis, tgt, grid=grid)
        assert pred.shape == (2, tgt.shape[1], grid.target_dim)
        loss = (pred - pixel_targets(clip, grid, mean, std, index=tgt)).square().mean()
        assert torch.isfinite(loss)
        loss.backward()
        assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # reaches the base kernel
        assert model.decoder.head.weight.grad.abs().sum() > 0
    fixed_1d = create_video_model("pretrain_videomae_micro_patch16_224", grid=base, **TINY)
    with pytest.raises(ValueError, match="pos_embed 3d"):
        fixed_1d(clip, vis, tgt, grid=grid)


def test_decoder_pixels_resize_like_the_frame():
    """The head's output at the base patch, resized to a half-size patch, is the frame resized by half."""
    from patches.models.layers import resize_patch_pixels
    base, half = make_grid(4, 2, 32, 16), make_grid(4, 2, 16, 8)  # same 2x2 tokens per frame
    video = torch.rand(1, 3, 4, 32, 32)
    small = torch.nn.functional.interpolate(video[0].transpose(0, 1), size=(16, 16), mode="bilinear",
                                            align_corners=False).transpose(0, 1)[None]
    assert torch.allclose(resize_patch_pixels(patchify(video, base), base, half), patchify(small, half), atol=1e-6)
