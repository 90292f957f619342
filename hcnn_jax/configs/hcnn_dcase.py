"""Harmonic CNN sound event tagging on DCASE 2017 task 4 (17 classes; ICASSP 2020, ddhf).

    hcnn-build dcase2017_task4 --data_dir data --manual_dir /path/to/dcase2017
    python train.py --config hcnn_jax/configs/hcnn_dcase.py --workdir runs/hcnn_dcase
    python eval.py --config hcnn_jax/configs/hcnn_dcase.py --workdir runs/hcnn_dcase --split test

ddhf's setting (reference section 8): the events back-end (seven 2×2 pools), 3-s crops (48,000
samples) of the 10-s clips, BCE, 16-chunk evaluation, F1 at threshold 0.1 and at per-class optimal
thresholds. Schedule as ddhf (SGD after 60 Adam epochs) but reloading the best weights. ddhf kept
its best model by F1@0.1 (from epoch 10); --config.selection_metric=f1@0.1
--config.selection_mode=max selects that way from the first epoch. Paper: F1 0.5468 at 0.1.
"""
from __future__ import annotations

import ml_collections

from hcnn_jax.configs import base
from hcnn_jax.training import schedule


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  c = base.get_base_config()
  c.dataset.name = 'dcase2017_task4'
  c.dataset.data_dir = 'data'
  c.dataset.config_name = ''
  c.task = 'events'
  c.model.name = 'hcnn_events'
  c.model.kwargs = ml_collections.ConfigDict(dict(width=128, n_harmonic=6))
  c.input_length = 48_000
  c.batch_size = 16
  c.num_epochs = 200
  c.optimizer = schedule.optimizer_config('reference', variant='ddhf')
  c.optimizer.reload_best = True
  c.eval_chunks = 16
  c.eval_tracks_per_batch = 8
  return c
