"""The classifier at a non-square grid, and its check of the clip shape."""
import pytest
import torch

from patches.models.factory import create_video_model


def test_classifier_shapes_at_non_square_grid():
    m = create_video_model("vit_micro_patch16_224", num_classes=5, input_size=[32, 48], patch_size=8, num_frames=4)
    assert m(torch.randn(2, 3, 4, 32, 48)).shape == (2, 5)
    with pytest.raises(ValueError, match="model expects clips of shape"):
        m(torch.randn(2, 3, 4, 32, 32))
