"""Entry scripts run in turn inside one process, as the stages of a pipeline (the demo, the patch sweep)."""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from types import ModuleType
from typing import Any


# The entry script users run for each stage's module: the command a stage prints is one they can paste.
ENTRY_SCRIPTS = {"patches.cli.pretrain": "run_mae_pretraining.py", "patches.cli.finetune": "run_class_finetuning.py",
                 "patches.cli.inference": "run_inference.py", "patches.cli.extract_features": "extract_features.py"}


def run_stage(title: str, script: ModuleType, flags: list[str]) -> tuple[Any, float]:
    """``script.main`` on ``flags`` (printed first as the equivalent command); returns its result and seconds."""
    entry = ENTRY_SCRIPTS.get(script.__name__, Path(script.__file__).name)
    print(f"\n=== {title}\n$ python {entry} {shlex.join(flags)}\n", flush=True)
    start = time.time()
    result = script.main(script.get_args_parser().parse_args(flags))
    return result, time.time() - start
