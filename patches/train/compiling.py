"""``--compile``: which module is compiled, so that data parallelism overlaps its communication, and Dynamo's
limits for flexible grids.

- One process, and DDP: the whole model, in place (its state dict keeps its names), before DDP wraps it. A
  module compiled in place and then called by DDP's forward is seen by Dynamo's DDP optimizer (it looks up
  the DDP module that is running), which splits the graph at the gradient buckets: each bucket's all-reduce
  starts while the rest of the backward runs. Compiling the wrapper instead gives the same graphs.
- DeepSpeed: each transformer block, in place, before the engine wraps the model. DeepSpeed has no such
  optimizer: a whole compiled model is one backward graph, and its gradient hooks would all fire at its end;
  block by block they fire as the backward goes.

With several grids (``--grids``) shapes are static (``dynamic=False``), so each grid makes one graph, and the
recompile limit is raised to fit every grid's graph, so no grid falls back to eager without a word.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch._dynamo

from patches.models.layers import TransformerStack


def raise_recompile_limit(graphs: int) -> int:
    """Dynamo's per-function recompile limit, raised to ``graphs`` plus headroom if lower; returns it."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # older torch
    limit = max(int(getattr(config, name)), graphs + 2)
    setattr(config, name, limit)
    return limit


def compile_options(backend: str, num_grids: int) -> dict:
    """``Module.compile`` keywords: several grids compile with static shapes (one graph per grid)."""
    return {"backend": backend, "dynamic": False} if num_grids > 1 else {"backend": backend}


def compile_whole(module: torch.nn.Module, backend: str, num_grids: int) -> None:
    """``module`` compiled in place: at most one graph per grid."""
    raise_recompile_limit(2 * num_grids)  # a grid in training and in evaluation mode
    module.compile(**compile_options(backend, num_grids))


def compile_blocks(model: torch.nn.Module, backend: str, num_grids: int) -> int:
    """Every transformer block of ``model`` compiled in place; returns how many. The blocks share one code
    object, and each may make its own graph per grid (their drop-path rates differ), so the limit fits them all."""
    blocks = [b for stack in model.modules() if isinstance(stack, TransformerStack) for b in stack.blocks]
    raise_recompile_limit(2 * len(blocks) * max(num_grids, 1))
    for block in blocks:
        block.compile(**compile_options(backend, num_grids))
    return len(blocks)


def compile_model(model: torch.nn.Module, backend: str, num_grids: int, blocks: bool) -> None:
    """``model`` compiled in place: whole, or (``blocks``: under DeepSpeed) each transformer block."""
    if blocks:
        compile_blocks(model, backend, num_grids)
    else:
        compile_whole(model, backend, num_grids)


def prepare_grids(model: torch.nn.Module, grids: Sequence) -> None:
    """Build every grid's tables and resize matrices before the first (compiled) step, when the model can."""
    if len(grids) > 1 and hasattr(model, "prepare_grids"):
        model.prepare_grids(list(grids))
