"""A first conv block's training pass in one kernel: 3×3 conv → batch statistics → 2×2 max-pool.

HCNN's layer 1 (6 harmonics → 128 channels, 3×3, then BatchNorm → ReLU → 2×2 max-pool) writes
the largest tensor of the network: its conv output, 128 channels at full resolution, which XLA
writes once and reads back for the BatchNorm statistics and the pool (`bench.roofline` puts it at
60 % of the training step's memory floor). The conv itself is cheap (54 multiply-adds per output),
so this kernel recomputes it where it is needed and never stores it:

- forward (`_forward_kernel`): per tile, the conv in f32 from the 6-channel input, the per-channel
  sums Σc and Σc² over the valid positions (the statistics cover the whole conv output, also the
  row or column a floor-mode pool drops), and the window max of sign·c (sign = the sign of the
  BatchNorm scale, `blocks.BatchNormReLUPool`: BN → ReLU then commutes with the max). Only the
  pooled quarter and the sums reach memory; BN → ReLU on the pooled quarter is left to XLA, which
  fuses it into whatever reads it.
- backward (`_backward_kernel`, a custom VJP): the conv again, and the gradient with respect to
  the conv output, dc = [c is its window's first extreme]·g_pooled + g_Σc + 2c·g_Σc², written
  once (the extreme is picked on the unrounded products, so bf16 ties go to the true one); the
  input and kernel gradients are then XLA's (cuDNN's) convolution gradients of dc.

The values are those of conv → `BatchNormReLUPool` up to summation order in fp32; in bf16 the
conv + bias is rounded once where it is stored (XLA:CPU rounds twice), and the gradients are
closer to the exact ones than XLA's bf16 path (the tests compare forward and every gradient, fp32
and bf16, in Pallas interpret mode). On GPUs the kernels are Pallas' Triton backend; elsewhere
they run in interpret mode (tests only). `hcnn_jax.speed` picks this path per backend, and only
where it was measured to pay: on the H200 it did not yet (bench/README.md).

Layout trick: the padded input (B, F + 2, 2·W, C) is viewed, for free, as (B, F + 2, W, 2·C), so
the even and odd columns of a row are two channel ranges and every load is a contiguous
(columns × channels) block; the conv-output gradient is written the same way, (B, F, W, 2·C_out)
viewed as (B, F, 2·W, C_out).
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

BT = 32  # pooled columns per program (Triton's blocks are powers of 2)
WARPS = (4, 4)  # Triton warps of the forward and the backward kernel (H200 sweep, bench/README)
CP = 16  # input channels padded to this (Triton's smallest dot dimension)
MAX_COUT = 256
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def supported(x_shape: Sequence[int], kernel_shape: Sequence[int], pool, strides=(1, 1),
              padding=((1, 1), (1, 1))) -> Optional[str]:
  """None when the fused kernel computes this block, else why not (the XLA path is used)."""
  if len(x_shape) != 4 or len(kernel_shape) != 4:
    return 'not a 2-D NHWC convolution'
  if tuple(kernel_shape[:2]) != (3, 3) or tuple(strides) != (1, 1):
    return 'not a 3×3 stride-1 kernel'
  if tuple(map(tuple, padding)) != ((1, 1), (1, 1)):
    return 'not padded by 1'
  if tuple(pool) != (2, 2):
    return 'not a 2×2 pool'
  cin, cout = kernel_shape[2], kernel_shape[3]
  if cin > CP:
    return f'more than {CP} input channels'
  if cout < 16 or cout > MAX_COUT or cout & (cout - 1):
    return f'output channels not a power of 2 in [16, {MAX_COUT}]'
  if x_shape[1] % 2 or x_shape[1] < 2 or x_shape[2] < 2:
    return 'an odd or too small number of rows'
  return None


def _interpret() -> bool:
  return jax.default_backend() != 'gpu'


def _compiler_params(num_warps: int):
  if _interpret():
    return None
  from jax.experimental.pallas import triton as pltriton  # pylint: disable=import-outside-toplevel
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=2)


def _geometry(t: int) -> Tuple[int, int]:
  """(tiles, W): tiles of BT pooled columns covering ⌈T/2⌉ (the last odd column is in the
  statistics), and W = tiles·BT + 1 column pairs of padded input."""
  tiles = math.ceil(math.ceil(t / 2) / BT)
  return tiles, tiles * BT + 1


def _pack_input(x, w_pairs: int):
  """(B, F, T, C) → (B, F + 2, W, 2·CP): zero-padded (1 row / column before, the rest after),
  channels to CP, even and odd columns side by side."""
  b, f, t, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 2 * w_pairs - t - 1), (0, CP - c)))
  return xp.reshape(b, f + 2, w_pairs, 2 * CP)


def _pack_kernel(kernel, dtype):
  return jnp.pad(kernel, ((0, 0), (0, 0), (0, CP - kernel.shape[2]), (0, 0))).astype(dtype)


def _conv_tile(x_ref, w_ref, b, row, j0, q, precision):
  """f32 conv output at conv row `row`, columns 2·(j0 + [0, BT)) + q: (BT, C_out)."""
  acc = None
  for dy in range(3):
    for dx in range(3):
      s = q + dx  # padded column 2j + s = pair j + s // 2, parity s % 2
      xs = x_ref[b, row + dy, pl.ds(j0 + s // 2, BT), pl.ds((s % 2) * CP, CP)]
      term = jnp.dot(xs, w_ref[dy, dx], preferred_element_type=jnp.float32, precision=precision)
      acc = term if acc is None else acc + term
  return acc


def _conv_output(acc, bias):
  """acc + bias in f32, rounded once where it is stored (XLA:GPU fuses the bias into the conv
  and drops bf16 → f32 round trips, so its statistics see unrounded values too)."""
  return acc + bias.astype(jnp.float32)


def _valid_columns(j0, q, t):
  """(BT, 1) mask of the conv columns 2·(j0 + k) + q that exist (< T)."""
  cols = 2 * (j0 + jnp.arange(BT, dtype=jnp.int32)) + q
  return (cols < t)[:, None]


def _forward_kernel(x_ref, w_ref, bias_ref, sign_ref, pooled_ref, s1_ref, s2_ref, *, t,
                    precision):
  b, i, jt = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  j0 = jt * BT
  bias = bias_ref[...][None, :]
  sign = sign_ref[...].astype(jnp.float32)[None, :]
  best = s1 = s2 = None
  for a in range(2):
    for q in range(2):
      c = _conv_output(_conv_tile(x_ref, w_ref, b, 2 * i + a, j0, q, precision), bias)
      valid = _valid_columns(j0, q, t)
      cv = jnp.where(valid, c, 0.0)
      p1, p2 = jnp.sum(cv, axis=0), jnp.sum(cv * cv, axis=0)
      best = c * sign if best is None else jnp.maximum(best, c * sign)
      s1, s2 = (p1, p2) if s1 is None else (s1 + p1, s2 + p2)
  pooled_ref[...] = (best * sign).astype(pooled_ref.dtype)
  s1_ref[...] = s1
  s2_ref[...] = s2


def _backward_kernel(x_ref, w_ref, bias_ref, sign_ref, g_ref, g1_ref, g2_ref, dc_ref, db_ref, *,
                     t, precision):
  b, i, jt = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  j0 = jt * BT
  bias = bias_ref[...][None, :]
  sign = sign_ref[...].astype(jnp.float32)[None, :]
  g = g_ref[...].astype(jnp.float32)
  g1 = g1_ref[...][None, :]
  g2 = g2_ref[...][None, :]
  combos = [(a, q) for a in range(2) for q in range(2)]  # a window's row-major order
  accs = [_conv_tile(x_ref, w_ref, b, 2 * i + a, j0, q, precision) for a, q in combos]
  # The pooled gradient goes to the window's extreme found on the unrounded f32 products: in
  # bf16 two rounded outputs of a window often tie, and the exact one is the true argmax (the
  # rounded maximum is there too: rounding is monotone). The first of equal ones otherwise.
  best = functools.reduce(jnp.maximum, [acc * sign for acc in accs])
  taken = None
  cout = accs[0].shape[1]
  db = None
  for (a, q), acc in zip(combos, accs):
    c = _conv_output(acc, bias)
    hit = acc * sign == best
    if taken is not None:
      hit = jnp.logical_and(hit, jnp.logical_not(taken))
    taken = hit if taken is None else jnp.logical_or(taken, hit)
    d = jnp.where(hit, g, 0.0) + g1 + 2.0 * c * g2
    d = jnp.where(_valid_columns(j0, q, t), d, 0.0)
    dc_ref[a, :, pl.ds(q * cout, cout)] = d.astype(dc_ref.dtype)
    part = jnp.sum(d, axis=0)  # d bias from the f32 values (XLA's bf16 path sums bf16 ones)
    db = part if db is None else db + part
  db_ref[...] = db


def _precision(dtype):
  # fp32 operands get fp32 products (Triton would otherwise use TF32); bf16 ones are exact.
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _forward(x, kernel, bias, sign):
  bsz, f, t, _ = x.shape
  cout = kernel.shape[3]
  tiles, w_pairs = _geometry(t)
  grid = (bsz, f // 2, tiles)
  stat = jax.ShapeDtypeStruct((bsz, f // 2, tiles, cout), jnp.float32)
  stat_spec = pl.BlockSpec((None, None, None, cout), lambda b, i, j: (b, i, j, 0))
  pooled, s1, s2 = pl.pallas_call(
      functools.partial(_forward_kernel, t=t, precision=_precision(x.dtype)),
      out_shape=(jax.ShapeDtypeStruct((bsz, f // 2, tiles * BT, cout), x.dtype), stat, stat),
      grid=grid,
      out_specs=(pl.BlockSpec((None, None, BT, cout), lambda b, i, j: (b, i, j, 0)),
                 stat_spec, stat_spec),
      compiler_params=_compiler_params(WARPS[0]),
      interpret=_interpret(),
      name='conv3x3_stats_pool2x2',
  )(_pack_input(x, w_pairs), _pack_kernel(kernel, x.dtype), bias, sign)
  return pooled[:, :, :t // 2], s1.sum((0, 1, 2)), s2.sum((0, 1, 2))


def _conv_output_grad(x, kernel, bias, sign, g_pooled, g_s1, g_s2):
  """(dc (B, F, 2·tiles·BT, C_out) with zeros past column T, d bias)."""
  bsz, f, t, _ = x.shape
  cout = kernel.shape[3]
  tiles, w_pairs = _geometry(t)
  g = jnp.pad(g_pooled, ((0, 0), (0, 0), (0, tiles * BT - t // 2), (0, 0)))
  dc, db = pl.pallas_call(
      functools.partial(_backward_kernel, t=t, precision=_precision(x.dtype)),
      out_shape=(jax.ShapeDtypeStruct((bsz, f, tiles * BT, 2 * cout), x.dtype),
                 jax.ShapeDtypeStruct((bsz, f // 2, tiles, cout), jnp.float32)),
      grid=(bsz, f // 2, tiles),
      in_specs=[pl.no_block_spec] * 4 + [
          pl.BlockSpec((None, None, BT, cout), lambda b, i, j: (b, i, j, 0)),
          pl.no_block_spec, pl.no_block_spec],
      out_specs=(pl.BlockSpec((None, 2, BT, 2 * cout), lambda b, i, j: (b, i, j, 0)),
                 pl.BlockSpec((None, None, None, cout), lambda b, i, j: (b, i, j, 0))),
      compiler_params=_compiler_params(WARPS[1]),
      interpret=_interpret(),
      name='conv3x3_stats_pool2x2_grad',
  )(_pack_input(x, w_pairs), _pack_kernel(kernel, x.dtype), bias, sign, g,
    g_s1.astype(jnp.float32), g_s2.astype(jnp.float32))
  return dc.reshape(bsz, f, 2 * tiles * BT, cout), db.sum((0, 1, 2))


@jax.custom_vjp
def conv_pool_sums(x, kernel, bias, sign):
  """(pooled, Σc, Σc²) of c = conv3×3(x, kernel) + bias, pad 1, NHWC / HWIO.

  pooled = sign · maxpool2×2(sign · c) in x.dtype, shape (B, F/2, ⌊T/2⌋, C_out); the sums are
  f32 per channel over all B·F·T outputs. kernel and bias are used in x.dtype as `nn.Conv`
  does; `sign` (±1 per channel, no gradient) picks max or min per channel. Check `supported`
  first.
  """
  return _forward(x, kernel, bias, sign)


def _fwd(x, kernel, bias, sign):
  return _forward(x, kernel, bias, sign), (x, kernel, bias, sign)


def _bwd(res, cotangents):
  x, kernel, bias, sign = res
  g_pooled, g_s1, g_s2 = cotangents
  t = x.shape[2]
  dc, db = _conv_output_grad(x, kernel, bias, sign, g_pooled, g_s1, g_s2)
  x_wide = jnp.pad(x, ((0, 0), (0, 0), (0, dc.shape[2] - t), (0, 0)))
  # dc is zero past column T, so the gradients of the conv over the widened input are the
  # original's (its first T output columns read the same inputs, zero padding included).
  _, vjp = jax.vjp(lambda xx, kk: lax.conv_general_dilated(
      xx, kk, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC,
      precision=_precision(x.dtype)), x_wide, kernel.astype(x.dtype))
  dx, dk = vjp(dc)
  return (dx[:, :, :t], dk.astype(kernel.dtype), db.astype(bias.dtype), jnp.zeros_like(sign))


conv_pool_sums.defvjp(_fwd, _bwd)
