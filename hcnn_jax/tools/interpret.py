"""What a trained model looks at: its learned filterbank, saliency, attention and tag contributions.

    python -m hcnn_jax.tools.interpret filters      --workdir DIR --out OUT
    python -m hcnn_jax.tools.interpret saliency     --workdir DIR --audio FILE... [--tag T] \
        --out OUT
    python -m hcnn_jax.tools.interpret attention    --workdir DIR --audio FILE... --out OUT
    python -m hcnn_jax.tools.interpret contribution --workdir DIR --audio FILE... --out OUT
    [--start_seconds S] picks the chunk of each file (default: its start).

The command line lives in `interpret_cli`, the figures in `interpret_plots`. Each command writes
PNGs and the arrays behind them (.npz) into OUT: saliency one figure per file, attention and
contribution one row per file; a file that cannot be read is named on stderr and the exit code
is 1. The functions return arrays:

- `filterbank_state(model, variables)`: the harmonic filterbank before training (the config's
  initial Q, α, β and f0 grid) and after (the checkpoint's), with the filter responses;
- `saliency(model, variables, audio, class_index=None)`: d(logit of a tag, by default the top
  one) / d(harmonic tensor after the dB), per harmonic channel, for the Harmonic CNN (for another
  front-end: with respect to the front-end's output);
- `attention_scores(model, variables, audio)`: for the self-attention back-end, the attention of
  [CLS] to every time token in each layer, averaged over heads, with the tokens' times in seconds;
- `tag_contribution(model, variables, audio, layer=-1)`: the talk's tag-wise contribution: the
  [CLS] attention of one layer (by default the last) is set to 1 on one time token and 0 on all
  others, for every token in turn, and each tag's output is read → (tags, time).

The attention back-end sows its attention weights (`sow_attention=True`); the contribution
replaces the attention function of one layer through `flax.linen.intercept_methods`, so the model
code needs no special argument. The jitted cores take the model as a static argument (keyed by
its fields), so repeated calls on the same model compile once.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hcnn_jax.frontends.harmonic import (HarmonicFrontend, harmonic_filterbank,
                                         harmonic_spectrogram)
from hcnn_jax.frontends.stft import amplitude_to_db, fft_frequencies
from hcnn_jax.models import blocks

COMMANDS = ('filters', 'saliency', 'attention', 'contribution')


# ------------------------------------------------------------------------------------ helpers

class _Static:
  """A model as a static jit argument, hashed by its repr (all its fields): a model rebuilt from
  a saved JSON config may hold lists (e.g. HCNN pools) and so not be hashable itself."""

  def __init__(self, model):
    self.model = model
    self._key = repr(model)

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _Static) and getattr(other, '_key') == self._key


def _sub(variables: Dict[str, Any], name: str) -> Dict[str, Any]:
  """The variables of child module `name` ('frontend' / 'backend') of a Classifier."""
  return {col: tree[name] for col, tree in variables.items() if isinstance(tree, dict)
          and name in tree}


def _harmonic_frontend(model):
  frontend = getattr(model, 'frontend', None)
  return frontend if isinstance(frontend, HarmonicFrontend) else None


def _attention_backend(model):
  from hcnn_jax.models.attention import AttentionBackend  # pylint: disable=import-outside-toplevel
  backend = getattr(model, 'backend', None)
  if not isinstance(backend, AttentionBackend):
    raise ValueError(f'attention maps need the self-attention back-end (model "attention"); this '
                     f'model\'s back-end is {type(backend).__name__}')
  return backend


def _batch(audio) -> np.ndarray:
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 1:
    raise ValueError(f'audio must be one mono chunk (num_samples,), got shape {audio.shape}')
  return audio[None, :]


# ---------------------------------------------------------------------------------- filterbank

def filterbank_state(model, variables) -> Dict[str, Any]:
  """The harmonic filterbank before and after training.

  Returns {'frequencies': (n_bins,) Hz, 'n_harmonic', 'level', and for 'initial' and 'learned':
  {'f0': (level,) Hz, 'q', 'alpha', 'beta', 'filterbank': (n_bins, n_harmonic·level)}}.
  'initial' is what the model's config initialises (q_init, the ERB α/β, the f0 grid); 'learned'
  reads the checkpoint's parameters.
  """
  frontend = _harmonic_frontend(model)
  if frontend is None:
    raise ValueError('the filterbank plot needs the harmonic front-end (model "hcnn"); this model '
                     f'has {type(getattr(model, "frontend", model)).__name__}')
  init = frontend.init(jax.random.key(0), jnp.zeros((1, frontend.n_fft), jnp.float32))
  out: Dict[str, Any] = {'frequencies': fft_frequencies(frontend.sample_rate, frontend.n_fft),
                         'n_harmonic': frontend.n_harmonic}
  for name, params in (('initial', init['params']),
                       ('learned', variables['params']['frontend'])):
    f0, q, alpha, beta = frontend.filters(params)
    fb = harmonic_filterbank(f0, q, alpha, beta, sample_rate=frontend.sample_rate,
                             n_fft=frontend.n_fft, n_harmonic=frontend.n_harmonic)
    out[name] = {'f0': np.asarray(f0, np.float64), 'q': float(q), 'alpha': float(alpha),
                 'beta': float(beta), 'filterbank': np.asarray(fb)}
  out['level'] = len(out['initial']['f0'])
  return out


# ------------------------------------------------------------------------------------ saliency

@functools.partial(jax.jit, static_argnums=0)
def _features(static, variables, x):
  """The representation saliency is taken on: the dB harmonic tensor, or the front-end output."""
  model = static.model
  frontend = _harmonic_frontend(model)
  if frontend is None:
    return model.frontend.apply(_sub(variables, 'frontend'), x, train=False)
  f0, q, alpha, beta = frontend.filters(variables['params']['frontend'])
  return amplitude_to_db(harmonic_spectrogram(
      x, f0, q, alpha, beta, sample_rate=frontend.sample_rate, n_fft=frontend.n_fft,
      hop_length=frontend.hop_length, n_harmonic=frontend.n_harmonic))


def _head(model, variables, features):
  """The rest of the model from `_features`: the harmonic BatchNorm (if any), then the back-end."""
  frontend = _harmonic_frontend(model)
  if frontend is not None and frontend.input_norm:
    bn_vars = {col: tree['frontend']['hstft_bn'] for col, tree in variables.items()}
    features = blocks.batch_norm(False, None, frontend.dtype).apply(bn_vars, features)
    features = features.astype(frontend.dtype)
  return model.backend.apply(_sub(variables, 'backend'), features, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_gradient(static, variables, features, index):
  """(logits (C,), the class used, d logit[class] / d features); index < 0 = the top class."""
  model = static.model
  def objective(f):
    logits = _head(model, variables, f)[0]
    chosen = jnp.where(index < 0, jnp.argmax(logits), index)
    return logits[chosen], (logits, chosen)
  grad, (logits, chosen) = jax.grad(objective, has_aux=True)(features)
  return logits, chosen, grad


def saliency(model, variables, audio, class_index: Optional[int] = None) -> Dict[str, Any]:
  """Gradient of one tag's logit with respect to the model's input representation.

  For the harmonic front-end the representation is the harmonic tensor after the dB and before
  its BatchNorm, (level, T, n_harmonic); for any other front-end it is the front-end's output.
  class_index None takes the tag with the highest logit. Returns {'features', 'saliency' (same
  shape), 'class_index', 'logits' (C,), 'kind'}.
  """
  x = _batch(audio)
  model.check_input_length(x.shape[-1])  # a too-short chunk fails here, in words
  num_classes = model.num_classes
  if class_index is not None and not 0 <= int(class_index) < num_classes:
    raise ValueError(f'class index {class_index} out of range for {num_classes} classes')
  features = _features(_Static(model), variables, x)
  index = -1 if class_index is None else int(class_index)
  logits, chosen, grad = _logits_and_gradient(_Static(model), variables, features,
                                               jnp.int32(index))
  frontend = _harmonic_frontend(model)
  kind = ('harmonic tensor (dB)' if frontend is not None
          else f'{type(model.frontend).__name__} output')
  return {'features': np.asarray(features)[0], 'saliency': np.asarray(grad)[0],
          'class_index': int(chosen), 'logits': np.asarray(logits), 'kind': kind}


# ----------------------------------------------------------------------------------- attention

def _token_times(num_tokens: int, num_samples: int, sample_rate: int) -> np.ndarray:
  """Centre times (s) of the time tokens: the CNN front splits the chunk into equal steps."""
  return (np.arange(num_tokens) + 0.5) * (num_samples / sample_rate) / num_tokens


@functools.partial(jax.jit, static_argnums=0)
def _sown_apply(static, variables, x):
  logits, state = static.model.apply(variables, x, train=False, mutable=['intermediates'])
  return logits, state['intermediates']


@functools.partial(jax.jit, static_argnums=0)
def _probs(static, variables, x):
  return jax.nn.sigmoid(static.model.apply(variables, x, train=False))


def attention_scores(model, variables, audio, sample_rate: int = 16000) -> Dict[str, Any]:
  """[CLS] → time-token attention per layer, averaged over heads.

  Returns {'scores': (num_layers, num_tokens), 'times': (num_tokens,) s, 'probs': (C,),
  'cls_weights': (num_layers, heads, 1 + num_tokens) the raw rows}; in 'scores' the [CLS] token's
  attention to itself is left out and each row renormalised over the time tokens, so that rows
  compare across layers.
  """
  backend = _attention_backend(model)
  x = _batch(audio)
  logits, inter = _sown_apply(_Static(model.clone(backend=backend.clone(sow_attention=True))),
                              variables, x)
  # (layers, heads, 1 + tokens): the [CLS] query's row of every head of every layer.
  cls_weights = np.stack([
      np.asarray(inter['backend'][f'encoder{i + 1}']['attention']['attention_weights'][0])[0, :, 0]
      for i in range(backend.num_layers)])
  time_part = cls_weights.mean(axis=1)[:, 1:]
  scores = time_part / np.maximum(time_part.sum(axis=1, keepdims=True), 1e-12)
  return {'scores': scores, 'times': _token_times(scores.shape[1], x.shape[-1], sample_rate),
          'probs': np.asarray(jax.nn.sigmoid(logits))[0], 'cls_weights': cls_weights}


def _layer_index(backend, layer: int) -> int:
  layers = backend.num_layers
  if not -layers <= layer < layers:
    raise ValueError(f'layer {layer} out of range for {layers} attention layers')
  return layer % layers


def forced_cls_attention_logits(model, variables, audio, rows, layer: int = -1,
                                batch_size: int = 16):
  """Logits (N, C) of one chunk with [CLS]'s attention weights in `layer` replaced by each of
  `rows` (N, heads, 1 + num_tokens) in turn; the other queries keep their own attention."""
  backend = _attention_backend(model)
  return np.asarray(_forced(_Static(model), _layer_index(backend, layer), int(batch_size),
                            variables, _batch(audio), jnp.asarray(rows, jnp.float32)))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _forced(static, layer_index: int, batch_size: int, variables, x, rows):
  model = static.model
  target_path = ('backend', f'encoder{layer_index + 1}', 'attention')

  def forced(row):
    def attention_fn(query, key, value, mask=None, dtype=None, precision=None):
      weights = nn.dot_product_attention_weights(query, key, mask=mask, deterministic=True,
                                                 dtype=dtype, precision=precision)
      weights = weights.at[..., 0, :].set(row.astype(weights.dtype))  # the [CLS] query row
      return jnp.einsum('...hqk,...khd->...qhd', weights, value, precision=precision)

    def interceptor(next_fun, args, kwargs, context):
      module = context.module
      if (isinstance(module, nn.MultiHeadDotProductAttention) and context.method_name ==
          '__call__' and tuple(module.path) == target_path):
        swapped = module.clone(parent=None, attention_fn=attention_fn)
        return swapped.apply({'params': module.variables['params']}, *args, **kwargs)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, train=False)[0]

  return jax.lax.map(forced, rows, batch_size=batch_size)


def tag_contribution(model, variables, audio, layer: int = -1, sample_rate: int = 16000,
                     batch_size: int = 16) -> Dict[str, Any]:
  """Tag-wise contribution map (tags, time tokens): [CLS]'s attention in `layer` forced onto one
  token at a time (weight 1 there, 0 elsewhere, every head), each tag's probability read off.

  Returns {'contribution': (C, num_tokens), 'times': (num_tokens,) s, 'probs': (C,) unmodified,
  'layer': the layer index}.
  """
  backend = _attention_backend(model)
  x = _batch(audio)
  num_tokens = _count_tokens(model, variables, x)
  # Row t forces every head onto time token t (position t + 1, after [CLS]).
  eye = np.eye(num_tokens + 1, dtype=np.float32)[1:]
  rows = np.repeat(eye[:, None, :], backend.num_heads, axis=1)
  logits = forced_cls_attention_logits(model, variables, audio, rows, layer, batch_size)
  return {'contribution': np.asarray(jax.nn.sigmoid(logits)).T,
          'times': _token_times(num_tokens, x.shape[-1], sample_rate),
          'probs': np.asarray(_probs(_Static(model), variables, x))[0],
          'layer': _layer_index(backend, layer)}


def _count_tokens(model, variables, x) -> int:
  """Number of time tokens (without [CLS]) for input x, from the sown attention's shape."""
  sowing = model.clone(backend=model.backend.clone(sow_attention=True))
  _, state = jax.eval_shape(lambda v, a: sowing.apply(v, a, train=False,
                                                      mutable=['intermediates']), variables, x)
  weights = state['intermediates']['backend']['encoder1']['attention']['attention_weights'][0]
  return int(weights.shape[-1]) - 1


# ------------------------------------------------------------------------------ feature axes

def feature_rows_hz(model, variables):
  """(frequency in Hz of each row of `saliency`'s features or None, what the rows are)."""
  from hcnn_jax.frontends import mel, modules  # pylint: disable=import-outside-toplevel
  frontend = getattr(model, 'frontend', None)
  if _harmonic_frontend(model) is not None:
    f0 = frontend.filters(variables['params']['frontend'])[0]
    return np.asarray(f0, np.float64), 'fundamental f0'
  if isinstance(frontend, modules.MelFrontend):
    f_max = frontend.f_max or frontend.sample_rate / 2.0
    edges = mel.mel_to_hz(np.linspace(mel.hz_to_mel(frontend.f_min, frontend.htk),
                                      mel.hz_to_mel(f_max, frontend.htk), frontend.n_mels + 2),
                          frontend.htk)
    return np.asarray(edges[1:-1], np.float64), 'mel band centre'
  if isinstance(frontend, modules.LinearFrontend):
    return fft_frequencies(frontend.sample_rate, frontend.n_fft), 'frequency'
  if isinstance(frontend, modules.CQTFrontend):
    bins = np.arange(frontend.n_bins)
    return frontend.fmin * 2.0 ** (bins / frontend.bins_per_octave), 'frequency'
  return None, 'feature row'


if __name__ == '__main__':
  from hcnn_jax.tools import interpret_cli  # pylint: disable=import-outside-toplevel
  sys.exit(interpret_cli.main())
