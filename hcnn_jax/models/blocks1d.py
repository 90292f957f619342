"""1-D blocks over (batch, length, channels) and the dense head shared by several back-ends.

The sample-level models read the raw waveform as a 1-D signal, and Musicnn's back-end convolves
over time only. Same conventions as `blocks.py`: explicit PyTorch padding k//2, BatchNorm momentum
0.9 / eps 1e-5, floor-mode max-pooling, PyTorch's default weight init.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax.models import blocks

Dtype = Any


def conv1d(features: int, kernel: int = 3, stride: int = 1, dtype: Dtype = jnp.float32,
           name: Optional[str] = None) -> nn.Conv:
  """PyTorch Conv1d(k, stride, padding=k//2) with bias."""
  return nn.Conv(features, (kernel,), strides=(stride,), padding=((kernel // 2, kernel // 2),),
                 kernel_init=blocks.torch_kernel_init, dtype=dtype, param_dtype=jnp.float32,
                 name=name)


def conv1d_length(length: int, kernel: int = 3, stride: int = 1) -> int:
  """Output length of `conv1d` (PyTorch's formula with padding k//2)."""
  return (length + 2 * (kernel // 2) - kernel) // stride + 1


def max_pool1d(x: jnp.ndarray, pool: int) -> jnp.ndarray:
  """Floor-mode max-pool over the length axis with stride = window (reshape + max, see
  `blocks.max_pool` for why)."""
  if pool == 1:
    return x
  b, n, c = x.shape
  return x[:, :n // pool * pool].reshape(b, n // pool, pool, c).max(axis=2)


class ConvBlock1d(nn.Module):
  """conv(k, stride) → BN → ReLU → max-pool (sota's Conv_1d)."""
  features: int
  kernel: int = 3
  stride: int = 1
  pool: int = 3
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv1d(self.features, self.kernel, self.stride, self.dtype)(x)
    x = blocks.batch_norm(train, self.bn_axis_name, self.dtype)(x)
    return max_pool1d(nn.relu(x), self.pool)


class ResSEBlock1d(nn.Module):
  """Residual block with squeeze-and-excitation (sota's ResSE_1d).

  conv(k, stride) → BN → ReLU → conv(k) → BN, scaled per channel by
  sigmoid(Dense(ReLU(Dense(mean over length)))) with no reduction ratio (C → C → C, as the
  reference has it); + the input (through a conv(k, stride) + BN projection when the stride or the
  width changes); ReLU → max-pool.
  """
  features: int
  kernel: int = 3
  stride: int = 1
  pool: int = 3
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(blocks.batch_norm, train, self.bn_axis_name, self.dtype)
    out = conv1d(self.features, self.kernel, self.stride, self.dtype, name='conv_1')(x)
    out = nn.relu(bn(name='bn_1')(out))
    out = bn(name='bn_2')(conv1d(self.features, self.kernel, 1, self.dtype, name='conv_2')(out))
    se = jnp.mean(out, axis=1)
    se = nn.relu(blocks.dense(self.features, self.dtype, name='se_dense1')(se))
    se = nn.sigmoid(blocks.dense(self.features, self.dtype, name='se_dense2')(se))
    out = out * se[:, None, :]
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv1d(self.features, self.kernel, self.stride, self.dtype, name='conv_3')(x)
      x = bn(name='bn_3')(x)
    return max_pool1d(nn.relu(out + x), self.pool)


class DenseHead(nn.Module):
  """Dense(hidden) → BN → ReLU → Dropout → Dense(num_classes): the head of most zoo models."""
  hidden: int
  num_classes: int
  dropout_rate: float = 0.5
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = blocks.dense(self.hidden, self.dtype, name='dense1')(x)
    x = nn.relu(blocks.batch_norm(train, self.bn_axis_name, self.dtype, name='bn')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return blocks.dense(self.num_classes, self.dtype, name='dense2')(x)
