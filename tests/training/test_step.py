"""The per-device steps and the training state, on one CPU device (a 1-device mesh)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hcnn_jax.training import parallel, state as state_lib, step as step_lib
from tests.training import _models

L = _models.INPUT_LENGTH
C = 3


def _batch(seed, n=4, nan=False):
  rng = np.random.default_rng(seed)
  audio = rng.uniform(-1, 1, (n, L)).astype(np.float32)
  if nan:
    audio[1, 5] = np.nan
  return {'audio': audio, 'labels': (rng.uniform(size=(n, C)) < 0.5).astype(np.float32)}


# One model, optimiser and compiled step shared by the tests below: compiling is what costs here.
MODEL = _models.make_model(C, dropout=False)
LR = 0.5
TX = optax.sgd(LR, momentum=0.9)


@pytest.fixture(scope='module')
def mesh():
  return parallel.make_mesh(jax.devices()[:1])


@pytest.fixture(scope='module')
def train_step(mesh):
  return parallel.make_train_step(MODEL, _models.bce, TX, mesh, donate=False)


def _tree_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_create_train_state_layout():
  model = _models.make_model(C)  # with dropout: init must not need a dropout key from the caller
  tx = optax.adam(1e-3)
  state = state_lib.create_train_state(model, tx, jax.random.key(0), L)
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  assert state.nonfinite_step.dtype == jnp.int32 and int(state.nonfinite_step) == -1
  assert state.rng.dtype == jnp.uint32 and state.rng.shape == (2,)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(state.params))
  assert set(state_lib.variables(state)) == {'params', 'batch_stats'}
  assert jax.tree.leaves(state.batch_stats), 'BatchNorm statistics were not created'
  # Same seed (raw or typed key) → same state.
  again = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), L)
  assert _tree_equal(state.params, again.params) and _tree_equal(state.rng, again.rng)


@pytest.mark.parametrize('bad', [0, -5, 2.5, '64'])
def test_create_train_state_rejects_bad_input_length(bad):
  with pytest.raises(ValueError, match='input_length'):
    state_lib.create_train_state(_models.make_model(C), optax.sgd(0.1), jax.random.PRNGKey(0), bad)


def test_train_step_applies_the_gradient_of_the_batch_loss(mesh, train_step):
  """The first SGD step moves the parameters by exactly -lr × the gradient of the batch loss."""
  state = state_lib.create_train_state(MODEL, TX, jax.random.PRNGKey(1), L)
  batch = _batch(0)

  def loss(params):
    logits, _ = MODEL.apply({'params': params, 'batch_stats': state.batch_stats}, batch['audio'],
                            train=True, mutable=['batch_stats'])
    return _models.bce(logits, batch['labels'])

  value, grads = jax.value_and_grad(loss)(state.params)
  new, metrics = train_step(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh))
  # Two programs (the jitted shard_map step and this eager value_and_grad) sum the convolutions'
  # and BatchNorm's float32 reductions in different orders, and XLA's CPU thread pool changes
  # them with the load: the loss differed by 2e-7 relative here and by 1.6e-6 under load,
  # gradients by ~10x more. 1e-4 is ~800 float32 ulps, still far below what a wrong loss or
  # gradient gives (wrong BatchNorm mode, batch or scaling: > 1e-2).
  np.testing.assert_allclose(float(metrics['loss']), float(value), rtol=1e-4)
  np.testing.assert_allclose(float(metrics['grad_norm']), float(optax.global_norm(grads)),
                             rtol=1e-4)
  assert float(metrics['finite']) == 1.0
  for p0, p1, g in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params),
                       jax.tree.leaves(grads)):
    # atol: a bias right before BatchNorm has a gradient of rounding noise only; the other
    # leaves' updates (LR × gradient) have medians of 6e-3 to 3e-2.
    np.testing.assert_allclose(np.asarray(p1), np.asarray(p0 - LR * g), rtol=1e-4, atol=1e-4)
  assert int(new.step) == 1 and int(new.nonfinite_step) == -1
  # The running statistics moved 10% toward the batch's (BatchNorm momentum 0.9).
  assert not _tree_equal(new.batch_stats, state.batch_stats)


def test_training_reduces_the_loss_on_a_fixed_batch(mesh, train_step):
  state = parallel.replicate(state_lib.create_train_state(MODEL, TX, jax.random.PRNGKey(2), L),
                             mesh)
  batch = parallel.shard_batch(_batch(1, n=8), mesh)
  losses = []
  for _ in range(15):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.8 * losses[0], losses
  assert int(state.step) == 15


def test_nonfinite_batch_is_skipped_and_its_step_recorded(mesh, train_step):
  state = parallel.replicate(state_lib.create_train_state(MODEL, TX, jax.random.PRNGKey(3), L),
                             mesh)
  state, _ = train_step(state, parallel.shard_batch(_batch(2), mesh))
  bad, metrics = train_step(state, parallel.shard_batch(_batch(3, nan=True), mesh))
  assert float(metrics['finite']) == 0.0
  assert not np.isfinite(float(metrics['loss']))
  assert _tree_equal(bad.params, state.params)
  assert _tree_equal(bad.opt_state, state.opt_state)  # the momentum is not poisoned either
  assert _tree_equal(bad.batch_stats, state.batch_stats)
  assert int(bad.step) == 2 and int(bad.nonfinite_step) == 1
  # Later good steps train again but keep the first bad step on record.
  after, metrics = train_step(bad, parallel.shard_batch(_batch(4), mesh))
  assert float(metrics['finite']) == 1.0
  assert not _tree_equal(after.params, bad.params)
  assert int(after.nonfinite_step) == 1


def test_nonfinite_gradient_with_finite_loss_is_skipped(mesh):
  """An infinite gradient behind a finite loss (a sqrt at 0) must be caught too."""
  def sqrt_loss(logits, labels):
    return _models.bce(logits, labels) + jnp.sqrt(jnp.sum(logits * 0.0))

  state = state_lib.create_train_state(MODEL, TX, jax.random.PRNGKey(4), L)
  train_step = parallel.make_train_step(MODEL, sqrt_loss, TX, mesh, donate=False)
  new, metrics = train_step(parallel.replicate(state, mesh), parallel.shard_batch(_batch(5), mesh))
  assert np.isfinite(float(metrics['loss'])) and float(metrics['finite']) == 0.0
  assert _tree_equal(new.params, state.params) and int(new.nonfinite_step) == 0


def test_dropout_keys_differ_per_step_and_per_device_and_repeat():
  state = state_lib.create_train_state(MODEL, TX, jax.random.PRNGKey(5), L)

  def keys(s):
    return jax.vmap(lambda _: step_lib.dropout_key(s, 'data'), axis_name='data')(jnp.arange(2))

  k0 = np.asarray(keys(state))
  k1 = np.asarray(keys(state.replace(step=state.step + 1)))
  assert not np.array_equal(k0[0], k0[1])  # devices
  assert not np.array_equal(k0[0], k1[0])  # steps
  assert np.array_equal(k0, np.asarray(keys(state)))  # reruns


def test_eval_step_averages_chunk_probabilities_and_replicates_labels(mesh):
  model = MODEL
  variables = state_lib.variables(state_lib.create_train_state(model, TX, jax.random.PRNGKey(6), L))
  rng = np.random.default_rng(7)
  n, chunks = 3, 4
  batch = {'audio': rng.uniform(-1, 1, (n, chunks, L)).astype(np.float32),
           'labels': np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.float32),
           'mask': np.array([True, True, False])}
  out = step_lib.eval_step(variables, batch, model=model, loss_fn=_models.bce,
                           predict_fn=jax.nn.sigmoid)
  assert out['probs'].shape == (n, C) and out['loss'].shape == (n,)
  logits = np.asarray(model.apply(variables, batch['audio'].reshape(n * chunks, L)),
                      np.float64).reshape(n, chunks, C)
  probs = 1.0 / (1.0 + np.exp(-logits))
  np.testing.assert_allclose(np.asarray(out['probs']), probs.mean(axis=1), rtol=1e-5)
  y = batch['labels'][:, None, :]
  bce = -(y * np.log(probs) + (1 - y) * np.log(1 - probs))
  np.testing.assert_allclose(np.asarray(out['loss']), bce.mean(axis=(1, 2)), rtol=1e-5)
  # The jitted, shard_mapped version computes the same.
  sharded = parallel.make_eval_step(model, _models.bce, jax.nn.sigmoid, mesh)
  got = parallel.to_host(sharded(parallel.replicate(variables, mesh),
                                 parallel.shard_batch(batch, mesh)))
  np.testing.assert_allclose(got['probs'], np.asarray(out['probs']), rtol=1e-5)
  np.testing.assert_allclose(got['loss'], np.asarray(out['loss']), rtol=1e-5)
