"""The ranks' one agreement per update (issue 27, items 4 and 9): a rank-local error stops every rank together with
the same message, and an update costs a fixed number of host reads and one all-reduce, whatever its micro-steps."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_trainer import config, mse, start

from launch_helpers import ROOT, env, free_port

TESTS = Path(__file__).resolve().parent


class CountingReads:
    """Counts the host reads of tensors (``item``, ``tolist``, ``float``, ``bool``, ...) while it is on; with
    ``floating_only``, of floating-point tensors only."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, floating_only: bool = False) -> None:
        self.count, self.floating_only = 0, floating_only
        for name in ("item", "tolist", "numpy", "__float__", "__int__", "__index__", "__bool__", "__format__"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self.counting(original))

    def counting(self, original):
        def read(tensor, *args, **kwargs):
            self.count += not self.floating_only or tensor.is_floating_point()
            return original(tensor, *args, **kwargs)
        return read


@pytest.mark.parametrize("update_freq,clip_grad", [(1, None), (2, None), (4, 1.0)])
def test_an_update_reads_the_host_once_and_all_reduces_once(tmp_path: Path, monkeypatch, update_freq,
                                                            clip_grad) -> None:
    # Per update one read: the agreement (losses, gradient norm, stop signals, errors, unreadable videos), read
    # before the step (non-finite gradients are never applied). Nothing per micro-step; no separate norm,
    # stop-signal or loss read.
    trainer = start(config(tmp_path, update_freq=update_freq, clip_grad=clip_grad, epochs=1), batch_size=2)
    all_reduces = []
    monkeypatch.setattr("patches.train.update_sync.is_dist", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, *a, **k: all_reduces.append(tensor.numel()))
    trainer.loader.sampler.set_epoch(0, 0)
    reads = CountingReads(monkeypatch)
    with trainer:
        stats = trainer.epoch_loop.train_one_epoch(mse, 0, 0)
    updates = trainer.steps_per_epoch
    assert updates == 16 // update_freq
    assert all_reduces == [update_freq + 6] * updates, \
        "one all-reduce per update: its losses, the gradient norm, the unreadable videos found and 4 flags"
    assert reads.count == updates + 1, "(+ 1: the DataLoader draws its base seed once per epoch, on the CPU)"
    assert stats["loss"] > 0 and ("grad_norm" in stats) == bool(clip_grad)


def test_the_unreadable_videos_of_every_rank_count_against_the_limit(tmp_path: Path, monkeypatch) -> None:
    # 32 videos, --max_bad_fraction 0.05: 1.6 may be unreadable. This rank finds one; with a peer that found
    # another (the all-reduce doubles the count, as a second rank alike would) the run has two: too many.
    from patches.data.health import TooManyBadVideos
    trainer = start(config(tmp_path, epochs=1), batch_size=2)
    tracker = trainer.epoch_loop.loader
    tracker.max_bad_fraction = 0.05
    tracker.add([("broken.mp4", "moov atom not found")])  # (what the loader's items bring along)
    monkeypatch.setattr("patches.train.update_sync.is_dist", lambda: True)

    def doubled(tensor, *args, **kwargs):
        tensor.mul_(2)
    monkeypatch.setattr(torch.distributed, "all_reduce", doubled)
    trainer.loader.sampler.set_epoch(0, 0)
    with trainer, pytest.raises(TooManyBadVideos, match="2 of the 32 videos of toy data cannot be read"):
        trainer.epoch_loop.train_one_epoch(mse, 0, 0)


RANK_LOCAL_ERROR = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_trainer import config, mse, start
from patches.checkpoints.errors import CheckpointSaveError
from patches.data.health import TooManyBadVideos
from patches.data.unreadable import UnreadableDataError
from patches.train.trainer import launch
from patches.utils.distributed import get_rank

class FailingAfter:
    # The training batches of this rank, then {error} after two of them (as the loader raises it).
    def __init__(self, loader):
        self.loader = loader
    def __len__(self):
        return len(self.loader)
    def __iter__(self):
        for n, batch in enumerate(self.loader):
            if n == 2 and "{error}" == "TooManyBadVideos":
                raise TooManyBadVideos("3 of the 32 videos of toy data cannot be read (rank 1's share)")
            if n == 2:
                raise UnreadableDataError("no readable video for item 7: toy/7.mp4 and 10 replacements failed")
            yield batch

def failing_save(epoch, batches_done):
    raise CheckpointSaveError(Path(sys.argv[1]) / "checkpoint-latest.pth", OSError(28, "No space left on device"))

def body(device):
    trainer = start(config(Path(sys.argv[1]), epochs=3), batch_size=2)
    if "{error}" in ("TooManyBadVideos", "UnreadableDataError") and get_rank() == 1:
        trainer.epoch_loop.loader = FailingAfter(trainer.epoch_loop.loader)
    if "{error}" == "CheckpointSaveError" and get_rank() == 0:
        trainer.checkpoints.save_if_due = failing_save
    with trainer:
        trainer.fit(mse)

launch(body, "cpu")
"""


@pytest.mark.slow
@pytest.mark.parametrize("error,rank", [("TooManyBadVideos", 1), ("UnreadableDataError", 1),
                                        ("CheckpointSaveError", 0)])
def test_a_rank_local_error_stops_every_rank_with_its_message(tmp_path: Path, error: str, rank: int) -> None:
    # Two torchrun agents on localhost (as two nodes), one process each, gloo. Before the agreement, the rank
    # without the error waited in its next collective for the process group's timeout.
    script = tmp_path / "body.py"
    script.write_text(RANK_LOCAL_ERROR.format(tests=str(TESTS), error=error))
    port, logs = free_port(), [(tmp_path / f"agent{r}.out", tmp_path / f"agent{r}.err") for r in range(2)]
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                                "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                                str(script), str(tmp_path / "out")], env=dict(env(), PYTHONPATH=str(ROOT)),
                               stdout=logs[r][0].open("w"), stderr=logs[r][1].open("w")) for r in range(2)]
    ended: dict[int, float] = {}
    try:
        while len(ended) < 2 and (not ended or time.time() - min(ended.values()) < 60):
            ended.update({r: time.time() for r, a in enumerate(agents) if r not in ended and a.poll() is not None})
            time.sleep(0.2)
        assert len(ended) == 2, "every rank ends within a minute of the first"
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    for agent, (out_file, err_file) in zip(agents, logs):
        agent.wait()
        out, err = out_file.read_text(), err_file.read_text()
        assert agent.returncode == 1, out[-2000:] + err[-3000:]
        assert f"error: {error} on rank {rank}: " in err, err[-3000:]


def test_the_selfchecks_host_syncs_row_steps_with_one_host_read_per_update(monkeypatch) -> None:
    # The row's updates on CPU, host reads counted where CUDA's sync debug mode would count synchronising calls
    # (that part needs CUDA: the row is skipped here, saying so). Reads of the step's floating-point results only:
    # the masks' token indices are worked out from the loader's bool masks on the host, under CUDA too (integer
    # reads of host tensors, no device sync).
    from patches.perf.selfcheck_context import QUICK, Context, Skip
    from patches.perf.selfcheck_steps import check_host_syncs, host_syncs

    class Watch:
        def __enter__(self):
            self.reads = CountingReads(monkeypatch, floating_only=True)
            return self

        def __exit__(self, *exc):
            monkeypatch.undo()
            self.count, self.first = self.reads.count, None

    figures = host_syncs(torch.device("cpu"), Watch, updates=3, update_freq=2)
    assert figures["syncs_per_update"] == 1.0
    assert figures["last_loss"] < figures["first_loss"]
    with pytest.raises(Skip, match="needs CUDA"):
        check_host_syncs(Context(torch.device("cpu"), QUICK, Path(".")))
