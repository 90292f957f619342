"""Harmonic CNN on MTG-Jamendo autotagging top-50 (split-0, whole tracks; config_name 'excerpt30'
for the centred 30 s).

    hcnn-build mtg_jamendo --data_dir data --manual_dir /path/to/audio --config full
    python train.py --config hcnn_jax/configs/hcnn_jamendo.py --workdir runs/hcnn_jamendo \
        --config.batch_size=16
    python eval.py --config hcnn_jax/configs/hcnn_jamendo.py --workdir runs/hcnn_jamendo \
        --split test

sota's setting: 5-s crops (80,000 samples), batch 16, 200 epochs of the reference recipe (Adam 1e-4
with coupled L2 for 80 epochs, then Nesterov SGD 1e-3 / 1e-4 / 1e-5, reloading the best weights by
validation loss at each switch), 16-chunk track-level evaluation. SMC 2020 table: ROC-AUC 0.8322 /
PR-AUC 0.2956.
"""
from __future__ import annotations

import ml_collections

from hcnn_jax.configs import base


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  return base.get_hcnn_tagging_config('mtg_jamendo', 'full')
