"""The one update step: accumulation, clipping, EMA, and fp16 overflow skipped and counted."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from timm.utils import ModelEmaV3

from patches.data.masking import MaskGenerator
from patches.grid import make_grid
from patches.models.factory import create_video_model
from patches.train.reconstruction import MaskedReconstruction
from patches.train.updater import Updater


def regression(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.nn.Linear(6, 3), torch.randn(8, 6), torch.randn(8, 3)


def test_two_accumulated_halves_update_like_the_whole_batch() -> None:
    whole, x, y = regression()
    halves = copy.deepcopy(whole)
    Updater(whole, torch.optim.SGD(whole.parameters(), lr=0.1))(torch.nn.functional.mse_loss(whole(x), y))

    updater = Updater(halves, torch.optim.SGD(halves.parameters(), lr=0.1), update_freq=2)
    updater.start_epoch()
    before = halves.weight.detach().clone()
    assert updater(torch.nn.functional.mse_loss(halves(x[:4]), y[:4]), update=False) is None
    assert torch.equal(halves.weight, before), "no step before the accumulation boundary"
    updater(torch.nn.functional.mse_loss(halves(x[4:]), y[4:]), update=True)
    for a, b in zip(whole.parameters(), halves.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(p.grad is None for p in halves.parameters()), "gradients are cleared after an update"


def test_clipping_returns_the_norm_before_clipping_as_a_float() -> None:
    model, x, y = regression()
    loss = 100 * torch.nn.functional.mse_loss(model(x), y)
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in torch.autograd.grad(
        loss, list(model.parameters()), retain_graph=True)]))
    norm = Updater(model, torch.optim.SGD(model.parameters(), lr=0.0), clip_grad=0.5)(loss)
    assert isinstance(norm, float) and norm == pytest.approx(float(expected), rel=1e-5)
    assert Updater(model, torch.optim.SGD(model.parameters(), lr=0.0))(
        torch.nn.functional.mse_loss(model(x), y)) is None, "no norm without clipping"


def test_ema_follows_the_updates_only() -> None:
    model, x, y = regression()
    ema = ModelEmaV3(model, decay=0.5)
    updater = Updater(model, torch.optim.SGD(model.parameters(), lr=0.5), update_freq=2, ema=ema)
    updater.start_epoch()
    start = ema.module.weight.detach().clone()
    updater(torch.nn.functional.mse_loss(model(x), y), update=False)
    assert torch.equal(ema.module.weight, start)
    updater(torch.nn.functional.mse_loss(model(x), y), update=True)
    assert torch.allclose(ema.module.weight, 0.5 * start + 0.5 * model.weight.detach())


def test_fp16_overflow_skips_the_update_and_is_counted() -> None:
    # Real fp16: autocast to float16 runs on the CPU, with a real GradScaler whose first scales are far too
    # large, so the fp16 gradients overflow.
    grid = make_grid(8, 2, 32, 8)
    torch.manual_seed(0)
    model = create_video_model("pretrain_videomae_micro_patch16_224", grid=grid, decoder_depth=1)
    masks = MaskGenerator(grid, "tube", 0.75)
    enc, dec = zip(*(masks() for _ in range(2)))
    batch = (torch.randn(2, 3, 8, 32, 32), torch.stack([torch.as_tensor(m) for m in enc]),
             torch.stack([torch.as_tensor(m) for m in dec]))
    loss_fn = MaskedReconstruction(grid, torch.device("cpu"), torch.float16)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 32)
    updater = Updater(model, torch.optim.AdamW(model.parameters(), lr=1e-3), scaler=scaler)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    updater.start_epoch()
    losses = []
    for _ in range(2):
        loss = loss_fn(model, batch)
        updater(loss)
        losses.append(loss.item())
    assert updater.skipped == 2 and np.isfinite(losses).all(), "skipped, and the run goes on"
    assert updater.loss_scale == 2.0 ** 30
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items()), "a skipped step changes nothing"


class InfiniteGradient(torch.autograd.Function):
    """The identity forward; an infinite (or NaN) gradient backward: a finite loss whose gradients overflowed,
    as a bf16 backward can."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: float) -> torch.Tensor:
        ctx.value = value
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return torch.full_like(grad, ctx.value), None


@pytest.mark.parametrize("clip_grad", [None, 1.0])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_gradients_of_a_finite_loss_are_never_applied(clip_grad, value) -> None:
    from patches.train.updater import NonFiniteGradientError
    model, x, y = regression()
    ema = ModelEmaV3(model, decay=0.5)
    updater = Updater(model, torch.optim.AdamW(model.parameters(), lr=0.1), clip_grad=clip_grad, ema=ema)
    updater.start_epoch()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    loss = torch.nn.functional.mse_loss(InfiniteGradient.apply(model(x), value), y)
    assert torch.isfinite(loss)
    with pytest.raises(NonFiniteGradientError, match="gradient norm is (inf|nan)"):
        updater(loss)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items()), "the update is not applied"
    assert all(torch.equal(weights[k], v) for k, v in ema.module.state_dict().items()), "nor averaged"
