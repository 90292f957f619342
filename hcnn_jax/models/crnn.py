"""CRNN (Choi et al. 2017) as sota's `CRNN`: four conv blocks, a 2-layer GRU, the last time step.

Conv3×3 → BN → ReLU → max-pool blocks (64, 128, 128, 128 channels; pools (2,2), (3,3), (4,4),
(4,4)) take 96 mel bins × 1813 frames (29 s) to 1 × 18; the 18 steps of 128 channels run through a
2-layer GRU of 32 units; its output at the last step → Dropout → Dense(num_classes). The reference
hard-codes 50 outputs; this one honours num_classes.

The GRU is ours (`TorchGRU`), not flax's GRUCell: PyTorch's GRU has a bias on both the input and
the recurrent side of every gate (b_ih, b_hh), flax's has four bias vectors instead of six, so
flax would neither match the reference's 394,100 parameters nor load its weights one to one. The
input projection of all steps is one matmul; only the recurrence is a `lax.scan`.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax.models import blocks, registry
from hcnn_jax.models.compose import Classifier
from hcnn_jax.models.fcn import check_pools, check_stack_input, effective_pool, zoo_frontend

Dtype = Any
Pool = blocks.Pool

CRNN_CHANNELS = (64, 128, 128, 128)
CRNN_POOLS = ((2, 2), (3, 3), (4, 4), (4, 4))


class TorchGRU(nn.Module):
  """One GRU layer over (B, T, D) → (B, T, hidden) with PyTorch's equations and parameters.

    r = σ(x W_ir + b_ir + h W_hr + b_hr)      z = σ(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))      h' = (1 − z) ⊙ n + z ⊙ h

  Params: kernel_ih (D, 3H), kernel_hh (H, 3H), bias_ih (3H,), bias_hh (3H,), gates in PyTorch's
  order (r, z, n), i.e. the transposes of weight_ih_l{k} / weight_hh_l{k}. Initialised like
  PyTorch: everything U(±1/√H). The initial state is zero.
  """
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = self.hidden
    bound = 1.0 / h ** 0.5

    def init(key, shape, dtype=jnp.float32):
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel_ih = self.param('kernel_ih', init, (x.shape[-1], 3 * h))
    kernel_hh = self.param('kernel_hh', init, (h, 3 * h))
    bias_ih = self.param('bias_ih', init, (3 * h,))
    bias_hh = self.param('bias_hh', init, (3 * h,))
    kernel_ih, kernel_hh, bias_ih, bias_hh = (
        p.astype(self.dtype) for p in (kernel_ih, kernel_hh, bias_ih, bias_hh))
    inputs = jnp.einsum('btd,dg->btg', x.astype(self.dtype), kernel_ih) + bias_ih

    def step(state, gi):
      gh = state @ kernel_hh + bias_hh
      r = nn.sigmoid(gi[:, :h] + gh[:, :h])
      z = nn.sigmoid(gi[:, h:2 * h] + gh[:, h:2 * h])
      n = jnp.tanh(gi[:, 2 * h:] + r * gh[:, 2 * h:])
      state = (1 - z) * n + z * state
      return state, state

    state = jnp.zeros((x.shape[0], h), self.dtype)
    _, outputs = jax.lax.scan(step, state, jnp.swapaxes(inputs, 0, 1))
    return jnp.swapaxes(outputs, 0, 1)


class CRNNBackend(nn.Module):
  """Conv stack over (F, T), max over what is left of F, stacked TorchGRU, last step → logits."""
  num_classes: int = 50
  channels: Sequence[int] = CRNN_CHANNELS
  pools: Sequence[Pool] = CRNN_POOLS
  gru_hidden: int = 32
  gru_layers: int = 2
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def layer_pools(self) -> Tuple[Pool, ...]:
    if self.gru_hidden < 1 or self.gru_layers < 1:
      raise ValueError(f'CRNNBackend needs gru_hidden ≥ 1 and gru_layers ≥ 1, got '
                       f'{self.gru_hidden} and {self.gru_layers}.')
    return check_pools('CRNNBackend', self.pools, self.channels)

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises ValueError when features (F, T, C) are too small for the conv pools."""
    check_stack_input(f'CRNNBackend (pools {self.layer_pools()})', shape, self.layer_pools())

  @nn.compact
  def __call__(self, x, train: bool = False):
    chex.assert_rank(x, 4)
    self.check_input(x.shape[1:])
    conv = functools.partial(blocks.ConvBlock2d, bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    for i, (features, pool) in enumerate(zip(self.channels, self.layer_pools())):
      x = conv(features, effective_pool(pool, x.shape[1]), name=f'layer{i + 1}')(x, train)
    # The reference squeezes a frequency axis of 1; a max keeps other front-ends usable.
    x = jnp.max(x, axis=1)  # (B, T, C)
    for i in range(self.gru_layers):
      x = TorchGRU(self.gru_hidden, self.dtype, name=f'gru{i + 1}')(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x[:, -1])
    logits = blocks.dense(self.num_classes, self.dtype, name='dense')(x)
    return logits.astype(jnp.float32)


def build_crnn(num_classes: int, *, n_mels: int = 96, channels: Sequence[int] = CRNN_CHANNELS,
               pools: Sequence[Pool] = CRNN_POOLS, gru_hidden: int = 32, gru_layers: int = 2,
               dropout_rate: float = 0.5, dtype: Dtype = jnp.float32,
               bn_axis_name: Optional[str] = None) -> Classifier:
  """Mel front-end (96 bins, dB, BatchNorm) + CRNNBackend."""
  backend = CRNNBackend(num_classes=num_classes, channels=tuple(channels), pools=tuple(pools),
                        gru_hidden=gru_hidden, gru_layers=gru_layers, dropout_rate=dropout_rate,
                        dtype=dtype, bn_axis_name=bn_axis_name)
  backend.layer_pools()
  frontend = zoo_frontend('mel', dtype, bn_axis_name, n_mels=n_mels)
  return Classifier(frontend=frontend, backend=backend)


# 29-s crops (464,000 samples), as sota trains the CRNN.
registry.register('crnn', input_length=464_000)(build_crnn)
