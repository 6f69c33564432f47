"""VideoMAE's ``datasets``: the pre-training and classification datasets, over :mod:`patches.data.datasets`."""
from __future__ import annotations

from patches.data.datasets import (MAX_REPLACEMENTS, ClassificationDataConfig, CollateWithBad, PretrainingDataConfig,
                                   SkipsUnreadableVideos, UnreadableDataError, UnreadableVideoWarning,
                                   VideoClsEvalDataset, VideoClsTrainDataset, VideoMAEPretrainDataset, build_dataset,
                                   build_pretraining_dataset, collate_fn_for, default_flip, default_sampling,
                                   multiple_samples_collate, other_index)
