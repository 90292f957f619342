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
A custom JVP (see `_conv`): forward mode (jax.jvp, jacfwd) and reverse mode both work.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

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


def _gemm(cols: jnp.ndarray, flat_kernel: jnp.ndarray, precision) -> jnp.ndarray:
  """cols (B, H', W', K) · flat_kernel (K, C_out): the convolution as one GEMM."""
  return jnp.einsum('bhwk,kc->bhwc', cols, flat_kernel.astype(cols.dtype), precision=precision,
                    preferred_element_type=jnp.float32)


def _xla_conv(x, kernel, padding, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


# A custom JVP, not a custom VJP: the convolution is linear in x and in the kernel, so its
# tangent can be any formulation of the same linear map, and reverse mode transposes that
# formulation. Tangent in x: windows(dx) · kernel, whose transpose is the GEMM input gradient
# (dy · kernelᵀ scattered back onto the input). Tangent in the kernel: XLA's convolution of x
# with d kernel (its transpose is XLA's kernel gradient), or with kernel_gemm the GEMM
# windows(x) · d kernel, whose transpose is windowsᵀ · dy; that one is checkpointed so that the
# windows are gathered again in the backward pass rather than kept from the forward pass. So
# forward mode (jax.jvp, jacfwd) works too, with the forward formulation of these same GEMMs.
@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, padding, precision, kernel_gemm):
  del kernel_gemm
  return _xla_conv(x, kernel, padding, precision)


def _conv_jvp(padding, precision, kernel_gemm, primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  out = _xla_conv(x, kernel, padding, precision)
  kh, kw = kernel.shape[:2]
  tangent = None
  if not isinstance(dx, SymbolicZero):
    tangent = _gemm(_windows(dx, kh, kw, padding), _flat_kernel(kernel), precision)
  if not isinstance(dkernel, SymbolicZero):
    if kernel_gemm:
      part = jax.checkpoint(lambda x, dk: _gemm(_windows(x, kh, kw, padding), _flat_kernel(dk),
                                                precision))(x, dkernel)
    else:
      part = _xla_conv(x, dkernel, padding, precision)
    tangent = part if tangent is None else tangent + part.astype(tangent.dtype)
  if tangent is None:
    return out, jnp.zeros_like(out)  # not reached: JAX skips the rule when no tangent flows
  return out, tangent.astype(out.dtype)


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def _plain(dims: Sequence[int] | None) -> bool:
  return dims is None or all(d == 1 for d in dims)


def _im2col_conv(x, kernel, padding, precision, kernel_gemm):
  """The whole convolution as windows · kernel; autodiff makes both gradients GEMMs too."""
  del kernel_gemm
  kh, kw = kernel.shape[:2]
  out = _gemm(_windows(x, kh, kw, padding), _flat_kernel(kernel), precision)
  return out.astype(jnp.result_type(x, kernel))


def _dispatch(kernel_gemm, lhs, rhs, window_strides, padding, lhs_dilation=None,
              rhs_dilation=None, dimension_numbers=None, feature_group_count=1, precision=None,
              formulation=None, **kwargs):
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
  return (formulation or _conv)(lhs, rhs, pads, precision, kernel_gemm)


def conv_matmul_grads(*args, **kwargs):
  """`lax.conv_general_dilated`'s signature; both gradients as GEMMs (the module docstring)."""
  return _dispatch(True, *args, **kwargs)


def conv_matmul_input_grad(*args, **kwargs):
  """`lax.conv_general_dilated`'s signature; the input gradient as a GEMM, the kernel's XLA's.

  For a convolution over few input channels (a first layer) XLA computes the input gradient as
  a convolution with that few output channels, while its kernel gradient, a contraction over
  batch × positions, is already a good GEMM shape.
  """
  return _dispatch(False, *args, **kwargs)


def conv_im2col(*args, **kwargs):
  """`lax.conv_general_dilated`'s signature; forward and gradients as GEMMs over the windows.

  For an image no larger than the kernel (HCNN's layer 7: 2 × 3 positions under a 3 × 3 kernel,
  256 channels), where XLA:CPU's convolution is slow: 92 ms against 2 ms at batch 16 (2-core VM).
  The windows hold kh·kw copies of the input, which is small there.
  """
  return _dispatch(False, *args, formulation=_im2col_conv, **kwargs)

