"""Tests and smoke runs: a tiny HCNN on the in-memory fake tone set (no files, seconds on a CPU).

    python train.py --config hcnn_jax/configs/fake_tiny.py --workdir /tmp/fake_tiny

Width 4, two harmonics and 1-s crops of 1.5-s tracks; the last two blocks pool only the pitch
axis, because 63 frames cannot take the tagging variant's seven time pools (it needs 5 s).
The reference recipe is shortened to 1 Adam epoch + 1 SGD epoch per lr.
"""
from __future__ import annotations

import ml_collections

from hcnn_jax.configs import base


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  c = base.get_base_config()
  c.dataset.name = 'fake'
  c.dataset.data_dir = ''
  c.dataset.config_name = 'tracks=32,classes=5,samples=24000'
  c.task = 'tagging'
  c.model.name = 'hcnn'
  c.model.kwargs = ml_collections.ConfigDict(dict(
      width=4, n_harmonic=2,
      pools=((2, 2), (2, 2), (2, 2), (2, 2), (2, 2), (2, 1), (2, 1))))
  c.input_length = 16_000
  c.batch_size = 8
  c.num_epochs = 2
  c.optimizer.adam_epochs = 1
  c.optimizer.sgd_epochs = (1, 1)
  c.optimizer.adam_lr = 1e-3
  c.eval_chunks = 4
  c.eval_tracks_per_batch = 8
  c.checkpoint_every_steps = 2
  c.log_every_steps = 2
  c.progress_bar = False
  return c
