"""max_pool_argmax (the custom-VJP max-pool) against the reshape max_pool it replaces.

Its forward pass must give max_pool's values; its backward pass sends each window's gradient to
the window's first maximum in row-major order (PyTorch's max_pool2d), where max_pool shares it
between tied maxima, and the cropped remainder rows / columns get none. Without ties the two
gradients are the same, so a whole HCNN must train identically with either implementation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnn_jax import speed
from hcnn_jax.models import blocks
from hcnn_jax.models.blocks import POOL_IMPLS, max_pool, max_pool_argmax, pool_fn
from hcnn_jax.models.hcnn import build_hcnn

WINDOWS = [(2, 2), (2, 3), (1, 2), (2, 1), (3, 3), 2]
SHAPES = [(2, 9, 13, 3), (1, 8, 8, 2), (2, 5, 7, 1), (3, 4, 6, 4)]


def random_input(shape, seed=0, dtype=np.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def eager_grad_of(pool, x, window, weights):
  """d/dx of Σ weights · pool(x): each pooled output gets its own upstream gradient."""
  return jax.grad(lambda x: jnp.sum(pool(x, window).astype(jnp.float32) * weights))(x)


# One compilation per case instead of one per primitive: eager dispatch is the slow part here.
grad_of = jax.jit(eager_grad_of, static_argnums=(0, 2))


def pooled_shape(shape, window):
  fp, tp = blocks.pool_pair(window)
  return (shape[0], shape[1] // fp, shape[2] // tp, shape[3])


@pytest.mark.parametrize('window', WINDOWS)
@pytest.mark.parametrize('shape', SHAPES)
def test_forward_equals_max_pool(shape, window):
  x = random_input(shape)
  got = max_pool_argmax(x, window)
  assert got.shape == pooled_shape(shape, window) and got.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(got), np.asarray(max_pool(x, window)))


@pytest.mark.parametrize('window', WINDOWS)
@pytest.mark.parametrize('shape', SHAPES)
def test_gradient_equals_max_pool_without_ties(shape, window):
  x = random_input(shape, seed=1)
  w = random_input(pooled_shape(shape, window), seed=2)
  got = grad_of(max_pool_argmax, x, window, w)
  assert got.shape == x.shape and got.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(got), np.asarray(grad_of(max_pool, x, window, w)))
  # One nonzero per window (the weights are nonzero), nothing anywhere else.
  assert int(jnp.sum(got != 0)) == int(np.prod(pooled_shape(shape, window)))


def test_all_equal_window_sends_the_whole_gradient_to_its_first_position():
  x = jnp.full((1, 2, 3, 1), 0.5)
  got = np.asarray(jax.grad(lambda x: jnp.sum(max_pool_argmax(x, (2, 3))))(x))[0, :, :, 0]
  expected = np.zeros((2, 3))
  expected[0, 0] = 1.0
  np.testing.assert_array_equal(got, expected)
  # max_pool shares the same gradient between the six tied positions instead.
  shared = np.asarray(jax.grad(lambda x: jnp.sum(max_pool(x, (2, 3))))(x))[0, :, :, 0]
  np.testing.assert_allclose(shared, np.full((2, 3), 1 / 6), rtol=1e-6)
  assert np.count_nonzero(shared) == 6


def test_ties_go_to_the_first_maximum_in_row_major_order():
  # Windows (2, 3) with their maximum 5 at two places each; the rest are smaller.
  # Window 0 ties (0, 1) with (1, 0): row-major first is (0, 1), column-major would be (1, 0).
  # Window 1 ties (0, 2) with (1, 1); window 2 ties (1, 0) with (1, 2); window 3 ties every cell
  # of its second row.
  x = np.array([[1, 5, 0, 2, 1, 5, 0, 1, 2, 3, 3, 3],
                [5, 2, 1, 0, 5, 4, 5, 1, 5, 5, 5, 5]], np.float32)
  g = np.array([2.0, 3.0, 5.0, 7.0], np.float32)
  got = np.asarray(grad_of(max_pool_argmax, jnp.asarray(x)[None, :, :, None], (2, 3),
                           jnp.asarray(g).reshape(1, 1, 4, 1)))[0, :, :, 0]
  expected = np.zeros_like(x)
  expected[0, 1], expected[0, 5], expected[1, 6], expected[1, 9] = g
  np.testing.assert_array_equal(got, expected)


def test_ties_per_channel_and_example_are_independent():
  # Each (example, channel) has its own tie pattern inside the same 2 × 2 window.
  x = jnp.zeros((2, 2, 2, 2))
  x = x.at[0, :, :, 0].set(jnp.array([[1., 1.], [1., 1.]]))
  x = x.at[0, :, :, 1].set(jnp.array([[0., 3.], [3., 0.]]))
  x = x.at[1, :, :, 0].set(jnp.array([[0., 0.], [4., 4.]]))
  x = x.at[1, :, :, 1].set(jnp.array([[0., 0.], [0., 9.]]))
  got = np.asarray(jax.grad(lambda x: jnp.sum(max_pool_argmax(x, 2)))(x))
  flat = got.reshape(2, 4, 2)  # (example, row-major window position, channel)
  np.testing.assert_array_equal(flat[:, :, 0], [[1, 0, 0, 0], [0, 0, 1, 0]])
  np.testing.assert_array_equal(flat[:, :, 1], [[0, 1, 0, 0], [0, 0, 0, 1]])


def test_remainder_rows_and_columns_get_no_gradient():
  x = random_input((2, 7, 11, 3), seed=3)
  # The largest values sit in the cropped remainder: a pool that read them would route there.
  x = x.at[:, 6, :, :].set(100.0).at[:, :, 9:, :].set(100.0)
  out = max_pool_argmax(x, (2, 3))
  assert out.shape == (2, 3, 3, 3) and float(out.max()) < 100.0
  g = np.asarray(grad_of(max_pool_argmax, x, (2, 3), jnp.ones(out.shape)))
  assert g.shape == x.shape
  assert not g[:, 6].any() and not g[:, :, 9:].any()
  assert np.count_nonzero(g[:, :6, :9]) == out.size  # one per window inside the crop
  np.testing.assert_array_equal(g, np.asarray(grad_of(max_pool, x, (2, 3), jnp.ones(out.shape))))


def test_jit_and_vmap_give_the_eager_values_and_gradients():
  x = random_input((2, 9, 13, 3), seed=4)
  w = random_input((2, 4, 4, 3), seed=5)
  fwd = jax.jit(max_pool_argmax, static_argnums=1)
  np.testing.assert_array_equal(np.asarray(fwd(x, (2, 3))), np.asarray(max_pool(x, (2, 3))))
  with jax.disable_jit():
    eager = eager_grad_of(max_pool_argmax, x, (2, 3), w)
  jitted = grad_of(max_pool_argmax, x, (2, 3), w)
  np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))
  # vmap over an extra leading axis: each slice is pooled (and differentiated) on its own.
  xs = jnp.stack([x, -x])
  vm = jax.vmap(lambda x: eager_grad_of(max_pool_argmax, x, (2, 3), w))(xs)
  np.testing.assert_array_equal(np.asarray(vm[0]), np.asarray(eager))
  np.testing.assert_array_equal(np.asarray(vm[1]), np.asarray(grad_of(max_pool, -x, (2, 3), w)))


def test_bfloat16_input_gives_bfloat16_values_and_gradient():
  # Distinct small integers are exact in bfloat16, so there are no ties to tell the pools apart.
  shape = (2, 6, 9, 2)
  values = np.random.default_rng(6).permutation(np.prod(shape)).reshape(shape) - 100.0
  x = jnp.asarray(values, jnp.bfloat16)
  out = max_pool_argmax(x, (2, 3))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(max_pool(x, (2, 3)),
                                                                         np.float32))
  w = random_input((2, 3, 3, 2), seed=7)
  g = grad_of(max_pool_argmax, x, (2, 3), w)
  assert g.dtype == jnp.bfloat16 and g.shape == shape
  np.testing.assert_array_equal(np.asarray(g, np.float32),
                                np.asarray(grad_of(max_pool, x, (2, 3), w), np.float32))
  assert np.count_nonzero(np.asarray(g, np.float32)) == 36  # one per window


@pytest.mark.parametrize('pool', [None, (1, 1), 1])
def test_no_pool_returns_the_input_unchanged(pool):
  x = random_input((1, 5, 7, 2), seed=8)
  assert max_pool_argmax(x, pool) is x
  g = jax.grad(lambda x: jnp.sum(max_pool_argmax(x, pool) * 3.0))(x)
  np.testing.assert_array_equal(np.asarray(g), np.full(x.shape, 3.0, np.float32))


def test_pool_fn_picks_the_implementation():
  assert set(POOL_IMPLS) == {'reshape', 'argmax'}
  assert pool_fn('reshape') is max_pool and pool_fn('argmax') is max_pool_argmax
  with pytest.raises(ValueError, match='pool_impl must be one of'):
    pool_fn('max')
  assert speed.Choices().pool_impl == 'argmax'
  with pytest.raises(ValueError, match='pool_impl must be one of'):
    with speed.choose(pool_impl='bogus'):
      pass


@pytest.mark.parametrize('block', [blocks.ConvBlock2d, blocks.ResBlock2dMP])
def test_blocks_use_the_chosen_pool(block, monkeypatch):
  x = random_input((2, 6, 8, 4), seed=9)
  module = block(4, pool=(2, 2))
  variables = module.init(jax.random.key(0), x)
  used = []
  real = blocks.pool_fn
  monkeypatch.setattr(blocks, 'pool_fn', lambda impl: used.append(impl) or real(impl))
  fast = module.apply(variables, x)
  with speed.choose(pool_impl='reshape'):
    ref = module.apply(variables, x)
  assert used == ['argmax', 'reshape']
  np.testing.assert_array_equal(np.asarray(fast), np.asarray(ref))


def test_tiny_hcnn_trains_identically_with_either_pool():
  model = build_hcnn(num_classes=3, width=4)
  x = jnp.asarray(0.3 * np.random.default_rng(10).standard_normal((2, 80_000)), jnp.float32)
  labels = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
  # rbg keys: threefry's random init compiles for seconds on CPU, rbg in a fraction.
  variables = jax.jit(model.init)({'params': jax.random.key(0, impl='rbg')}, x)
  dropout = jax.random.key(1, impl='rbg')

  def loss_and_grads(impl):
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              rngs={'dropout': dropout}, mutable=['batch_stats'])
      return jnp.mean(jnp.logaddexp(0.0, logits) - labels * logits), logits
    with speed.choose(pool_impl=impl):
      return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])

  (loss_a, logits_a), grads_a = loss_and_grads('argmax')
  (loss_r, logits_r), grads_r = loss_and_grads('reshape')
  assert logits_a.shape == (2, 3) and np.isfinite(float(loss_a))
  np.testing.assert_allclose(np.asarray(logits_a), np.asarray(logits_r), rtol=1e-6, atol=1e-7)

  flat_a = jax.tree_util.tree_leaves_with_path(grads_a)
  flat_r = dict(jax.tree_util.tree_leaves_with_path(grads_r))
  assert len(flat_a) == len(flat_r) > 0
  for path, ga in flat_a:
    ga, gr = np.asarray(ga), np.asarray(flat_r[path])
    name = jax.tree_util.keystr(path)
    assert np.isfinite(ga).all(), name
    scale = np.abs(gr).max()
    assert np.abs(ga - gr).max() <= 1e-5 * scale, name
  # The gradient reaches the front-end's Q and the first conv through all seven pools.
  assert float(jnp.abs(grads_a['frontend']['bw_Q'])) > 0
  assert float(jnp.abs(grads_a['backend']['layer1']['Conv_0']['kernel']).max()) > 0


def test_argmax_pool_propagates_nan_like_max_pool():
  # A NaN anywhere in a window must reach the output (as max_pool and PyTorch do): a NaN
  # swallowed by the pool would hide a diverging activation.
  x = jnp.asarray([[1.0, jnp.nan], [3.0, 0.0]]).reshape(1, 2, 2, 1)
  assert np.isnan(np.asarray(blocks.max_pool(x, 2))).all()
  assert np.isnan(np.asarray(blocks.max_pool_argmax(x, 2))).all()


def test_argmax_pool_windows_over_127_positions():
  # The stored position is int8 up to 127 positions; larger windows need a wider index.
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(1, 24, 24, 2)).astype(np.float32))
  np.testing.assert_array_equal(blocks.max_pool_argmax(x, 12), blocks.max_pool(x, 12))
  g = jax.grad(lambda v: blocks.max_pool_argmax(v, 12).sum())(x)
  gr = jax.grad(lambda v: blocks.max_pool(v, 12).sum())(x)
  np.testing.assert_array_equal(g, gr)
