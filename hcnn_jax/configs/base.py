"""Defaults shared by every run config; one file per (model, dataset) overrides what differs.

Every key the trainer reads lives here with its default (docs/architecture.md), so a config file
is short and `--config.<key>=<value>` can override any of them. Optional values are typed
placeholders (None until set) so that they can still be set from the command line.

Keys:
  dataset.name / data_dir / config_name  prepared TFDS dataset (or 'fake'); config_name '' = default
  task                  'tagging' | 'keywords' | 'events'; unset = the dataset's metadata 'task'
  selection_metric/mode what picks the best checkpoint; unset = the task's (validation loss, min)
  model.name / kwargs   registered model and its builder options
  input_length          training crop and eval chunk length, in samples at 16 kHz
  batch_size            global batch (all devices and hosts)
  num_epochs            epochs; steps_per_epoch unset = len(train) // batch_size
  optimizer.*           the recipe of training/schedule.py (reference or adamw_cosine)
  seed, dtype           PRNG seed; compute dtype 'float32' | 'bfloat16' (params stay float32)
  eval_chunks, eval_tracks_per_batch   track-level evaluation: chunks per track, tracks per batch
  checkpoint_every_steps               periodic checkpoints (0: only at epoch ends)
  checkpoints_to_keep, log_every_steps, worker_count (grain processes; 0 = in the main process)
  data_in_memory        decode the train split once into a shared int16 file in /dev/shm (crops
                        become slices instead of decompressing a track; see data/in_memory.py)
  final_eval_split      split evaluated with the best checkpoint after training
  progress_bar          tqdm bars on the training and evaluation loops
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from hcnn_jax.training import schedule


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = ml_collections.ConfigDict(dict(name='synth_gm', data_dir='data', config_name=''))
  c.task = placeholder(str)
  c.selection_metric = placeholder(str)
  c.selection_mode = placeholder(str)
  c.model = ml_collections.ConfigDict(dict(name='hcnn', kwargs=ml_collections.ConfigDict()))
  c.input_length = 80_000
  c.batch_size = 16
  c.num_epochs = 200
  c.steps_per_epoch = placeholder(int)
  c.optimizer = schedule.optimizer_config('reference', variant='sota')
  c.seed = 0
  c.dtype = 'float32'
  c.eval_chunks = 16
  c.eval_tracks_per_batch = 4
  c.checkpoint_every_steps = 1000
  c.checkpoints_to_keep = 2
  c.log_every_steps = 50
  c.worker_count = 0
  c.data_in_memory = False
  c.final_eval_split = 'test'
  c.progress_bar = True
  return c


def get_hcnn_tagging_config(dataset: str, config_name: str = '') -> ml_collections.ConfigDict:
  """sota's Harmonic CNN setting on a 50-tag dataset: width 128, 6 harmonics, 5-s crops (80,000
  samples), batch 16, 200 epochs of the reference recipe, 16-chunk track-level evaluation."""
  c = get_base_config()
  c.dataset.name = dataset
  c.dataset.data_dir = 'data'
  c.dataset.config_name = config_name
  c.task = 'tagging'
  c.model.name = 'hcnn'
  c.model.kwargs = ml_collections.ConfigDict(dict(width=128, n_harmonic=6))
  c.input_length = 80_000
  c.batch_size = 16
  c.num_epochs = 200
  c.eval_chunks = 16
  c.eval_tracks_per_batch = 8
  return c
