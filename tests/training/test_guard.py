"""The non-finite guard checks the state after the update, not only the loss and the gradients.

A finite gradient times a huge learning rate overflows the weights (SGD lr 3e38), and a finite but
huge gradient overflows Adam's second moment while the weights stay finite. Either way the step
must keep the previous state and record itself, and the loop must never save (periodic or best)
a non-finite state nor name one as the last good checkpoint.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.training import loop, parallel, state as state_lib
from tests.training import _models
from tests.training.test_loop import tiny_config

L = _models.INPUT_LENGTH
C = 3
MODEL = _models.make_model(C, dropout=False)


def _batch(seed, n=4):
  rng = np.random.default_rng(seed)
  return {'audio': rng.uniform(-1, 1, (n, L)).astype(np.float32),
          'labels': (rng.uniform(size=(n, C)) < 0.5).astype(np.float32)}


def _finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


def _step(loss_fn, tx, seed=0):
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = parallel.replicate(state_lib.create_train_state(MODEL, tx, jax.random.PRNGKey(seed), L),
                             mesh)
  train_step = parallel.make_train_step(MODEL, loss_fn, tx, mesh, donate=False)
  new, metrics = train_step(state, parallel.shard_batch(_batch(seed + 1), mesh))
  return jax.device_get(state), jax.device_get(new), jax.device_get(metrics)


def _grads(loss_fn, state, seed):
  batch = _batch(seed + 1)
  return jax.grad(lambda p: loss_fn(MODEL.apply(
      {'params': p, 'batch_stats': state.batch_stats}, batch['audio'], train=True,
      mutable=['batch_stats'])[0], batch['labels']))(state.params)


def _scaled_bce(logits, labels):
  # Gradient entries above ~1.1, so that lr 3e38 times them overflows float32.
  return 1e3 * _models.bce(logits, labels)


def test_update_that_overflows_the_weights_is_rejected():
  tx = optax.sgd(3e38)
  before, after, metrics = _step(_scaled_bce, tx)
  # The scenario is real: loss and gradients are finite, the unguarded update is not.
  grads = _grads(_scaled_bce, before, seed=0)
  assert _finite(grads) and np.isfinite(metrics['loss'])
  assert not _finite(optax.apply_updates(before.params, tx.update(grads, tx.init(
      before.params))[0]))
  assert metrics['finite'] == 0.0
  assert int(after.step) == 1 and int(after.nonfinite_step) == 0
  for name in ('params', 'batch_stats', 'opt_state'):
    assert _finite(getattr(after, name)), name
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(getattr(after, name)),
                                                     jax.tree.leaves(getattr(before, name))))


def test_update_that_overflows_only_the_optimiser_state_is_rejected():
  """Gradients ~1e20 are finite, Adam's nu = (1 - b2) g^2 is not; its update (m / sqrt(nu)) is 0,
  so the weights stay finite and only opt_state would carry the inf."""
  def huge_gradient_loss(logits, labels):
    return _models.bce(logits, labels) + 1e20 * jnp.mean(logits)

  tx = optax.adam(1e-3)
  before, after, metrics = _step(huge_gradient_loss, tx, seed=2)
  grads = _grads(huge_gradient_loss, before, seed=2)
  assert np.isfinite(metrics['loss']) and _finite(grads)
  assert not _finite(tx.update(grads, tx.init(before.params))[1])  # the unguarded opt_state
  assert metrics['finite'] == 0.0 and int(after.nonfinite_step) == 0
  assert _finite(after.opt_state) and _finite(after.params)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(after.opt_state),
                                                   jax.tree.leaves(before.opt_state)))


@pytest.mark.usefixtures('cache_dir')
def test_huge_sgd_lr_never_saves_or_names_a_non_finite_checkpoint(tmp_path):
  """The recipe of the report: Adam for an epoch, then SGD at lr 3e38."""
  config = tiny_config(tracks=16, num_epochs=2, steps_per_epoch=2, checkpoint_every_steps=1,
                       log_every_steps=1)
  config.optimizer.sgd_lrs = (3e38, 3e38, 3e38)
  workdir = str(tmp_path / 'run')
  with pytest.raises(FloatingPointError) as info:
    loop.train_and_evaluate(config, workdir)
  message = str(info.value)
  # Epoch 2 (SGD) starts at step 2; its first update overflows the weights.
  last_good = os.path.join(workdir, 'checkpoints', '2')
  assert message == (f'non-finite loss, gradient or updated state at step 2; last good '
                     f'checkpoint: {last_good}'), message
  with ckpt_lib.RunCheckpoints(workdir) as ckpts:
    steps = ckpts.periodic.all_steps()
    assert max(steps) == 2, steps
    for step in steps:
      variables, _, _ = ckpt_lib.restore_variables(ckpts.path(step))
      assert _finite(variables), step
    assert _finite(ckpt_lib.restore_variables(ckpts.best_path())[0])
