"""Fully convolutional tagging back-ends: sota's 5-layer FCN and Choi et al.'s FCN-4 (ISMIR 2016).

Both are a stack of conv3×3 → BN → ReLU → max-pool blocks over a spectrogram (B, F, T, C) that
pools it down to one position, then Dropout → Dense. The stack helpers here (pool arithmetic and
the too-small-input check) are shared by the other conv-stack back-ends (Short-chunk CNN, CRNN).

Frequency pools shrink to the bins left (one bin is not pooled further), as in the Harmonic CNN
back-end: at the reference's mel bins nothing changes, and a front-end with fewer bins (MFCC's 20
coefficients, say) still reaches the head. Time pools are never shrunk; an input with too few
frames is rejected before compilation with the minimum it needs. Whatever extent remains after the
last block (a longer input than the reference's) is reduced by a global max, where the reference
would fail to flatten into its dense layer.

FCN-4: the paper's table lists a 96 × 1366 mel input at 12 kHz (29.1 s, hop 256). At our 16 kHz
and hop 256, 1366 frames = 1 + L // 256 means L = 349,440 samples (21.84 s), its registered input
length. The paper's intermediate shapes (48×341, 24×85, 12×21) do not follow from its own pools;
the pools (2,4), (4,5), (3,8), (4,8) give 48×341, 12×68, 4×8, 1×1, which is what runs here.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, List, Optional, Sequence, Tuple

import chex
import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax.models import blocks, registry
from hcnn_jax.models.compose import Classifier

Dtype = Any
Pool = blocks.Pool

FCN_CHANNELS = (64, 128, 128, 128, 64)
FCN_POOLS = ((2, 4), (2, 4), (2, 4), (3, 5), (4, 4))
FCN4_CHANNELS = (128, 384, 768, 2048)
FCN4_POOLS = ((2, 4), (4, 5), (3, 8), (4, 8))


def effective_pool(pool: Pool, bins: int) -> Tuple[int, int]:
  """A (frequency, time) pool with the frequency window shrunk to the bins left."""
  pf, pt = blocks.pool_pair(pool) or (1, 1)
  return max(1, min(pf, bins)), pt


def pooled_shapes(shape: Sequence[int], pools: Sequence[Pool]) -> List[Tuple[int, int]]:
  """(F, T) after each floor-mode pool of a stack, for an input (F, T, C)."""
  f, t = int(shape[0]), int(shape[1])
  out = []
  for pool in pools:
    pf, pt = effective_pool(pool, f)
    f, t = f // pf, t // pt
    out.append((f, t))
  return out


def check_pools(owner: str, pools: Sequence[Pool], channels: Sequence[int]) -> Tuple[Pool, ...]:
  """Validates a stack's configuration: one positive pool per layer, positive widths."""
  pools, channels = tuple(pools), tuple(channels)
  if len(pools) != len(channels) or not channels:
    raise ValueError(f'{owner}: pools and channels must list one entry per layer, got '
                     f'{len(pools)} pools {pools} and {len(channels)} channels {channels}.')
  if min(channels) < 1:
    raise ValueError(f'{owner}: channels must be positive, got {channels}.')
  for pool in pools:
    pair = blocks.pool_pair(pool) or (1, 1)
    if len(pair) != 2 or min(pair) < 1:
      raise ValueError(f'{owner}: every pool must be a positive int or (frequency, time) pair, '
                       f'got {pools}.')
  return pools


def spectrogram_hint(shape: Sequence[int]) -> str:
  """Extra words when the features look like a raw waveform rather than a spectrogram."""
  if len(shape) == 3 and shape[1] == 1:
    return (' One frame per example is what the raw-waveform front-end gives ((L, 1, 1)); this '
            'back-end needs a spectrogram front-end (mel, harmonic, linear, mfcc or cqt).')
  return ''


def check_stack_input(owner: str, shape: Sequence[int], pools: Sequence[Pool]) -> None:
  """Raises ValueError when a conv stack with these pools cannot reduce (F, T, C) to ≥ 1 × 1."""
  if len(shape) != 3:
    raise ValueError(f'{owner} takes (frequency, time, channels) per example, got {tuple(shape)}.')
  shapes = pooled_shapes(shape, pools)
  if min(min(s) for s in shapes) >= 1:
    return
  min_t = math.prod((blocks.pool_pair(p) or (1, 1))[1] for p in pools)
  raise ValueError(f'{owner} needs at least {min_t} frames (its time pools multiply to {min_t}) '
                   f'and 1 frequency bin; got features (F, T, C) = {tuple(shape)}, which the pools '
                   f'{tuple(pools)} reduce to {shapes}.{spectrogram_hint(shape)}')


def zoo_frontend(kind: str, dtype: Dtype, bn_axis_name: Optional[str], **kwargs) -> nn.Module:
  """A registry front-end with the model's dtype and BatchNorm axis where it has them."""
  frontend = registry.get_frontend(kind, **kwargs)
  fields = {f.name for f in dataclasses.fields(frontend)}
  common = {'dtype': dtype, 'bn_axis_name': bn_axis_name}
  return frontend.clone(**{k: v for k, v in common.items() if k in fields})


class FCNBackend(nn.Module):
  """Conv3×3 → BN → ReLU → max-pool blocks, global max, Dropout → Dense → logits.

  channels / pools: one per block. Defaults are sota's FCN; `FCN4_CHANNELS` / `FCN4_POOLS` give
  Choi et al.'s FCN-4.
  """
  num_classes: int = 50
  channels: Sequence[int] = FCN_CHANNELS
  pools: Sequence[Pool] = FCN_POOLS
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def layer_pools(self) -> Tuple[Pool, ...]:
    return check_pools(type(self).__name__, self.pools, self.channels)

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises ValueError when features (F, T, C) are too small for the pools."""
    check_stack_input(f'{type(self).__name__} (pools {self.layer_pools()})', shape,
                      self.layer_pools())

  @nn.compact
  def __call__(self, x, train: bool = False):
    chex.assert_rank(x, 4)
    self.check_input(x.shape[1:])
    conv = functools.partial(blocks.ConvBlock2d, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    for i, (features, pool) in enumerate(zip(self.channels, self.layer_pools())):
      x = conv(features, effective_pool(pool, x.shape[1]), name=f'layer{i + 1}')(x, train)
    x = jnp.max(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = blocks.dense(self.num_classes, self.dtype, name='dense')(x)
    return logits.astype(jnp.float32)


def build_fcn(num_classes: int, *, n_mels: int = 96, channels: Sequence[int] = FCN_CHANNELS,
              pools: Sequence[Pool] = FCN_POOLS, dropout_rate: float = 0.5,
              dtype: Dtype = jnp.float32, bn_axis_name: Optional[str] = None) -> Classifier:
  """Mel front-end (n_mels bins, dB, BatchNorm) + FCNBackend; defaults are sota's FCN."""
  backend = FCNBackend(num_classes=num_classes, channels=tuple(channels), pools=tuple(pools),
                       dropout_rate=dropout_rate, dtype=dtype, bn_axis_name=bn_axis_name)
  backend.layer_pools()
  frontend = zoo_frontend('mel', dtype, bn_axis_name, n_mels=n_mels)
  return Classifier(frontend=frontend, backend=backend)


# sota's FCN: 29 s crops (464,000 samples, 1813 frames).
registry.register('fcn', input_length=464_000)(build_fcn)
# FCN-4: 1366 frames, Choi et al.'s input extent at our 16 kHz (see the module docstring).
registry.register('fcn4', input_length=349_440)(
    functools.partial(build_fcn, channels=FCN4_CHANNELS, pools=FCN4_POOLS))
