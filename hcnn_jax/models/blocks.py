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
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax import speed
from hcnn_jax.models import fused_conv_pool
from hcnn_jax.models.pooling import (  # noqa: F401  (re-exported: the blocks' public API)
    POOL_IMPLS, Pool, max_pool, max_pool_argmax, pool_fn, pool_pair)

Dtype = Any

# PyTorch's default conv/linear weight init (kaiming-uniform with a=√5) is U(±1/√fan_in).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def batch_norm(train: bool, axis_name: Optional[str] = None, dtype: Dtype = jnp.float32,
               name: Optional[str] = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name if train else None, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def conv2d(features: int, kernel: Sequence[int] = (3, 3), strides: Sequence[int] = (1, 1),
           padding: Any = None, use_bias: bool = True, dtype: Dtype = jnp.float32,
           name: Optional[str] = None, conv_fn: Optional[Callable] = None) -> nn.Conv:
  """conv_fn: replaces lax.conv_general_dilated (e.g. `matmul_grad_conv.conv_matmul_grads`);
  by default `speed.conv_general_dilated`, the backend's fastest formulation."""
  if padding is None:  # PyTorch padding=k//2 on every side
    padding = tuple((k // 2, k // 2) for k in kernel)
  return nn.Conv(features, tuple(kernel), strides=tuple(strides), padding=padding,
                 use_bias=use_bias, kernel_init=torch_kernel_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name,
                 conv_general_dilated=conv_fn or speed.conv_general_dilated)


def dense(features: int, dtype: Dtype = jnp.float32, name: Optional[str] = None) -> nn.Dense:
  """Linear layer with PyTorch's default weight init (heads of the back-ends)."""
  return nn.Dense(features, kernel_init=torch_kernel_init, dtype=dtype, param_dtype=jnp.float32,
                  name=name)


class BatchNormReLUPool(nn.Module):
  """BatchNorm → ReLU → max-pool, computed in training as max-pool → BatchNorm → ReLU.

  Per channel, BatchNorm is the affine map x ↦ (x − mean)·s + bias with s = scale/√(var + eps),
  and ReLU is non-decreasing, so both commute with a window's max when s ≥ 0 and turn it into a
  min when s < 0 (a channel whose scale went negative pools −max(−x)). Rounding keeps each step
  monotone, so the outputs are the same floats. The statistics still come from the full
  pre-pool tensor; what shrinks is everything after it: the normalisation and ReLU run on the
  pooled tensor, the statistics' reduction and the pool read the pre-pool tensor in one pass, and
  the backward pass's reductions run at the pooled size. Each window's gradient goes to its
  extreme pre-pool position (the reference's ReLU ties at 0 carry no gradient either way).

  Variables, names and updates are nn.BatchNorm's (momentum 0.9, eps 1e-5, fp32 statistics,
  one pmean over `axis_name`), so checkpoints and weight imports are unchanged; create it with
  the name the block's BatchNorm had.
  """
  pool: Pool
  train: bool = False
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  pool_impl: str = 'argmax'
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, conv: Optional[Tuple[Any, Any]] = None):
    """x: the pre-pool tensor; or, in training with conv = (kernel, bias), the input of a 3×3
    conv that `fused_conv_pool` computes with the statistics and the pool in one kernel."""
    c = x.shape[-1] if conv is None else conv[0].shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    if not self.train:
      # Without batch statistics there is no backward pass to shrink, and the reference order
      # is one fused pass (on the CPU, Musicnn inferred 11 % slower pooling first).
      y = (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return pool_fn(self.pool_impl)(nn.relu(y.astype(self.dtype)), self.pool)
    sign = jax.lax.stop_gradient(jnp.where(scale < 0, -1, 1).astype(x.dtype))
    if conv is None:
      xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      axes = tuple(range(x.ndim - 1))
      moments = jnp.stack([xf.mean(axes), (xf * xf).mean(axes)])
      pooled = sign * pool_fn(self.pool_impl)(sign * x, self.pool)
    else:
      pooled, s1, s2 = fused_conv_pool.conv_pool_sums(x, conv[0], conv[1], sign)
      moments = jnp.stack([s1, s2]) / (x.shape[0] * x.shape[1] * x.shape[2])
    if self.axis_name is not None and not self.is_initializing():
      moments = jax.lax.pmean(moments, self.axis_name)
    mean, var = moments[0], jnp.maximum(0.0, moments[1] - moments[0] * moments[0])
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    y = (pooled - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return nn.relu(y.astype(self.dtype))


class ConvParams(nn.Module):
  """The variables of `conv2d(features)` over `in_features` channels, without the conv: for
  blocks whose training pass computes the conv elsewhere (same names, init and dtype)."""
  features: int
  kernel_size: Tuple[int, int] = (3, 3)

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param('kernel', torch_kernel_init,
                        (*self.kernel_size, in_features, self.features), jnp.float32)
    return kernel, self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)


# The 2-D blocks whose BatchNorms `fold_batchnorm` folds: exactly these variable names in a scope.
_FOLDABLE_SCOPES = ({'Conv_0', 'BatchNorm_0'}, {'Conv_0', 'BatchNorm_0', 'Conv_1', 'BatchNorm_1'})


def fold_batchnorm(variables, epsilon: float = 1e-5):
  """Inference variables with each `ConvBlock2d` / `ResBlock2dMP` BatchNorm folded into its conv.

  BatchNorm with its running statistics is a per-channel affine map, so it folds into the conv
  before it: kernel·s and (bias − mean)·s + β with s = scale/√(var + eps). The blocks see that
  their BatchNorm is gone and compute conv + bias → ReLU (+ residual): the pattern XLA's GPU
  backend hands to cuDNN as one fused call, instead of a conv that writes its output and a fusion
  that reads it back. The outputs are the unfolded ones up to rounding (in bfloat16 the scaled
  kernel is rounded). The folded variables are for inference only: a block refuses to train on
  them. Other layers are returned as they are.
  """
  params, stats = dict(variables['params']), dict(variables.get('batch_stats', {}))

  def walk(p, s):
    keys = set(p)
    foldable = (keys in _FOLDABLE_SCOPES and all(k in s for k in keys if k.startswith('Batch'))
                and all(p[k]['kernel'].ndim == 4 and p[k]['kernel'].shape[:2] == (3, 3)
                        for k in keys if k.startswith('Conv')))
    if foldable:
      out = {}
      for i in range(len(keys) // 2):
        conv, bn, run = p[f'Conv_{i}'], p[f'BatchNorm_{i}'], s[f'BatchNorm_{i}']
        scale = bn['scale'] * jax.lax.rsqrt(run['var'] + epsilon)
        out[f'Conv_{i}'] = {'kernel': conv['kernel'] * scale,
                            'bias': (conv['bias'] - run['mean']) * scale + bn['bias']}
      return out, None
    new_p, new_s = {}, {}
    for k, v in p.items():
      if isinstance(v, dict) or hasattr(v, 'items'):
        new_p[k], sub = walk(dict(v), dict(s.get(k, {})))
        if sub:
          new_s[k] = sub
      else:
        new_p[k] = v
    for k, v in s.items():  # statistics of layers without params (none today) stay
      if k not in p:
        new_s[k] = v
    return new_p, new_s

  new_params, new_stats = walk(params, stats)
  out = dict(variables)
  out['params'] = new_params
  if new_stats:
    out['batch_stats'] = new_stats
  else:
    out.pop('batch_stats', None)
  return out


def _bn_folded(module: nn.Module, train: bool) -> bool:
  """Whether `module`'s variables come from `fold_batchnorm` (conv params, no BatchNorm)."""
  if module.is_initializing() or not module.has_variable('params', 'Conv_0'):
    return False
  if module.has_variable('params', 'BatchNorm_0'):
    return False
  if train:
    raise ValueError(f'{type(module).__name__} {module.name}: its BatchNorm was folded into the '
                     'conv (blocks.fold_batchnorm), which is for inference; train on the unfolded '
                     'variables.')
  return True


def _pool(x, pool: Pool):
  return pool_fn(speed.choices().pool_impl)(x, pool)


class ConvBlock2d(nn.Module):
  """conv3×3 → BN → ReLU → max-pool (sota's Conv_2d).

  How it pools (`speed.choices()`): 'pool_first' computes it in training as conv → max-pool →
  BN → ReLU (`BatchNormReLUPool`, the same outputs with less memory traffic); 'fused_conv_pool'
  computes conv, statistics and pool in one kernel where `fused_conv_pool.supported` (HCNN's
  layer 1). On variables from `fold_batchnorm` it is conv → ReLU → max-pool.
  """
  features: int
  pool: Pool = 2
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if _bn_folded(self, train):
      return _pool(nn.relu(conv2d(self.features, dtype=self.dtype)(x)), self.pool)
    choice = speed.choices()
    if (train and choice.fused_conv_pool and not self.is_initializing()
        and fused_conv_pool.supported(x.shape, (3, 3, x.shape[-1], self.features),
                                      pool_pair(self.pool) or (1, 1)) is None):
      kernel, bias = ConvParams(self.features, name='Conv_0')(x.shape[-1])
      return BatchNormReLUPool(self.pool, train, self.bn_axis_name, self.dtype, choice.pool_impl,
                               name='BatchNorm_0')(
                                   x.astype(self.dtype),
                                   conv=(kernel.astype(self.dtype), bias.astype(self.dtype)))
    x = conv2d(self.features, dtype=self.dtype)(x)
    if choice.pools_first(False) and pool_pair(self.pool) not in (None, (1, 1)):
      return BatchNormReLUPool(self.pool, train, self.bn_axis_name, self.dtype, choice.pool_impl,
                               name='BatchNorm_0')(x)
    x = batch_norm(train, self.bn_axis_name, self.dtype)(x)
    return _pool(nn.relu(x), self.pool)


class ResBlock2dMP(nn.Module):
  """conv3×3 → BN → ReLU → conv3×3 → BN, + identity, ReLU → max-pool (sota's Res_2d_mp).

  On variables from `fold_batchnorm`: conv → ReLU → conv, + identity, ReLU → max-pool.
  """
  features: int
  pool: Pool = 2
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if _bn_folded(self, train):
      y = nn.relu(conv2d(self.features, dtype=self.dtype)(x))
      y = conv2d(self.features, dtype=self.dtype)(y)
      return _pool(nn.relu(y + x.astype(self.dtype)), self.pool)
    bn = functools.partial(batch_norm, train, self.bn_axis_name, self.dtype)
    y = nn.relu(bn()(conv2d(self.features, dtype=self.dtype)(x)))
    y = bn()(conv2d(self.features, dtype=self.dtype)(y))
    return _pool(nn.relu(y + x), self.pool)
