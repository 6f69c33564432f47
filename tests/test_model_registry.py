"""The named sizes: grid keywords, timm's bookkeeping keywords, and one timm entry point per size."""
import pytest
import timm
import torch.nn as nn

from patches.grid import make_grid
from patches.models.registry import DEFAULT_GRID, VIT_SIZES, register_sizes, resolve_grid, split_model_kwargs


def test_resolve_grid_defaults_to_16x224_over_16_and_takes_videomae_keywords():
    assert resolve_grid() == make_grid(**DEFAULT_GRID)
    assert resolve_grid(img_size=288, all_frames=8, patch_size=None) == make_grid(8, 2, 288, 16)
    explicit = make_grid(4, 2, 32, 8)
    assert resolve_grid(explicit, input_size=288) is explicit


def test_split_model_kwargs_separates_geometry_and_drops_timms_keywords():
    geometry, rest = split_model_kwargs(False, dict(img_size=288, num_classes=5, pretrained_cfg={}, cache_dir=None))
    assert geometry == dict(img_size=288, input_size=None, patch_size=None, num_frames=None, all_frames=None,
                            tubelet_size=None)
    assert rest == dict(num_classes=5)
    with pytest.raises(ValueError, match="no weights are downloaded"):
        split_model_kwargs(True, {})


def test_register_sizes_registers_one_builder_per_size_under_the_given_module():
    built = []

    def build(size: str, pretrained: bool, **kwargs) -> nn.Module:
        built.append((size, pretrained, kwargs))
        return nn.Identity()

    register_sizes("test_registry_{size}_model", build, __name__)
    names = timm.list_models("test_registry_*")
    assert sorted(names) == sorted(f"test_registry_{size}_model" for size in VIT_SIZES)
    assert timm.list_models(module=__name__.rsplit(".", 1)[-1]) == sorted(names)
    assert isinstance(timm.create_model("test_registry_tiny_model", depth=3), nn.Identity)
    assert built[-1][0] == "tiny" and built[-1][1] is False and built[-1][2]["depth"] == 3
