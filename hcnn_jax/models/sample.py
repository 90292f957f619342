"""Sample-level CNN (Lee et al. 2017) and Sample-level + SE (Kim et al. 2018), as in sota.

The raw waveform is a 1-D signal: the raw front-end gives (B, L, 1, 1), read here as (B, L, 1).
Layer 1 is a conv(3) with stride 3 (no pool); the middle layers are conv(3) → BN → ReLU →
max-pool 3 (or, with SE, residual squeeze-and-excitation blocks `ResSEBlock1d`); the last is a
conv(1). 59,049 = 3^10 samples go 19,683 → 6,561 → … → 1, then:
- Sample-level: Dropout → Dense(num_classes);
- + SE: Dense(512) → BN → ReLU → Dropout → Dense(num_classes).

`channels` lists every layer (11 in the reference: 128, 128, 128, 256 × 6, 512, 512); a shorter
list keeps the first-stride / pool-3 / conv(1) pattern and needs about 3^(n − 1) samples
(`min_length()`). What is left of the length after the last layer (a longer input) is reduced by
a global max.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import chex
import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax.models import blocks, registry
from hcnn_jax.models.blocks1d import (ConvBlock1d, DenseHead, ResSEBlock1d, conv1d_length)
from hcnn_jax.models.compose import Classifier
from hcnn_jax.models.fcn import zoo_frontend

Dtype = Any

SAMPLE_CHANNELS = (128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512)


class SampleCNNBackend(nn.Module):
  """1-D sample-level stack over the raw waveform → logits; `se=True` for the ResSE blocks."""
  num_classes: int = 50
  channels: Sequence[int] = SAMPLE_CHANNELS
  se: bool = False
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def _owner(self) -> str:
    return f"{type(self).__name__} ({'with' if self.se else 'without'} SE)"

  def layers(self) -> Tuple[Tuple[int, int, int, int], ...]:
    """(channels, kernel, stride, pool) of every layer."""
    channels = tuple(self.channels)
    if len(channels) < 3 or min(channels) < 1:
      raise ValueError(f'{self._owner()}: channels must list at least 3 positive widths (first '
                       f'strided conv, pooled layers, last conv(1)), got {channels}.')
    middle = tuple((c, 3, 1, 3) for c in channels[1:-1])
    return ((channels[0], 3, 3, 1),) + middle + ((channels[-1], 1, 1, 1),)

  def lengths(self, num_samples: int) -> Tuple[int, ...]:
    """Signal length after each layer for a waveform of num_samples."""
    out, n = [], int(num_samples)
    for _, kernel, stride, pool in self.layers():
      n = conv1d_length(n, kernel, stride) // pool if n >= 1 else 0
      out.append(n)
    return tuple(out)

  def min_length(self) -> int:
    """The fewest samples that leave every layer at least one position."""
    need = 1
    for _, kernel, stride, pool in reversed(self.layers()):
      need *= pool  # floor pooling keeps `need` positions from `need · pool`
      need = (need - 1) * stride + kernel - 2 * (kernel // 2)
    return need

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises ValueError unless features are a raw waveform (L, 1, C) long enough for the stack."""
    if len(shape) != 3 or shape[1] != 1:
      raise ValueError(f'{self._owner()} is a 1-D back-end for the raw-waveform front-end, whose '
                       f'features are (L, 1, 1); got (F, T, C) = {tuple(shape)}, a 2-D '
                       'spectrogram. Use frontend="raw" with this back-end, or a 2-D back-end '
                       '(fcn, short_chunk, hcnn, attention, ...) with a spectrogram front-end.')
    lengths = self.lengths(shape[0])
    if min(lengths) < 1:
      depth = len(self.layers())
      raise ValueError(f'{self._owner()} needs at least {self.min_length():,} samples ({depth} '
                       f'layers: stride 3, then {depth - 2} pools of 3); got {shape[0]:,}, '
                       f'reduced to lengths {lengths}.')

  @nn.compact
  def __call__(self, x, train: bool = False):
    chex.assert_rank(x, 4)
    self.check_input(x.shape[1:])
    x = x[:, :, 0, :]  # (B, L, C)
    block = ResSEBlock1d if self.se else ConvBlock1d
    common = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    for i, (features, kernel, stride, pool) in enumerate(self.layers()):
      x = block(features, kernel, stride, pool, name=f'layer{i + 1}', **common)(x, train)
    x = jnp.max(x, axis=1)
    if self.se:
      logits = DenseHead(x.shape[-1], self.num_classes, self.dropout_rate, name='head',
                         **common)(x, train)
    else:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      logits = blocks.dense(self.num_classes, self.dtype, name='dense')(x)
    return logits.astype(jnp.float32)


def build_sample(num_classes: int, *, se: bool = False,
                 channels: Sequence[int] = SAMPLE_CHANNELS, dropout_rate: float = 0.5,
                 dtype: Dtype = jnp.float32, bn_axis_name: Optional[str] = None) -> Classifier:
  """Raw front-end + SampleCNNBackend."""
  backend = SampleCNNBackend(num_classes=num_classes, channels=tuple(channels), se=se,
                             dropout_rate=dropout_rate, dtype=dtype, bn_axis_name=bn_axis_name)
  backend.layers()
  return Classifier(frontend=zoo_frontend('raw', dtype, bn_axis_name), backend=backend)


# 59,049 = 3^10 samples (3.69 s), as sota trains both.
registry.register('sample', input_length=59_049)(functools.partial(build_sample, se=False))
registry.register('sample_se', input_length=59_049)(functools.partial(build_sample, se=True))
