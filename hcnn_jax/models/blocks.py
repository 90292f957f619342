"""Convolution blocks shared by the back-ends (NHWC: batch, frequency, time, channels).

Conventions that keep the ports faithful to the PyTorch references:
- 3×3 convs pad explicitly by 1 on each side (Flax 'SAME' pads differently for strided convs);
- BatchNorm momentum 0.9 / eps 1e-5 (PyTorch's momentum 0.1);
- max-pooling in floor mode with no padding;
- `bn_axis_name` syncs BatchNorm statistics across devices inside shard_map, so a run on N devices
  computes what one device would on the same global batch.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any
Pool = Union[int, Tuple[int, int], None]

# PyTorch's default conv/linear weight init (kaiming-uniform with a=√5) is U(±1/√fan_in).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def batch_norm(train: bool, axis_name: Optional[str] = None, dtype: Dtype = jnp.float32,
               name: Optional[str] = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name if train else None, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def conv2d(features: int, kernel: Sequence[int] = (3, 3), strides: Sequence[int] = (1, 1),
           padding: Any = None, use_bias: bool = True, dtype: Dtype = jnp.float32,
           name: Optional[str] = None) -> nn.Conv:
  if padding is None:  # PyTorch padding=k//2 on every side
    padding = tuple((k // 2, k // 2) for k in kernel)
  return nn.Conv(features, tuple(kernel), strides=tuple(strides), padding=padding,
                 use_bias=use_bias, kernel_init=torch_kernel_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def dense(features: int, dtype: Dtype = jnp.float32, name: Optional[str] = None) -> nn.Dense:
  """Linear layer with PyTorch's default weight init (heads of the back-ends)."""
  return nn.Dense(features, kernel_init=torch_kernel_init, dtype=dtype, param_dtype=jnp.float32,
                  name=name)


def pool_pair(p: Pool) -> Optional[Tuple[int, int]]:
  """A pool given as int, pair or None → (frequency, time) window, or None for no pooling."""
  if p is None:
    return None
  return (p, p) if isinstance(p, int) else tuple(p)


_pair = pool_pair


def max_pool(x: jnp.ndarray, pool: Pool) -> jnp.ndarray:
  """Floor-mode max-pool over (frequency, time) with stride = window, no padding.

  Written as crop + reshape + max rather than `nn.max_pool`: the windows never overlap, and the
  gradient of a reduce-max is an elementwise mask, where reduce_window's is a select-and-scatter
  that XLA runs 5x slower on CPU (a full-size HCNN backward pass was dominated by it). The forward
  values are identical; on an exact tie inside a window the gradient is shared between the tied
  elements instead of going to the first one (both are subgradients).
  """
  p = _pair(pool)
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
  p = _pair(pool)
  if p is None or p == (1, 1):
    return x
  return _max_pool_first(x, tuple(p), tuple(x.shape))


def pool_fn(impl: str):
  if impl not in POOL_IMPLS:
    raise ValueError(f'pool_impl must be one of {POOL_IMPLS}, got {impl!r}.')
  return max_pool if impl == 'reshape' else max_pool_argmax


class ConvBlock2d(nn.Module):
  """conv3×3 → BN → ReLU → max-pool (sota's Conv_2d)."""
  features: int
  pool: Pool = 2
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  pool_impl: str = 'argmax'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv2d(self.features, dtype=self.dtype)(x)
    x = batch_norm(train, self.bn_axis_name, self.dtype)(x)
    return pool_fn(self.pool_impl)(nn.relu(x), self.pool)


class ResBlock2dMP(nn.Module):
  """conv3×3 → BN → ReLU → conv3×3 → BN, + identity, ReLU → max-pool (sota's Res_2d_mp)."""
  features: int
  pool: Pool = 2
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  pool_impl: str = 'argmax'

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(batch_norm, train, self.bn_axis_name, self.dtype)
    y = nn.relu(bn()(conv2d(self.features, dtype=self.dtype)(x)))
    y = bn()(conv2d(self.features, dtype=self.dtype)(y))
    return pool_fn(self.pool_impl)(nn.relu(y + x), self.pool)
