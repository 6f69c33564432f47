"""Progress of a loop: smoothed meters and a line every ``print_freq`` steps with clips/s and the ETA
(:class:`ProgressLogger`), and TensorBoard scalars (:class:`TensorboardLogger`)."""
from __future__ import annotations

import datetime
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from patches.utils.distributed import is_main_process


class SmoothedValue:
    """Running window and global average of a scalar."""

    def __init__(self, window: int = 20):
        self.values: list[float] = []
        self.window = window
        self.total, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.values = (self.values + [value])[-self.window:]
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / max(1, self.count)

    @property
    def last(self) -> float:
        return self.values[-1] if self.values else float("nan")


class ProgressLogger:
    """Wraps an iterable; every ``print_freq`` steps prints metrics, clips/s and the epoch's ETA."""

    def __init__(self, header: str, print_freq: int = 10, clips_per_step: int = 1):
        self.header = header
        self.print_freq = max(1, print_freq)
        self.clips_per_step = clips_per_step
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)

    def update(self, **values: float) -> None:
        for name, value in values.items():
            if value is not None:
                self.meters[name].update(float(value))

    def averages(self) -> dict[str, float]:
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def log_every(self, iterable: Iterable[Any], total: int | None = None) -> Iterator[Any]:
        total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        start = last = time.time()
        for i, item in enumerate(iterable):
            yield item
            done = i + 1
            if done % self.print_freq == 0 or done == total:
                now = time.time()
                steps = self.print_freq if done % self.print_freq == 0 else done % self.print_freq
                rate = steps * self.clips_per_step / max(now - last, 1e-9)
                eta = (now - start) / done * (total - done)
                last = now
                metrics = "  ".join(f"{k} {m.last:.4g} ({m.global_avg:.4g})" if k == "loss" else f"{k} {m.last:.3g}"
                                    for k, m in self.meters.items())
                if is_main_process():
                    print(f"{self.header} [{done}/{total}]  {metrics}  clips/s {rate:.1f}  "
                          f"eta {datetime.timedelta(seconds=int(eta))}", flush=True)
        if is_main_process():
            elapsed = time.time() - start
            print(f"{self.header} done in {datetime.timedelta(seconds=int(elapsed))} "
                  f"({elapsed / max(1, total):.3f} s/step)", flush=True)


class TensorboardLogger:
    """tensorboardX writer with a global step, on the main process only."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        """``purge_step``: on resume, TensorBoard hides the events an earlier attempt wrote at this step and later."""
        from tensorboardX import SummaryWriter

        # The suffix keeps a file of each writer, in order, where two open in the same second (tensorboardX
        # names files by the second; a resumed run's writer would otherwise truncate its predecessor's file).
        self.writer = SummaryWriter(logdir=str(log_dir), purge_step=purge_step, filename_suffix=f".{time.time_ns()}")
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    def update(self, head: str = "scalar", step: int | None = None, **values: float) -> None:
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"{head}/{name}", float(value), self.step if step is None else step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
