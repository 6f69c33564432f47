"""The attention paths of the blocks agree, with and without activation checkpointing."""
import numpy as np
import torch

from patches.data.masking import MaskGenerator
from patches.grid import make_grid
from patches.models.attention import set_fused_attention
from patches.models.factory import create_video_model
from patches.models.pretrain import mask_to_index

TINY = dict(decoder_depth=1)


def batch_indices(grid, n):
    gen = MaskGenerator(grid, "tube", 0.75, "none", 0.5, rng=np.random.default_rng(0))
    masks = [gen() for _ in range(n)]
    visible = mask_to_index(torch.stack([m[0] for m in masks]), False)
    return visible, mask_to_index(torch.stack([m[1] for m in masks]), True)


def test_attention_paths_agree_and_checkpointing_matches():
    g = make_grid(4, 2, 32, 8)
    torch.manual_seed(0)
    m = create_video_model("pretrain_videomae_micro_patch16_224", grid=g, **TINY)
    vis, tgt = batch_indices(g, 2)
    x = torch.randn(2, 3, 4, 32, 32)
    fused = m(x, vis, tgt)
    set_fused_attention(m, False)
    assert torch.allclose(m(x, vis, tgt), fused, atol=1e-5)
    m.encoder.use_checkpoint = m.decoder.use_checkpoint = True
    m.train()
    out = m(x, vis, tgt)
    out.sum().backward()
    assert m.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_auto_takes_sdpa_untimed_on_cuda_in_half_precision_and_times_otherwise(tmp_path, monkeypatch):
    from patches.models import attention
    g = make_grid(4, 2, 32, 8)
    m = create_video_model("pretrain_videomae_micro_patch16_224", grid=g, **TINY)
    timed = []

    def timing(attn, device, amp_dtype, batch_size, tokens):
        timed.append((device.type, amp_dtype))
        return {"sdpa": 2.0, "math": 1.0}  # the explicit path "wins" at batch 2

    monkeypatch.setattr(attention, "time_attention_paths", timing)
    monkeypatch.setattr(attention, "_CHOICES", {})
    monkeypatch.setattr(attention, "_device_name", lambda device: "a GPU")  # no CUDA here to ask
    for dtype in (torch.bfloat16, torch.float16):
        assert attention.choose_attention_path(m, torch.device("cuda"), dtype, cache_file=tmp_path / "c") == "sdpa"
    assert timed == []
    assert attention.choose_attention_path(m, torch.device("cuda"), None, cache_file=tmp_path / "c") == "math"
    assert attention.choose_attention_path(m, torch.device("cpu"), torch.bfloat16, cache_file=tmp_path / "c") == "math"
    assert timed == [("cuda", None), ("cpu", torch.bfloat16)]
