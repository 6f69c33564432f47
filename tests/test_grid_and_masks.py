import numpy as np
import pytest
import torch

from patches.data.masking import MaskGenerator, mask_counts, running_cell_pattern
from patches.grid import GridError, PatchGrid, make_grid


@pytest.mark.parametrize("frames,tubelet,size,patch,expect", [
    (16, 2, 224, 16, (8, 14, 14)),
    (16, 2, 288, 16, (8, 18, 18)),
    (16, 2, 216, 12, (8, 18, 18)),
    (8, 1, (64, 96), 8, (8, 8, 12)),
    (16, 4, 224, 32, (4, 7, 7)),
])
def test_grid_derivation(frames, tubelet, size, patch, expect):
    g = make_grid(frames, tubelet, size, patch)
    assert g.shape == expect
    t, h, w = expect
    assert g.patches_per_frame == h * w
    assert g.num_tokens == t * h * w
    assert g.target_dim == 3 * tubelet * patch * patch
    assert PatchGrid.from_dict(g.to_dict()) == g
    assert f"{g.num_tokens} tokens" in g.describe()


@pytest.mark.parametrize("args,fragment", [
    ((16, 2, 225, 16), "--input_size height 225 is not divisible by --patch_size 16"),
    ((16, 2, (224, 230), 16), "--input_size width 230"),
    ((15, 2, 224, 16), "--num_frames 15 is not divisible by --tubelet_size 2"),
    ((16, 0, 224, 16), "--tubelet_size must be positive"),
    ((16, 2, 224, 0), "--patch_size must be positive"),
    ((0, 2, 224, 16), "--num_frames must be positive"),
    ((16, 2, (224, 224, 3), 16), "--input_size takes one value or two"),
])
def test_grid_rejections(args, fragment):
    with pytest.raises(GridError) as info:
        make_grid(*args)
    assert fragment in str(info.value)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(mask_type="tube", mask_ratio=0.0), "--mask_ratio must be inside (0, 1)"),
    (dict(mask_type="tube", mask_ratio=1.0), "--mask_ratio must be inside (0, 1)"),
    (dict(mask_type="tube", mask_ratio=-0.5), "--mask_ratio must be inside (0, 1)"),
    (dict(mask_type="tube", mask_ratio=0.001), "masks no token"),
    (dict(mask_type="random", mask_ratio=1e-5), "masks no token of the 1568 in the clip"),
    (dict(mask_type="block", mask_ratio=0.9), "--mask_type must be one of"),
    (dict(mask_type="tube", mask_ratio=0.9, decoder_mask_type="run_cell", decoder_mask_ratio=1.0),
     "--decoder_mask_ratio must be inside (0, 1)"),
    (dict(mask_type="tube", mask_ratio=0.9, decoder_mask_type="cells", decoder_mask_ratio=0.5),
     "--decoder_mask_type must be one of"),
])
def test_mask_rejections(kwargs, fragment):
    g = make_grid(16, 2, 224, 16)
    with pytest.raises(GridError) as info:
        mask_counts(g, **kwargs)
    assert fragment in str(info.value)


GRIDS = [make_grid(16, t, size, 16) for t in (1, 2, 4) for size in (224, 288)]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"T{g.t}x{g.patches_per_frame}")
@pytest.mark.parametrize("mask_type,decoder", [("tube", "none"), ("random", "none"), ("tube", "run_cell"),
                                               ("random", "run_cell")])
def test_masked_counts_are_exact_per_sample(grid, mask_type, decoder):
    gen = MaskGenerator(grid, mask_type, 0.9, decoder, 0.5, rng=np.random.default_rng(0))
    if mask_type == "tube":
        expected_masked = int(0.9 * grid.patches_per_frame) * grid.t
    else:
        expected_masked = int(0.9 * grid.num_tokens)
    expected_decoded = expected_masked if decoder == "none" else round(0.5 * expected_masked)
    seen = set()
    for _ in range(8):
        enc, dec = gen()
        assert enc.dtype == torch.bool and enc.shape == (grid.num_tokens,)
        assert int(enc.sum()) == expected_masked
        assert int(dec.sum()) == expected_decoded
        assert not bool((dec & ~enc).any()), "the decoder reconstructs only hidden tokens"
        seen.add(enc.numpy().tobytes())
        if mask_type == "tube":
            per_slice = enc.view(grid.t, grid.patches_per_frame)
            assert bool((per_slice == per_slice[0]).all()), "tube masks repeat over time"
    assert len(seen) > 1, "masks are random"


def test_random_mask_differs_between_time_slices():
    g = make_grid(16, 2, 224, 16)
    enc, _ = MaskGenerator(g, "random", 0.9, rng=np.random.default_rng(1))()
    slices = enc.view(g.t, -1)
    assert not bool((slices == slices[0]).all())


def test_run_cell_pattern_runs_over_time_and_covers_cells():
    g = make_grid(8, 2, 64, 16)  # 4 x 4 x 4
    pattern = running_cell_pattern(g, 0.5).reshape(g.t, g.h, g.w)
    for t in range(g.t):
        # each 2x2 cell keeps exactly two positions
        cells = pattern[t].reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4)
        assert (cells.sum(1) == 2).all()
    assert not (pattern[0] == pattern[1]).all(), "kept positions move from one slice to the next"


def test_decoder_mask_follows_running_cell_when_possible():
    g = make_grid(16, 2, 224, 16)
    gen = MaskGenerator(g, "tube", 0.5, "run_cell", 0.5, rng=np.random.default_rng(0))
    enc, dec = gen()
    pattern = torch.from_numpy(running_cell_pattern(g, 0.5))
    preferred = enc & pattern
    # as many decoded tokens as possible lie on the pattern
    assert int((dec & pattern).sum()) == min(int(preferred.sum()), int(dec.sum()))


def test_masks_reproducible_under_torch_seed():
    g = make_grid(16, 2, 224, 16)
    gen = MaskGenerator(g, "tube", 0.9)
    torch.manual_seed(3)
    a = gen()[0]
    torch.manual_seed(3)
    b = gen()[0]
    assert torch.equal(a, b)


def test_highest_ratio_below_one_keeps_a_visible_token():
    g = make_grid(16, 2, 224, 16)
    for kind in ("tube", "random"):
        counts = mask_counts(g, kind, 0.9999999)
        assert 0 < counts.num_visible < g.num_tokens


def test_recorded_grid_reads_a_checkpoints_grid_entry():
    from patches.grid import recorded_grid
    saved = make_grid(6, 3, (48, 72), 12)
    assert recorded_grid({"grid": saved.to_dict()}) == saved
    assert recorded_grid({"model": {}}) is None
    with pytest.raises(GridError, match="grid entry .* is unusable"):
        recorded_grid({"grid": {"num_frames": 6}})


def test_grid_specs_parse_and_refuse_bad_entries_by_name():
    from patches.grid import GridError, grids_from_specs

    grids = grids_from_specs(["224/16", "216/12", "224/32"], num_frames=16, tubelet_size=2)
    assert [g.spec for g in grids] == ["224/16", "216/12", "224/32"]
    assert [g.patches_per_frame for g in grids] == [196, 324, 49]
    for bad, words in (("224/15", "not divisible"), ("16/32", "larger than the frame"), ("224", "not SIZE/PATCH"),
                       ("224/16", "listed twice")):
        with pytest.raises(GridError, match=words) as info:
            grids_from_specs(["224/16", bad] if bad == "224/16" else [bad], num_frames=16, tubelet_size=2)
        assert bad.split("/")[0] in str(info.value)
