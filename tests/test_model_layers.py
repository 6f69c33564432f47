"""Shared layers: the position tables."""
import pytest
import torch

from patches.grid import make_grid
from patches.models.layers import build_pos_table


def test_pos_tables():
    g = make_grid(4, 2, (32, 48), 8)
    t1 = build_pos_table(g, 64, "1d")[0]
    assert t1.shape == (g.num_tokens, 64)
    assert torch.allclose(t1[3, 0::2], torch.sin(3 / 10000 ** (torch.arange(0, 64, 2) / 64.0)), atol=1e-6)
    t3 = build_pos_table(g, 64, "3d")[0].view(g.t, g.h, g.w, 64)
    # the 3-D table's spatial part is the same in every time slice, its time part the same at every position
    d_space = 2 * (64 // 6)
    d_time = 64 - 2 * d_space
    assert torch.equal(t3[0, :, :, d_time:], t3[1, :, :, d_time:])
    assert torch.equal(t3[0, 0, 0, :d_time], t3[0, 3, 5, :d_time])


def test_pos_table_reference():
    """A 3-D table scaled to a reference puts a token at the frame place it covers; the own grid is unchanged."""
    from patches.models.layers import sincos_1d_table
    base, fine = make_grid(4, 2, 64, 16), make_grid(4, 2, 64, 8)  # 4x4 and 8x8 tokens per frame
    assert torch.equal(build_pos_table(base, 60, "3d", reference=(4, 4)), build_pos_table(base, 60, "3d"))
    table = build_pos_table(fine, 60, "3d", reference=(4, 4))[0].view(fine.t, 8, 8, 60)
    d_space = 2 * (60 // 6)
    rows = table[0, :, 0, 60 - 2 * d_space:60 - d_space].double()
    # row i of 8 covers the frame band of row (i + 0.5) / 2 - 0.5 of 4: rows 2k and 2k+1 straddle row k
    expected = torch.from_numpy(sincos_1d_table((torch.arange(8) + 0.5).numpy() / 2 - 0.5, d_space))
    assert torch.allclose(rows, expected, atol=1e-6)
    with pytest.raises(ValueError, match="pos_embed 3d"):
        build_pos_table(fine, 60, "1d", reference=(4, 4))


def test_pi_resize_kernel_is_resize_patch_embed_and_differentiable():
    from patches.checkpoints.resampling import resize_patch_embed
    from patches.models.layers import pi_resize_kernel
    torch.manual_seed(0)
    w = torch.randn(6, 3, 2, 16, 16, requires_grad=True)
    on_the_fly = pi_resize_kernel(w, (8, 8))
    assert torch.allclose(on_the_fly, resize_patch_embed(w, (2, 8, 8)), atol=1e-5)
    on_the_fly.square().sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    # growing the patch is exact: <resize(x), w_new> == <x, w_old>
    x = torch.randn(3, 2, 8, 8)
    small = w.detach()[:, :, :, :8, :8]
    big = pi_resize_kernel(small, (12, 12))
    x_big = torch.nn.functional.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(torch.einsum("cqhw,dcqhw->d", x_big, big), torch.einsum("cqhw,dcqhw->d", x, small),
                          atol=1e-3)


def test_patch_embed_at_another_grid():
    from patches.models.layers import PatchEmbed
    base, other = make_grid(4, 2, 32, 16), make_grid(4, 2, 48, 8)
    embed = PatchEmbed(base, 16)
    x = torch.randn(2, 3, 4, 48, 48)
    tokens = embed(x, other)
    assert tokens.shape == (2, other.num_tokens, 16)
    index = torch.tensor([[0, 5, 17], [3, 4, 70]])
    assert torch.allclose(embed.embed_selected(x, index, other), torch.stack([tokens[b, index[b]] for b in range(2)]),
                          atol=1e-5)
    with pytest.raises(ValueError, match="48x48 px, tubelet 2, patch 8"):
        embed(torch.randn(1, 3, 4, 32, 32), other)
    with pytest.raises(ValueError, match="tubelet"):
        embed(x, make_grid(4, 1, 48, 8))
