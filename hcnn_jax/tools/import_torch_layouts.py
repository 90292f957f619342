"""Key layouts of the reference's PyTorch state_dicts and how each tensor maps onto our variables.

Two repositories save the Harmonic CNN, with different names for the same network:
- sota (minzwon/sota-music-tagging-models, `training/model.py` HarmonicCNN): `hstft.*`,
  `hstft_bn.*`, `layer1..7.*`, `dense1`, `bn`, `dense2`;
- ddhf (minzwon/data-driven-harmonic-filters, `training/model.py` Model, `modules.py`
  ResNet_mtat / ResNet_dcase / ResNet_keyword): `hstft.*`, `hstft_bn.*`, then `conv_2d.res1..7.*`,
  `conv_2d.fc_1`, `conv_2d.bn`, `conv_2d.fc_2`. Its blocks (Conv3_2d: conv/bn; Conv3_2d_resmp:
  conv_1/bn_1/conv_2/bn_2) and head are sota's Conv_2d / Res_2d_mp / dense head under other names,
  so `DDHF` renames its keys to sota's and the sota table converts them. Its class count is fixed
  per dataset (50 mtat, 17 dcase, 35 keyword), which names our variant (hcnn, hcnn_events,
  hcnn_keywords; the last two pool time as ResNet_dcase / ResNet_keyword do).

The tables are data, one dict per model (`MODEL_TABLES`): torch module prefix → (our module path,
kind[, 'optional']). The kind says which tensors the module has and how each is laid out here:

  conv      weight (out, in, *k) → kernel (*k, in, out) [OIHW → HWIO, OIK → KIO]; bias
  linear    weight (out, in) → kernel (in, out); bias
  bn        weight/bias → params scale/bias; running_mean/var → batch_stats mean/var
  ln        weight/bias → scale/bias (BERT's LayerNorm)
  heads_in  BERT query/key/value Linear → flax (hidden, heads, head_dim) kernel, (heads, head_dim)
  heads_out BERT attention output Linear → flax (heads, head_dim, hidden) kernel
  T / param / scalar   one tensor: transposed / as is / as a 0-d array

`{i}` in a prefix is a layer number (the same in both), `{k}` a torch ModuleList index from 0 and
`{k1}` our 1-based name for it. 'optional' marks a module that exists only where our model has it
(Res_2d / ResSE_1d's shortcut conv_3 / bn_3, built whenever the stride or the width changes).

A file is first unwrapped (`{'model': sd}`, `{'state_dict': sd}`, DataParallel's `module.`
prefixes), then renamed to sota's keys (`prepare`); `name_from_keys` tells the model.

Buffers that hold no trained weight are known too (`BUFFERS`): torchaudio's STFT window and mel
filterbank, saved by torchaudio 0.3.0 (its `torch.jit.Attribute` tensors land in the state_dict)
and by today's torchaudio (persistent buffers); BatchNorm's `num_batches_tracked`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Mapping, NamedTuple, Tuple

import numpy as np

Transform = Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]


def _same(w, hp):
  del hp
  return w


def _kernel(w, hp):
  """torch conv weight (out, in, *window) → flax (*window, in, out)."""
  del hp
  return np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def _transpose(w, hp):
  del hp
  return w.T


def _scalar(w, hp):
  del hp
  return w.reshape(())


def _heads(hp) -> int:
  return int(hp.get('num_heads', 8))


def _heads_in_kernel(w, hp):
  """BERT query/key/value (heads·d, hidden) → flax DenseGeneral (hidden, heads, d)."""
  return w.T.reshape(w.shape[1], _heads(hp), w.shape[0] // _heads(hp))


def _heads_in_bias(b, hp):
  return b.reshape(_heads(hp), b.shape[0] // _heads(hp))


def _heads_out_kernel(w, hp):
  """BERT attention output (hidden, heads·d) → flax (heads, d, hidden)."""
  return w.T.reshape(_heads(hp), w.shape[1] // _heads(hp), w.shape[0])


# kind → {torch tensor suffix ('' = the key itself): (collection, our leaf ('' = the path), fn)}
KINDS: Dict[str, Dict[str, Tuple[str, str, Transform]]] = {
    'conv': {'weight': ('params', 'kernel', _kernel), 'bias': ('params', 'bias', _same)},
    'linear': {'weight': ('params', 'kernel', _transpose), 'bias': ('params', 'bias', _same)},
    'bn': {'weight': ('params', 'scale', _same), 'bias': ('params', 'bias', _same),
           'running_mean': ('batch_stats', 'mean', _same),
           'running_var': ('batch_stats', 'var', _same)},
    'ln': {'weight': ('params', 'scale', _same), 'bias': ('params', 'bias', _same)},
    'heads_in': {'weight': ('params', 'kernel', _heads_in_kernel),
                 'bias': ('params', 'bias', _heads_in_bias)},
    'heads_out': {'weight': ('params', 'kernel', _heads_out_kernel),
                  'bias': ('params', 'bias', _same)},
    'T': {'': ('params', '', _transpose)},
    'param': {'': ('params', '', _same)},
    'scalar': {'': ('params', '', _scalar)},
}

# (layer index, block kind) of the seven HCNN layers: 'conv' = Conv_2d, 'res' = Res_2d_mp.
_HCNN_LAYERS = ((1, 'conv'), (2, 'res'), (3, 'res'), (4, 'res'), (5, 'conv'), (6, 'res'),
                (7, 'res'))

_MEL = {'spec_bn': ('frontend/spec_bn', 'bn')}
_DENSE_HEAD = {'dense1': ('backend/head/dense1', 'linear'), 'bn': ('backend/head/bn', 'bn'),
               'dense2': ('backend/head/dense2', 'linear')}
_CONV_LAYERS = {'layer{i}.conv': ('backend/layer{i}/Conv_0', 'conv'),
                'layer{i}.bn': ('backend/layer{i}/BatchNorm_0', 'bn')}
_RES_LAYERS = {'layer{i}.conv_1': ('backend/layer{i}/conv_1', 'conv'),
               'layer{i}.bn_1': ('backend/layer{i}/bn_1', 'bn'),
               'layer{i}.conv_2': ('backend/layer{i}/conv_2', 'conv'),
               'layer{i}.bn_2': ('backend/layer{i}/bn_2', 'bn'),
               'layer{i}.conv_3': ('backend/layer{i}/conv_3', 'conv', 'optional'),
               'layer{i}.bn_3': ('backend/layer{i}/bn_3', 'bn', 'optional')}
_RESSE_LAYERS = dict(_RES_LAYERS, **{'layer{i}.dense1': ('backend/layer{i}/se_dense1', 'linear'),
                                     'layer{i}.dense2': ('backend/layer{i}/se_dense2', 'linear')})


def _hcnn_table() -> Dict[str, tuple]:
  table = {'hstft.bw_Q': ('frontend/bw_Q', 'scalar'),
           'hstft_bn': ('frontend/hstft_bn', 'bn')}
  for index, kind in _HCNN_LAYERS:
    if kind == 'conv':  # Conv_2d: conv, bn
      table[f'layer{index}.conv'] = (f'backend/layer{index}/Conv_0', 'conv')
      table[f'layer{index}.bn'] = (f'backend/layer{index}/BatchNorm_0', 'bn')
    else:  # Res_2d_mp: conv_1, bn_1, conv_2, bn_2 (auto-named Conv_0/1, BatchNorm_0/1 here)
      for j in (1, 2):
        table[f'layer{index}.conv_{j}'] = (f'backend/layer{index}/Conv_{j - 1}', 'conv')
        table[f'layer{index}.bn_{j}'] = (f'backend/layer{index}/BatchNorm_{j - 1}', 'bn')
  table.update({'dense1': ('backend/dense1', 'linear'), 'bn': ('backend/bn', 'bn'),
                'dense2': ('backend/dense2', 'linear')})
  return table


_ENCODER = {
    'encoder.layer.{k}.attention.self.query': ('backend/encoder{k1}/attention/query', 'heads_in'),
    'encoder.layer.{k}.attention.self.key': ('backend/encoder{k1}/attention/key', 'heads_in'),
    'encoder.layer.{k}.attention.self.value': ('backend/encoder{k1}/attention/value', 'heads_in'),
    'encoder.layer.{k}.attention.output.dense': ('backend/encoder{k1}/attention/out',
                                                 'heads_out'),
    'encoder.layer.{k}.attention.output.LayerNorm': ('backend/encoder{k1}/attention_norm', 'ln'),
    'encoder.layer.{k}.intermediate.dense': ('backend/encoder{k1}/intermediate', 'linear'),
    'encoder.layer.{k}.output.dense': ('backend/encoder{k1}/output', 'linear'),
    'encoder.layer.{k}.output.LayerNorm': ('backend/encoder{k1}/output_norm', 'ln'),
}

# Our model name → {torch module prefix: (our module path, kind[, 'optional'])}.
MODEL_TABLES: Dict[str, Dict[str, tuple]] = {
    'hcnn': _hcnn_table(),
    'hcnn_events': _hcnn_table(),
    'hcnn_keywords': _hcnn_table(),
    'short_chunk': {**_MEL, **_CONV_LAYERS, **_DENSE_HEAD},
    'short_chunk_res': {**_MEL, **_RES_LAYERS, **_DENSE_HEAD},
    'fcn': {**_MEL, **_CONV_LAYERS, 'dense': ('backend/dense', 'linear')},
    'musicnn': {
        **_MEL,
        # self.layers = ModuleList([Conv_V 0.7, Conv_V 0.4, Conv_H 129, Conv_H 65, Conv_H 33])
        'layers.0.conv': ('backend/timbral1/Conv_0', 'conv'),
        'layers.0.bn': ('backend/timbral1/BatchNorm_0', 'bn'),
        'layers.1.conv': ('backend/timbral2/Conv_0', 'conv'),
        'layers.1.bn': ('backend/timbral2/BatchNorm_0', 'bn'),
        'layers.2.conv': ('backend/temporal1/Conv_0', 'conv'),
        'layers.2.bn': ('backend/temporal1/BatchNorm_0', 'bn'),
        'layers.3.conv': ('backend/temporal2/Conv_0', 'conv'),
        'layers.3.bn': ('backend/temporal2/BatchNorm_0', 'bn'),
        'layers.4.conv': ('backend/temporal3/Conv_0', 'conv'),
        'layers.4.bn': ('backend/temporal3/BatchNorm_0', 'bn'),
        'layer{i}.conv': ('backend/conv{i}', 'conv'),  # Conv_1d(k7, pool 1)
        'layer{i}.bn': ('backend/bn{i}', 'bn'),
        **_DENSE_HEAD,
    },
    'crnn': {
        **_MEL, **_CONV_LAYERS,
        # layer5 = nn.GRU(128, 32, 2, batch_first=True); gates (r, z, n) in both.
        'layer5.weight_ih_l{k}': ('backend/gru{k1}/kernel_ih', 'T'),
        'layer5.weight_hh_l{k}': ('backend/gru{k1}/kernel_hh', 'T'),
        'layer5.bias_ih_l{k}': ('backend/gru{k1}/bias_ih', 'param'),
        'layer5.bias_hh_l{k}': ('backend/gru{k1}/bias_hh', 'param'),
        'dense': ('backend/dense', 'linear'),
    },
    'sample': {**_CONV_LAYERS, 'dense': ('backend/dense', 'linear')},
    'sample_se': {**_RESSE_LAYERS, **_DENSE_HEAD},
    'attention': {**_MEL, **_RES_LAYERS, **_ENCODER,
                  'pooler.dense': ('backend/pooler', 'linear'),
                  'dense': ('backend/dense', 'linear')},
}

REFERENCE_CLASSES = {'hcnn': 'HarmonicCNN', 'hcnn_events': 'HarmonicCNN (ddhf ResNet_dcase)',
                     'hcnn_keywords': 'HarmonicCNN (ddhf ResNet_keyword)',
                     'short_chunk': 'ShortChunkCNN', 'short_chunk_res': 'ShortChunkCNN_Res',
                     'fcn': 'FCN', 'musicnn': 'Musicnn', 'crnn': 'CRNN', 'sample': 'SampleCNN',
                     'sample_se': 'SampleCNNSE', 'attention': 'CNNSA'}
SUPPORTED_MODELS = tuple(MODEL_TABLES)
HCNN_MODELS = ('hcnn', 'hcnn_events', 'hcnn_keywords')
# The reference's mel bins per model, where a checkpoint holds no (non-empty) filterbank.
REFERENCE_N_MELS = {'short_chunk': 128, 'short_chunk_res': 128, 'attention': 128, 'fcn': 96,
                    'musicnn': 96, 'crnn': 96}
MEL_MODELS = tuple(REFERENCE_N_MELS)
# Known buffers without trained weights, per family: key → what it is (checked in the converter).
BUFFERS = {'hcnn': {'hstft.spec.window': 'window'},
           'mel': {'spec.spectrogram.window': 'window', 'spec.mel_scale.fb': 'mel_fb'}}
# ddhf's class count per dataset head → our variant.
DDHF_VARIANTS = {50: 'hcnn', 17: 'hcnn_events', 35: 'hcnn_keywords'}


def buffers_of(name: str) -> Dict[str, str]:
  if name in HCNN_MODELS:
    return BUFFERS['hcnn']
  return BUFFERS['mel'] if name in MEL_MODELS else {}


class Layout(NamedTuple):
  """A repository's key naming: `to_sota` renames its keys to sota's, `original` renames back."""
  name: str
  description: str
  to_sota: Callable[[str], str]
  original: Callable[[str], str]


def _identity(key: str) -> str:
  return key


# ddhf ResNet_* → sota HarmonicCNN: (ddhf regex, sota replacement), and back.
_DDHF_TO_SOTA = ((r'^conv_2d\.res(\d+)\.', r'layer\1.'), (r'^conv_2d\.fc_1\.', 'dense1.'),
                 (r'^conv_2d\.fc_2\.', 'dense2.'), (r'^conv_2d\.bn\.', 'bn.'))
_SOTA_TO_DDHF = ((r'^layer(\d+)\.', r'conv_2d.res\1.'), (r'^dense1\.', 'conv_2d.fc_1.'),
                 (r'^dense2\.', 'conv_2d.fc_2.'), (r'^bn\.', 'conv_2d.bn.'))


def _rename(rules, key: str) -> str:
  for pattern, repl in rules:
    new, n = re.subn(pattern, repl, key)
    if n:
      return new
  return key


SOTA = Layout('sota', 'sota-music-tagging-models (HarmonicCNN: hstft.*, hstft_bn, layer1..7, '
              'dense1, bn, dense2; the zoo: spec.*, spec_bn, layer{i}, layers.{k}, '
              'encoder.layer.{k}, dense)', _identity, _identity)
DDHF = Layout('ddhf', 'data-driven-harmonic-filters (Model: hstft.*, hstft_bn, conv_2d.res1..7, '
              'conv_2d.fc_1, conv_2d.bn, conv_2d.fc_2)',
              lambda k: _rename(_DDHF_TO_SOTA, k), lambda k: _rename(_SOTA_TO_DDHF, k))
LAYOUTS = (SOTA, DDHF)


def detect_layout(keys) -> Layout:
  """ddhf when its `conv_2d.res*` / `conv_2d.fc_*` back-end is there, else sota."""
  if any(k.startswith(('conv_2d.res', 'conv_2d.fc_')) for k in keys):
    return DDHF
  return SOTA


# Wrappers some solvers write around the state_dict (ddhf's Solver.save: {'model': sd}).
_WRAPPERS = ('state_dict', 'model')


def tried() -> str:
  """The layouts and models this importer knows, for a 'nothing matched' message."""
  return '; '.join(layout.description for layout in LAYOUTS)


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor (without importing torch) or array-like → float32 numpy."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value, dtype=np.float32)


def unwrap(obj: Any) -> Any:
  """`{'model': sd}` / `{'state_dict': sd}` (at any depth) → sd; anything else as it is."""
  while isinstance(obj, Mapping):
    inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      return obj
    obj = inner
  return obj


def prepare(state_dict: Any) -> Tuple[Dict[str, Any], Layout]:
  """Unwrapped, without DataParallel's `module.` prefix, renamed to sota's keys; and its layout."""
  sd = unwrap(state_dict)
  if not isinstance(sd, Mapping):
    raise ValueError(f'holds a {type(sd).__name__}, not a state_dict (a mapping of tensors)')
  not_tensors = sorted(str(k) for k, v in sd.items()
                       if not (hasattr(v, 'shape') and hasattr(v, 'dtype')))
  if not_tensors:
    raise ValueError(f'not a state_dict: {not_tensors[:5]} hold no tensor (wrappers unwrapped: '
                     f'{", ".join(repr(w) for w in _WRAPPERS)})')
  keys = list(sd)
  if keys and all(str(k).startswith('module.') for k in keys):
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  layout = detect_layout(sd)
  return {layout.to_sota(k): v for k, v in sd.items()}, layout


def name_from_keys(sd: Mapping[str, Any], layout: Layout) -> str:
  keys = set(sd)
  if 'hstft.bw_Q' in keys or 'hstft_bn.weight' in keys:
    if layout is DDHF and 'dense2.weight' in keys:  # the class count names the head
      return DDHF_VARIANTS.get(int(to_numpy(sd['dense2.weight']).shape[0]), 'hcnn')
    return 'hcnn'
  if any(k.startswith('encoder.layer.') for k in keys):
    return 'attention'
  if 'layers.0.conv.weight' in keys:
    return 'musicnn'
  if any(re.match(r'layer\d+\.weight_ih_l0$', k) for k in keys):
    return 'crnn'
  for key, residual in (('layer1.conv.weight', False), ('layer1.conv_1.weight', True)):
    if key in keys:
      if to_numpy(sd[key]).ndim == 3:  # Conv1d on the raw waveform
        return 'sample_se' if residual else 'sample'
      if residual:
        return 'short_chunk_res'
      return 'short_chunk' if 'dense1.weight' in keys else 'fcn'
  raise ValueError(f'no known layout matched (keys seen: {sorted(keys)[:8]}...); tried: '
                   f'{tried()}. If it is one of ours, pass the model name '
                   f'({", ".join(SUPPORTED_MODELS)})')


def infer_model_name(state_dict: Mapping[str, Any]) -> str:
  """Which of SUPPORTED_MODELS a reference state_dict is, from its key names and kernel ranks."""
  sd, layout = prepare(state_dict)
  return name_from_keys(sd, layout)
