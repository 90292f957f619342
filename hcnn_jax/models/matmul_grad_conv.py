"""A convolution whose forward pass is XLA's and whose backward pass is two matmuls (im2col).

For a tall kernel over few input channels (Musicnn's timbral banks: 67 × 7 and 38 × 7 over one
spectrogram channel, 204 outputs), XLA's own gradients are slow: the input gradient is a
convolution with a single output channel, a poor shape for a GEMM. On the 2-core CPU it took
2.8 s of a 3.8-s forward + backward pass at batch 16, with the forward at 0.14 s. Here the
backward pass gathers the input's windows once (im2col) and computes

    d kernel = windowsᵀ · dy        d windows = dy · kernelᵀ   (scattered back onto the input),

both GEMMs with the kernel's window (H·W·C_in) as one side. The values are those of XLA's
gradients up to summation order. Pass `conv_general_dilated=conv_matmul_grads` to `nn.Conv`
(or `conv_matmul_input_grad`, which keeps XLA's kernel gradient: `hcnn_jax.speed` picks it for
first layers on the CPU); cases other than a stride-1, undilated, ungrouped NHWC convolution go
to XLA unchanged.
Reverse mode only (a custom VJP): for jax.jvp / jacfwd through a model, force
`speed.choose(conv_grads='xla')`.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _windows(x: jnp.ndarray, kh: int, kw: int, padding) -> jnp.ndarray:
  """(B, H', W', kw·kh·C) windows of x, ordered as `_flat_kernel`'s rows (j, i, c).

  Built in two stacks, the kh shifts along height and then the kw shifts of those along width:
  kh + kw slices in the graph (and in its transpose) instead of kh·kw, which for Musicnn's
  67 × 7 kernel were 469 slices and as many pads, a large part of its compile time.
  """
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  b, h, w, c = x.shape
  oh, ow = h - kh + 1, w - kw + 1
  bands = jnp.stack([x[:, i:i + oh] for i in range(kh)], axis=3).reshape(b, oh, w, kh * c)
  cols = jnp.stack([bands[:, :, j:j + ow] for j in range(kw)], axis=3)
  return cols.reshape(b, oh, ow, kw * kh * c)


def _flat_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
  """An HWIO kernel as the (kw·kh·C_in, C_out) matrix that `_windows`' columns multiply."""
  kh, kw, cin, cout = kernel.shape
  return jnp.transpose(kernel, (1, 0, 2, 3)).reshape(kw * kh * cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, padding, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_fwd(x, kernel, padding, precision):
  return _conv(x, kernel, padding, precision), (x, kernel)


def _input_grad(x, kernel, padding, precision, g):
  """d x = (dy · kernelᵀ) scattered back from the windows (the transpose of `_windows`)."""
  kh, kw = kernel.shape[:2]
  _, scatter = jax.vjp(lambda x: _windows(x, kh, kw, padding), x)
  dcols = jnp.einsum('bhwc,kc->bhwk', g, _flat_kernel(kernel).astype(g.dtype),
                     precision=precision)
  return scatter(dcols.astype(x.dtype))[0]


def _conv_bwd(padding, precision, residuals, g):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  cols = _windows(x, kh, kw, padding)
  dkernel = jnp.einsum('bhwk,bhwc->kc', cols, g.astype(cols.dtype), precision=precision,
                       preferred_element_type=jnp.float32)
  dkernel = jnp.transpose(dkernel.reshape(kw, kh, cin, cout), (1, 0, 2, 3))
  dx = _input_grad(x, kernel, padding, precision, g)
  return dx, dkernel.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_dx(x, kernel, padding, precision):
  return _conv(x, kernel, padding, precision)


def _conv_dx_bwd(padding, precision, residuals, g):
  x, kernel = residuals
  _, kernel_vjp = jax.vjp(lambda k: lax.conv_general_dilated(
      x, k, (1, 1), padding, dimension_numbers=_NHWC, precision=precision), kernel)
  return _input_grad(x, kernel, padding, precision, g), kernel_vjp(g)[0]


_conv_dx.defvjp(_conv_fwd, _conv_dx_bwd)


def _plain(dims: Sequence[int] | None) -> bool:
  return dims is None or all(d == 1 for d in dims)


def _dispatch(formulation, lhs, rhs, window_strides, padding, lhs_dilation=None,
              rhs_dilation=None, dimension_numbers=None, feature_group_count=1, precision=None,
              **kwargs):
  pads: Tuple[Tuple[int, int], ...] | None = None
  if not isinstance(padding, str) and len(padding) == 2:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  nhwc = lhs.ndim == 4 and dimension_numbers in (None, _NHWC, lax.ConvDimensionNumbers(
      (0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)))
  if (pads is None or not nhwc or not _plain(window_strides) or not _plain(lhs_dilation)
      or not _plain(rhs_dilation) or feature_group_count != 1 or kwargs):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  return formulation(lhs, rhs, pads, precision)


def conv_matmul_grads(*args, **kwargs):
  """`lax.conv_general_dilated`'s signature; both gradients as GEMMs (the module docstring)."""
  return _dispatch(_conv, *args, **kwargs)


def conv_matmul_input_grad(*args, **kwargs):
  """`lax.conv_general_dilated`'s signature; the input gradient as a GEMM, the kernel's XLA's.

  For a convolution over few input channels (a first layer) XLA computes the input gradient as
  a convolution with that few output channels, while its kernel gradient, a contraction over
  batch × positions, is already a good GEMM shape.
  """
  return _dispatch(_conv_dx, *args, **kwargs)

