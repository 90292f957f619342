"""Self-attention back-end (CNNSA of sota; Won et al. 2019): a residual CNN front, a transformer.

CNN front (sota's layer1-7): `ResBlock2d` with strides 2, 2, 2 (channels w, w, 2w) then
(2, 1) × 4 (2w), so 128 mel bins × 938 frames (15 s) become 1 bin × 118 steps of 2w = 256
channels. Any (F, T, C) input fits: the padded strided convs keep ≥ 1 position, C can be the
harmonics of the harmonic front-end, and bins left over (F > 128) are max-reduced.

Transformer (a BERT encoder without embeddings): a [CLS] vector prepended to the steps, 2 post-LN
layers of 8-head self-attention (hidden 2w, MLP 4·2w, GELU in its exact erf form, LayerNorm eps
1e-12, hidden dropout 0.4, attention-probability dropout 0.5); the pooler Dense + tanh on the
[CLS] output → Dropout 0.5 → Dense(num_classes).

Reference quirks fixed by default (section 10 of the reference notes):
- cls='trainable' (default): the [CLS] vector is a parameter, initialised to the reference's
  vector. cls='fixed' reproduces the reference: numpy uniform [0, 1) after seed 0 (drawn from a
  private `np.random.RandomState(0)`, so the global numpy RNG is left alone), not a parameter,
  for exact parameter parity (10,521,652; the trainable default adds 2w = 256);
- no batch-size limit (the reference tiles its vector for at most 64 rows);
- pos_encoding=None is the reference (it imports a positional encoding but never adds it);
  'sinusoidal' adds Vaswani et al.'s encoding to all tokens, [CLS] at position 0, as the original
  self-attention tagging repository does.
The attention probabilities of each layer are sown into 'intermediates' as
`encoder{i}/attention/attention_weights` when `sow_attention=True` (for the interpretation tools).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import chex
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from hcnn_jax.models import blocks, registry
from hcnn_jax.models.compose import Classifier
from hcnn_jax.models.fcn import spectrogram_hint, zoo_frontend
from hcnn_jax.models.short_chunk import ResBlock2d

Dtype = Any

CLS_MODES = ('trainable', 'fixed')
POS_ENCODINGS = (None, 'sinusoidal')
# (width multiple, (frequency stride, time stride)) of the seven residual blocks.
CNN_LAYERS = ((1, (2, 2)), (1, (2, 2)), (2, (2, 2)), (2, (2, 1)), (2, (2, 1)), (2, (2, 1)),
              (2, (2, 1)))


def reference_cls(size: int) -> np.ndarray:
  """The reference's [CLS] vector: numpy's uniform [0, 1) after seed 0, as float32."""
  return np.random.RandomState(0).random_sample(size).astype(np.float32)


def sinusoidal_encoding(length: int, size: int) -> np.ndarray:
  """(length, size) sin/cos positional encoding of Vaswani et al. (even dims sin, odd cos)."""
  position = np.arange(length)[:, None]
  rate = np.exp(-np.log(10000.0) * np.arange(0, size, 2) / size)
  out = np.zeros((length, size), np.float32)
  out[:, 0::2] = np.sin(position * rate)
  out[:, 1::2] = np.cos(position * rate)[:, :size // 2]
  return out


class EncoderLayer(nn.Module):
  """Post-LN transformer layer as BERT's: LN(x + Drop(Attn(x))), LN(h + Drop(W2 GELU(W1 h)))."""
  num_heads: int
  mlp_size: int
  dropout_rate: float = 0.4
  attention_dropout_rate: float = 0.5
  sow_attention: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    hidden = x.shape[-1]
    layer_norm = functools.partial(nn.LayerNorm, epsilon=1e-12, dtype=self.dtype,
                                   param_dtype=jnp.float32)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    # broadcast_dropout=False: an independent mask per example and head, as PyTorch draws it.
    attention = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate,
        broadcast_dropout=False, kernel_init=blocks.torch_kernel_init, dtype=self.dtype,
        param_dtype=jnp.float32, name='attention')
    h = attention(x, deterministic=not train, sow_weights=self.sow_attention)
    x = layer_norm(name='attention_norm')(x + drop(h))
    h = blocks.dense(self.mlp_size, self.dtype, name='intermediate')(x)
    h = blocks.dense(hidden, self.dtype, name='output')(nn.gelu(h, approximate=False))
    return layer_norm(name='output_norm')(x + drop(h))


class AttentionBackend(nn.Module):
  """Residual CNN front → [CLS] + steps → transformer encoder → pooler → logits.

  width: channels of the first CNN blocks (the rest and the transformer use 2·width); the
  reference uses 128, so a hidden size of 256.
  cnn_layers: (width multiple, (frequency stride, time stride)) per residual block; the last
  block's multiple must be 2 (its channels are the tokens).
  """
  num_classes: int = 50
  width: int = 128
  num_layers: int = 2
  num_heads: int = 8
  mlp_ratio: int = 4
  cnn_layers: Sequence[Tuple[int, Tuple[int, int]]] = CNN_LAYERS
  dropout_rate: float = 0.4
  attention_dropout_rate: float = 0.5
  head_dropout_rate: float = 0.5
  cls: str = 'trainable'
  pos_encoding: Optional[str] = None
  sow_attention: bool = False
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def hidden_size(self) -> int:
    """Transformer width (2·width), after checking the options."""
    if self.cls not in CLS_MODES:
      raise ValueError(f'Attention cls must be one of {CLS_MODES}, got {self.cls!r}.')
    if self.pos_encoding not in POS_ENCODINGS:
      raise ValueError(f'Attention pos_encoding must be one of {POS_ENCODINGS}, got '
                       f'{self.pos_encoding!r}.')
    hidden = 2 * self.width
    layers = tuple(self.cnn_layers)
    if not layers or layers[-1][0] != 2 or min(m for m, _ in layers) < 1 or min(
        min(s) for _, s in layers) < 1:
      raise ValueError(f'Attention cnn_layers must be (multiple ≥ 1, (stride, stride)) pairs '
                       f'ending with multiple 2 (the tokens have 2·width channels), got {layers}.')
    if self.width < 1 or self.num_layers < 1 or self.num_heads < 1 or hidden % self.num_heads:
      raise ValueError(f'Attention needs width ≥ 1, num_layers ≥ 1 and a hidden size 2·width = '
                       f'{hidden} divisible by num_heads = {self.num_heads}.')
    return hidden

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises ValueError unless features are a spectrogram (F, T, C) with more than one frame."""
    self.hidden_size()
    if len(shape) != 3 or min(shape) < 1 or shape[1] < 2:
      raise ValueError(f'AttentionBackend needs a spectrogram (F ≥ 1, T ≥ 2, C ≥ 1) per example; '
                       f'got {tuple(shape)}.{spectrogram_hint(shape)}')

  @nn.compact
  def __call__(self, x, train: bool = False):
    chex.assert_rank(x, 4)
    self.check_input(x.shape[1:])
    hidden = self.hidden_size()
    for i, (multiple, strides) in enumerate(self.cnn_layers):
      x = ResBlock2d(multiple * self.width, tuple(strides), bn_axis_name=self.bn_axis_name,
                     dtype=self.dtype, name=f'layer{i + 1}')(x, train)
    # The reference squeezes a frequency axis of 1; a max keeps taller inputs usable.
    x = jnp.max(x, axis=1)  # (B, steps, hidden)
    batch = x.shape[0]
    if self.cls == 'trainable':
      cls = self.param('cls', lambda key, shape: jnp.asarray(reference_cls(shape[0])), (hidden,))
    else:
      cls = jnp.asarray(reference_cls(hidden))
    cls = jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, hidden))
    x = jnp.concatenate([cls, x], axis=1)
    if self.pos_encoding == 'sinusoidal':
      x = x + jnp.asarray(sinusoidal_encoding(x.shape[1], hidden), x.dtype)
    for i in range(self.num_layers):
      x = EncoderLayer(self.num_heads, self.mlp_ratio * hidden, self.dropout_rate,
                       self.attention_dropout_rate, self.sow_attention, self.dtype,
                       name=f'encoder{i + 1}')(x, train)
    x = jnp.tanh(blocks.dense(hidden, self.dtype, name='pooler')(x[:, 0]))
    x = nn.Dropout(self.head_dropout_rate, deterministic=not train)(x)
    logits = blocks.dense(self.num_classes, self.dtype, name='dense')(x)
    return logits.astype(jnp.float32)


def build_attention(num_classes: int, *, n_mels: int = 128, width: int = 128,
                    num_layers: int = 2, num_heads: int = 8,
                    cnn_layers: Sequence[Tuple[int, Tuple[int, int]]] = CNN_LAYERS,
                    cls: str = 'trainable',
                    pos_encoding: Optional[str] = None, dropout_rate: float = 0.4,
                    attention_dropout_rate: float = 0.5, head_dropout_rate: float = 0.5,
                    sow_attention: bool = False, dtype: Dtype = jnp.float32,
                    bn_axis_name: Optional[str] = None) -> Classifier:
  """Mel front-end (128 bins, dB, BatchNorm) + AttentionBackend."""
  backend = AttentionBackend(num_classes=num_classes, width=width, num_layers=num_layers,
                             num_heads=num_heads, cnn_layers=tuple(cnn_layers),
                             dropout_rate=dropout_rate,
                             attention_dropout_rate=attention_dropout_rate,
                             head_dropout_rate=head_dropout_rate, cls=cls,
                             pos_encoding=pos_encoding, sow_attention=sow_attention, dtype=dtype,
                             bn_axis_name=bn_axis_name)
  backend.hidden_size()
  frontend = zoo_frontend('mel', dtype, bn_axis_name, n_mels=n_mels)
  return Classifier(frontend=frontend, backend=backend)


# 15-s crops (240,000 samples, 938 frames), as sota trains CNNSA.
registry.register('attention', input_length=240_000)(build_attention)
