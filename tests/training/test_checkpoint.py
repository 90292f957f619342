"""Run checkpoints: exact round trips, atomic saves, the best slot, and load_for_inference."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnn_jax.configs import fake_tiny
from hcnn_jax.models.compose import Classifier
from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.models import registry
from hcnn_jax.training import optim, schedule
from hcnn_jax.training import state as state_lib

CONFIG = fake_tiny.get_config()
CLASSES = ['tone_00', 'tone_01', 'tone_02']


def _state(seed: int, phase_index: int = 0) -> state_lib.TrainState:
  """A small but complete TrainState: params, batch stats, the phase's optax state, rng."""
  rng = np.random.default_rng(seed)
  params = {'conv': {'kernel': jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32),
                     'bias': jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
            'q': jnp.asarray(rng.normal(), jnp.float32)}
  batch_stats = {'bn': {'mean': jnp.asarray(rng.normal(size=(4,)), jnp.float32),
                        'var': jnp.asarray(rng.uniform(size=(4,)), jnp.float32)}}
  tx = optim.make_optimizer(schedule.phases(CONFIG, 4)[phase_index])
  opt_state = tx.init(params)
  # Non-trivial optimiser moments: one update with random gradients.
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  _, opt_state = tx.update(grads, opt_state, params)
  return state_lib.TrainState(step=jnp.asarray(seed, jnp.int32), params=params,
                              batch_stats=batch_stats, opt_state=opt_state,
                              rng=jax.random.PRNGKey(seed), nonfinite_step=jnp.asarray(-1))


def _bitwise_equal(a, b) -> bool:
  la, ta = jax.tree.flatten(jax.device_get(a))
  lb, tb = jax.tree.flatten(jax.device_get(b))
  return ta == tb and all(np.asarray(x).dtype == np.asarray(y).dtype
                          and np.asarray(x).tobytes() == np.asarray(y).tobytes()
                          for x, y in zip(la, lb))


def _meta(epochs_done: int):
  return {'bookkeeping': {'epochs_done': epochs_done, 'phase': 0, 'best_value': None},
          'class_names': CLASSES}


def test_round_trip_is_exact_for_state_iterator_and_bookkeeping(tmp_path):
  saved = _state(7)
  data_state = b'{"last_seen_indices": {"0": 41}, "last_worker_index": -1}'
  with ckpt_lib.RunCheckpoints(str(tmp_path)) as ckpts:
    ckpts.save(7, saved, data_state=data_state, meta=_meta(1), config=CONFIG)
    ckpts.wait()
    assert ckpts.latest_step() == 7
    restored, data, meta = ckpts.restore(_state(0))
    assert ckpts.restore_meta()['config']['model']['name'] == 'hcnn'
  assert _bitwise_equal(restored, saved)
  assert type(restored.opt_state) is type(saved.opt_state)  # optax containers, not dicts
  assert float(optim.learning_rate(restored.opt_state)) == pytest.approx(1e-3)
  assert data == data_state
  assert meta == _meta(1)


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
  with ckpt_lib.RunCheckpoints(str(tmp_path)) as ckpts:
    ckpts.save(2, _state(2), data_state=None, meta=_meta(0), config=CONFIG)
  # What a process killed while writing step 4 leaves behind: orbax's temporary directory.
  partial = tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp-1795600000'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'garbage').write_bytes(b'\0' * 10)
  with ckpt_lib.RunCheckpoints(str(tmp_path)) as ckpts:
    assert ckpts.latest_step() == 2
    restored, data, meta = ckpts.restore(_state(0))
  assert _bitwise_equal(restored, _state(2)) and data is None and meta == _meta(0)
  assert not partial.exists()  # cleaned when the manager reopened


def test_retention_best_slot_and_idempotent_saves(tmp_path):
  with ckpt_lib.RunCheckpoints(str(tmp_path), max_to_keep=2) as ckpts:
    for step in (1, 2, 3):
      ckpts.save(step, _state(step), data_state=None, meta=_meta(step), config=CONFIG)
    # A deterministic rerun reaching a saved step again leaves it as it is.
    ckpts.save(3, _state(99), data_state=None, meta=_meta(99), config=CONFIG)
    for step in (1, 3):
      ckpts.save_best(step, state_lib.variables(_state(step)), meta=_meta(step), config=CONFIG)
    ckpts.wait()
    assert ckpts.periodic.all_steps() == [2, 3]
    assert ckpts.best.all_steps() == [3] and ckpts.best_step() == 3
    assert ckpts.best_path() == os.path.join(str(tmp_path), 'best', '3')
    variables, meta = ckpts.restore_best(state_lib.variables(_state(0)))
    assert _bitwise_equal(variables, state_lib.variables(_state(3))) and meta == _meta(3)
    restored, _, meta = ckpts.restore(_state(0))
  assert _bitwise_equal(restored, _state(3)) and meta == _meta(3)


def test_restore_best_without_one_is_a_clear_error(tmp_path):
  with ckpt_lib.RunCheckpoints(str(tmp_path)) as ckpts:
    with pytest.raises(ValueError, match='no best checkpoint'):
      ckpts.restore_best()


def test_resolve_accepts_workdir_manager_and_step_dirs(tmp_path):
  with ckpt_lib.RunCheckpoints(str(tmp_path)) as ckpts:
    for step in (4, 8):
      ckpts.save(step, _state(step), data_state=None, meta=_meta(step), config=CONFIG)
    ckpts.save_best(4, state_lib.variables(_state(4)), meta=_meta(1), config=CONFIG)
  best, periodic = str(tmp_path / 'best'), str(tmp_path / 'checkpoints')
  assert ckpt_lib.resolve(str(tmp_path)) == (best, 4, 'best')
  assert ckpt_lib.resolve(periodic) == (periodic, 8, 'periodic')
  assert ckpt_lib.resolve(os.path.join(periodic, '4')) == (periodic, 4, 'periodic')
  variables, meta, config = ckpt_lib.restore_variables(os.path.join(periodic, '8'))
  assert _bitwise_equal(variables, state_lib.variables(_state(8)))
  assert meta == _meta(8) and config['input_length'] == CONFIG.input_length
  with pytest.raises(ValueError, match='does not exist'):
    ckpt_lib.resolve(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no checkpoint found under .*empty: train first'):
    ckpt_lib.load_for_inference(str(tmp_path / 'empty'))


def test_load_for_inference_rebuilds_the_model_from_the_saved_config(tmp_path):
  model = registry.build_model(CONFIG, len(CLASSES))
  variables = state_lib.init_variables(model, jax.random.PRNGKey(3), CONFIG.input_length)
  with ckpt_lib.RunCheckpoints(str(tmp_path)) as ckpts:
    ckpts.save_best(10, variables, meta={'class_names': CLASSES}, config=CONFIG)
  loaded, loaded_vars, config, class_names = ckpt_lib.load_for_inference(str(tmp_path))
  assert isinstance(loaded, Classifier) and loaded.num_classes == 3
  assert loaded.bn_axis_name is None  # inference: no mesh axis
  assert class_names == CLASSES
  assert config.model.kwargs.width == 4 and config.input_length == CONFIG.input_length
  assert _bitwise_equal(loaded_vars, variables)
  logits = jax.eval_shape(lambda v, x: loaded.apply(v, x, train=False), loaded_vars,
                          jax.ShapeDtypeStruct((2, CONFIG.input_length), jnp.float32))
  assert logits.shape == (2, 3)
