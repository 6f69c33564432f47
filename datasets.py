"""VideoMAE's ``datasets``: the pre-training and classification datasets, over :mod:`patches.data.datasets`."""
from __future__ import annotations

from patches.data.datasets import (UnreadableDataError, UnreadableVideoWarning, MAX_REPLACEMENTS,
                                   SkipsUnreadableVideos, other_index, CollateWithBad, VideoMAEPretrainDataset,
                                   multiple_samples_collate, collate_fn_for, PretrainingDataConfig,
                                   build_pretraining_dataset, VideoClsTrainDataset, VideoClsEvalDataset,
                                   default_sampling, default_flip, ClassificationDataConfig, build_dataset)
