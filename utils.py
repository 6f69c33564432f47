"""VideoMAE's ``utils``: devices and precision, distributed helpers, progress logging and atomic files, over
:mod:`patches.utils`."""
from __future__ import annotations

from patches.utils.devices import (resolve_device, autocast_dtype, cuda_native_bf16, auto_amp, amp_autocast,
                                   seed_everything)
from patches.utils.distributed import (PROCESS_GROUP_TIMEOUT, local_device_index, init_distributed, process_alive,
                                       is_dist, get_rank, get_world_size, is_main_process, cleanup_distributed,
                                       data_parallel, all_reduce_mean, unwrap_model)
from patches.utils.progress import (SmoothedValue, ProgressLogger, TensorboardLogger)
from patches.utils.files import (temp_path, fsync_dir, write_atomically, append_jsonl, drop_jsonl_records)
from patches.train.optim import (cosine_scheduler)
