"""BatchNormReLUPool (max-pool → BN → ReLU) against the reference order (BN → ReLU → max-pool).

The two orders give the same outputs because BatchNorm is a per-channel affine map and ReLU is
non-decreasing; a channel with a negative scale pools the minimum instead. The statistics come
from the pre-pool tensor in both, so running averages and gradients must agree as well.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from hcnn_jax import speed
from hcnn_jax.models import blocks, get_model
from hcnn_jax.models.musicnn import ConvV


class Block(nn.Module):
  """BN → ReLU → pool in the reference order (nn.BatchNorm) or pooled first, on one input."""
  pool: blocks.Pool
  train: bool
  pool_first: bool
  pool_impl: str = 'argmax'
  axis_name: str | None = None
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.pool_first:
      return blocks.BatchNormReLUPool(self.pool, self.train, self.axis_name, self.dtype,
                                      self.pool_impl, name='BatchNorm_0')(x)
    x = blocks.batch_norm(self.train, self.axis_name, self.dtype, name='BatchNorm_0')(x)
    return blocks.pool_fn(self.pool_impl)(nn.relu(x), self.pool)


def Reference(pool, train, pool_impl='argmax', **kw):  # pylint: disable=invalid-name
  return Block(pool, train, False, pool_impl, **kw)


def PoolFirst(pool, train, pool_impl='argmax', **kw):  # pylint: disable=invalid-name
  return Block(pool, train, True, pool_impl, **kw)


def random(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(1.0, 2.0, shape), dtype)


def variables_for(shape, signed_scale=False):
  """nn.BatchNorm's variables with random running stats and (optionally) some negative scales."""
  c = shape[-1]
  rng = np.random.default_rng(7)
  scale = rng.uniform(0.5, 1.5, c) * (np.where(rng.uniform(size=c) < 0.5, -1, 1)
                                     if signed_scale else 1)
  return {'params': {'BatchNorm_0': {'scale': jnp.asarray(scale, jnp.float32),
                                     'bias': jnp.asarray(rng.normal(0, 0.5, c), jnp.float32)}},
          'batch_stats': {'BatchNorm_0': {'mean': jnp.asarray(rng.normal(0, 1, c), jnp.float32),
                                          'var': jnp.asarray(rng.uniform(1, 4, c),
                                                             jnp.float32)}}}


@functools.partial(jax.jit, static_argnums=(0,))
def run(module, variables, x, upstream):
  """Outputs, updated statistics and gradients (params, x) of Σ upstream · module(x)."""
  def loss(params, x):
    out, updates = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
    return jnp.sum(out.astype(jnp.float32) * upstream), (out, updates)
  (_, (out, updates)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      variables['params'], x)
  return out, updates, grads


def assert_close_tree(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    np.testing.assert_allclose(y, x, rtol=0, atol=rtol * max(np.abs(x).max(), 1e-6))


CASES = [((2, 8, 12, 3), (2, 2)), ((2, 9, 13, 4), (2, 3)), ((3, 6, 10, 2), (1, 2)),
         ((2, 7, 8, 5), (3, 1)), ((2, 30, 5, 3), (30, 1))]


@pytest.mark.parametrize('signed_scale', [False, True])
@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('pool_impl', blocks.POOL_IMPLS)
@pytest.mark.parametrize('shape,pool', CASES)
def test_same_outputs_statistics_and_gradients(shape, pool, pool_impl, train, signed_scale):
  x = random(shape, 0)
  variables = variables_for(shape, signed_scale)
  pooled = (shape[0], shape[1] // pool[0], shape[2] // pool[1], shape[3])
  upstream = random(pooled, 1)
  ref = run(Reference(pool, train, pool_impl), variables, x, upstream)
  got = run(PoolFirst(pool, train, pool_impl), variables, x, upstream)
  assert got[0].shape == pooled and got[0].dtype == x.dtype
  np.testing.assert_allclose(np.asarray(got[0]), np.asarray(ref[0]), rtol=1e-6, atol=1e-6)
  # Outputs must be nonzero somewhere, or the comparison would be vacuous.
  assert float(jnp.abs(ref[0]).max()) > 0.1
  assert_close_tree(ref[1], got[1], 1e-6)   # running statistics (unchanged in eval mode)
  assert_close_tree(ref[2], got[2], 1e-5)   # gradients of scale, bias and x


def test_negative_scale_pools_the_minimum():
  """In training, a channel whose scale is negative takes the window's minimum of its input."""
  x = random((1, 4, 4, 2), 3)
  variables = variables_for(x.shape)
  variables['params']['BatchNorm_0']['scale'] = jnp.array([-1.0, 1.0])
  variables['params']['BatchNorm_0']['bias'] = jnp.array([100.0, 100.0])  # keep ReLU open
  out, _ = PoolFirst((2, 2), True).apply(variables, x, mutable=['batch_stats'])
  mean, std = x.mean(axis=(0, 1, 2)), jnp.sqrt(x.var(axis=(0, 1, 2)) + 1e-5)
  window_min = -blocks.max_pool(-x, 2)
  want_min = (window_min[..., 0] - mean[0]) / std[0] * -1 + 100
  want_max = (blocks.max_pool(x, 2)[..., 1] - mean[1]) / std[1] + 100
  np.testing.assert_allclose(np.asarray(out[..., 0]), np.asarray(want_min), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out[..., 1]), np.asarray(want_max), rtol=1e-5)


def test_bfloat16_outputs_match_the_reference_order():
  x = random((2, 8, 12, 4), 4, jnp.bfloat16)
  variables = variables_for(x.shape, signed_scale=True)
  for train in (True, False):
    ref = Reference(2, train, dtype=jnp.bfloat16).apply(variables, x, mutable=['batch_stats'])[0]
    got, updates = PoolFirst(2, train, dtype=jnp.bfloat16).apply(variables, x,
                                                                 mutable=['batch_stats'])
    # Mixed precision: bf16 activations, float32 statistics (as nn.BatchNorm keeps them).
    assert got.dtype == jnp.bfloat16
    assert {v.dtype for v in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(ref, np.float32))


def test_statistics_are_synced_over_the_named_axis():
  """Two shards under a named axis compute what one device does on the whole batch."""
  x = random((4, 6, 8, 3), 5)
  variables = variables_for(x.shape)
  module = PoolFirst(2, True, axis_name='shards')

  def shard_fn(xs):
    return module.apply(variables, xs, mutable=['batch_stats'])

  out, updates = jax.vmap(shard_fn, axis_name='shards')(x.reshape(2, 2, *x.shape[1:]))
  whole, whole_updates = PoolFirst(2, True).apply(variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(np.asarray(out.reshape(whole.shape)), np.asarray(whole),
                             rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(whole_updates)):
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_conv_block_keeps_its_variables_and_outputs():
  x = random((2, 8, 10, 3), 6)
  block = blocks.ConvBlock2d(4, 2)
  variables = block.init(jax.random.PRNGKey(0), x)
  with speed.choose(pool_first=True):
    assert (jax.tree_util.tree_structure(block.init(jax.random.PRNGKey(0), x))
            == jax.tree_util.tree_structure(variables))
  for train in (True, False):
    with speed.choose(pool_first=False):
      a = block.apply(variables, x, train, mutable=['batch_stats'])
    with speed.choose(pool_first=True):
      b = block.apply(variables, x, train, mutable=['batch_stats'])
    np.testing.assert_allclose(np.asarray(b[0]), np.asarray(a[0]), rtol=1e-5, atol=1e-6)
    assert_close_tree(a[1], b[1], 1e-6)
  # The choice reaches the block: training traces another program when it pools first.
  programs = []
  for pool_first in (False, True):
    with speed.choose(pool_first=pool_first):
      programs.append(str(jax.make_jaxpr(
          lambda x: block.apply(variables, x, True, mutable=['batch_stats']))(x)))
  assert programs[0] != programs[1]


def model_grads(model, variables, audio):
  def loss(params):
    logits, updates = model.apply({**variables, 'params': params}, audio, train=True,
                                  mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(3)})
    return jnp.mean(jax.nn.sigmoid(logits)), updates
  return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])


def kernels(grads):
  """Kernel gradients only: a bias before BatchNorm has a gradient of zero up to rounding."""
  return [v for p, v in jax.tree_util.tree_leaves_with_path(grads) if p[-1].key == 'kernel']


def assert_same_model(model, audio, ref_choices, new_choices):
  """Same inference outputs, training loss, statistics and kernel gradients, same variables,
  under two sets of `speed` choices."""
  variables = model.init(jax.random.PRNGKey(1), audio[:1], train=False)
  with speed.choose(**ref_choices):
    ref_out = model.apply(variables, audio, train=False)
    (la, ua), ga = model_grads(model, variables, audio)
  with speed.choose(**new_choices):
    new_out = model.apply(variables, audio, train=False)
    (lb, ub), gb = model_grads(model, variables, audio)
  np.testing.assert_allclose(np.asarray(new_out), np.asarray(ref_out), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(float(lb), float(la), rtol=1e-5)
  assert_close_tree(ua, ub, 1e-4)
  assert_close_tree(kernels(ga), kernels(gb), 1e-3)


def test_timbral_bank_computes_the_same_either_way():
  """ConvV: (pool_first, conv_grads) in every combination give the reference's values."""
  x = random((3, 24, 20, 1), 8)
  upstream = random((3, 20, 6), 9)
  combos = [(False, 'xla'), (True, 'xla'), (False, 'matmul'), (True, 'matmul')]
  results = []
  module = ConvV(6, 17)
  variables = module.init(jax.random.PRNGKey(0), x)

  def loss(params, x):
    out, updates = module.apply({**variables, 'params': params}, x, train=True,
                                mutable=['batch_stats'])
    return jnp.sum(out * upstream), (out, updates)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  for pool_first, conv_grads in combos:
    with speed.choose(pool_first=pool_first, conv_grads=conv_grads):
      results.append(step(variables['params'], x))
  # The conv bias feeds BatchNorm, so its gradient is zero up to rounding: compare the rest.
  without_conv_bias = lambda g: (g[0]['Conv_0']['kernel'], g[0]['BatchNorm_0'], g[1])
  (_, (out0, upd0)), grads0 = results[0]
  assert out0.shape == (3, 20, 6)
  for (_, (out, upd)), grads in results[1:]:
    np.testing.assert_allclose(np.asarray(out), np.asarray(out0), rtol=1e-5, atol=1e-6)
    assert_close_tree(upd0, upd, 1e-6)
    assert_close_tree(without_conv_bias(grads0), without_conv_bias(grads), 1e-4)


@pytest.mark.slow  # compile-bound (a Musicnn train step per setting): 25 s on 2 cores
def test_musicnn_defaults_and_equal_inference():
  audio = jax.random.uniform(jax.random.PRNGKey(0), (2, 16_000), minval=-1, maxval=1)
  # Short kernels keep the compile quick; the defaults under test do not depend on them.
  kw = dict(timbral_channels=4, temporal_channels=3, backend_channels=4, dense=5,
            heights=(9, 5))
  default = speed.choices()
  assert default.pools_first(True) and default.conv_grads == 'matmul'
  assert_same_model(get_model('musicnn', 3, **kw), audio,
                    dict(pool_first=False, conv_grads='xla'), {})


def test_unknown_conv_grads_fails_when_forced():
  with pytest.raises(ValueError, match='conv_grads must be one of'):
    with speed.choose(conv_grads='cudnn'):
      pass


@pytest.mark.slow  # compile-bound (two train steps per model): 30-40 s each on 2 cores
@pytest.mark.parametrize('name,kw,length', [
    ('hcnn', dict(width=4, variant='keywords'), 16_000),
    ('fcn', dict(channels=(4, 4, 4, 4, 4)), None),
    ('short_chunk', dict(channels=(4,) * 7), None),
    ('crnn', dict(channels=(4, 4, 4, 4), gru_hidden=3), 96_000),
])
def test_conv_stacks_train_and_infer_the_same_with_pool_first(name, kw, length):
  from hcnn_jax.models import default_input_length  # pylint: disable=import-outside-toplevel
  audio = jax.random.uniform(jax.random.PRNGKey(0), (4, length or default_input_length(name)),
                             minval=-1, maxval=1)
  assert not speed.choices().pools_first(False)  # the conv blocks' default
  assert_same_model(get_model(name, 3, **kw), audio, {}, dict(pool_first=True))
