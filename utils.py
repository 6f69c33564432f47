"""VideoMAE's ``utils``: devices and precision, distributed helpers, progress logging and atomic files, over
:mod:`patches.utils`."""
from __future__ import annotations

from patches.train.optim import cosine_scheduler
from patches.utils.devices import (amp_autocast, auto_amp, autocast_dtype, cuda_native_bf16, resolve_device,
                                   seed_everything)
from patches.utils.distributed import (PROCESS_GROUP_TIMEOUT, all_reduce_mean, cleanup_distributed, data_parallel,
                                       get_rank, get_world_size, init_distributed, is_dist, is_main_process,
                                       local_device_index, process_alive, unwrap_model)
from patches.utils.files import append_jsonl, drop_jsonl_records, fsync_dir, temp_path, write_atomically
from patches.utils.progress import ProgressLogger, SmoothedValue, TensorboardLogger
