"""argparse types shared by the run scripts' flags."""
from __future__ import annotations

import argparse


def str2bool(value: str | bool) -> bool:
    """argparse type for on/off flags that, unlike ``type=bool``, reads 'False' as False."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on", "y", "t"):
        return True
    if lowered in ("0", "false", "no", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
