"""Non-overlapping max-pooling over (frequency, time) of NHWC activations, in two forms.

- `max_pool`: crop + reshape + max. Its gradient is an elementwise mask over the input.
- `max_pool_argmax`: the same values; the forward pass keeps each window's int8 argmax, so the
  backward pass needs only the pooled shape, not the pre-pool activation (the default).
Both pool in floor mode with stride = window and no padding, as the PyTorch references do.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple, Union

import jax
import jax.numpy as jnp

Pool = Union[int, Tuple[int, int], None]


def pool_pair(p: Pool) -> Optional[Tuple[int, int]]:
  """A pool given as int, pair or None → (frequency, time) window, or None for no pooling."""
  if p is None:
    return None
  return (p, p) if isinstance(p, int) else tuple(p)



def max_pool(x: jnp.ndarray, pool: Pool) -> jnp.ndarray:
  """Floor-mode max-pool over (frequency, time) with stride = window, no padding.

  Written as crop + reshape + max rather than `nn.max_pool`: the windows never overlap, and the
  gradient of a reduce-max is an elementwise mask, where reduce_window's is a select-and-scatter
  that XLA runs 5x slower on CPU (a full-size HCNN backward pass was dominated by it). The forward
  values are identical; on an exact tie inside a window the gradient is shared between the tied
  elements instead of going to the first one (both are subgradients).
  """
  p = pool_pair(pool)
  if p is None or p == (1, 1):
    return x
  (fp, tp), (b, f, t, c) = p, x.shape
  x = x[:, :f // fp * fp, :t // tp * tp]
  return x.reshape(b, f // fp, fp, t // tp, tp, c).max(axis=(2, 4))


def _window_views(x: jnp.ndarray, fp: int, tp: int):
  """The fp·tp strided views (b, f//fp, t//tp, c) of the pooling windows' positions, row-major."""
  b, f, t, c = x.shape
  x = x[:, :f // fp * fp, :t // tp * tp]
  return [x[:, i::fp, j::tp] for i in range(fp) for j in range(tp)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_first(x, window, shape):
  del shape
  return _max_pool_first_fwd(x, window, x.shape)[0]


def _max_pool_first_fwd(x, window, shape):
  del shape
  views = _window_views(x, *window)
  index_dtype = jnp.int8 if len(views) <= 127 else jnp.int32
  best, arg = views[0], jnp.zeros(views[0].shape, index_dtype)
  for k, v in enumerate(views[1:], 1):
    # Strict: a tie keeps the earlier position, as PyTorch's max_pool2d; a NaN wins and stays
    # (NaN > x is false), so a diverging activation is not hidden.
    take = (v > best) | jnp.isnan(v)
    best, arg = jnp.where(take, v, best), jnp.where(take, jnp.asarray(k, index_dtype), arg)
  return best, arg


def _max_pool_first_bwd(window, shape, arg, g):
  fp, tp = window
  b, f, t, c = shape
  parts = jnp.stack([jnp.where(arg == k, g, jnp.zeros_like(g)) for k in range(fp * tp)])
  grid = parts.reshape(fp, tp, *g.shape)                       # (fp, tp, b, F, T, c)
  dx = jnp.transpose(grid, (2, 3, 0, 4, 1, 5)).reshape(b, g.shape[1] * fp, g.shape[2] * tp, c)
  return (jnp.pad(dx, ((0, 0), (0, f - dx.shape[1]), (0, t - dx.shape[2]), (0, 0))),)


_max_pool_first.defvjp(_max_pool_first_fwd, _max_pool_first_bwd)

POOL_IMPLS = ('reshape', 'argmax')


def max_pool_argmax(x: jnp.ndarray, pool: Pool) -> jnp.ndarray:
  """`max_pool` whose backward pass needs only the pooled shape's int8 argmax, not the input.

  The forward pass keeps the window position of each maximum (first on ties, as PyTorch); the
  backward pass scatters the gradient there. The reshape version's gradient re-reads the full
  pre-pool activation and counts ties over it; at the HCNN's first layer that activation is the
  largest tensor of the network (128 × 313 × 128 per clip), so two passes over it are saved.
  Reverse mode only (a custom VJP): jax.jvp / jacfwd through it raise; use `max_pool` there.
  """
  p = pool_pair(pool)
  if p is None or p == (1, 1):
    return x
  return _max_pool_first(x, tuple(p), tuple(x.shape))


def pool_fn(impl: str):
  if impl not in POOL_IMPLS:
    raise ValueError(f'pool_impl must be one of {POOL_IMPLS}, got {impl!r}.')
  return max_pool if impl == 'reshape' else max_pool_argmax
