"""bfloat16 compute with float32 parameters, optimiser state, BatchNorm statistics and loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hcnn_jax.training import parallel, precision, state as state_lib
from tests.training import _models

L = _models.INPUT_LENGTH


def test_compute_dtype_names():
  assert precision.compute_dtype('float32') == jnp.float32
  assert precision.compute_dtype('bfloat16') == jnp.bfloat16
  assert precision.model_kwargs('bfloat16', width=4) == {'width': 4, 'dtype': jnp.bfloat16}
  for bad in ('float16', 'bf16', None):
    with pytest.raises(ValueError, match='dtype'):
      precision.compute_dtype(bad)


def _float_dtypes(tree):
  return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_policy_through_a_train_step():
  dtype = precision.compute_dtype('bfloat16')
  model = _models.make_model(3, dtype=dtype)
  tx = optax.adam(1e-2)
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), L)
  assert _float_dtypes(state.params) == {jnp.dtype(jnp.float32)}
  assert _float_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
  assert _float_dtypes(state.batch_stats) == {jnp.dtype(jnp.float32)}

  rng = np.random.default_rng(0)
  audio = rng.uniform(-1, 1, (4, L)).astype(np.float32)
  labels = (rng.uniform(size=(4, 3)) < 0.5).astype(np.float32)
  # The computation itself runs in bf16: the activations and logits are bf16.
  (logits, updates) = model.apply(state_lib.variables(state), audio, train=True,
                                  rngs={'dropout': jax.random.PRNGKey(1)},
                                  mutable=['batch_stats', 'intermediates'])
  assert logits.dtype == jnp.bfloat16
  assert _float_dtypes(updates['intermediates']) == {jnp.dtype(jnp.bfloat16)}
  assert _float_dtypes(updates['batch_stats']) == {jnp.dtype(jnp.float32)}

  seen = {}

  def loss_fn(logits, labels):
    seen['logits'] = logits.dtype
    loss = _models.bce(logits, labels)
    seen['loss'] = loss.dtype
    return loss

  mesh = parallel.make_mesh(jax.devices()[:1])
  train_step = parallel.make_train_step(model, loss_fn, tx, mesh, donate=False)
  new, metrics = train_step(parallel.replicate(state, mesh),
                            parallel.shard_batch({'audio': audio, 'labels': labels}, mesh))
  assert seen == {'logits': jnp.dtype(jnp.float32), 'loss': jnp.dtype(jnp.float32)}
  assert metrics['loss'].dtype == jnp.float32 and float(metrics['finite']) == 1.0
  assert _float_dtypes(new.params) == {jnp.dtype(jnp.float32)}
  assert _float_dtypes(new.opt_state) == {jnp.dtype(jnp.float32)}
  assert _float_dtypes(new.batch_stats) == {jnp.dtype(jnp.float32)}
  # The update is not lost to bf16 rounding: float32 parameters moved.
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)))


def test_hcnn_bfloat16_dtypes_from_shapes_alone():
  """The real HCNN under the policy, traced with `jax.eval_shape` (nothing compiled or run)."""
  model = _models.make_hcnn(3, dtype=precision.compute_dtype('bfloat16'))
  length = _models.HCNN_INPUT_LENGTH
  tx = optax.adam(1e-3)
  state = jax.eval_shape(lambda: state_lib.create_train_state(model, tx, jax.random.PRNGKey(0),
                                                              length))
  assert _float_dtypes(state.params) == {jnp.dtype(jnp.float32)}
  assert _float_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
  assert _float_dtypes(state.batch_stats) == {jnp.dtype(jnp.float32)}

  audio = jax.ShapeDtypeStruct((2, length), jnp.float32)
  _, inter = jax.eval_shape(
      lambda v, a: model.apply(v, a, train=False, capture_intermediates=True,
                               mutable=['intermediates']),
      state_lib.variables(state), audio)
  conv_outputs = {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf.dtype
                  for path, leaf in jax.tree_util.tree_leaves_with_path(inter)
                  if any('Conv' in str(getattr(k, 'key', '')) for k in path)}
  assert conv_outputs and set(conv_outputs.values()) == {jnp.dtype(jnp.bfloat16)}, conv_outputs

  mesh = parallel.make_mesh(jax.devices()[:1])
  train_step = parallel.make_train_step(model, _models.bce, tx, mesh, donate=False)
  batch = {'audio': audio, 'labels': jax.ShapeDtypeStruct((2, 3), jnp.float32)}
  new, metrics = jax.eval_shape(train_step, state, batch)
  assert _float_dtypes(new.params) == {jnp.dtype(jnp.float32)}
  assert _float_dtypes(new.batch_stats) == {jnp.dtype(jnp.float32)}
  assert {m.dtype for m in metrics.values()} == {jnp.dtype(jnp.float32)}
