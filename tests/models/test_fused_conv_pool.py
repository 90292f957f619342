"""The fused layer-1 kernel (conv 3×3 → batch statistics → 2×2 max-pool) against the XLA path.

On the CPU the Pallas kernels run in interpret mode: the same kernel code (loads, dots, masks,
the custom VJP) that the GPU compiles with Triton, so forward values and every gradient are
checked here; `test_lowers_to_triton` checks that the kernels also lower for a CUDA GPU.
"""
from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from hcnn_jax import speed
from hcnn_jax.models import blocks, fused_conv_pool, get_model

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}  # bf16: the cotangents arrive rounded
SLACK = {jnp.float32: 1e-6, jnp.bfloat16: 2**-8}  # half a bf16 step of the largest value


def reference(x, kernel, bias, sign):
  """conv + bias in f32 from x.dtype operands, sign·maxpool(sign·c) (floor mode), Σc, Σc²."""
  c = lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), ((1, 1), (1, 1)),
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                               precision=lax.Precision.HIGHEST,
                               preferred_element_type=jnp.float32)
  c = c + bias.astype(x.dtype).astype(jnp.float32)
  b, f, t, ch = c.shape
  s = sign.astype(jnp.float32)
  v = (c * s)[:, :f // 2 * 2, :t // 2 * 2].reshape(b, f // 2, 2, t // 2, 2, ch).max((2, 4)) * s
  return v.astype(x.dtype), c.sum((0, 1, 2)), (c * c).sum((0, 1, 2))


def inputs(dtype, shape=(2, 6, 13, 6), cout=16, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(0, 1, shape), dtype)
  kernel = jnp.asarray(rng.normal(0, 0.3, (3, 3, shape[-1], cout)), jnp.float32)
  bias = jnp.asarray(rng.normal(0, 0.1, cout), jnp.float32)
  sign = jnp.asarray(np.where(np.arange(cout) % 3 == 0, -1, 1), dtype)  # some channels pool min
  return x, kernel, bias, sign


def scalar_loss(fn, sign):
  """A loss that weighs every pooled output and both sums differently."""
  def loss(x, kernel, bias):
    pooled, s1, s2 = fn(x, kernel, bias, sign)
    w = jnp.cos(jnp.arange(pooled.size, dtype=jnp.float32)).reshape(pooled.shape)
    ch = jnp.arange(s1.size, dtype=jnp.float32)
    return (jnp.sum(pooled.astype(jnp.float32) * w) + 1e-2 * jnp.sum(s1 * jnp.sin(ch))
            + 1e-3 * jnp.sum(s2 * (1 + ch / s1.size)))
  return loss


def assert_close(actual, expected, tol):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=0,
                             atol=tol * max(float(np.abs(expected).max()), 1.0))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('shape', [(2, 6, 13, 6), (1, 4, 70, 3)])  # odd T; T over 2 tiles
def test_forward_and_gradients_match_xla(dtype, shape):
  # Against the float32 computation on the same (rounded) inputs. In bf16 the forward values
  # are XLA's own (the product is rounded as nn.Conv rounds it) and the gradients are closer to
  # the exact ones than XLA's bf16 path (its max-pool splits a window's bf16 ties; its conv-bias
  # gradient sums bf16 values), so XLA's own error is checked to be no smaller.
  x, kernel, bias, sign = inputs(dtype, shape)
  bias = bias.astype(dtype)
  f32 = [v.astype(jnp.float32) for v in (x, kernel.astype(dtype), bias, sign)]
  got = jax.jit(fused_conv_pool.conv_pool_sums)(x, kernel, bias, sign)
  assert got[0].dtype == dtype and got[1].dtype == jnp.float32
  for a, b, c in zip(got, reference(*f32), reference(x, kernel, bias, sign)):
    assert_close(a, b, TOL[dtype])
    assert_close(a, c, TOL[dtype])  # forward: XLA's values in dtype

  def grad(fn, args):
    return jax.jit(jax.grad(scalar_loss(fn, args[3]), argnums=(0, 1, 2)))(*args[:3])

  exact = grad(reference, f32)
  fused = grad(fused_conv_pool.conv_pool_sums, (x, kernel, bias, sign))
  xla = grad(reference, (x, kernel, bias, sign))
  for name, a, b, c in zip(('x', 'kernel', 'bias'), fused, exact, xla):
    assert a.dtype == c.dtype, name
    assert_close(a, b, TOL[dtype])
    err = lambda v: float(np.abs(np.asarray(v, np.float32) - np.asarray(b)).max())  # noqa: E731
    assert err(a) <= err(c) + SLACK[dtype] * float(np.abs(np.asarray(b)).max()), name


def test_statistics_cover_the_column_the_pool_drops():
  # T = 13: the pool reads 12 columns; BatchNorm's statistics must still see all 13.
  x, kernel, bias, sign = inputs(jnp.float32)
  _, s1, _ = fused_conv_pool.conv_pool_sums(x, kernel, bias, sign)
  _, full, _ = reference(x, kernel, bias, sign)
  _, cropped, _ = reference(x[:, :, :12], kernel, bias, sign)
  assert_close(s1, full, 1e-5)
  assert float(jnp.abs(s1 - cropped).max()) > 1e-2


@pytest.mark.parametrize('shape,kernel_shape,pool,reason', [
    ((2, 8, 9, 6), (3, 3, 6, 128), (2, 2), None),
    ((2, 8, 9, 6), (3, 3, 6, 24), (2, 2), 'power of 2'),
    ((2, 8, 9, 32), (3, 3, 32, 64), (2, 2), 'input channels'),
    ((2, 8, 9, 6), (3, 3, 6, 64), (2, 3), '2×2'),
    ((2, 7, 9, 6), (3, 3, 6, 64), (2, 2), 'odd'),
    ((2, 8, 9, 6), (5, 5, 6, 64), (2, 2), '3×3'),
])
def test_supported(shape, kernel_shape, pool, reason):
  got = fused_conv_pool.supported(shape, kernel_shape, pool)
  assert got is None if reason is None else reason in got


def run_model(model, variables, audio, fused):
  """Logits, new batch statistics and the gradients of every parameter, in training."""
  def loss(params):
    logits, updates = model.apply({**variables, 'params': params}, audio, train=True,
                                  mutable=['batch_stats'], rngs={'dropout': jax.random.key(1)})
    return jnp.sum(jnp.sin(logits)), (logits, updates)
  with speed.choose(fused_conv_pool=fused):
    (_, (logits, updates)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables['params'])
  return logits, updates, grads


# bf16: the forward (logits, running statistics) is compared, the gradients are not. At batch 2
# the deep BatchNorms see a handful of values each, and a one-step bf16 rounding difference in
# layer 1 (the kernel rounds conv + bias once, XLA:CPU twice) moves whole-model bf16 gradients by
# O(1); the kernel's own bf16 gradients are checked against exact values above.
@pytest.mark.slow
@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_hcnn_trains_the_same_with_the_fused_layer1(dtype, tol):
  # Keyword HCNN at width 16 over 1 s: layer 1 is 6 harmonics → 16 channels over 128 × 63
  # (odd T). Logits, new running statistics and every parameter's gradient (the front-end's Q
  # too: it reaches Q only through the fused kernel's input gradient) must agree with the XLA
  # path. Batch 2 leaves the deep BatchNorms a handful of values each, so a whole-model gradient
  # moves by ~0.3 % under any change of summation order: the bar per leaf is 3× what the two XLA
  # orders (`pool_first` on and off: the same function) differ by, plus `tol` of the largest
  # value. A wrong kernel gradient is off by its own size.
  model = get_model('hcnn_keywords', num_classes=5, width=16, dtype=dtype)
  audio = jnp.asarray(np.random.default_rng(3).normal(0, 0.3, (2, 16000)), jnp.float32)
  variables = model.init(jax.random.key(0), audio, train=False)
  calls = []
  real = fused_conv_pool.conv_pool_sums
  with mock.patch.object(fused_conv_pool, 'conv_pool_sums',
                         lambda *a: calls.append(a[0].shape) or real(*a)):
    fused = run_model(model, variables, audio, True)
  # Layer 1 (6 harmonics) and, at this width, layer 5 (16 inputs); the others are res blocks.
  assert calls == [(2, 128, 63, 6), (2, 8, 3, 16)]
  plain = run_model(model, variables, audio, False)
  with speed.choose(pool_first=True):
    reordered = run_model(model, variables, audio, False)
  assert jax.tree.structure(fused) == jax.tree.structure(plain)
  assert float(jnp.abs(plain[2]['frontend']['bw_Q'])) > 0  # Q gets a gradient
  q_grad = float(fused[2]['frontend']['bw_Q'])
  assert np.isfinite(q_grad) and q_grad != 0
  checked = 3 if dtype == jnp.float32 else 2  # bf16: see above
  for f, p, r in list(zip(fused, plain, reordered))[:checked]:  # logits, statistics, gradients
    scale = max(float(jnp.abs(x.astype(jnp.float32)).max()) for x in jax.tree.leaves(p))
    for (path, a), b, c in zip(jax.tree_util.tree_leaves_with_path(f), jax.tree.leaves(p),
                               jax.tree.leaves(r)):
      a, b, c = (np.asarray(v, np.float32) for v in (a, b, c))
      name = jax.tree_util.keystr(path)
      if f is fused[2] and "['Conv_" in name and name.endswith("['bias']"):
        # A conv bias before BatchNorm has an exact gradient of 0 (the mean removes it): what
        # either path gives is rounding noise (in bf16 XLA's is ~1 % of the largest gradient).
        assert np.abs(a).max() <= np.abs(b).max() + tol * scale, name
      else:
        assert np.abs(a - b).max() <= 3 * np.abs(c - b).max() + tol * scale, name


def test_unsupported_blocks_and_inference_take_the_xla_path():
  x = jnp.asarray(np.random.default_rng(0).normal(0, 1, (2, 8, 9, 6)), jnp.float32)
  cases = [(24, 2, True),        # 24 channels: not a power of 2
           (16, (2, 3), True),   # not a 2×2 pool
           (16, 2, False)]       # inference: running statistics, nothing to fuse
  with mock.patch.object(fused_conv_pool, 'conv_pool_sums', side_effect=AssertionError):
    for features, pool, train in cases:
      block = blocks.ConvBlock2d(features, pool)
      variables = block.init(jax.random.key(0), x, train=False)
      with speed.choose(fused_conv_pool=True):
        out = block.apply(variables, x, train=train, mutable=['batch_stats'])[0]
      plain = block.apply(variables, x, train=train, mutable=['batch_stats'])[0]
      np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))


def test_choice_is_checked():
  with pytest.raises(ValueError, match='fused_conv_pool'):
    speed.Choices(fused_conv_pool='yes')


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_lowers_to_triton(dtype):
  # What a GPU compiles: the forward and backward kernels lower through Pallas' Triton backend
  # (block shapes, dots, masks) at HCNN's layer-1 shape, without a GPU here.
  x = jnp.zeros((4, 128, 313, 6), dtype)
  kernel, bias, sign = jnp.zeros((3, 3, 6, 128)), jnp.zeros(128, dtype), jnp.ones(128, dtype)

  def loss(x, kernel, bias):
    pooled, s1, s2 = fused_conv_pool.conv_pool_sums(x, kernel, bias, sign)
    return jnp.sum(pooled.astype(jnp.float32)) + jnp.sum(s1) + jnp.sum(s2)

  with mock.patch.object(fused_conv_pool, '_interpret', lambda: False):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, kernel, bias).lower(
        lowering_platforms=('cuda',))
  text = lowered.as_text()
  assert text.count('xla.gpu.triton') == 2, 'expected the forward and the backward kernel'


def test_block_variables_are_the_plain_blocks():
  # The fused path reads the variables nn.Conv / nn.BatchNorm created: checkpoints and weight
  # imports do not see which path trained them.
  block = blocks.ConvBlock2d(16, 2)
  x = jnp.ones((1, 4, 6, 6))
  variables = block.init(jax.random.key(0), x, train=False)
  with speed.choose(fused_conv_pool=True):
    _, updates = block.apply(variables, x, train=True, mutable=['batch_stats'])
  assert jax.tree.structure(updates) == jax.tree.structure(
      {'batch_stats': variables['batch_stats']})
  assert set(variables['params']) == {'Conv_0', 'BatchNorm_0'}
