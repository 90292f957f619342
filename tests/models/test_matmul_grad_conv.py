"""conv_matmul_grads: XLA's convolution forward, im2col matmuls backward, the same numbers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from hcnn_jax.models import blocks
from hcnn_jax import speed
from hcnn_jax.models.matmul_grad_conv import conv_im2col, conv_matmul_grads, conv_matmul_input_grad

NHWC = ('NHWC', 'HWIO', 'NHWC')
CASES = [  # input (B, H, W, C_in), kernel (kh, kw), padding, C_out
    ((2, 20, 9, 1), (13, 3), ((0, 0), (1, 1)), 5),
    ((1, 12, 10, 3), (3, 3), ((1, 1), (1, 1)), 4),
    ((2, 7, 16, 2), (1, 5), ((0, 0), (2, 2)), 3),
    ((3, 9, 9, 1), (9, 1), ((0, 0), (0, 0)), 6),
    ((1, 6, 8, 2), (2, 3), ((2, 0), (0, 3)), 2),
]


def random(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def value_and_grads(conv, x, kernel, padding, upstream, **kw):
  def loss(x, kernel):
    out = conv(x, kernel, (1, 1), padding, dimension_numbers=NHWC, **kw)
    return jnp.sum(out.astype(jnp.float32) * upstream), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, kernel)
  return out, grads


@pytest.mark.parametrize('conv', [conv_matmul_grads, conv_matmul_input_grad])
@pytest.mark.parametrize('shape,window,padding,cout', CASES)
def test_values_and_gradients_match_xla(shape, window, padding, cout, conv):
  x, kernel = random(shape, 0), random((*window, shape[-1], cout), 1)
  want = lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC)
  upstream = random(want.shape, 2)
  ref_out, (ref_dx, ref_dk) = value_and_grads(lax.conv_general_dilated, x, kernel, padding,
                                              upstream)
  out, (dx, dk) = value_and_grads(conv, x, kernel, padding, upstream)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref_out))  # the same forward op
  if conv is conv_matmul_input_grad:  # the kernel gradient is XLA's own
    np.testing.assert_array_equal(np.asarray(dk), np.asarray(ref_dk))
  assert dx.shape == x.shape and dk.shape == kernel.shape
  # The gradients are other float32 sums of the same products (matmuls vs XLA's transposed
  # convolutions; dk sums over every output position): they differed by up to 1.3e-6 here, and
  # the order also moves with XLA's thread pool. A wrong padding, flip or transpose is O(1) off.
  np.testing.assert_allclose(np.asarray(dx), np.asarray(ref_dx), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dk), np.asarray(ref_dk), rtol=1e-4, atol=1e-3)
  assert float(jnp.abs(ref_dk).max()) > 0.1


def test_bfloat16_keeps_dtypes_and_stays_close():
  x, kernel = random((2, 20, 9, 1), 3, jnp.bfloat16), random((13, 3, 1, 5), 4, jnp.bfloat16)
  padding = ((0, 0), (1, 1))
  upstream = random((2, 8, 9, 5), 5)
  ref_out, (ref_dx, ref_dk) = value_and_grads(lax.conv_general_dilated, x, kernel, padding,
                                              upstream)
  out, (dx, dk) = value_and_grads(conv_matmul_grads, x, kernel, padding, upstream)
  assert out.dtype == dx.dtype == dk.dtype == jnp.bfloat16
  for a, b in ((dx, ref_dx), (dk, ref_dk)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=0, atol=0.02 * np.abs(b).max())


@pytest.mark.parametrize('kw', [dict(window_strides=(2, 1)), dict(rhs_dilation=(2, 1)),
                                dict(padding='SAME')])
def test_other_convolutions_fall_back_to_xla(kw):
  x, kernel = random((1, 12, 10, 2), 6), random((3, 3, 2, 4), 7)
  args = {**dict(window_strides=(1, 1), padding=((1, 1), (1, 1))), **kw}
  want = lax.conv_general_dilated(x, kernel, dimension_numbers=NHWC, **args)
  got = conv_matmul_grads(x, kernel, dimension_numbers=NHWC, **args)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  grad = jax.grad(lambda k: jnp.sum(conv_matmul_grads(x, k, dimension_numbers=NHWC, **args)))
  want_grad = jax.grad(lambda k: jnp.sum(lax.conv_general_dilated(
      x, k, dimension_numbers=NHWC, **args)))
  np.testing.assert_allclose(np.asarray(grad(kernel)), np.asarray(want_grad(kernel)), rtol=1e-5)


def test_as_a_flax_conv_it_keeps_the_parameters():
  x = random((2, 16, 8, 1), 8)
  plain = nn.Conv(3, (5, 3), padding=((0, 0), (1, 1)))
  fast = nn.Conv(3, (5, 3), padding=((0, 0), (1, 1)), conv_general_dilated=conv_matmul_grads)
  variables = plain.init(jax.random.PRNGKey(0), x)
  assert (jax.tree_util.tree_structure(fast.init(jax.random.PRNGKey(0), x))
          == jax.tree_util.tree_structure(variables))
  np.testing.assert_array_equal(np.asarray(fast.apply(variables, x)),
                                np.asarray(plain.apply(variables, x)))
  g_plain = jax.grad(lambda v: jnp.sum(plain.apply(v, x) ** 2))(variables)
  g_fast = jax.grad(lambda v: jnp.sum(fast.apply(v, x) ** 2))(variables)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
    # Other summation orders of the same products (see test_values_and_gradients_match_xla).
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize('conv', [conv_matmul_grads, conv_matmul_input_grad])
def test_forward_mode_matches_xla(conv):
  # The GEMM gradients are a custom JVP, so jax.jvp and jacfwd work (a custom VJP raises there).
  shape, window, padding, cout = CASES[1]
  x, kernel = random(shape, 9), random((*window, shape[-1], cout), 10)
  dx, dk = random(x.shape, 11), random(kernel.shape, 12)

  def apply(fn):
    return lambda x, k: fn(x, k, (1, 1), padding, dimension_numbers=NHWC)

  want, want_t = jax.jvp(apply(lax.conv_general_dilated), (x, kernel), (dx, dk))
  got, got_t = jax.jit(lambda *a: jax.jvp(apply(conv), a[:2], a[2:]))(x, kernel, dx, dk)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # GEMM vs convolution sums of the same products; a wrong window order is O(1) off.
  np.testing.assert_allclose(np.asarray(got_t), np.asarray(want_t), rtol=1e-4, atol=1e-4)
  small = x[:1, :5, :4]
  jac = jax.jacfwd(lambda x: apply(conv)(x, kernel))(small)
  want_jac = jax.jacfwd(lambda x: apply(lax.conv_general_dilated)(x, kernel))(small)
  np.testing.assert_allclose(np.asarray(jac), np.asarray(want_jac), rtol=1e-4, atol=1e-5)


def test_forward_mode_through_a_first_layer_on_this_backend():
  # blocks.conv2d's default (speed.conv_general_dilated) takes the GEMM input gradient for a
  # first layer on the CPU; jax.jvp through such a layer (6 harmonics in, as HCNN's layer 1)
  # agrees with XLA's plain convolution, in the parameters and in the input.
  x = random((2, 10, 12, 6), 13)
  fast = blocks.conv2d(8)
  plain = blocks.conv2d(8, conv_fn=lax.conv_general_dilated)
  variables = plain.init(jax.random.PRNGKey(0), x)
  tangent = jax.tree.map(lambda v: random(v.shape, 14), variables)
  dx = random(x.shape, 15)
  want, want_t = jax.jvp(plain.apply, (variables, x), (tangent, dx))
  got, got_t = jax.jvp(fast.apply, (variables, x), (tangent, dx))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_allclose(np.asarray(got_t), np.asarray(want_t), rtol=1e-4, atol=1e-4)
  assert float(jnp.abs(want_t).max()) > 0.1
  jaxpr = str(jax.make_jaxpr(lambda v, x: fast.apply(v, x))(variables, x))
  assert ('custom_jvp_call' in jaxpr) == (jax.default_backend() == 'cpu')


def test_im2col_convolution_of_a_tiny_image_matches_xla():
  # HCNN's layer 7 shape, scaled down: 2 × 3 positions under a 3 × 3 kernel.
  x, kernel = random((3, 2, 3, 16), 16), random((3, 3, 16, 8), 17)
  padding = ((1, 1), (1, 1))
  want = lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC)
  upstream = random(want.shape, 18)
  ref_out, (ref_dx, ref_dk) = value_and_grads(lax.conv_general_dilated, x, kernel, padding,
                                              upstream)
  out, (dx, dk) = value_and_grads(conv_im2col, x, kernel, padding, upstream)
  for got, ref in ((out, ref_out), (dx, ref_dx), (dk, ref_dk)):  # other sums of the same products
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-4)
  assert float(jnp.abs(ref_out).max()) > 1.0
  jaxpr = str(jax.make_jaxpr(lambda x, k: speed.conv_general_dilated(
      x, k, (1, 1), padding, dimension_numbers=NHWC))(x, kernel))
  assert ('conv_general_dilated' not in jaxpr) == (jax.default_backend() == 'cpu')
  big = random((1, 4, 9, 16), 19)  # larger than the kernel: XLA's convolution
  assert 'conv_general_dilated' in str(jax.make_jaxpr(lambda x, k: speed.conv_general_dilated(
      x, k, (1, 1), padding, dimension_numbers=NHWC))(big, kernel))
