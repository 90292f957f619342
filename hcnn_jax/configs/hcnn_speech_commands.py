"""Harmonic CNN keyword spotting on Speech Commands v0.02, 35 words (ICASSP 2020, ddhf).

    hcnn-build speech_commands35 --data_dir data --manual_dir /path/to/speech_commands
    python train.py --config hcnn_jax/configs/hcnn_speech_commands.py --workdir runs/hcnn_kws
    python eval.py --config hcnn_jax/configs/hcnn_speech_commands.py --workdir runs/hcnn_kws

ddhf's setting (reference section 8): the keywords back-end (time pools 2, 2, 2, 2, 2, 2, (2, 1)),
softmax cross-entropy, the 1-s clips as they are (16,000 samples; the model clamps its time pools,
see models/hcnn.py), selection by validation loss, accuracy. Schedule: ddhf's switch after 60
Adam epochs, but with the best weights reloaded at each switch (ddhf's reload never ran; add
--config.optimizer.reload_best=False to reproduce that). Paper: accuracy 0.9639.
"""
from __future__ import annotations

import ml_collections

from hcnn_jax.configs import base
from hcnn_jax.training import schedule


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  c = base.get_base_config()
  c.dataset.name = 'speech_commands35'
  c.dataset.data_dir = 'data'
  c.dataset.config_name = ''
  c.task = 'keywords'
  c.model.name = 'hcnn_keywords'
  c.model.kwargs = ml_collections.ConfigDict(dict(width=128, n_harmonic=6))
  c.input_length = 16_000
  c.batch_size = 16
  c.num_epochs = 200
  c.optimizer = schedule.optimizer_config('reference', variant='ddhf')
  c.optimizer.reload_best = True
  c.eval_chunks = 1  # a clip is one chunk: 16 copies of it would average to the same thing
  c.eval_tracks_per_batch = 64
  return c
