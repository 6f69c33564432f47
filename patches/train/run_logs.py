"""A run's logs: one JSON record per epoch (and the final test) in ``log.txt``, and TensorBoard's scalars, both
written by the main process only; on resume, what an earlier attempt logged past the resume point is dropped."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from patches.utils.distributed import is_main_process
from patches.utils.files import append_jsonl, drop_jsonl_records
from patches.utils.progress import TensorboardLogger


class RunLogs:
    """``log.txt`` in ``output_dir``, and TensorBoard's event files in ``tb_dir`` (``output_dir/tb`` when None)."""

    def __init__(self, output_dir: str | Path, tb_dir: str | None = None) -> None:
        self.log_file = Path(output_dir) / "log.txt"
        self.tb_dir = tb_dir or os.path.join(output_dir, "tb")
        self._tb: TensorboardLogger | None = None
        self._purge_step: int | None = None

    @property
    def tb(self) -> TensorboardLogger | None:
        """The TensorBoard writer (main process only), opened on first use."""
        if self._tb is None and is_main_process():
            self._tb = TensorboardLogger(self.tb_dir, purge_step=self._purge_step)
        return self._tb

    def append(self, record: dict[str, Any]) -> None:
        """``record`` as one more line of ``log.txt``."""
        append_jsonl(self.log_file, record)

    def forget_from(self, epoch: int, step: int) -> None:
        """On resume: drop what an earlier attempt logged from ``epoch`` (``log.txt``) and global ``step``
        (TensorBoard's per-step scalars) on, so that the resumed run logs each epoch once."""
        if not is_main_process():
            return
        dropped = drop_jsonl_records(self.log_file, lambda r: r.get("epoch", -1) >= epoch)
        if dropped:
            print(f"Dropped {dropped} records of epoch {epoch} on from {self.log_file}: the resumed run logs them "
                  f"again")
        self._purge_step = step

    def epoch_end(self, record: dict[str, Any], step: int) -> None:
        """A trained epoch's ``record``: into ``log.txt``, and its training and data figures into TensorBoard at
        global ``step``."""
        self.append(record)
        if self.tb is None:
            return
        train = {k[len("train_"):]: v for k, v in record.items() if k.startswith("train_")}
        self.tb.update("epoch", step=step, **train)
        self.tb.update("data", step=step, skipped_videos=record["skipped_videos"],
                       bad_video_files=record["bad_video_files"])
        self.tb.flush()

    def close(self) -> None:
        """Close TensorBoard's writer (it reopens on the next use)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
