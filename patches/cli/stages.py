"""Entry scripts run in turn inside one process, as the stages of a pipeline (the demo, the patch sweep)."""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from types import ModuleType
from typing import Any


def run_stage(title: str, script: ModuleType, flags: list[str]) -> tuple[Any, float]:
    """``script.main`` on ``flags`` (printed first as the equivalent command: ``script.SCRIPT``, the entry script at
    the repository root); returns its result and seconds."""
    name = getattr(script, "SCRIPT", Path(script.__file__).name)
    print(f"\n=== {title}\n$ python {name} {shlex.join(flags)}\n", flush=True)
    start = time.time()
    result = script.main(script.get_args_parser().parse_args(flags))
    return result, time.time() - start
