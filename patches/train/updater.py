"""The one update step of every engine: backward, fp16 loss scaling, gradient accumulation, clipping, the
optimizer step, the EMA, and counting the updates fp16 overflow skipped (in the spirit of MAE's loss scaler)."""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from patches.errors import PatchesError


class NonFiniteLossError(PatchesError, FloatingPointError):
    """The loss became NaN or infinite; the run stops before saving anything from this state."""


class NonFiniteGradientError(PatchesError, FloatingPointError):
    """A finite loss whose gradients are NaN or infinite (bf16 or fp32 overflow): the update is not applied and
    the run stops, the last checkpoint on disk intact. (fp16 instead skips such updates, see :class:`Updater`.)"""


class NonFiniteWeightsError(PatchesError, FloatingPointError):
    """Weights about to be saved hold NaN or infinite values: nothing is saved, so auto-resume never picks them."""


def check_finite_weights(model: torch.nn.Module, what: str = "the model") -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first parameter or buffer of ``model`` that is not finite
    (one host read per tensor: for saves, not for steps)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteWeightsError(f"{what}'s {name} holds NaN or infinite values; not saving it (the last "
                                        f"checkpoint on disk is intact)")


def gradient_norm(parameters: Any) -> torch.Tensor:
    """The 2-norm of all ``parameters``' gradients, on their device (no host read)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, 2.0)


class Updater:
    """``updater(loss, update)`` accumulates ``loss``'s gradient; when ``update`` it also clips, steps the
    optimizer, clears the gradients and updates the EMA. Returns the gradient norm (a float) when clipping.

    With a DeepSpeed ``engine`` the engine does backward, scaling, accumulation, clipping and the step.
    With a ``scaler`` (fp16) a step whose gradients overflowed is skipped by the scaler; :attr:`skipped`
    counts those since :meth:`start_epoch`. Without one (bf16, fp32) there is no scale to lower, so an overflow
    would come back at every step: the update is not applied and :class:`NonFiniteGradientError` stops the run.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, update_freq: int = 1,
                 clip_grad: float | None = None, scaler: torch.amp.GradScaler | None = None, engine: Any = None,
                 ema: Any = None) -> None:
        self.model, self.optimizer, self.update_freq = model, optimizer, update_freq
        self.clip_grad, self.scaler, self.engine, self.ema = clip_grad, scaler, engine, ema
        self.skipped = 0
        # The scaler's scale as last read, once per update (before its first use this reads no device).
        self._scale: float | None = scaler.get_scale() if scaler is not None else None

    def start_epoch(self) -> None:
        self.skipped = 0
        self._scale = self.scaler.get_scale() if self.scaler is not None else None  # after any resume
        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)

    @property
    def loss_scale(self) -> float | None:
        """The fp16 loss scale after the last update (no device sync: read once per update)."""
        return self._scale

    def accumulating(self, update: bool) -> contextlib.AbstractContextManager:
        """Wrap a micro-step's forward and backward: under DDP, a step that does not ``update`` keeps its
        gradients local (``no_sync``), so that only the last micro-step of an update all-reduces."""
        if not update and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def __call__(self, loss: torch.Tensor, update: bool = True) -> float | None:
        if self.engine is not None:
            return self._deepspeed_step(loss, update)
        scaled = loss / self.update_freq if self.update_freq > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if not update:
            return None
        grad_norm = self._clip_and_step(loss)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            # The scaler lowers its scale exactly when the gradients held inf or NaN, and then skips the step.
            # Read once, after the step is queued (the loss is read then too), never between forward and backward.
            scale_before, self._scale = self._scale, self.scaler.get_scale()
            if scale_before is not None and self._scale < scale_before:
                self.skipped += 1
        if self.ema is not None:
            self.ema.update(self.model)
        return grad_norm

    def _clip_and_step(self, loss: torch.Tensor) -> float | None:
        grad_norm = None
        if self.scaler is not None:
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.clip_grad:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            # The norm is read before the step: non-finite gradients must never reach the weights. (Under DDP the
            # gradients, and so the norm, are the same on every rank: all ranks stop together.)
            # This is the update's one blocking host read (the norm is needed before the step).
            norm = float(grad_norm if grad_norm is not None else gradient_norm(self.model.parameters()))
            if not math.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                if not bool(torch.isfinite(loss)):
                    raise NonFiniteLossError(f"loss is {loss.item()}")
                raise NonFiniteGradientError(f"gradient norm is {norm} (the loss is finite)")
            self.optimizer.step()
            return norm if grad_norm is not None else None
        return None if grad_norm is None else float(grad_norm)

    def _deepspeed_step(self, loss: torch.Tensor, update: bool) -> float | None:
        # DeepSpeed divides by its gradient_accumulation_steps (= update_freq) and steps on the boundary.
        engine = self.engine
        engine.set_gradient_accumulation_boundary(update)
        engine.backward(loss)
        engine.step()
        if not update:
            return None
        if self.ema is not None:
            self.ema.update(engine.module)
        norm = engine.get_global_grad_norm() if self.clip_grad else None
        return None if norm is None else float(norm)
