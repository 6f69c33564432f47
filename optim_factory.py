"""Optimizers from flags, through timm's factory (weight-decay filtering, layer-wise LR decay)."""
from __future__ import annotations

import argparse

import torch
from timm.optim import create_optimizer_v2


def build_optimizer(args: argparse.Namespace, model: torch.nn.Module,
                    layer_decay: float | None = None) -> torch.optim.Optimizer:
    """Optimizer for ``--opt --lr --weight_decay --opt_eps --opt_betas --momentum`` (+ ``--layer_decay``).

    Biases, norms, 1-D parameters and the model's ``no_weight_decay()`` names get no weight decay. With
    layer decay each group carries an ``lr_scale`` that the engine multiplies into the scheduled LR.
    """
    kwargs = {}
    if getattr(args, "opt_eps", None) is not None:
        kwargs["eps"] = args.opt_eps
    if getattr(args, "opt_betas", None) is not None:
        kwargs["betas"] = tuple(args.opt_betas)
    kwargs.update(fast_update_kwargs(args.opt, next(model.parameters()).device))
    return create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                               momentum=getattr(args, "momentum", 0.9), filter_bias_and_bn=True,
                               layer_decay=layer_decay if layer_decay not in (None, 1.0) else None,
                               **kwargs)


def fast_update_kwargs(opt: str, device: torch.device) -> dict[str, bool]:
    """The quickest parameter-update kernel torch has for this optimizer and device.

    Adam/AdamW: torch's fused kernel (one pass per tensor) on CPU and CUDA. On CPU the foreach path is
    slower even than the plain loop (ViT-S, 1 thread: fused 27 ms, loop 52 ms, foreach 67 ms per step).
    Other optimizers: foreach on CUDA, the plain loop elsewhere.
    """
    if opt.lower() in ("adam", "adamw") and device.type in ("cpu", "cuda"):
        return {"fused": True, "foreach": False}
    return {"foreach": device.type == "cuda"}


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None) -> None:
    """Set this step's LR (times each group's ``lr_scale``) and weight decay (groups that decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        # Remember which groups decay, so a schedule that reaches 0 does not lose track of them.
        if group.setdefault("decays", group["weight_decay"] > 0) and weight_decay is not None:
            group["weight_decay"] = weight_decay
