"""int16 audio from the loader to the step, and `data_in_memory` in the training loop.

Training sends the stored int16 samples through the loader and onto the devices (half the bytes
of float32) and the steps divide by 32768 there. Since int16 / 32768 is exact in float32 both
ways, nothing may change: the loader's int16 batches are its float32 batches × 32768 exactly,
and a train or eval step fed either gives bitwise the same loss, parameters and outputs. The loop
with `data_in_memory=True` (the train split decoded into a shared file) must train exactly as
without it.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hcnn_jax.configs import fake_tiny
from hcnn_jax.data import in_memory, pipeline, sources
from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.configs import base as config_base
from hcnn_jax.training import loop, parallel, step as step_lib
from hcnn_jax.training import state as state_lib
from tests.training import _models

L = _models.INPUT_LENGTH
C = 3
FAKE = f'tracks=8,classes={C},samples=200,min_samples=40'  # some tracks shorter than L: padded


def _loader_batches(audio_dtype, n=3, seed=4):
  source = sources.fake_source('train', FAKE)
  loader = pipeline.train_loader(source, input_length=L, global_batch_size=4, seed=seed,
                                 shard_index=0, shard_count=1, audio_dtype=audio_dtype)
  it = iter(loader)
  return [next(it) for _ in range(n)]


# ------------------------------------------------------------------------------------- loader

def test_int16_batches_are_the_float32_batches_times_32768():
  floats, ints = _loader_batches('float32'), _loader_batches('int16')
  for f, i in zip(floats, ints):
    assert f['audio'].dtype == np.float32 and i['audio'].dtype == np.int16
    assert i['audio'].shape == f['audio'].shape == (4, L)
    np.testing.assert_array_equal(i['audio'].astype(np.float32) / 32768.0, f['audio'])
    np.testing.assert_array_equal(f['audio'] * 32768.0, i['audio'].astype(np.float32))
    np.testing.assert_array_equal(i['labels'], f['labels'])
    assert i['labels'].dtype == np.float32
  assert np.abs(ints[0]['audio']).max() > 1_000  # real samples, not rescaled floats
  assert (ints[0]['audio'] == 0).any()  # the short tracks' zero padding is there too


def test_check_batch_holds_the_loader_to_its_audio_dtype():
  batch = {'audio': np.zeros((2, 8), np.int16), 'labels': np.zeros((2, 3), np.float32)}
  assert pipeline.CheckBatch(2, 8, 3, 'int16').map(batch) is batch
  with pytest.raises(AssertionError):
    pipeline.CheckBatch(2, 8, 3).map(batch)  # float32 promised by default
  with pytest.raises(AssertionError):
    pipeline.CheckBatch(2, 8, 3, 'int16').map(dict(batch, audio=batch['audio'].astype(np.float32)))
  crop = pipeline.RandomCrop(8, 'int16').random_map(
      {'audio': np.arange(20, dtype=np.int16), 'labels': [1, 0, 0]}, np.random.default_rng(0))
  assert crop['audio'].dtype == np.int16 and crop['labels'].dtype == np.float32


@pytest.mark.parametrize('bad', ['int8', 'float16', 'bfloat16', np.int16, None])
def test_bad_audio_dtype_is_refused(bad):
  with pytest.raises(ValueError, match='audio_dtype'):
    pipeline.check_audio_dtype(bad)
  with pytest.raises(ValueError, match='audio_dtype'):
    pipeline.train_loader(sources.fake_source('train', FAKE), input_length=L,
                          global_batch_size=4, seed=0, shard_index=0, shard_count=1,
                          audio_dtype=bad)
  with pytest.raises(ValueError, match='audio_dtype'):
    pipeline.RandomCrop(L, bad)
  with pytest.raises(ValueError, match='audio_dtype'):
    pipeline.CheckBatch(4, L, C, bad)


# -------------------------------------------------------------------------------------- steps

def test_float_audio_scales_integers_and_passes_floats():
  ints = jnp.asarray([-32768, -1, 0, 1, 32767], jnp.int16)
  out = step_lib.float_audio(ints)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, np.array([-1.0, -1 / 32768, 0.0, 1 / 32768, 32767 / 32768],
                                              np.float32))
  floats = jnp.asarray([0.5, -0.25, 3.0], jnp.float32)  # floats are not rescaled or clipped
  assert step_lib.float_audio(floats) is floats
  bf16 = floats.astype(jnp.bfloat16)
  assert step_lib.float_audio(bf16).dtype == jnp.bfloat16
  np.testing.assert_array_equal(step_lib.float_audio(jax.jit(lambda x: x)(ints)), out)


@pytest.fixture(scope='module')
def mesh():
  return parallel.make_mesh(jax.devices()[:1])


def _host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_train_step_on_int16_equals_train_step_on_float32(mesh):
  model = _models.make_model(C)  # with dropout: the same keys in both runs
  tx = optax.adam(1e-2)
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), L)
  train_step = parallel.make_train_step(model, _models.bce, tx, mesh, donate=False)

  def run(batches, convert=lambda a: a):
    s, losses = parallel.replicate(state, mesh), []
    for b in batches:
      s, metrics = train_step(s, parallel.shard_batch(dict(b, audio=convert(b['audio'])), mesh))
      losses.append(float(metrics['loss']))
      assert float(metrics['finite']) == 1.0
    return s, losses

  float_state, float_losses = run(_loader_batches('float32'))
  int_state, int_losses = run(_loader_batches('int16'))
  assert int_losses == float_losses
  for a, b in zip(_host(int_state.params) + _host(int_state.batch_stats),
                  _host(float_state.params) + _host(float_state.batch_stats)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in
             zip(_host(int_state.params), _host(state.params)))  # the steps did train
  # Control: the same int16 samples sent as unscaled floats train differently, so the equality
  # above is the step's rescaling at work.
  _, raw_losses = run(_loader_batches('int16'), convert=lambda a: a.astype(np.float32))
  assert raw_losses != float_losses


def test_eval_step_on_int16_equals_eval_step_on_float32(mesh):
  model = _models.make_model(C)
  tx = optax.adam(1e-2)
  variables = parallel.replicate(state_lib.variables(
      state_lib.create_train_state(model, tx, jax.random.PRNGKey(1), L)), mesh)
  eval_step = parallel.make_eval_step(model, _models.bce, jax.nn.sigmoid, mesh)
  batch = next(iter(pipeline.eval_batches(sources.fake_source('test', FAKE), input_length=L,
                                          num_chunks=3, tracks_per_batch=4, shard_index=0,
                                          shard_count=1)))
  ints = np.round(batch['audio'] * 32768.0).astype(np.int16)
  np.testing.assert_array_equal(ints / np.float32(32768.0), batch['audio'])  # an exact pair
  fields = {k: batch[k] for k in ('audio', 'labels', 'mask')}
  want = jax.device_get(eval_step(variables, parallel.shard_batch(fields, mesh)))
  got = jax.device_get(eval_step(variables, parallel.shard_batch(dict(fields, audio=ints), mesh)))
  assert want['probs'].shape == (4, C)
  np.testing.assert_array_equal(got['probs'], want['probs'])
  np.testing.assert_array_equal(got['loss'], want['loss'])


# ------------------------------------------------------------------------------------ config

def _with(config, **values):
  """A copy of config with values set as they are (a ConfigDict would refuse a str for a bool)."""
  d = config.to_dict()
  d.update(values)
  return ml_collections.ConfigDict(d)


@pytest.mark.parametrize('value', ['yes', 'False', [True], 1, 0.0])
def test_config_check_wants_data_in_memory_true_or_false(value):
  config = fake_tiny.get_config()
  assert config.data_in_memory is False
  config_base.validate(config)
  config_base.validate(_with(config, data_in_memory=True))
  with pytest.raises(ValueError, match=r'- data_in_memory: must be True or False'):
    config_base.validate(_with(config, data_in_memory=value))
  del config['data_in_memory']  # a config written before the key existed
  config_base.validate(config)


# ------------------------------------------------------------------------------------- loop

def tiny_config(**overrides):
  c = fake_tiny.get_config()
  c.dataset.config_name = 'tracks=16,classes=5,samples=24000,min_samples=12000'
  c.num_epochs = 1
  c.steps_per_epoch = 2
  for key, value in overrides.items():
    c[key] = value
  return c


def test_loop_with_data_in_memory_trains_exactly_as_without(tmp_path, monkeypatch,
                                                            cache_dir):
  made, dtypes = [], []

  class Recorded(in_memory.DecodedSource):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      made.append(self._path)

  real_loader = pipeline.train_loader

  def train_loader(*args, **kwargs):
    dtypes.append(kwargs.get('audio_dtype'))
    return real_loader(*args, **kwargs)

  monkeypatch.setattr(in_memory, 'DecodedSource', Recorded)
  monkeypatch.setattr(pipeline, 'train_loader', train_loader)
  results, params = {}, {}
  for flag in (False, True):
    workdir = str(tmp_path / f'in_memory_{flag}')
    results[flag] = loop.train_and_evaluate(tiny_config(data_in_memory=flag), workdir)
    variables, _, _ = ckpt_lib.restore_variables(
        os.path.join(workdir, results[flag]['checkpoint']))
    params[flag] = jax.tree.leaves(jax.device_get(variables))
  assert dtypes == ['int16', 'int16']  # training always sends int16 samples
  assert len(made) == 1  # only the data_in_memory run decoded the split
  # Removed by the trainer itself, not left to garbage collection: a loader thread can still
  # hold the source (under load this once left the file in /dev/shm after the run).
  assert not os.path.exists(made[0]), 'the decoded split outlived the run'

  assert results[True]['step'] == results[False]['step'] == 2
  for key in ('loss', 'roc_auc', 'pr_auc'):
    assert np.isfinite(results[True][key])
    assert results[True][key] == results[False][key], key
  assert len(params[True]) == len(params[False])
  for a, b in zip(params[True], params[False]):
    np.testing.assert_array_equal(a, b)
