"""Models for the training tests.

`make_model` is a minute stand-in built like the registry's models (a `Classifier` of a front-end
and a back-end, each with its own `bn_axis_name` and `dtype`; conv → synced BatchNorm; dropout;
dense) that compiles in a fraction of a second, for the tests of the step logic. `make_hcnn` is the
real HCNN at tiny width, used where its structure matters (collectives, mixed precision).
"""
from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import optax
from flax import linen as nn

from hcnn_jax.models import blocks, get_model
from hcnn_jax.models.compose import Classifier

INPUT_LENGTH = 64
FRAME = 16
# The shortest clip the tiny HCNN takes with time pools clamped: 17 frames of hop 256.
HCNN_INPUT_LENGTH = 4096


class TinyFrontend(nn.Module):
  """waveform (B, L) → frames (B, L/16, 16, 1) → conv → BatchNorm → ReLU."""
  width: int = 4
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  def output_shape(self, num_samples: int):
    return (num_samples // FRAME, FRAME, self.width)

  @nn.compact
  def __call__(self, waveform, train: bool = False):
    x = waveform.astype(self.dtype).reshape(waveform.shape[0], -1, FRAME, 1)
    x = blocks.conv2d(self.width, dtype=self.dtype)(x)
    x = nn.relu(blocks.batch_norm(train, self.bn_axis_name, self.dtype)(x))
    self.sow('intermediates', 'features', x)
    return x


class TinyBackend(nn.Module):
  """mean over (F, T) → Dense → BatchNorm → ReLU → Dropout → Dense."""
  num_classes: int = 3
  dropout_rate: float = 0.5
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  def check_input(self, shape):
    if len(shape) != 3 or min(shape) < 1:
      raise ValueError(f'TinyBackend needs a non-empty (F, T, C) input, got {shape}')

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(8, dtype=self.dtype, param_dtype=jnp.float32)(x)
    x = nn.relu(blocks.batch_norm(train, self.bn_axis_name, self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)


def make_model(num_classes: int, dropout: bool = True, dtype: Any = jnp.float32) -> nn.Module:
  return Classifier(frontend=TinyFrontend(dtype=dtype),
                    backend=TinyBackend(num_classes=num_classes,
                                        dropout_rate=0.5 if dropout else 0.0, dtype=dtype))


def make_hcnn(num_classes: int, dtype: Any = jnp.float32) -> nn.Module:
  return get_model('hcnn', num_classes=num_classes, width=4, n_harmonic=2, clamp_time_pool=True,
                   dtype=dtype)


def bce(logits, labels):
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
