"""Harmonic CNN on the Million Song Dataset with Choi's filtered split and Last.fm top-50 tags.

    hcnn-build msd --data_dir data --manual_dir /path/to/audio --config choi
    python train.py --config hcnn_jax/configs/hcnn_msd.py --workdir runs/hcnn_msd \
        --config.batch_size=16
    python eval.py --config hcnn_jax/configs/hcnn_msd.py --workdir runs/hcnn_msd --split test

sota's setting: 5-s crops (80,000 samples), batch 16, 200 epochs of the reference recipe (Adam 1e-4
with coupled L2 for 80 epochs, then Nesterov SGD 1e-3 / 1e-4 / 1e-5, reloading the best weights by
validation loss at each switch), 16-chunk track-level evaluation. SMC 2020 table: ROC-AUC 0.8898 /
PR-AUC 0.3298.
"""
from __future__ import annotations

import ml_collections

from hcnn_jax.configs import base


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  return base.get_hcnn_tagging_config('msd', 'choi')
