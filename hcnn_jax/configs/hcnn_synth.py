"""The full-size Harmonic CNN (reference widths, 6 harmonics) on the embedded synth_gm dataset.

    python train.py --config hcnn_jax/configs/hcnn_synth.py --workdir runs/synth
    python train.py --config hcnn_jax/configs/hcnn_synth.py:large --workdir runs/synth_large

The optional argument picks the synth_gm build config ('default': 2,000 clips of 8 s; 'large': MTAT
scale). Reference recipe (Adam 80 epochs, then SGD with reloads of the best weights) and 16-chunk
evaluation, as for MTAT; meant for an accelerator.
"""
from __future__ import annotations

import ml_collections

from hcnn_jax.configs import base


def get_config(arg=None) -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.dataset.name = 'synth_gm'
  c.dataset.data_dir = 'data'
  c.dataset.config_name = arg or 'default'
  c.task = 'tagging'
  c.model.name = 'hcnn'
  c.model.kwargs = ml_collections.ConfigDict(dict(width=128, n_harmonic=6))
  c.input_length = 80_000
  c.batch_size = 16
  c.num_epochs = 200
  c.eval_chunks = 16
  c.eval_tracks_per_batch = 8
  return c
