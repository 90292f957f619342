"""A reference state_dict (tensors by name) → our variables, checked key by key and shape by shape.

Everything the tensors tell is read off their shapes: widths per layer (so a smaller or deeper
stack of the same blocks converts too), the class count (CRNN's hard-coded 50 included), Musicnn's
bank and back-end widths, the GRU's size and depth, the encoder's depth, the HCNN's FFT size (from
its saved window). What they cannot tell comes from the reference's defaults, overridable with
`model_kwargs`:
- FCN and CRNN pools (the reference's when the layer count matches; otherwise pass `pools`);
- CNNSA's strides (the reference's seven) and its 8 attention heads (`num_heads`): a wrong head
  count still loads (the shapes do not depend on it) but computes something else;
- CNNSA's [CLS] is not in the state_dict (a numpy seed-0 vector): the import builds `cls='fixed'`,
  the reference's; with `cls='trainable'` the parameter starts at that vector;
- the mel bins: from `spec.mel_scale.fb` when the file holds a non-empty one, else the reference's
  (96, or 128 for the short-chunk and attention models);
- Musicnn's timbral heights: ours are int(0.7·bins) and int(0.4·bins), the reference's are
  int(0.7·96) and int(0.4·96) whatever its bins, so only 96-bin Musicnn checkpoints load.

Buffers without trained weights (`layouts.BUFFERS`) are checked against what our front-end
computes when present and non-empty (torchaudio 0.3.0 fills the mel filterbank lazily, so an
early checkpoint holds an empty one): the periodic Hann window, the HTK mel filterbank (0-8 kHz,
no norm). `num_batches_tracked` of a known BatchNorm is dropped (momentum BN does not use it).
HCNN's fundamentals and FFT bins are not in its state_dict: our front-end recomputes the same grid.
The reference models end in a sigmoid; ours return logits.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from hcnn_jax.tools import import_torch_layouts as layouts
from hcnn_jax.tools.import_torch_layouts import (HCNN_MODELS, MEL_MODELS, MODEL_TABLES,
                                                 REFERENCE_CLASSES, REFERENCE_N_MELS,
                                                 SUPPORTED_MODELS, name_from_keys, prepare,
                                                 to_numpy)

_SAMPLE_RATE, _N_FFT = 16000, 512  # every reference front-end


class Converted(NamedTuple):
  """A converted state_dict: `get_model(name, num_classes, **kwargs).apply(variables, audio)`."""
  name: str
  num_classes: int
  kwargs: Dict[str, Any]
  variables: Dict[str, Any]
  layout: str = 'sota'  # the file's key naming: 'sota' or 'ddhf' (`layouts.LAYOUTS`)


def infer_hcnn_hparams(state_dict: Mapping[str, Any]) -> Dict[str, int]:
  """num_classes, n_harmonic and width read off the shapes of a HarmonicCNN state_dict."""
  sd, layout = prepare(state_dict)
  missing = [layout.original(k) for k in ('layer1.conv.weight', 'dense2.weight') if k not in sd]
  if missing:
    raise ValueError(f'not a HarmonicCNN state_dict: it lacks {missing} (keys seen: '
                     f'{sorted(map(layout.original, sd))[:8]}...)')
  conv, dense = to_numpy(sd['layer1.conv.weight']), to_numpy(sd['dense2.weight'])
  if conv.ndim != 4 or dense.ndim != 2:
    raise ValueError(f'{layout.original("layer1.conv.weight")} {conv.shape} / '
                     f'{layout.original("dense2.weight")} {dense.shape} do not have the shapes of '
                     'a HarmonicCNN (a 4-d conv kernel and a 2-d linear weight)')
  return {'num_classes': int(dense.shape[0]), 'n_harmonic': int(conv.shape[1]),
          'width': int(conv.shape[0])}


def _shape(sd: Mapping[str, Any], key: str, rank: Optional[int] = None) -> Tuple[int, ...]:
  if key not in sd:
    raise ValueError(f'the state_dict lacks {key}')
  shape = tuple(to_numpy(sd[key]).shape)
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
  if fb is not None and to_numpy(fb).ndim == 2 and to_numpy(fb).size:
    return {'n_mels': int(to_numpy(fb).shape[1])}
  return {'n_mels': REFERENCE_N_MELS[name]}


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
  if name in HCNN_MODELS:
    out: Dict[str, Any] = infer_hcnn_hparams(sd)
    # The saved window's length is the FFT size (ddhf's eval.py defaults to 513).
    window = to_numpy(sd.get('hstft.spec.window', np.zeros(0)))
    if window.ndim == 1 and window.size not in (0, _N_FFT):
      out['n_fft'] = int(window.size)
    return out
  out = _mel_bins(name, sd) if name in MEL_MODELS else {}
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


def _expand(table: Mapping[str, tuple], sd: Mapping[str, Any], template: Mapping[str, Any]
            ) -> Dict[str, Tuple[str, tuple, layouts.Transform]]:
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
      for suffix, (collection, leaf, transform) in layouts.KINDS[kind].items():
        key = f'{prefix}.{suffix}' if suffix else prefix
        dest = ours + (leaf,) if leaf else ours
        if optional and _get(template.get(collection, {}), dest) is None:
          continue
        out[key] = (collection, dest, transform)
  return out


def _check_buffers(sd: Mapping[str, Any], name: str, frontend, problems: List[str],
                   show: Callable[[str], str]) -> None:
  """The saved window and mel filterbank, when there and non-empty, must be what we compute."""
  from hcnn_jax.frontends.mel import mel_filterbank  # pylint: disable=import-outside-toplevel
  from hcnn_jax.frontends.stft import hann_window  # pylint: disable=import-outside-toplevel
  n_fft = int(frontend.n_fft)
  for key, what in layouts.buffers_of(name).items():
    value = to_numpy(sd[key]) if key in sd else np.zeros(0)
    if not value.size:
      continue
    if what == 'window':
      if value.shape != (n_fft,) or np.max(np.abs(value - hann_window(n_fft))) > 1e-5:
        problems.append(f'{show(key)} (shape {value.shape}) is not the periodic Hann window of '
                        f'{n_fft} samples our front-end uses')
      continue
    ours = mel_filterbank(_SAMPLE_RATE, n_fft, int(frontend.n_mels))
    if value.shape != ours.shape:
      problems.append(f'{show(key)} has shape {value.shape}; our mel front-end is n_fft {n_fft} '
                      f'({ours.shape[0]} bins) with {frontend.n_mels} mels, {ours.shape}')
    elif np.max(np.abs(value - ours)) > 1e-4:
      problems.append(f'{show(key)} differs from the HTK mel filterbank (0-8 kHz at 16 kHz, no '
                      f'norm) our front-end computes by up to {np.max(np.abs(value - ours)):.3g}')


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


def _describe(num_classes: int, kwargs: Mapping[str, Any]) -> str:
  return ', '.join([f'num_classes={num_classes}'] + [f'{k}={v}' for k, v in kwargs.items()])


def _convert(sd: Dict[str, Any], name: str, num_classes: int, kwargs: Mapping[str, Any],
             show: Callable[[str], str] = str) -> Dict[str, Any]:
  """The variables of `get_model(name, num_classes, **kwargs)` from a sota-named state_dict.

  `show` names a key as the file does (the layout's original names) in the messages.
  """
  reference = REFERENCE_CLASSES[name]
  try:
    model, template = _template(name, num_classes, kwargs)
  except ValueError as err:
    raise ValueError(f'cannot build our {name} for the {reference} state_dict with '
                     f'{_describe(num_classes, kwargs)}: {err}') from None
  mapping = _expand(MODEL_TABLES[name], sd, template)
  problems: List[str] = []
  buffers = layouts.buffers_of(name)
  if buffers:
    _check_buffers(sd, name, model.frontend, problems, show)
  bn_counters = {k for k in sd if k.endswith('.num_batches_tracked')
                 and k[:-len('num_batches_tracked')] + 'running_mean' in mapping}
  for key in sorted(bn_counters):
    count = to_numpy(sd[key])
    if count.size != 1 or not np.isfinite(count).all() or float(count.reshape(-1)[0]) < 0:
      problems.append(f'{show(key)} is {count.reshape(-1)[:3]}, not a count of batches')
  unknown = sorted(show(k) for k in sd if k not in mapping and k not in buffers
                   and k not in bn_counters)
  if unknown:
    problems.append(f'unexpected key(s) {unknown}: not a {reference} state_dict (or a variant '
                    'this importer does not know)')
  missing = sorted(show(k) for k in mapping if k not in sd)
  if missing:
    hint = (" (a learn_bw='fix' model has no hstft.bw_Q; only 'only_Q' checkpoints are supported)"
            if missing == ['hstft.bw_Q'] else '')
    problems.append(f'missing key(s) {missing}{hint}')
  variables: Dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for key, (collection, path, transform) in mapping.items():
    if key not in sd:
      continue
    original = to_numpy(sd[key])
    expected = _get(template.get(collection, {}), path)
    if expected is None:
      problems.append(f'{show(key)}: no place {collection}/{"/".join(path)} in our model')
      continue
    try:
      value = transform(original, kwargs)
    except ValueError:  # a reshape into heads that does not divide
      value = original
    if tuple(value.shape) != tuple(expected.shape):
      problems.append(f'{show(key)}: shape {tuple(original.shape)} converts to {value.shape}, '
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


def convert_hcnn_state_dict(state_dict: Mapping[str, Any], num_classes: int = 50,
                            n_harmonic: int = 6, width: int = 128) -> Dict[str, Any]:
  """A HarmonicCNN `state_dict` (sota or ddhf layout) → our `{'params', 'batch_stats'}` for
  `get_model('hcnn', num_classes, n_harmonic=n_harmonic, width=width)`.

  Every key must be known and every expected key present, with the expected shape; all problems
  are reported together in one ValueError. Arrays come back as float32 numpy.
  """
  sd, layout = prepare(state_dict)
  return _convert(sd, 'hcnn', num_classes, {'n_harmonic': n_harmonic, 'width': width},
                  layout.original)


def _tuples(value):
  """JSON lists → tuples, at every depth (the builders' pools and layer specs are tuples)."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def convert_state_dict(state_dict: Mapping[str, Any], model: Optional[str] = None,
                       **model_kwargs) -> Converted:
  """A reference state_dict (any of SUPPORTED_MODELS, sota or ddhf layout, wrapped or not) →
  `Converted(name, num_classes, kwargs, variables)`, so that
  `get_model(name, num_classes, **kwargs).apply(variables, audio)` computes the reference's
  outputs (as logits).

  model: our name for it (None: inferred from the keys). model_kwargs: builder options the
  state_dict cannot tell (`pools`, `num_heads`, `cnn_layers`, `n_mels`, ...); they override the
  inferred ones. All problems are reported together in one ValueError.
  """
  sd, layout = prepare(state_dict)
  name = model or name_from_keys(sd, layout)
  if name not in MODEL_TABLES:
    raise ValueError(f'unknown model {name!r}; this importer converts '
                     f'{", ".join(SUPPORTED_MODELS)}')
  given = {k: _tuples(v) for k, v in model_kwargs.items()}
  try:
    inferred = _infer(name, sd, given)
  except ValueError as err:
    raise ValueError(f'cannot read a {REFERENCE_CLASSES[name]} ({name}) from this state_dict '
                     f'({layout.name} layout): {err}') from None
  num_classes = int(inferred.pop('num_classes'))
  kwargs = {**inferred, **given}
  return Converted(name, num_classes, kwargs,
                   _convert(sd, name, num_classes, kwargs, layout.original), layout.name)
