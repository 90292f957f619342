"""Harmonic CNN back-end (sota's HarmonicCNN / ddhf's ResNet_*) and its registered models.

Input: the harmonic tensor (B, pitch, time, harmonics), NHWC. Seven blocks halve the pitch axis
(128 → 1) while pooling time; a head of Dense → BN → ReLU → Dropout → Dense gives logits.

Pitch pools shrink to the bins left (one bin is not pooled further). At the reference's 128
fundamentals nothing changes; fewer fundamentals (n_harmonic ≥ 7 gives 124 at 16 kHz) or another
front-end's 96 mel bins then still reach the head, which takes the max over what remains.

Task variants (ddhf): 'tagging' pools time by 2, 2, 2, 2, 2, 3, 3 (5 s → 1 frame); 'events' (DCASE)
pools 2 everywhere (3 s → 1 frame); 'keywords' (Speech Commands) pools 2, 2, 2, 2, 2, 2, 1.

1-second keyword clips: 16,000 samples give T = 63 frames, and the reference's six time halvings
run out of frames (63 → 31 → 15 → 7 → 3 → 1 → 0) and crash. The 'keywords' variant therefore
clamps each time pool to the frames left (a pool of 2 over a single frame keeps it), so exact 1-s
clips work without padding, and every input of ≥ 16,128 samples is computed exactly as the
reference computes it. Its registered input length is 16,000.
"""
from __future__ import annotations

import functools
import math
from typing import Any, List, Optional, Sequence, Tuple

import chex
import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax.frontends.harmonic import HarmonicFrontend
from hcnn_jax.models import blocks, registry
from hcnn_jax.models.compose import Classifier

Dtype = Any
Pool = blocks.Pool

VARIANT_POOLS = {
    'tagging': (2, 2, 2, 2, 2, (2, 3), (2, 3)),
    'keywords': (2, 2, 2, 2, 2, 2, (2, 1)),
    'events': (2, 2, 2, 2, 2, 2, 2),
}
# Variants whose time pools shrink to the frames available instead of running out of frames.
_CLAMPED_TIME = ('keywords',)
NUM_LAYERS = 7


class HCNNBackend(nn.Module):
  """Seven conv/res blocks over (pitch, time) and the reference's dense head → logits.

  width: channels of layers 1-4 (layers 5-7 use 2·width); the reference uses 128.
  pools: seven (pitch, time) max-pool windows, overriding the variant's.
  clamp_time_pool: shrink a time pool to the frames left; None = the variant's choice.
  How the blocks pool is `hcnn_jax.speed`'s choice; for inference the BatchNorms can be folded
  into the convs (`blocks.fold_batchnorm` of the variables).
  """
  num_classes: int = 50
  width: int = 128
  variant: str = 'tagging'
  pools: Optional[Sequence[Pool]] = None
  clamp_time_pool: Optional[bool] = None
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def layer_pools(self) -> Tuple[Tuple[int, int], ...]:
    if self.variant not in VARIANT_POOLS:
      raise ValueError(f'HCNN variant must be one of {sorted(VARIANT_POOLS)}, '
                       f'got {self.variant!r}.')
    pools = VARIANT_POOLS[self.variant] if self.pools is None else tuple(self.pools)
    if len(pools) != NUM_LAYERS:
      raise ValueError(f'HCNN pools must list {NUM_LAYERS} (pitch, time) windows, one per layer; '
                       f'got {len(pools)}: {pools}.')
    pairs = tuple(blocks.pool_pair(p) or (1, 1) for p in pools)
    if any(len(p) != 2 or min(p) < 1 for p in pairs):
      raise ValueError(f'Every HCNN pool must be a positive int or (pitch, time) pair, got {pools}.')
    return pairs

  def _clamps_time(self) -> bool:
    if self.clamp_time_pool is None:
      return self.variant in _CLAMPED_TIME
    return bool(self.clamp_time_pool)

  def _effective_pool(self, pool: Tuple[int, int], bins: int, frames: int) -> Tuple[int, int]:
    pf, pt = pool
    pf = max(1, min(pf, bins))
    if self._clamps_time():
      pt = max(1, min(pt, frames))
    return pf, pt

  def layer_shapes(self, shape: Sequence[int]) -> List[Tuple[int, int, int]]:
    """(pitch, time, channels) after each of the seven layers for an input (F, T, C)."""
    f, t = int(shape[0]), int(shape[1])
    out = []
    for i, pool in enumerate(self.layer_pools()):
      pf, pt = self._effective_pool(pool, f, t)
      f, t = f // pf, t // pt
      out.append((f, t, self.width if i < 4 else 2 * self.width))
    return out

  def min_input_shape(self) -> Tuple[int, int]:
    """The smallest (pitch bins, frames) that leave every layer at least one position."""
    min_t = 1 if self._clamps_time() else math.prod(p[1] for p in self.layer_pools())
    return 1, min_t

  def check_input(self, shape: Sequence[int], hop_length: Optional[int] = None) -> None:
    """Raises ValueError when an input of shape (F, T, C) is too small for the seven pools.

    hop_length, when known, lets the message give the minimum in samples (centred STFT).
    """
    if len(shape) != 3:
      raise ValueError(f'HCNNBackend takes (pitch, time, channels) per example, got {shape}.')
    shapes = self.layer_shapes(shape)
    if min(min(f, t) for f, t, _ in shapes) >= 1:
      return
    min_f, min_t = self.min_input_shape()
    need = f'at least {min_t} frames and {min_f} pitch bin(s)'
    if hop_length is not None:
      need += f' (with hop {hop_length}: at least {(min_t - 1) * hop_length:,} samples)'
    raise ValueError(f"HCNN (variant {self.variant!r}) needs {need}; got {shape[0]} bins × "
                     f'{shape[1]} frames, which the pools {self.layer_pools()} reduce to '
                     f'{[s[:2] for s in shapes]}.')

  @nn.compact
  def __call__(self, x, train: bool = False):
    chex.assert_rank(x, 4)
    self.check_input(x.shape[1:])
    batch = x.shape[0]
    w = self.width
    conv = functools.partial(blocks.ConvBlock2d, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    res = functools.partial(blocks.ResBlock2dMP, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    kinds = (conv, res, res, res, conv, res, res)
    widths = (w, w, w, w, 2 * w, 2 * w, 2 * w)
    for i, (kind, features, pool) in enumerate(zip(kinds, widths, self.layer_pools())):
      pool = self._effective_pool(pool, x.shape[1], x.shape[2])
      x = kind(features, pool, name=f'layer{i + 1}')(x, train)
    chex.assert_shape(x, (batch, None, None, 2 * w))
    # The reference squeezes a pitch axis of 1 and max-pools time when T > 1; a max over both
    # is the same there and still defined when a swapped front-end leaves more than one bin.
    x = jnp.max(x, axis=(1, 2))
    x = blocks.dense(2 * w, self.dtype, name='dense1')(x)
    x = nn.relu(blocks.batch_norm(train, self.bn_axis_name, self.dtype, name='bn')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = blocks.dense(self.num_classes, self.dtype, name='dense2')(x)
    chex.assert_shape(logits, (batch, self.num_classes))
    return logits.astype(jnp.float32)


def build_hcnn(num_classes: int, *, variant: str = 'tagging', n_harmonic: int = 6,
               semitone_scale: int = 2, low_note='C1', sample_rate: int = 16000,
               n_fft: int = 512, hop_length: int = 256, learn_bw: str = 'only_Q',
               learn_f0: bool = False, q_init: float = 1.0, input_norm: bool = True,
               filterbank_precision: str = 'default', width: int = 128,
               pools: Optional[Sequence[Pool]] = None, clamp_time_pool: Optional[bool] = None,
               dropout_rate: float = 0.5, dtype: Dtype = jnp.float32,
               bn_axis_name: Optional[str] = None) -> Classifier:
  """HarmonicFrontend + HCNNBackend with the reference's defaults."""
  frontend = HarmonicFrontend(
      sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_harmonic=n_harmonic,
      semitone_scale=semitone_scale, low_note=low_note, learn_bw=learn_bw, learn_f0=learn_f0,
      q_init=q_init, input_norm=input_norm, filterbank_precision=filterbank_precision,
      dtype=dtype, bn_axis_name=bn_axis_name)
  frontend.fundamentals()  # bad harmonic settings fail here, at construction
  frontend._validate()  # pylint: disable=protected-access  (so do bad front-end options)
  backend = HCNNBackend(num_classes=num_classes, width=width, variant=variant, pools=pools,
                        clamp_time_pool=clamp_time_pool, dropout_rate=dropout_rate,
                        dtype=dtype, bn_axis_name=bn_axis_name)
  backend.layer_pools()
  return Classifier(frontend=frontend, backend=backend)


# MTAT / MTG-Jamendo / MSD tagging: 5-s crops as in sota's main.py and eval.py.
registry.register('hcnn', input_length=80_000)(functools.partial(build_hcnn, variant='tagging'))
# Speech Commands: the 1-s clips as they are (see the module docstring).
registry.register('hcnn_keywords', input_length=16_000)(
    functools.partial(build_hcnn, variant='keywords'))
# DCASE 2017 task 4: 3-s crops of the 10-s clips, as in ddhf's eval.sh.
registry.register('hcnn_events', input_length=48_000)(
    functools.partial(build_hcnn, variant='events'))
