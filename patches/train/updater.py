"""The one update step of every engine: backward, fp16 loss scaling, gradient accumulation, clipping, the
optimizer step, the EMA, and counting the updates fp16 overflow skipped (in the spirit of MAE's loss scaler)."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Optional

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


# Reads an update's gradient norm (a device tensor, or None under DeepSpeed without clipping) to the host, once:
# ``float`` alone, or the epoch loop's agreement of the ranks, which carries the norm with the update's losses.
ReadNorm = Callable[[Optional[torch.Tensor]], Optional[float]]


def read_norm(norm: torch.Tensor | None) -> float | None:
    """The plain :data:`ReadNorm`: one host read, no agreement."""
    return None if norm is None else float(norm)


class Updater:
    """``updater(loss, update)`` accumulates ``loss``'s gradient; when ``update`` it also clips, steps the
    optimizer, clears the gradients and updates the EMA. Returns the gradient norm (a float) when clipping.

    The gradient norm is read to the host once per update, before the step, by ``read`` (see :data:`ReadNorm`):
    the update's one blocking host read. Non-finite gradients are never applied: with a ``scaler`` (fp16) the
    update is skipped and counted in :attr:`skipped` since :meth:`start_epoch`; without one (bf16, fp32) there is
    no scale to lower, so an overflow would come back at every step: :class:`NonFiniteGradientError` stops the run.
    With a DeepSpeed ``engine`` the engine does backward, scaling, accumulation, clipping and the step.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, update_freq: int = 1,
                 clip_grad: float | None = None, scaler: torch.amp.GradScaler | None = None, engine: Any = None,
                 ema: Any = None) -> None:
        self.model, self.optimizer, self.update_freq = model, optimizer, update_freq
        self.clip_grad, self.scaler, self.engine, self.ema = clip_grad, scaler, engine, ema
        self.skipped = 0
        # The scaler's scale and growth count, mirrored on the host (read at each epoch start, not per update).
        self._scale: float | None = scaler.get_scale() if scaler is not None else None  # (no device read yet)
        self._growth = 0

    def start_epoch(self) -> None:
        self.skipped = 0
        if self.scaler is not None:  # after any resume
            state = self.scaler.state_dict()
            self._scale, self._growth = state["scale"], state["_growth_tracker"]
        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)

    @property
    def loss_scale(self) -> float | None:
        """The fp16 loss scale after the last update (mirrored on the host: no device read)."""
        return self._scale

    def accumulating(self, update: bool) -> contextlib.AbstractContextManager:
        """Wrap a micro-step's forward and backward: under DDP, a step that does not ``update`` keeps its
        gradients local (``no_sync``), so that only the last micro-step of an update all-reduces."""
        if not update and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def __call__(self, loss: torch.Tensor, update: bool = True, read: ReadNorm = read_norm) -> float | None:
        if self.engine is not None:
            return self._deepspeed_step(loss, update, read)
        scaled = loss / self.update_freq if self.update_freq > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if not update:
            return None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # (records the overflow on the device for scaler.update)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad) if self.clip_grad
                     else gradient_norm(self.model.parameters()))
        norm = read(grad_norm)
        if math.isfinite(norm):
            # (after unscale_, scaler.step would only read the overflow flag again, then step)
            self.optimizer.step()
        elif self.scaler is None:
            self.optimizer.zero_grad(set_to_none=True)
            if not bool(torch.isfinite(loss)):  # (read only on the way out)
                raise NonFiniteLossError(f"loss is {float(loss)}")
            raise NonFiniteGradientError(f"gradient norm is {norm} (the loss is finite)")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()
            self._follow_scale(overflowed=not math.isfinite(norm))
        if self.ema is not None:
            self.ema.update(self.model)
        return norm if self.clip_grad else None

    def _follow_scale(self, overflowed: bool) -> None:
        """What ``scaler.update()`` did to the scale, on the host: back off after an overflow (a skipped update),
        grow after ``growth_interval`` updates without one."""
        if overflowed:
            self.skipped += 1
            self._scale, self._growth = self._scale * self.scaler.get_backoff_factor(), 0
        else:
            self._growth += 1
            if self._growth == self.scaler.get_growth_interval():
                self._scale, self._growth = self._scale * self.scaler.get_growth_factor(), 0

    def _deepspeed_step(self, loss: torch.Tensor, update: bool, read: ReadNorm) -> float | None:
        # DeepSpeed divides by its gradient_accumulation_steps (= update_freq) and steps on the boundary; it
        # checks fp16 overflow itself, and its norm is known only after its step.
        engine = self.engine
        engine.set_gradient_accumulation_boundary(update)
        engine.backward(loss)
        engine.step()
        if not update:
            return None
        if self.ema is not None:
            self.ema.update(engine.module)
        norm = engine.get_global_grad_norm() if self.clip_grad else None
        return read(None if norm is None else torch.as_tensor(norm, dtype=torch.float32))
