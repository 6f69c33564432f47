"""DeepSpeed for --enable_deepspeed: launch environment, a config generated from our flags, and the engine,
whose checkpoint loads :func:`initialize` makes ``weights_only=True`` (the checkpoint folders themselves are
patches.checkpoints.deepspeed_folder's).
"""
from __future__ import annotations

import os
import socket
from types import ModuleType
from typing import Any

import torch

from patches.checkpoints.deepspeed_folder import WeightsOnlyLoads
from patches.errors import PatchesError

MISSING = ("--enable_deepspeed needs the deepspeed package (pip install deepspeed==0.19.8, as in "
           "requirements.txt), or run without --enable_deepspeed")


class DeepSpeedUnavailableError(PatchesError):
    """--enable_deepspeed without the deepspeed package (or one that does not import)."""


def require_deepspeed() -> ModuleType:
    """Import deepspeed, or raise :class:`DeepSpeedUnavailableError` saying how to get it."""
    try:
        import deepspeed
    except ImportError as e:
        raise DeepSpeedUnavailableError(f"{MISSING} ({e})") from None
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
