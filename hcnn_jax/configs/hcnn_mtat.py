"""Harmonic CNN on MagnaTagATune (top-50 tags, clean split 15,247 / 1,529 / 4,332).

    hcnn-build mtat --data_dir data --manual_dir /path/to/audio
    python train.py --config hcnn_jax/configs/hcnn_mtat.py --workdir runs/hcnn_mtat \
        --config.batch_size=16
    python eval.py --config hcnn_jax/configs/hcnn_mtat.py --workdir runs/hcnn_mtat --split test

sota's setting: 5-s crops (80,000 samples), batch 16, 200 epochs of the reference recipe (Adam 1e-4
with coupled L2 for 80 epochs, then Nesterov SGD 1e-3 / 1e-4 / 1e-5, reloading the best weights by
validation loss at each switch), 16-chunk track-level evaluation. reference section 4; target test
ROC-AUC ≈ 0.913 / PR-AUC ≈ 0.461 (section 6.1).
"""
from __future__ import annotations

import ml_collections

from hcnn_jax.configs import base


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  return base.get_hcnn_tagging_config('mtat', '')
