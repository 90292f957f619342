"""Musicnn (Pons et al. 2018) as sota's `Musicnn`: musically motivated front-end, 1-D back-end.

Front (over the spectrogram (B, F, T, C)):
- two timbral `ConvV` banks: conv (h × 7) over (frequency, time), no frequency padding, then a
  max over what is left of the frequency axis; h = int(0.7·F) and int(0.4·F) (67 and 38 at 96
  mel bins, as in the reference);
- three temporal `ConvH` banks: mean over frequency, then a 1-D conv of 129, 65 or 33 frames.
Their outputs are concatenated per frame (204 + 204 + 3·51 = 561 channels).

Back: three 1-D conv(7) → BN → ReLU layers with residual sums (res2 = l2(res1) + res1,
res3 = l3(res2) + res2); concat [front, res1, res2, res3] → max and mean over time → Dense → BN →
ReLU → Dropout → Dense. `variant='msd'` uses the reference's MSD widths (512 back-end channels,
dense 500) instead of MTAT's (64, 200).

The heights follow the input's bins, so the 128-mel variant of the SMC 2020 table and a harmonic
front-end (C = harmonics) also fit. No time pooling: any spectrogram of at least two frames fits.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import chex
import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax import speed
from hcnn_jax.models import blocks, registry
from hcnn_jax.models.blocks1d import DenseHead, conv1d
from hcnn_jax.models.compose import Classifier
from hcnn_jax.models.fcn import zoo_frontend

Dtype = Any

# variant → (back-end channels, dense width); sota picks them by dataset.
VARIANTS = {'mtat': (64, 200), 'msd': (512, 500)}
TIMBRAL_HEIGHTS = (0.7, 0.4)
TEMPORAL_KERNELS = (129, 65, 33)


class ConvV(nn.Module):
  """sota's Conv_V: conv (height × 7), frequency unpadded → BN → ReLU → max over frequency.

  `hcnn_jax.speed` chooses how (the same values either way): by default, in training, the max
  over frequency comes before BN → ReLU (`blocks.BatchNormReLUPool`: the normalisation and its
  gradient on the pooled (B, T, features) tensor), and the tall kernel's gradients are two GEMMs
  (`speed.tall_conv_general_dilated`, 6.8× faster than XLA's on the CPU for the 67 × 7 bank).
  """
  features: int
  height: int
  width: int = 7
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    pad = ((0, 0), (self.width // 2, self.width // 2))
    x = blocks.conv2d(self.features, (self.height, self.width), padding=pad, dtype=self.dtype,
                      conv_fn=speed.tall_conv_general_dilated)(x)
    if speed.choices().pools_first(True):
      # 'reshape': the argmax pool unrolls one select per window position (30 and 59 here),
      # which cost more than it saved (bench/README.md).
      return blocks.BatchNormReLUPool((x.shape[1], 1), train, self.bn_axis_name, self.dtype,
                                      pool_impl='reshape', name='BatchNorm_0')(x)[:, 0]
    x = nn.relu(blocks.batch_norm(train, self.bn_axis_name, self.dtype)(x))
    return jnp.max(x, axis=1)  # (B, T, features)


class ConvH(nn.Module):
  """sota's Conv_H: mean over frequency → 1-D conv(kernel) → BN → ReLU."""
  features: int
  kernel: int
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.mean(x, axis=1)  # (B, T, C)
    x = conv1d(self.features, self.kernel, dtype=self.dtype)(x)
    return nn.relu(blocks.batch_norm(train, self.bn_axis_name, self.dtype)(x))


class MusicnnBackend(nn.Module):
  """Pons front + 1-D dense back-end + pooled dense head → logits.

  timbral_channels / temporal_channels: per-bank widths of the ConvV / ConvH banks (204 / 51).
  backend_channels / dense: None takes the variant's (MTAT 64 / 200, MSD 512 / 500).
  heights: ConvV heights, as fractions (< 1) of the input's bins or as bin counts (ints ≥ 1).
  """
  num_classes: int = 50
  variant: str = 'mtat'
  timbral_channels: int = 204
  temporal_channels: int = 51
  backend_channels: Optional[int] = None
  dense: Optional[int] = None
  heights: Sequence[float] = TIMBRAL_HEIGHTS
  temporal_kernels: Sequence[int] = TEMPORAL_KERNELS
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def widths(self) -> Tuple[int, int]:
    """(back-end channels, dense width) after the variant's defaults."""
    if self.variant not in VARIANTS:
      raise ValueError(f'Musicnn variant must be one of {sorted(VARIANTS)}, got {self.variant!r}.')
    channels, dense = VARIANTS[self.variant]
    return (self.backend_channels or channels, self.dense or dense)

  def timbral_heights(self, bins: int) -> Tuple[int, ...]:
    """ConvV kernel heights for an input of `bins` frequency bins."""
    out = []
    for h in self.heights:
      if isinstance(h, int) and not isinstance(h, bool):
        out.append(h)
      elif 0 < h < 1:
        out.append(int(h * bins))
      else:
        raise ValueError(f'Musicnn heights must be fractions in (0, 1) or ints, got '
                         f'{tuple(self.heights)}.')
    return tuple(out)

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises ValueError when features (F, T, C) are too small for the timbral kernels."""
    self.widths()
    if len(shape) != 3:
      raise ValueError(f'MusicnnBackend takes (frequency, time, channels) per example, '
                       f'got {tuple(shape)}.')
    if shape[1] == 1:
      raise ValueError(f'MusicnnBackend needs a spectrogram front-end; features (F, T, C) = '
                       f'{tuple(shape)} have one frame, which is what the raw-waveform front-end '
                       'gives ((L, 1, 1)).')
    heights = self.timbral_heights(shape[0])
    if min(heights) < 1 or max(heights) > shape[0] or shape[1] < 1:
      raise ValueError(f'MusicnnBackend needs at least one frame and timbral kernel heights '
                       f'{heights} between 1 and the {shape[0]} frequency bins of the features '
                       f'(F, T, C) = {tuple(shape)}; a spectrogram of ≥ 3 bins fits the default '
                       f'fractions {tuple(self.heights)}.')

  @nn.compact
  def __call__(self, x, train: bool = False):
    chex.assert_rank(x, 4)
    self.check_input(x.shape[1:])
    common = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    channels, dense = self.widths()
    front = [ConvV(self.timbral_channels, h, name=f'timbral{i + 1}', **common)(x, train)
             for i, h in enumerate(self.timbral_heights(x.shape[1]))]
    front += [ConvH(self.temporal_channels, k, name=f'temporal{i + 1}', **common)(x, train)
              for i, k in enumerate(self.temporal_kernels)]
    front = jnp.concatenate(front, axis=-1)  # (B, T, 561)

    def layer(i, y):
      y = conv1d(channels, 7, dtype=self.dtype, name=f'conv{i}')(y)
      return nn.relu(blocks.batch_norm(train, self.bn_axis_name, self.dtype, name=f'bn{i}')(y))

    res1 = layer(1, front)
    res2 = layer(2, res1) + res1
    res3 = layer(3, res2) + res2
    out = jnp.concatenate([front, res1, res2, res3], axis=-1)
    out = jnp.concatenate([jnp.max(out, axis=1), jnp.mean(out, axis=1)], axis=-1)
    logits = DenseHead(dense, self.num_classes, self.dropout_rate, name='head', **common)(
        out, train)
    return logits.astype(jnp.float32)


def build_musicnn(num_classes: int, *, variant: str = 'mtat', n_mels: int = 96,
                  timbral_channels: int = 204, temporal_channels: int = 51,
                  backend_channels: Optional[int] = None, dense: Optional[int] = None,
                  heights: Optional[Sequence[float]] = None,
                  dropout_rate: float = 0.5, dtype: Dtype = jnp.float32,
                  bn_axis_name: Optional[str] = None) -> Classifier:
  """Mel front-end (96 bins, dB, BatchNorm) + MusicnnBackend (variant 'mtat' or 'msd').

  `heights`: the timbral kernel heights, fractions of the bins or bin counts; None follows the
  bins. sota's "Musicnn (128 mel)" keeps the 96-bin heights (67, 38) on 128 bins.
  """
  backend = MusicnnBackend(num_classes=num_classes, variant=variant,
                           heights=TIMBRAL_HEIGHTS if heights is None else tuple(heights),
                           timbral_channels=timbral_channels,
                           temporal_channels=temporal_channels, backend_channels=backend_channels,
                           dense=dense, dropout_rate=dropout_rate, dtype=dtype,
                           bn_axis_name=bn_axis_name)
  backend.widths()
  frontend = zoo_frontend('mel', dtype, bn_axis_name, n_mels=n_mels)
  return Classifier(frontend=frontend, backend=backend)


# 3-s crops (48,000 samples, 188 frames), as sota trains Musicnn.
registry.register('musicnn', input_length=48_000)(build_musicnn)
