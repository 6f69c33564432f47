"""VideoMAE's ``engine_for_finetuning``: the classification loss (:mod:`patches.train.classification`),
validation and the multi-view test (:mod:`patches.eval.testing`).

The training loop itself (VideoMAE's ``train_one_epoch``) is
:meth:`patches.train.epoch_loop.EpochLoop.train_one_epoch`, run epoch by epoch by ``Trainer.fit``.
"""
from __future__ import annotations

from patches.eval.testing import evaluate, final_test, merge_test_results, topk_correct
from patches.train.classification import Classification, classification_criterion, video_mixup
