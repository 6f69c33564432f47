"""The patch sweep's outputs: sweep.json (one row per grid, mode and evaluation), sweep.md (the table) and
sweep.png (top-1 with its spread over seeds, and the cost panels, against patches per frame; with a recipe's
per-point ``pretrain_flops`` also top-1 against total pre-training FLOPs).

A row holds per-seed lists (``seeds``, ``top1``, ``top5``, ``pretrain_loss``, ``pretrain_s``, ``eval_s``) and the
grid's cost from scripts/benchmark.py (``step_s``, ``clips_per_s``, ``gflop_per_step``, ``peak_mem_gb``). The table
gives the mean over seeds ± half the min-max range (with two seeds: half their difference).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from patches.errors import UsageError

EVALS = ("finetune", "linear", "attentive", "knn")
EVAL_NAMES = {"finetune": "fine-tuned", "linear": "linear probe", "attentive": "attentive probe", "knn": "k-NN"}
ROW_KEY = ("grid", "mode", "eval")


def mean_spread(values: Iterable[float | None]) -> tuple[float, float] | None:
    """(mean, half the min-max range) of the values given, or None when there are none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with each row of ``new`` replacing the one of the same grid, mode and evaluation (so one JSON
    gathers a fixed and a flexible sweep), ordered by patches per frame."""
    rows = {tuple(r[k] for k in ROW_KEY): r for r in old}
    rows.update({tuple(r[k] for k in ROW_KEY): r for r in new})
    return sorted(rows.values(), key=lambda r: (r["patches_per_frame"], r["grid"], r["mode"], EVALS.index(r["eval"])))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a sweep.json, or [] when there is none yet; a file of another shape is refused by name."""
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    missing = [k for k in (*ROW_KEY, "patches_per_frame", "top1", "step_s") if rows and k not in rows[0]]
    if not isinstance(rows, list) or missing:
        raise UsageError(f"{path} is not a sweep.json of this version (missing {missing}); move it away")
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _fmt_spread(values: Iterable[float | None], spec: str = ".1f") -> str:
    ms = mean_spread(values)
    return "-" if ms is None else f"{ms[0]:{spec}} ± {ms[1]:{spec}}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per grid and mode, a top-1 column per evaluation present; cost columns from the benchmark."""
    evals = [e for e in EVALS if any(r["eval"] == e for r in rows)]
    lines: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        line = lines.setdefault((r["grid"], r["mode"]), {**r, "top1_by_eval": {}})
        line["top1_by_eval"][r["eval"]] = r.get("top1", [])
    budget = any(r.get("pretrain_flops") for r in rows)  # sweeps with a recipe: each point's pre-training FLOPs
    head = ("| grid | patches/frame | tokens | pre-training | "
            + "".join(f"top-1 {EVAL_NAMES[e]} | " for e in evals)
            + ("pre-train epochs | pre-train PFLOP | " if budget else "")
            + "pre-train loss | step s | clips/s | GFLOP/step | peak mem GB | seeds |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for line in lines.values():
        flops = line.get("pretrain_flops")
        out.append(f"| {line['grid']} | {line['patches_per_frame']} | {line['tokens']} | {line['mode']} | "
                   + "".join(f"{_fmt_spread(line['top1_by_eval'].get(e, []))} | " for e in evals)
                   + (f"{_fmt(line.get('pretrain_epochs'), '')} | {_fmt(flops and flops / 1e15, '.4g')} | "
                      if budget else "")
                   + f"{_fmt_spread(line.get('pretrain_loss', []), '.4f')} | {_fmt(line.get('step_s'), '.3f')} | "
                   f"{_fmt(line.get('clips_per_s'), '.1f')} | {_fmt(line.get('gflop_per_step'), '.1f')} | "
                   f"{_fmt(line.get('peak_mem_gb'), '.2f')} | {len(line.get('seeds', []))} |")
    return "\n".join(out) + ("\n\nTop-1 and loss: mean over seeds ± half the min-max range. Cost: one pre-training "
                             "step at the grid (scripts/benchmark.py, median).")


def _accuracy_panel(ax, rows: list[dict[str, Any]], x: str = "patches_per_frame") -> None:
    """Top-1 against ``x`` (patches per frame, or ``pretrain_flops``), one line per mode and evaluation."""
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if mean_spread(r.get("top1", [])) is not None and r.get(x) is not None:
            curves.setdefault((r["mode"], r["eval"]), []).append(r)
    for (mode, ev), pts in sorted(curves.items()):
        pts.sort(key=lambda r: r[x])
        stats = [mean_spread(r["top1"]) for r in pts]
        ax.errorbar([r[x] for r in pts], [s[0] for s in stats], yerr=[s[1] for s in stats],
                    fmt="o-" if mode == "fixed" else "s--", capsize=3, label=f"{mode}, {EVAL_NAMES[ev]}")
    for r in rows:
        ms = mean_spread(r.get("top1", []))
        if ms is not None and r.get(x) is not None:
            ax.annotate(r["grid"], (r[x], ms[0]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_ylim(0, 100)  # a full axis: small gaps are noise
    ax.set_ylabel("test top-1 (%), bars: min-max over seeds")
    if curves:
        ax.legend(fontsize=7, loc="lower right")


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Top-1 (one line per mode and evaluation) and the cost panels against patches per frame (log x)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cost = {}  # the benchmark's figures depend on the grid only
    for r in rows:
        cost.setdefault(r["grid"], r)
    cost_rows = sorted(cost.values(), key=lambda r: r["patches_per_frame"])
    batch = cost_rows[0].get("bench_batch", "?") if cost_rows else "?"
    panels = [("step_s", f"pre-training step (s, {batch} clips)"), ("gflop_per_step", "GFLOP per step"),
              ("peak_mem_gb", "peak memory (GB)")]
    panels = [(k, label) for k, label in panels if all(r.get(k) is not None for r in cost_rows)]
    by_flops = any(r.get("pretrain_flops") for r in rows)  # a second accuracy panel: against pre-training FLOPs
    first = 2 if by_flops else 1
    fig, axes = plt.subplots(1, first + len(panels), figsize=(4.2 * (first + len(panels)), 3.8), squeeze=False)
    _accuracy_panel(axes[0][0], rows)
    if by_flops:
        ax = axes[0][1]
        _accuracy_panel(ax, rows, "pretrain_flops")
        ax.set_xscale("log")
        ax.set_xlabel("total pre-training FLOPs")
        ax.grid(alpha=0.3, which="both")
    for ax, (key, label) in zip(axes[0][first:], panels):
        ax.plot([r["patches_per_frame"] for r in cost_rows], [r[key] for r in cost_rows], "o-", color="tab:gray")
        ax.set_ylim(bottom=0)
        ax.set_ylabel(label)
    ticks = sorted({r["patches_per_frame"] for r in rows})
    for ax in [a for i, a in enumerate(axes[0]) if not (by_flops and i == 1)]:
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("patches per frame")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
    return path


def write_reports(rows: list[dict[str, Any]], out_dir: Path, title: str) -> str:
    """sweep.json, sweep.md and sweep.png in ``out_dir``, each written atomically; returns the table."""
    from patches.utils.files import write_atomically

    table = markdown_table(rows)
    write_atomically(out_dir / "sweep.json", lambda tmp: tmp.write_text(json.dumps(rows, indent=2) + "\n"))
    write_atomically(out_dir / "sweep.md", lambda tmp: tmp.write_text(f"{title}\n\n{table}\n"))
    write_atomically(out_dir / "sweep.png", lambda tmp: plot(rows, tmp, title))
    return table
