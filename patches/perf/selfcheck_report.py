"""The self-check's report (scripts/selfcheck.py): a row per check, and the table and JSON written from them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Check:
    name: str
    status: str = "pass"
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    detail: str = ""


def format_figures(figures: dict[str, Any]) -> str:
    def short(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return "[" + ", ".join(short(x) for x in v) + "]"
        return str(v)
    return ", ".join(f"{k} {short(v)}" for k, v in figures.items())


def markdown_report(checks: list[Check], meta: dict[str, Any], timing: list[dict]) -> str:
    from patches.perf import benchmark
    lines = [f"# PATCHES self-check: {'PASS' if meta['passed'] else 'FAIL'}", "",
             f"{meta['device_name']}, torch {meta['torch']}, {meta['mode']} mode, {meta['seconds']:.0f} s", "",
             "| check | status | figures | s |", "|---|---|---|---|"]
    for c in checks:
        text = format_figures(c.figures) + (f" ({c.detail})" if c.detail else "")
        lines.append(f"| {c.name} | {c.status} | {text.replace('|', '/')} | {c.seconds:.1f} |")
    if timing:
        lines += ["", "Step timings (scripts/benchmark.py; MFU: model FLOP/s against the device's spec peak, or "
                  "--peak_tflops; % of matmul: against the bf16 matmul rate measured in the same process):", "",
                  benchmark.markdown_table(timing)]
    return "\n".join(lines) + "\n"


def write_reports(output_dir: Path, checks: list[Check], meta: dict[str, Any], timing: list[dict]) -> None:
    from patches.utils.files import write_atomically
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {**meta, "checks": [vars(c) for c in checks], "timing": timing}
    write_atomically(output_dir / "selfcheck.json", lambda t: t.write_text(json.dumps(record, indent=2) + "\n"))
    write_atomically(output_dir / "selfcheck.md", lambda t: t.write_text(markdown_report(checks, meta, timing)))
