"""DeepSpeed checkpoint folders (``--enable_deepspeed``): saving, linking and loading them so that they
auto-resume like our .pth files, with every load ``torch.load(weights_only=True)``.

DeepSpeed's own loader reads every checkpoint file with ``torch.load(weights_only=False)``
(deepspeed/runtime/checkpoint_engine/torch_checkpoint_engine.py), which would run any code a file
carries. :class:`WeightsOnlyLoads` (installed by patches.train.deepspeed_engine.initialize) loads with
``weights_only=True``, allowing beyond tensors and plain values only the data classes DeepSpeed's ZeRO files
hold (see ``_safe_globals``); a file needing anything else is refused. The extra metadata we keep (grid,
flags, position, RNG states, the model's weights) is our own ``checkpoint.pth`` inside each folder, written
last, so that a folder without it is an interrupted save.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.file_format import DEEPSPEED_META
from patches.checkpoints.writing import save_checkpoint
from patches.utils.distributed import is_dist, is_main_process


def _safe_globals() -> list[type]:
    """The classes DeepSpeed's checkpoint files hold besides tensors and plain values: data, no code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


class WeightsOnlyLoads:
    """Wraps DeepSpeed's checkpoint engine; every load is ``torch.load(weights_only=True)`` with
    DeepSpeed's data classes allowed; everything else is delegated unchanged."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._allowed = _safe_globals()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(self._allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 -- torch raises many types for bad files
            if "weights_only" in str(e) or "Weights only" in str(e):
                raise CheckpointError(
                    f"refused to load {path}: it holds Python objects beyond tensors, plain values and "
                    f"DeepSpeed's checkpoint data classes ({str(e).splitlines()[0]})") from None
            raise


def _barrier() -> None:
    if is_dist():
        torch.distributed.barrier()


def save_folder(engine: Any, output_dir: Path, name: str, meta: dict[str, Any]) -> Path:
    """Save ``output_dir/name/`` (all ranks): DeepSpeed's files into ``name.tmp/``, our ``checkpoint.pth``
    last, then swap the folder in. A crash at any point leaves either the old folder or a complete one
    (possibly still named ``.tmp``/``.old``, which auto-resume also accepts)."""
    final, tmp, old = output_dir / name, output_dir / f"{name}.tmp", output_dir / f"{name}.old"
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    engine.save_checkpoint(str(output_dir), tag=tmp.name, client_state={}, save_latest=False)
    _barrier()
    if is_main_process():
        save_checkpoint(tmp / DEEPSPEED_META, meta)
        _swap_in(tmp, final, old)
    _barrier()
    return final


def _swap_in(new: Path, final: Path, old: Path) -> None:
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def link_folder(output_dir: Path, src_name: str, dst_name: str) -> None:
    """Make ``dst_name/`` a copy of ``src_name/`` made of hard links (cheap), swapped in like a save."""
    if is_main_process():
        src, tmp = output_dir / src_name, output_dir / f"{dst_name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)

        def link(a: str, b: str) -> None:
            try:
                os.link(a, b)
            except OSError:
                shutil.copy2(a, b)
        shutil.copytree(src, tmp, copy_function=link)
        _swap_in(tmp, output_dir / dst_name, output_dir / f"{dst_name}.old")
    _barrier()


def load_folder(engine: Any, folder: Path) -> None:
    """Restore the engine's module and optimizer partitions from a folder written by :func:`save_folder`;
    :class:`CheckpointError` when DeepSpeed cannot."""
    try:
        path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, AssertionError, FileNotFoundError) as e:
        raise CheckpointError(f"cannot resume DeepSpeed from {folder} ({str(e).splitlines()[0] if str(e) else e}); "
                              f"ZeRO checkpoints need the same number of processes and --zero_stage they were "
                              f"saved with") from None
    if path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint in {folder}")
