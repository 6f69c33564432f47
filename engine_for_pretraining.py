"""VideoMAE's ``engine_for_pretraining``: the masked-reconstruction loss, over :mod:`patches.train.reconstruction`.

The training loop itself (VideoMAE's ``train_one_epoch``) is
:meth:`patches.train.epoch_loop.EpochLoop.train_one_epoch`, run epoch by epoch by ``Trainer.fit``
(patches/train/trainer.py) for pre-training and fine-tuning alike.
"""
from __future__ import annotations

from patches.train.reconstruction import (FlexibleReconstruction, MaskedReconstruction, clips_to_device,
                                          mask_indices_to_device, prepare_batch, reconstruction_loss, resize_clips)
