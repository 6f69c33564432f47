"""load_report.py: the compact listing of tensor names and the table of what a --finetune load did."""
from __future__ import annotations

from patches.checkpoints.load_report import LoadReport, compact_names, format_shape, split_entry
from patches.grid import make_grid


def test_names_are_listed_compactly():
    blocks = [f"blocks.{i}.{rest}" for i in range(3) for rest in ("norm1.weight", "norm1.bias")]
    assert compact_names(blocks) == ["blocks.{0..2}.norm1.{weight,bias}"]
    many = [f"blocks.{i}.{rest}" for i in (0, 2) for rest in ("a", "b", "c", "d")]
    assert compact_names(many) == ["blocks.{0,2}.* (4 each)"]
    assert compact_names(["head.weight", "head.bias", "pos_embed"]) == ["head.{weight,bias}", "pos_embed"]
    assert compact_names(["blocks.5.x"]) == ["blocks.5.x"]


def test_shapes_and_entries():
    assert format_shape((2, 3, 4)) == "2x3x4"
    assert split_entry("head.weight (5 classes in the checkpoint, 3 in the model)") == \
        ("head.weight", "5 classes in the checkpoint, 3 in the model")
    assert split_entry("pos_embed") == ("pos_embed", "")


def test_table_has_a_row_per_category_with_its_count():
    report = LoadReport(loaded=[f"blocks.{i}.norm1.weight" for i in range(4)], missing=["head.weight"],
                        dropped=["decoder.x (pre-training only)", "decoder.y (pre-training only)", "mask_token (why)"],
                        path="a.pth", source_grid=make_grid(16, 2, 224, 16), grid_note="from the checkpoint's grid",
                        model_grid=make_grid(4, 1, 32, 8), notes=["look"])
    assert report.counts() == {"loaded": 4, "resized": 0, "missing": 1, "unexpected": 0, "dropped": 3, "rebuilt": 0}
    lines = report.table().splitlines()
    assert lines[0] == "--finetune a.pth"
    assert lines[1].startswith("  checkpoint grid: 16 frames x 224x224 px, tubelet 2, patch 16 -> 8x14x14")
    assert lines[2].strip() == "(from the checkpoint's grid)" and lines[3].startswith("  model grid:      4 frames")
    rows = {line.split()[0]: line for line in lines[4:]}
    assert rows["loaded"].split()[1:] == ["4", "blocks.{0..3}.norm1.weight"]
    assert rows["resized"].split()[1:] == ["0", "-"]
    assert rows["dropped"].split()[1:] == ["3", "[pre-training", "only]", "decoder.x,", "decoder.y;", "[why]",
                                           "mask_token"]
    assert lines[-1] == "  note: look"
