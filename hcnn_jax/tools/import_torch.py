"""Import the reference's PyTorch weights (sota `models/<dataset>/<model>/best_model.pth`).

    python -m hcnn_jax.tools.import_torch best_model.pth --out DIR [--model NAME]
        [--tags mtat|FILE] [--n_mels N] [--model_kwargs JSON]

writes an orbax checkpoint in DIR (its `best/0`) that `checkpoint.load_for_inference(DIR)` loads,
so `hcnn-tag --workdir DIR song.mp3` tags with the published weights. The .pth is read with
`torch.load(..., weights_only=True)`: tensors only, no pickled code is ever executed. `--model` is
inferred from the keys when left out.

Models (ours ← sota `training/model.py` class): `hcnn` ← HarmonicCNN, `short_chunk` ←
ShortChunkCNN, `short_chunk_res` ← ShortChunkCNN_Res, `fcn` ← FCN, `musicnn` ← Musicnn, `crnn` ←
CRNN, `sample` ← SampleCNN, `sample_se` ← SampleCNNSE, `attention` ← CNNSA. The key tables are
data, one dict per model (`MODEL_TABLES`): torch module prefix → (our module path, kind). The kind
says which tensors the module has and how each is laid out here:

  conv      weight (out, in, *k) → kernel (*k, in, out) [OIHW → HWIO, OIK → KIO]; bias
  linear    weight (out, in) → kernel (in, out); bias
  bn        weight/bias → params scale/bias; running_mean/var → batch_stats mean/var
  ln        weight/bias → scale/bias (BERT's LayerNorm)
  heads_in  BERT query/key/value Linear → flax (hidden, heads, head_dim) kernel, (heads, head_dim)
  heads_out BERT attention output Linear → flax (heads, head_dim, hidden) kernel
  T / param / scalar   one tensor: transposed / as is / as a 0-d array

`{i}` in a prefix is a layer number (the same in both), `{k}` a torch ModuleList index from 0 and
`{k1}` our 1-based name for it; the layers present in the state_dict say how many there are. A
third field 'optional' marks a module that exists only where our model has it (Res_2d/ResSE_1d's
shortcut conv_3/bn_3, built whenever the stride or the width changes — the same rule both sides).

Everything else is read off the tensor shapes: widths per layer (so a smaller or deeper stack of
the same blocks converts too), the class count (CRNN's hard-coded 50 included), Musicnn's bank and
back-end widths, the GRU's size and depth, the encoder's depth. What the state_dict cannot tell
comes from the reference's defaults, overridable with `model_kwargs`:
- FCN and CRNN pools (the reference's when the layer count matches; otherwise pass `pools`);
- CNNSA's strides (the reference's seven) and its 8 attention heads (`num_heads`): a wrong head
  count still loads (the shapes do not depend on it) but computes something else;
- CNNSA's [CLS] is not in the state_dict (a numpy seed-0 vector): the import builds
  `cls='fixed'`, the reference's; with `cls='trainable'` the parameter starts at that vector;
- the mel bins: from `spec.mel_scale.fb` when the checkpoint holds a non-empty one, else the
  reference's (96, or 128 for the short-chunk and attention models);
- Musicnn's timbral heights: ours are int(0.7·bins) and int(0.4·bins), the reference's are
  int(0.7·96) and int(0.4·96) whatever its bins, so only 96-bin Musicnn checkpoints load.

Key names are those of sota's `training/model.py`, `modules.py` and `attention_modules.py`
(BERT: `encoder.layer.{k}.attention.self.query`, `.attention.output.dense/LayerNorm`,
`.intermediate.dense`, `.output.dense/LayerNorm`, `pooler.dense`). The mel front-end's
torchaudio 0.3.0 transforms (`spec.*`, `to_db.*`) hold no trained weight, so their keys are never
"unexpected". torchaudio 0.3.0 saves its filterbank `spec.mel_scale.fb` (257 × n_mels; empty
before the first forward, sota issue #1); whether it also saves `spec.spectrogram.window` is not
certain (assumed possible). When present and non-empty, both are checked against the HTK mel
filterbank (0–8 kHz, no norm) and periodic Hann window our front-end computes, else ignored. `num_batches_tracked` is dropped (momentum BN does not
use it). HCNN's fundamentals and FFT bins are not in its state_dict (reference 10.5): our
front-end recomputes the same grid. The reference models end in a sigmoid; ours return logits.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

# (layer index, block kind) of the seven HCNN layers: 'conv' = Conv_2d, 'res' = Res_2d_mp.
_LAYERS = ((1, 'conv'), (2, 'res'), (3, 'res'), (4, 'res'), (5, 'conv'), (6, 'res'), (7, 'res'))
# Dataset names whose tag order `--tags NAME` takes from the dataset builders of this repository.
_TAG_SETS = {'mtat': 'datasets.mtat.mtat', 'msd': 'datasets.msd.msd',
             'mtg_jamendo': 'datasets.mtg_jamendo.mtg_jamendo'}
# The sample rate and FFT size of every reference front-end.
_SAMPLE_RATE, _N_FFT = 16000, 512

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
_KINDS: Dict[str, Dict[str, Tuple[str, str, Transform]]] = {
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
  for index, kind in _LAYERS:
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

REFERENCE_CLASSES = {'hcnn': 'HarmonicCNN', 'short_chunk': 'ShortChunkCNN',
                     'short_chunk_res': 'ShortChunkCNN_Res', 'fcn': 'FCN', 'musicnn': 'Musicnn',
                     'crnn': 'CRNN', 'sample': 'SampleCNN', 'sample_se': 'SampleCNNSE',
                     'attention': 'CNNSA'}
SUPPORTED_MODELS = tuple(MODEL_TABLES)
# The reference's mel bins per model, where a checkpoint holds no (non-empty) filterbank.
_REFERENCE_N_MELS = {'short_chunk': 128, 'short_chunk_res': 128, 'attention': 128, 'fcn': 96,
                     'musicnn': 96, 'crnn': 96}
_MEL_MODELS = tuple(_REFERENCE_N_MELS)


class Converted(NamedTuple):
  """A converted state_dict: `get_model(name, num_classes, **kwargs).apply(variables, audio)`."""
  name: str
  num_classes: int
  kwargs: Dict[str, Any]
  variables: Dict[str, Any]


def _numpy(value: Any) -> np.ndarray:
  """A torch tensor (without importing torch) or array-like → float32 numpy."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value, dtype=np.float32)


def _strip_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """Drops the `module.` prefix that torch.nn.DataParallel adds to every key."""
  keys = list(state_dict)
  if keys and all(k.startswith('module.') for k in keys):
    return {k[len('module.'):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def infer_hcnn_hparams(state_dict: Mapping[str, Any]) -> Dict[str, int]:
  """num_classes, n_harmonic and width read off the shapes of a HarmonicCNN state_dict."""
  sd = _strip_prefix(state_dict)
  missing = [k for k in ('layer1.conv.weight', 'dense2.weight') if k not in sd]
  if missing:
    raise ValueError(f'not a HarmonicCNN state_dict: it lacks {missing} (keys seen: '
                     f'{sorted(sd)[:8]}...)')
  conv = _numpy(sd['layer1.conv.weight'])
  dense = _numpy(sd['dense2.weight'])
  if conv.ndim != 4 or dense.ndim != 2:
    raise ValueError(f'layer1.conv.weight {conv.shape} / dense2.weight {dense.shape} do not have '
                     'the shapes of a HarmonicCNN (a 4-d conv kernel and a 2-d linear weight)')
  return {'num_classes': int(dense.shape[0]), 'n_harmonic': int(conv.shape[1]),
          'width': int(conv.shape[0])}


def infer_model_name(state_dict: Mapping[str, Any]) -> str:
  """Which of SUPPORTED_MODELS a sota state_dict is, from its key names and kernel ranks."""
  sd = _strip_prefix(state_dict)
  keys = set(sd)
  if 'hstft.bw_Q' in keys or 'hstft_bn.weight' in keys:
    return 'hcnn'
  if any(k.startswith('encoder.layer.') for k in keys):
    return 'attention'
  if 'layers.0.conv.weight' in keys:
    return 'musicnn'
  if any(re.match(r'layer\d+\.weight_ih_l0$', k) for k in keys):
    return 'crnn'
  for key, residual in (('layer1.conv.weight', False), ('layer1.conv_1.weight', True)):
    if key in keys:
      if _numpy(sd[key]).ndim == 3:  # Conv1d on the raw waveform
        return 'sample_se' if residual else 'sample'
      if residual:
        return 'short_chunk_res'
      return 'short_chunk' if 'dense1.weight' in keys else 'fcn'
  raise ValueError(f'cannot tell which sota model this state_dict is (keys seen: '
                   f'{sorted(keys)[:8]}...); pass the model name ({", ".join(SUPPORTED_MODELS)})')


def _shape(sd: Mapping[str, Any], key: str, rank: Optional[int] = None) -> Tuple[int, ...]:
  if key not in sd:
    raise ValueError(f'the state_dict lacks {key}')
  shape = tuple(_numpy(sd[key]).shape)
  if rank is not None and len(shape) != rank:
    raise ValueError(f'{key} has shape {shape}, not a {rank}-d tensor')
  return shape


def _layer_widths(sd: Mapping[str, Any], pattern: str) -> Tuple[int, ...]:
  """Output widths of layer1, layer2, ... while `pattern.format(i=…)` is in the state_dict."""
  widths, i = [], 1
  while pattern.format(i=i) in sd:
    widths.append(_shape(sd, pattern.format(i=i))[0])
    i += 1
  if not widths:
    raise ValueError(f'the state_dict lacks {pattern.format(i=1)}')
  return tuple(widths)


def _mel_bins(name: str, sd: Mapping[str, Any]) -> Dict[str, int]:
  """{'n_mels': bins} of a saved non-empty torchaudio filterbank, else the reference's."""
  fb = sd.get('spec.mel_scale.fb')
  if fb is not None and _numpy(fb).ndim == 2 and _numpy(fb).size:
    return {'n_mels': int(_numpy(fb).shape[1])}
  return {'n_mels': _REFERENCE_N_MELS[name]}


def _pools_for(name: str, depth: int, reference: tuple, given: Mapping[str, Any]) -> dict:
  if 'pools' in given:
    return {}
  if depth != len(reference):
    raise ValueError(f'{name}: {depth} conv layers, but the reference has {len(reference)}; the '
                     "pools are not in the state_dict: pass model_kwargs {'pools': [...]} with "
                     'one (frequency, time) pool per layer')
  return {'pools': reference}


def _infer(name: str, sd: Mapping[str, Any], given: Mapping[str, Any]) -> Dict[str, Any]:
  """num_classes and builder kwargs of model `name` from the state_dict's shapes."""
  if name == 'hcnn':
    return infer_hcnn_hparams(sd)
  out: Dict[str, Any] = _mel_bins(name, sd) if name in _MEL_MODELS else {}
  if name in ('short_chunk', 'short_chunk_res'):
    conv = 'layer{i}.conv_1.weight' if name == 'short_chunk_res' else 'layer{i}.conv.weight'
    out.update(num_classes=_shape(sd, 'dense2.weight', 2)[0], channels=_layer_widths(sd, conv))
  elif name in ('fcn', 'crnn'):
    from hcnn_jax.models import crnn, fcn  # pylint: disable=import-outside-toplevel
    channels = _layer_widths(sd, 'layer{i}.conv.weight')
    reference = fcn.FCN_POOLS if name == 'fcn' else crnn.CRNN_POOLS
    out.update(num_classes=_shape(sd, 'dense.weight', 2)[0], channels=channels,
               **_pools_for(name, len(channels), reference, given))
    if name == 'crnn':
      layers = 0
      while f'layer5.weight_ih_l{layers}' in sd:
        layers += 1
      out.update(gru_hidden=_shape(sd, 'layer5.weight_hh_l0', 2)[1], gru_layers=layers)
      if len(channels) != 4:
        raise ValueError(f'crnn: the GRU is read from layer5, after 4 conv layers; this '
                         f'state_dict has {len(channels)} conv layers')
  elif name == 'musicnn':
    backend, dense = _shape(sd, 'layer1.conv.weight', 3)[0], _shape(sd, 'dense1.weight', 2)[0]
    out.update(num_classes=_shape(sd, 'dense2.weight', 2)[0],
               timbral_channels=_shape(sd, 'layers.0.conv.weight', 4)[0],
               temporal_channels=_shape(sd, 'layers.2.conv.weight', 3)[0],
               backend_channels=backend, dense=dense,
               heights=(_shape(sd, 'layers.0.conv.weight', 4)[2],
                        _shape(sd, 'layers.1.conv.weight', 4)[2]),
               variant='msd' if (backend, dense) == (512, 500) else 'mtat')
  elif name in ('sample', 'sample_se'):
    se = name == 'sample_se'
    out.update(num_classes=_shape(sd, 'dense2.weight' if se else 'dense.weight', 2)[0],
               channels=_layer_widths(sd, 'layer{i}.conv_1.weight' if se else
                                      'layer{i}.conv.weight'))
  elif name == 'attention':
    from hcnn_jax.models import attention  # pylint: disable=import-outside-toplevel
    widths = _layer_widths(sd, 'layer{i}.conv_1.weight')
    width = widths[0]
    layers = 0
    while f'encoder.layer.{layers}.attention.self.query.weight' in sd:
      layers += 1
    out.update(num_classes=_shape(sd, 'dense.weight', 2)[0], width=width, num_layers=layers,
               cls='fixed')
    if 'cnn_layers' not in given:
      if len(widths) != len(attention.CNN_LAYERS) or any(w % width for w in widths):
        raise ValueError(f'attention: residual widths {widths} are not the reference\'s seven '
                         'multiples of layer1\'s; the strides are not in the state_dict: pass '
                         "model_kwargs {'cnn_layers': [[multiple, [f_stride, t_stride]], ...]}")
      out['cnn_layers'] = tuple((w // width, strides)
                                for w, (_, strides) in zip(widths, attention.CNN_LAYERS))
  else:
    raise ValueError(f'unknown model {name!r}; known: {", ".join(SUPPORTED_MODELS)}')
  return out


def _indices(table: Mapping[str, tuple], sd: Mapping[str, Any], var: str) -> List[int]:
  """The values of placeholder `var` ('i' from 1, 'k' from 0) found in the keys, as a range."""
  found = set()
  for pattern in table:
    if '{' + var + '}' not in pattern:
      continue
    regex = re.escape(pattern).replace(re.escape('{' + var + '}'), r'(\d+)') + r'(\.|$)'
    for key in sd:
      match = re.match(regex, key)
      if match:
        found.add(int(match.group(1)))
  start = 1 if var == 'i' else 0
  return list(range(start, max(found) + 1)) if found else []


def _get(tree, path):
  for p in path:
    if not isinstance(tree, Mapping) or p not in tree:
      return None
    tree = tree[p]
  return tree


def _set(tree: Dict[str, Any], path: Sequence[str], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _leaves(tree, prefix=()) -> List[tuple]:
  if isinstance(tree, Mapping):
    return [leaf for k, v in tree.items() for leaf in _leaves(v, prefix + (k,))]
  return [prefix]


def _expand(table: Mapping[str, tuple], sd: Mapping[str, Any],
            template: Mapping[str, Any]) -> Dict[str, Tuple[str, tuple, Transform]]:
  """torch key → (collection, our path, transform), the table unrolled over the layers found."""
  indices = {var: _indices(table, sd, var) for var in ('i', 'k')}
  out = {}
  for pattern, entry in table.items():
    path, kind = entry[0], entry[1]
    optional = len(entry) > 2 and entry[2] == 'optional'
    var = next((v for v in ('i', 'k') if '{' + v + '}' in pattern), None)
    for n in (indices[var] if var else [None]):
      fmt = {} if var is None else {var: n, 'k1': n + 1 if var == 'k' else n}
      prefix, ours = pattern.format(**fmt), tuple(path.format(**fmt).split('/'))
      for suffix, (collection, leaf, transform) in _KINDS[kind].items():
        key = f'{prefix}.{suffix}' if suffix else prefix
        dest = ours + (leaf,) if leaf else ours
        if optional and _get(template.get(collection, {}), dest) is None:
          continue
        out[key] = (collection, dest, transform)
  return out


def _check_frontend_buffers(sd: Mapping[str, Any], n_mels: int, problems: List[str]) -> None:
  """torchaudio 0.3.0's saved filterbank and window, when there, must be what we compute."""
  from hcnn_jax.frontends.mel import mel_filterbank  # pylint: disable=import-outside-toplevel
  from hcnn_jax.frontends.stft import hann_window  # pylint: disable=import-outside-toplevel
  fb = sd.get('spec.mel_scale.fb')
  if fb is not None and _numpy(fb).size:
    fb = _numpy(fb)
    ours = mel_filterbank(_SAMPLE_RATE, _N_FFT, n_mels)
    if fb.shape != ours.shape:
      problems.append(f'spec.mel_scale.fb has shape {fb.shape}; our mel front-end is n_fft '
                      f'{_N_FFT} ({ours.shape[0]} bins) with {n_mels} mels, {ours.shape}')
    elif np.max(np.abs(fb - ours)) > 1e-4:
      problems.append(f'spec.mel_scale.fb differs from the HTK mel filterbank (0-8 kHz at 16 kHz, '
                      f'no norm) our front-end computes by up to {np.max(np.abs(fb - ours)):.3g}')
  window = sd.get('spec.spectrogram.window')
  if window is not None and _numpy(window).size:
    window = _numpy(window)
    if window.shape != (_N_FFT,) or np.max(np.abs(window - hann_window(_N_FFT))) > 1e-5:
      problems.append(f'spec.spectrogram.window (shape {window.shape}) is not the periodic Hann '
                      f'window of {_N_FFT} samples our front-end uses')


def _template(name: str, num_classes: int, kwargs: Mapping[str, Any]):
  """Our model and the shapes of its variables (no computation), to check the arrays against."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from hcnn_jax.models import get_model, registry  # pylint: disable=import-outside-toplevel
  model = get_model(name, num_classes=num_classes, **kwargs)
  length = registry.default_input_length(name)
  try:
    model.check_input_length(length)
  except ValueError:  # custom pools or depths: any length that fits gives the same shapes
    length = model.min_input_length() or length
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, length))))
  return model, shapes


def _convert(sd: Dict[str, Any], name: str, num_classes: int,
             kwargs: Mapping[str, Any]) -> Dict[str, Any]:
  """The variables of `get_model(name, num_classes, **kwargs)` from a prefix-free state_dict."""
  reference = REFERENCE_CLASSES[name]
  try:
    model, template = _template(name, num_classes, kwargs)
  except ValueError as err:
    raise ValueError(f'cannot build our {name} for the {reference} state_dict with '
                     f'{_describe(num_classes, kwargs)}: {err}') from None
  mapping = _expand(MODEL_TABLES[name], sd, template)
  problems: List[str] = []
  # torchaudio's transforms of the mel models (spec, to_db) have no trained weights.
  front = ('spec.', 'to_db.') if name in _MEL_MODELS else None
  ignored = {k for k in sd
             if k.endswith('num_batches_tracked') or (front and k.startswith(front))}
  if front:
    _check_frontend_buffers(sd, int(model.frontend.n_mels), problems)
  unknown = sorted(k for k in sd if k not in mapping and k not in ignored)
  if unknown:
    problems.append(f'unexpected key(s) {unknown}: not a sota {reference} state_dict (or a '
                    'variant this importer does not know)')
  missing = sorted(k for k in mapping if k not in sd)
  if missing:
    hint = (" (a learn_bw='fix' model has no hstft.bw_Q; only 'only_Q' checkpoints are supported)"
            if missing == ['hstft.bw_Q'] else '')
    problems.append(f'missing key(s) {missing}{hint}')
  variables: Dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for key, (collection, path, transform) in mapping.items():
    if key not in sd:
      continue
    original = _numpy(sd[key])
    expected = _get(template.get(collection, {}), path)
    if expected is None:
      problems.append(f'{key}: no place {collection}/{"/".join(path)} in our model')
      continue
    try:
      value = transform(original, kwargs)
    except ValueError:  # a reshape into heads that does not divide
      value = original
    if tuple(value.shape) != tuple(expected.shape):
      problems.append(f'{key}: shape {tuple(original.shape)} converts to {value.shape}, '
                      f'but {collection}/{"/".join(path)} is {tuple(expected.shape)} for '
                      f'{_describe(num_classes, kwargs)}')
      continue
    _set(variables[collection], path, np.array(value, dtype=np.float32, order='C'))
  cls = _get(template.get('params', {}), ('backend', 'cls'))
  if name == 'attention' and cls is not None:  # trainable [CLS]: the reference's vector
    from hcnn_jax.models.attention import reference_cls  # pylint: disable=import-outside-toplevel
    _set(variables['params'], ('backend', 'cls'), reference_cls(cls.shape[0]))
  if not problems:
    unfilled = [f'{c}/{"/".join(p)}' for c in template for p in _leaves(template[c])
                if _get(variables.get(c, {}), p) is None]
    if unfilled:
      problems.append(f'our model has variables no key fills: {unfilled}')
  if problems:
    raise ValueError(f'cannot convert the {reference} state_dict: ' + '; '.join(problems))
  return variables


def _describe(num_classes: int, kwargs: Mapping[str, Any]) -> str:
  return ', '.join([f'num_classes={num_classes}'] + [f'{k}={v}' for k, v in kwargs.items()])


def convert_hcnn_state_dict(state_dict: Mapping[str, Any], num_classes: int = 50,
                            n_harmonic: int = 6, width: int = 128) -> Dict[str, Any]:
  """sota HarmonicCNN `state_dict` → our `{'params', 'batch_stats'}` for
  `get_model('hcnn', num_classes, n_harmonic=n_harmonic, width=width)`.

  Every key must be known and every expected key present, with the expected shape; all problems
  are reported together in one ValueError. Arrays come back as float32 numpy.
  """
  return _convert(_strip_prefix(state_dict), 'hcnn', num_classes,
                  {'n_harmonic': n_harmonic, 'width': width})


def _tuples(value):
  """JSON lists → tuples, at every depth (the builders' pools and layer specs are tuples)."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def convert_state_dict(state_dict: Mapping[str, Any], model: Optional[str] = None,
                       **model_kwargs) -> Converted:
  """A sota state_dict (any of SUPPORTED_MODELS) → `Converted(name, num_classes, kwargs,
  variables)`, so that `get_model(name, num_classes, **kwargs).apply(variables, audio)` computes
  the reference's outputs (as logits).

  model: our name for it (None: `infer_model_name`). model_kwargs: builder options the state_dict
  cannot tell (`pools`, `num_heads`, `cnn_layers`, `n_mels`, ...); they override the inferred
  ones. All problems are reported together in one ValueError.
  """
  sd = _strip_prefix(state_dict)
  name = model or infer_model_name(sd)
  if name not in MODEL_TABLES:
    raise ValueError(f'unknown model {name!r}; this importer converts '
                     f'{", ".join(SUPPORTED_MODELS)}')
  given = {k: _tuples(v) for k, v in model_kwargs.items()}
  try:
    inferred = _infer(name, sd, given)
  except ValueError as err:
    raise ValueError(f'cannot read a {REFERENCE_CLASSES[name]} ({name}) from this state_dict: '
                     f'{err}') from None
  num_classes = int(inferred.pop('num_classes'))
  kwargs = {**inferred, **given}
  return Converted(name, num_classes, kwargs, _convert(sd, name, num_classes, kwargs))


def _tag_names(tags: Optional[str], num_classes: int) -> List[str]:
  """Class names from `--tags`: a dataset name of this repository, a .npy or a text file."""
  if tags is None:
    print(f'import_torch: no --tags given; naming the {num_classes} outputs class_00... '
          '(pass --tags mtat, msd, mtg_jamendo or a file for the real names)', file=sys.stderr)
    return [f'class_{i:02d}' for i in range(num_classes)]
  if tags in _TAG_SETS:
    import importlib  # pylint: disable=import-outside-toplevel
    try:
      names = list(importlib.import_module(_TAG_SETS[tags]).TAGS)
    except ImportError as err:
      raise ValueError(f'--tags {tags}: the dataset builders are not importable ({err}); run '
                       'from the repository root or pass a tag file') from None
  elif os.path.isfile(tags):
    if tags.endswith('.npy'):
      names = [str(t) for t in np.load(tags, allow_pickle=False).reshape(-1)]
    else:
      with open(tags, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
  else:
    raise ValueError(f'--tags {tags!r} is neither one of {sorted(_TAG_SETS)} nor a file')
  if len(names) != num_classes:
    raise ValueError(f'--tags {tags}: {len(names)} names for a model with {num_classes} outputs')
  return names


def model_config(name: str, kwargs: Mapping[str, Any], dataset: str = 'imported'):
  """The run config saved with an imported checkpoint: model `name` at its training crop."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from hcnn_jax.configs import base  # pylint: disable=import-outside-toplevel
  from hcnn_jax.models import registry  # pylint: disable=import-outside-toplevel
  config = base.get_base_config()
  config.dataset.name = dataset
  config.dataset.data_dir = ''
  config.task = 'tagging'
  config.model.name = name
  config.model.kwargs = ml_collections.ConfigDict(dict(kwargs))
  config.input_length = registry.default_input_length(name)
  return config


def hcnn_config(num_classes: int, n_harmonic: int, width: int, dataset: str = 'imported'):
  """The run config saved with an imported checkpoint: the reference HCNN at 5-s chunks."""
  del num_classes  # the class count travels in the meta's class names
  return model_config('hcnn', {'n_harmonic': n_harmonic, 'width': width}, dataset)


def write_checkpoint(variables: Mapping[str, Any], out_dir: str, class_names: Sequence[str],
                     config, source: str = '') -> str:
  """Writes `variables` as the best checkpoint of a workdir `out_dir`; returns its path."""
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  meta = {'class_names': list(class_names), 'task': 'tagging', 'imported_from': source,
          'bookkeeping': {'epochs_done': 0, 'best_epoch': None, 'best_step': 0}}
  with checkpoint.RunCheckpoints(out_dir, async_save=False) as ckpts:
    ckpts.save_best(0, dict(variables), meta=meta, config=config)
    ckpts.wait()
    return ckpts.best_path()


def load_torch_state_dict(path: str) -> Dict[str, Any]:
  """Tensors of a .pth file, loaded without executing pickled code."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError('reading .pth files needs PyTorch: pip install "hcnn-jax[torch]"') from None
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as err:  # pylint: disable=broad-except
    # weights_only refuses anything but tensors and plain containers: say so in one line.
    reason = ' '.join(str(err).split())[:300]
    raise ValueError(f'{path}: not a loadable weights-only PyTorch file ({reason})') from None
  if isinstance(obj, Mapping) and 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
    obj = obj['state_dict']
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: holds a {type(obj).__name__}, not a state_dict')
  return dict(obj)


def _model_kwargs_arg(text: Optional[str], n_mels: Optional[int]) -> Dict[str, Any]:
  kwargs: Dict[str, Any] = {}
  if text:
    try:
      kwargs = json.loads(text)
    except json.JSONDecodeError as err:
      raise ValueError(f'--model_kwargs is not JSON ({err}); e.g. \'{{"num_heads": 8}}\'') \
          from None
    if not isinstance(kwargs, dict):
      raise ValueError(f'--model_kwargs must be a JSON object, got {text!r}')
  if n_mels is not None:
    kwargs['n_mels'] = n_mels
  return kwargs


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m hcnn_jax.tools.import_torch',
      description='Convert a sota best_model.pth (HarmonicCNN or a zoo model) into an hcnn-jax '
                  'checkpoint.')
  parser.add_argument('pth', help='the PyTorch state_dict file (best_model.pth)')
  parser.add_argument('--out', required=True, help='workdir to write (its best/ checkpoint)')
  parser.add_argument('--model', default=None, choices=SUPPORTED_MODELS,
                      help='our name of the model (default: inferred from the keys)')
  parser.add_argument('--tags', default=None,
                      help='class names: mtat, msd, mtg_jamendo, a .npy (sota split/*/tags.npy) '
                           'or a text file with one name per line')
  parser.add_argument('--n_mels', type=int, default=None,
                      help="mel bins of the front-end (default: the saved filterbank's, else the "
                           "model's reference value)")
  parser.add_argument('--model_kwargs', default=None,
                      help='JSON object of builder options the weights cannot tell, e.g. '
                           '\'{"pools": [[2, 4], [2, 4], [2, 4], [3, 5], [4, 4]]}\'')
  args = parser.parse_args(argv)
  try:
    sd = load_torch_state_dict(args.pth)
    converted = convert_state_dict(sd, args.model, **_model_kwargs_arg(args.model_kwargs,
                                                                       args.n_mels))
    names = _tag_names(args.tags, converted.num_classes)
    config = model_config(converted.name, converted.kwargs,
                          dataset=args.tags if args.tags in _TAG_SETS else 'imported')
    path = write_checkpoint(converted.variables, args.out, names, config,
                            source=os.path.abspath(args.pth))
  except ValueError as err:
    print(f'import_torch: error: {err}', file=sys.stderr)
    return 2
  options = ', '.join(f'{k} {v}' for k, v in converted.kwargs.items())
  print(f'wrote {path} ({converted.name} from {REFERENCE_CLASSES[converted.name]}, '
        f'{converted.num_classes} classes, {options})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
