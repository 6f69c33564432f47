"""Shared layers: the position tables."""
import torch

from model_layers import build_pos_table
from patch_grid import make_grid


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
