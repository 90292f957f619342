"""Short-chunk CNN and Short-chunk CNN + Res (Won et al., SMC 2020) over 3.69-s chunks.

Seven blocks over a 128-bin mel spectrogram: conv3×3 → BN → ReLU → max-pool 2 (plain), or a
residual block with stride-2 convs (`ResBlock2d`, sota's Res_2d). 128 bins and 231 frames
(59,049 samples) go to 1 × 1 (plain: 231 → 115 → … → 1) or 1 × 2 (Res: 231 → 116 → … → 2), then a
global max, Dense → BN → ReLU → Dropout → Dense.

Strided 3×3 convs pad by 1 on every side, as PyTorch does: n → (n − 1) // s + 1. Flax's 'SAME'
pads (0, 1) for even n and would shift every later layer by a pixel. The plain variant shrinks its
frequency pools to the bins left, like the other conv stacks, so a 96-bin front-end still fits.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import chex
import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax.models import blocks, registry
from hcnn_jax.models.blocks1d import DenseHead
from hcnn_jax.models.compose import Classifier
from hcnn_jax.models.fcn import (check_stack_input, effective_pool, spectrogram_hint,
                                 zoo_frontend)

Dtype = Any
Stride = Tuple[int, int]

SHORT_CHUNK_CHANNELS = (128, 128, 256, 256, 256, 256, 512)


class ResBlock2d(nn.Module):
  """sota's Res_2d: conv3×3/stride → BN → ReLU → conv3×3 → BN, + shortcut, ReLU.

  The shortcut is conv3×3/stride + BN whenever the stride is not 1 or the width changes
  (the reference's rule), else the identity.
  """
  features: int
  strides: Stride = (2, 2)
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(blocks.batch_norm, train, self.bn_axis_name, self.dtype)
    pad = ((1, 1), (1, 1))
    strides = tuple(self.strides)
    out = blocks.conv2d(self.features, strides=strides, padding=pad, dtype=self.dtype,
                        name='conv_1')(x)
    out = nn.relu(bn(name='bn_1')(out))
    out = bn(name='bn_2')(blocks.conv2d(self.features, padding=pad, dtype=self.dtype,
                                        name='conv_2')(out))
    if strides != (1, 1) or x.shape[-1] != self.features:
      x = blocks.conv2d(self.features, strides=strides, padding=pad, dtype=self.dtype,
                        name='conv_3')(x)
      x = bn(name='bn_3')(x)
    return nn.relu(out + x)


class ShortChunkBackend(nn.Module):
  """Seven conv blocks (pool 2) or residual blocks (stride 2), global max, dense head → logits."""
  num_classes: int = 50
  channels: Sequence[int] = SHORT_CHUNK_CHANNELS
  residual: bool = False
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def _owner(self) -> str:
    return f"{type(self).__name__} ({'residual' if self.residual else 'plain'})"

  def layer_channels(self) -> Tuple[int, ...]:
    channels = tuple(self.channels)
    if not channels or min(channels) < 1:
      raise ValueError(f'{self._owner()}: channels must be a non-empty list of positive widths, '
                       f'got {channels}.')
    return channels

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises ValueError when features (F, T, C) are too small for the seven blocks."""
    pools = (2,) * len(self.layer_channels())
    if not self.residual:
      check_stack_input(self._owner(), shape, pools)
      return
    if len(shape) != 3:
      raise ValueError(f'{self._owner()} takes (frequency, time, channels) per example, '
                       f'got {tuple(shape)}.')
    # Padded strided convs keep ≥ 1 position from any non-empty input: only a raw-waveform
    # front-end (T = 1) is a mismatch worth refusing.
    if min(shape) < 1 or spectrogram_hint(shape):
      raise ValueError(f'{self._owner()} needs a spectrogram (F ≥ 1, T ≥ 2, C ≥ 1); got '
                       f'{tuple(shape)}.{spectrogram_hint(shape)}')

  @nn.compact
  def __call__(self, x, train: bool = False):
    chex.assert_rank(x, 4)
    self.check_input(x.shape[1:])
    common = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    for i, features in enumerate(self.layer_channels()):
      if self.residual:
        x = ResBlock2d(features, (2, 2), name=f'layer{i + 1}', **common)(x, train)
      else:
        x = blocks.ConvBlock2d(features, effective_pool(2, x.shape[1]), name=f'layer{i + 1}',
                               **common)(x, train)
    x = jnp.max(x, axis=(1, 2))
    width = self.layer_channels()[-1]
    logits = DenseHead(width, self.num_classes, self.dropout_rate, name='head', **common)(x, train)
    return logits.astype(jnp.float32)


def build_short_chunk(num_classes: int, *, residual: bool = False, n_mels: int = 128,
                      channels: Sequence[int] = SHORT_CHUNK_CHANNELS, dropout_rate: float = 0.5,
                      dtype: Dtype = jnp.float32, bn_axis_name: Optional[str] = None) -> Classifier:
  """Mel front-end (128 bins, dB, BatchNorm) + ShortChunkBackend."""
  backend = ShortChunkBackend(num_classes=num_classes, channels=tuple(channels),
                              residual=residual, dropout_rate=dropout_rate,
                              dtype=dtype, bn_axis_name=bn_axis_name)
  backend.layer_channels()
  frontend = zoo_frontend('mel', dtype, bn_axis_name, n_mels=n_mels)
  return Classifier(frontend=frontend, backend=backend)


# 59,049 samples (3.69 s), as sota trains both.
registry.register('short_chunk', input_length=59_049)(
    functools.partial(build_short_chunk, residual=False))
registry.register('short_chunk_res', input_length=59_049)(
    functools.partial(build_short_chunk, residual=True))
