"""A model is a front-end (waveform → NHWC features) followed by a back-end (features → logits).

The front-end must provide `output_shape(num_samples) -> (F, T, C)` and the back-end
`check_input((F, T, C))`; the Classifier asks both before tracing any array work, so an input that
does not fit fails at once, in words, with the shortest input that would fit.
"""
from __future__ import annotations

from typing import Optional

import chex
from flax import linen as nn

# Lengths beyond this (about 70 minutes at 16 kHz) are not searched for a minimum input length.
_MAX_SEARCH_SAMPLES = 1 << 26


class Classifier(nn.Module):
  """frontend → backend → logits (B, num_classes). Params: {'frontend': ..., 'backend': ...}."""
  frontend: nn.Module
  backend: nn.Module

  @property
  def num_classes(self) -> int:
    return self.backend.num_classes

  @property
  def dtype(self):
    return self.backend.dtype

  @property
  def bn_axis_name(self) -> Optional[str]:
    return self.backend.bn_axis_name

  def feature_shape(self, num_samples: int):
    """(F, T, C) the front-end produces for num_samples; ValueError if it cannot."""
    return tuple(self.frontend.output_shape(int(num_samples)))

  def _fits(self, num_samples: int) -> bool:
    try:
      self.backend.check_input(self.feature_shape(num_samples))
    except ValueError:
      return False
    return True

  def min_input_length(self) -> Optional[int]:
    """The fewest samples this model accepts (None if none up to ~70 min at 16 kHz fits).

    Found by bisection over the front-end's pure shape arithmetic, so it holds for any
    front-end / back-end pair whose feature extent grows with the input.
    """
    hi = 1
    while not self._fits(hi):
      hi *= 2
      if hi > _MAX_SEARCH_SAMPLES:
        return None
    lo = hi // 2  # does not fit (or is 0)
    while hi - lo > 1:
      mid = (lo + hi) // 2
      if self._fits(mid):
        hi = mid
      else:
        lo = mid
    return hi

  def check_input_length(self, num_samples: int) -> None:
    """Raises ValueError, naming the minimum length, if num_samples cannot go through the model."""
    try:
      self.backend.check_input(self.feature_shape(num_samples))
    except ValueError as err:
      shortest = self.min_input_length()
      hint = ('no input length fits this front-end / back-end pair' if shortest is None else
              f'the shortest input that fits is {shortest:,} samples')
      pair = f'{type(self.frontend).__name__} → {type(self.backend).__name__}'
      raise ValueError(f'An input of {num_samples:,} samples does not fit this model ({pair}): '
                       f'{hint}. {err}') from None

  def __call__(self, waveform, train: bool = False):
    chex.assert_rank(waveform, 2)
    self.check_input_length(waveform.shape[-1])  # shapes are static: this runs at trace time
    features = self.frontend(waveform, train=train)
    return self.backend(features, train=train)
