"""DeepSpeed for --enable_deepspeed: launch environment, a config generated from our flags, the engine,
and checkpoint folders that auto-resume like our .pth files.

DeepSpeed's own loader reads every checkpoint file with ``torch.load(weights_only=False)``
(deepspeed/runtime/checkpoint_engine/torch_checkpoint_engine.py), which would run any code a file
carries. :func:`initialize` swaps in loads with ``weights_only=True``, allowing beyond tensors and plain
values only the data classes DeepSpeed's ZeRO files hold (see ``_safe_globals``); a file needing
anything else is refused. The extra metadata we keep (grid, flags, position, RNG states, the model's
weights) is our own ``checkpoint.pth`` inside each folder, written last, so that a folder without it
is an interrupted save.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from patches.utils.distributed import is_dist, is_main_process
from patches.checkpoints.files import CheckpointError, save_checkpoint

MISSING = ("--enable_deepspeed needs the deepspeed package (pip install deepspeed==0.19.8, as in "
           "requirements.txt), or run without --enable_deepspeed")


def require_deepspeed() -> ModuleType:
    """Import deepspeed, or stop with a message saying how to get it."""
    try:
        import deepspeed
    except ImportError as e:
        raise SystemExit(f"error: {MISSING} ({e})") from None
    return deepspeed


def prepare_environment(device: str | None) -> None:
    """Before init_distributed: pick DeepSpeed's CPU accelerator for ``--device cpu`` (or no GPU), and
    give a plain ``python`` start the rank variables of a single process (DeepSpeed always needs a process
    group). Under torchrun, the deepspeed launcher or a multi-task srun nothing is changed."""
    if device == "cpu" or (device is None and not torch.cuda.is_available()):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    env = os.environ
    launched = ("RANK" in env and "WORLD_SIZE" in env) or int(env.get("SLURM_NTASKS", "1")) > 1
    if not launched:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_config(zero_stage: int, amp: str, clip_grad: float | None, micro_batch: int, update_freq: int = 1
                 ) -> dict[str, Any]:
    """The DeepSpeed config of our flags: ``--zero_stage``, ``--amp`` (torch autocast inside the engine),
    ``--clip_grad``, ``micro_batch`` clips per process per step and ``update_freq`` steps of accumulation."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": update_freq,
        "gradient_clipping": float(clip_grad or 0.0),
        "zero_optimization": {"stage": zero_stage},
        # Our optimizer is timm's AdamW with layer-decay groups; ZeRO accepts it with this switch.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    problem = amp_problem(zero_stage, amp)
    if problem:
        raise ValueError(problem)
    if amp in ("bf16", "fp16"):
        # fp32 weights and autocast inside the engine's forward, as --amp without DeepSpeed (fp16 adds
        # DeepSpeed's gradient scaler). The "bf16"/"fp16" sections would cast the weights instead, which
        # CPU autocast cannot feed (layer_norm of fp32 inputs) and which turns an outer autocast off.
        # No "lower precision safe" modules: DeepSpeed would otherwise all-reduce the gradients of every
        # Linear and Conv3d in the autocast dtype; in fp32 ZeRO's updates equal DDP's.
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16" if amp == "bf16" else "float16",
                                    "lower_precision_safe_modules": []}
    return config


def amp_problem(zero_stage: int, amp: str) -> str | None:
    """Why ``--zero_stage`` with ``--amp`` cannot train correctly, or None.

    Under ZeRO 1 and 2, DeepSpeed 0.19.8 drives torch's gradient scaler from its per-group optimizer step: it
    steps and updates the scaler once per parameter group (layer decay makes many), and clips the still
    scaled gradients, so an fp16 overflow can leave the loss scale stuck and training silently stalls.
    Without ZeRO (stage 0) the engine steps the scaler once per update, after unscaling, as DDP does."""
    if amp == "fp16" and zero_stage in (1, 2):
        return (f"--enable_deepspeed --zero_stage {zero_stage} with --amp fp16 is refused: DeepSpeed's ZeRO "
                f"mis-drives the fp16 gradient scaler (the loss scale may never drop after an overflow, and "
                f"--clip_grad clips scaled gradients), so training can stop learning without an error; use "
                f"--amp bf16 (A100, H100 and newer), --zero_stage 0, or DDP without --enable_deepspeed")
    return None


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


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, zero_stage: int, amp: str,
               clip_grad: float | None, micro_batch: int, update_freq: int = 1) -> tuple[Any, Any]:
    """The DeepSpeed engine over ``model`` with our optimizer (its groups keep ``lr_scale``, so our schedules
    still drive it), and the engine's optimizer wrapper."""
    deepspeed = require_deepspeed()
    config = build_config(zero_stage, amp, clip_grad, micro_batch, update_freq)
    print(f"DeepSpeed {deepspeed.__version__}: ZeRO stage {zero_stage}, "
          f"{amp + ' autocast' if 'torch_autocast' in config else 'fp32'}, "
          f"clip {config['gradient_clipping']}, accumulation {update_freq}")
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                                      dist_init_required=False)
    engine.checkpoint_engine = WeightsOnlyLoads(engine.checkpoint_engine)
    return engine, ds_optimizer


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
        save_checkpoint(tmp / "checkpoint.pth", meta)
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
    """Restore the engine's module and optimizer partitions from a folder written by :func:`save_folder`."""
    try:
        path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    except (RuntimeError, ValueError, AssertionError, FileNotFoundError) as e:
        raise SystemExit(f"error: cannot resume DeepSpeed from {folder} ({str(e).splitlines()[0] if str(e) else e}); "
                         f"ZeRO checkpoints need the same number of processes and --zero_stage they were saved "
                         f"with") from None
    if path is None:
        raise SystemExit(f"error: DeepSpeed found no checkpoint in {folder}")
