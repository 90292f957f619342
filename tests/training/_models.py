"""A minute stand-in for the registry's models, with every part the steps must handle."""
from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import optax
from flax import linen as nn

from hcnn_jax.models import blocks


class TinyTagger(nn.Module):
  """waveform (B, L) → frame → conv → synced BN → ReLU → mean-pool → dropout → dense."""
  num_classes: int = 3
  width: int = 4
  dropout_rate: float = 0.5
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, waveform, train: bool = False):
    x = waveform.astype(self.dtype).reshape(waveform.shape[0], -1, 16, 1)  # (B, T, 16, 1)
    x = blocks.conv2d(self.width, dtype=self.dtype)(x)
    x = blocks.batch_norm(train, self.bn_axis_name, self.dtype)(x)
    x = nn.relu(x)
    self.sow('intermediates', 'features', x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)


def bce(logits, labels):
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


INPUT_LENGTH = 64


def make_model(num_classes: int, dropout: bool = True, dtype: Any = jnp.float32) -> nn.Module:
  return TinyTagger(num_classes=num_classes, dropout_rate=0.5 if dropout else 0.0, dtype=dtype)
