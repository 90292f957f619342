"""CPU demo: a narrow Harmonic CNN on the embedded synth_gm dataset (built on first use).

    python train.py --config hcnn_jax/configs/hcnn_synth_tiny.py --workdir runs/synth_tiny

32 channels (the reference has 128), all six harmonics, 5-s crops of the 8-s clips, 9 epochs of
AdamW (peak learning rate 4e-3) with a one-epoch warmup and cosine decay (the reference recipe's
80 Adam epochs do not fit a CPU demo), validation on 4 chunks per clip. 93 steps per epoch at batch
16; on two idle CPU cores a step takes about 0.6 s and an epoch with its validation about 65 s, so
training takes about 10 minutes. Width and learning rate were chosen on the validation split
(README, "What the demo model learns"): width 16 learned loudness and drums but barely timbre.
"""
from __future__ import annotations

import ml_collections

from hcnn_jax.configs import base
from hcnn_jax.training import schedule


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  c = base.get_base_config()
  c.dataset.name = 'synth_gm'
  c.dataset.data_dir = 'data'
  c.dataset.config_name = 'default'
  c.task = 'tagging'
  c.model.name = 'hcnn'
  c.model.kwargs = ml_collections.ConfigDict(dict(width=32, n_harmonic=6))
  c.input_length = 80_000
  c.batch_size = 16
  c.num_epochs = 9
  c.optimizer = schedule.optimizer_config('adamw_cosine')
  c.optimizer.learning_rate = 4e-3
  c.optimizer.warmup_epochs = 1
  c.eval_chunks = 4
  c.eval_tracks_per_batch = 16
  c.checkpoint_every_steps = 200
  c.log_every_steps = 20
  return c
