"""A convolution whose forward pass is XLA's and whose backward pass is two matmuls (im2col).

For a tall kernel over few input channels (Musicnn's timbral banks: 67 × 7 and 38 × 7 over one
spectrogram channel, 204 outputs), XLA's own gradients are slow: the input gradient is a
convolution with a single output channel, a poor shape for a GEMM. On the 2-core CPU it took
2.8 s of a 3.8-s forward + backward pass at batch 16, with the forward at 0.14 s. Here the
backward pass gathers the input's windows once (im2col) and computes

    d kernel = windowsᵀ · dy        d windows = dy · kernelᵀ   (scattered back onto the input),

both GEMMs with the kernel's window (H·W·C_in) as one side. The values are those of XLA's
gradients up to summation order. Pass `conv_general_dilated=conv_matmul_grads` to `nn.Conv`;
cases other than a stride-1, undilated, ungrouped NHWC convolution go to XLA unchanged.
Reverse mode only (a custom VJP): for jax.jvp / jacfwd through a model, use conv_grads='xla'.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _windows(x: jnp.ndarray, kh: int, kw: int, padding) -> jnp.ndarray:
  """(B, H', W', kh·kw·C) windows of x, ordered as an HWIO kernel's reshape (i, j, c)."""
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  b, h, w, c = x.shape
  oh, ow = h - kh + 1, w - kw + 1
  cols = jnp.stack([x[:, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)], axis=3)
  return cols.reshape(b, oh, ow, kh * kw * c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, padding, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_fwd(x, kernel, padding, precision):
  return _conv(x, kernel, padding, precision), (x, kernel)


def _conv_bwd(padding, precision, residuals, g):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  cols, scatter = jax.vjp(lambda x: _windows(x, kh, kw, padding), x)
  flat = kernel.reshape(kh * kw * cin, cout)
  dkernel = jnp.einsum('bhwk,bhwc->kc', cols, g.astype(cols.dtype), precision=precision,
                       preferred_element_type=jnp.float32)
  dcols = jnp.einsum('bhwc,kc->bhwk', g, flat.astype(g.dtype), precision=precision)
  dx, = scatter(dcols.astype(cols.dtype))
  return dx, dkernel.reshape(kernel.shape).astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _plain(dims: Sequence[int] | None) -> bool:
  return dims is None or all(d == 1 for d in dims)


def conv_matmul_grads(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                      dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated`'s signature; see the module docstring."""
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
  return _conv(lhs, rhs, pads, precision)


CONV_GRADS = ('xla', 'matmul')


def conv_grads_fn(impl: str):
  """The `nn.Conv(conv_general_dilated=...)` for a model option conv_grads ∈ CONV_GRADS."""
  if impl not in CONV_GRADS:
    raise ValueError(f'conv_grads must be one of {CONV_GRADS}, got {impl!r}.')
  return conv_matmul_grads if impl == 'matmul' else None
