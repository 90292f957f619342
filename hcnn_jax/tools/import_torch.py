"""Import the reference's PyTorch Harmonic CNN weights (sota `models/*/hcnn/best_model.pth`).

    python -m hcnn_jax.tools.import_torch best_model.pth --out DIR [--tags mtat|FILE]

writes an orbax checkpoint in DIR (its `best/0`) that `checkpoint.load_for_inference(DIR)` loads,
so `hcnn-tag --workdir DIR song.mp3` tags with the published weights. The .pth is read with
`torch.load(..., weights_only=True)`: tensors only, no pickled code is ever executed.

Key mapping (reference section 2; sota names `Conv_2d` blocks `conv`/`bn` and `Res_2d_mp` blocks
`conv_1`/`bn_1`/`conv_2`/`bn_2`):

  hstft.bw_Q                         → params/frontend/bw_Q (a scalar)
  hstft_bn.{weight,bias}             → params/frontend/hstft_bn/{scale,bias}
  hstft_bn.{running_mean,running_var}→ batch_stats/frontend/hstft_bn/{mean,var}
  layer{1,5}.conv.{weight,bias}      → params/backend/layer{k}/Conv_0/{kernel,bias}
  layer{1,5}.bn.*                    → .../layer{k}/BatchNorm_0
  layer{2,3,4,6,7}.conv_{1,2}.*      → .../layer{k}/Conv_{0,1}
  layer{2,3,4,6,7}.bn_{1,2}.*        → .../layer{k}/BatchNorm_{0,1}
  dense{1,2}.{weight,bias}           → params/backend/dense{1,2}/{kernel,bias}
  bn.*                               → params|batch_stats/backend/bn

Conv weights OIHW → HWIO (torch's H is the pitch axis and W time, as in our NHWC), linear
(out, in) → (in, out); `num_batches_tracked` is dropped (momentum BN does not use it). The
fundamentals and FFT bins are not in the state_dict (reference 10.5): our front-end recomputes
the same grid. The reference ends in a sigmoid; our model returns the logits before it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

# (layer index, block kind) of the seven HCNN layers: 'conv' = Conv_2d, 'res' = Res_2d_mp.
_LAYERS = ((1, 'conv'), (2, 'res'), (3, 'res'), (4, 'res'), (5, 'conv'), (6, 'res'), (7, 'res'))
_BN_PARAMS = (('weight', 'scale'), ('bias', 'bias'))
_BN_STATS = (('running_mean', 'mean'), ('running_var', 'var'))
# Dataset names whose tag order `--tags NAME` takes from the dataset builders of this repository.
_TAG_SETS = {'mtat': 'datasets.mtat.mtat', 'msd': 'datasets.msd.msd',
             'mtg_jamendo': 'datasets.mtg_jamendo.mtg_jamendo'}


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


def _mapping() -> Dict[str, tuple]:
  """torch key → (collection, path tuple, transform) for every key a HarmonicCNN has."""
  conv_w = lambda w: np.transpose(w, (2, 3, 1, 0))  # OIHW → HWIO
  same = lambda w: w
  out = {'hstft.bw_Q': ('params', ('frontend', 'bw_Q'), lambda q: q.reshape(()))}

  def bn(prefix: str, path: tuple):
    for t, f in _BN_PARAMS:
      out[f'{prefix}.{t}'] = ('params', path + (f,), same)
    for t, f in _BN_STATS:
      out[f'{prefix}.{t}'] = ('batch_stats', path + (f,), same)

  def conv(prefix: str, path: tuple):
    out[f'{prefix}.weight'] = ('params', path + ('kernel',), conv_w)
    out[f'{prefix}.bias'] = ('params', path + ('bias',), same)

  bn('hstft_bn', ('frontend', 'hstft_bn'))
  for index, kind in _LAYERS:
    layer = ('backend', f'layer{index}')
    if kind == 'conv':
      conv(f'layer{index}.conv', layer + ('Conv_0',))
      bn(f'layer{index}.bn', layer + ('BatchNorm_0',))
    else:
      for j in (1, 2):
        conv(f'layer{index}.conv_{j}', layer + (f'Conv_{j - 1}',))
        bn(f'layer{index}.bn_{j}', layer + (f'BatchNorm_{j - 1}',))
  for name in ('dense1', 'dense2'):
    out[f'{name}.weight'] = ('params', ('backend', name, 'kernel'), lambda w: w.T)
    out[f'{name}.bias'] = ('params', ('backend', name, 'bias'), same)
  bn('bn', ('backend', 'bn'))
  return out


def _template(num_classes: int, n_harmonic: int, width: int):
  """Shapes of our HCNN's variables (no computation), to check the converted arrays against."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from hcnn_jax.models import get_model  # pylint: disable=import-outside-toplevel
  model = get_model('hcnn', num_classes=num_classes, n_harmonic=n_harmonic, width=width)
  # 80,000 samples (5 s) is the length the reference's seven time pools are built for.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 80_000))))
  return model, shapes


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


def convert_hcnn_state_dict(state_dict: Mapping[str, Any], num_classes: int = 50,
                            n_harmonic: int = 6, width: int = 128) -> Dict[str, Any]:
  """sota HarmonicCNN `state_dict` → our `{'params', 'batch_stats'}` for
  `get_model('hcnn', num_classes, n_harmonic=n_harmonic, width=width)`.

  Every key must be known and every expected key present, with the expected shape; all problems
  are reported together in one ValueError. Arrays come back as float32 numpy.
  """
  sd = _strip_prefix(state_dict)
  mapping = _mapping()
  _, template = _template(num_classes, n_harmonic, width)
  problems: List[str] = []
  unknown = sorted(k for k in sd if k not in mapping and not k.endswith('num_batches_tracked'))
  if unknown:
    problems.append(f'unexpected key(s) {unknown}: not a sota HarmonicCNN state_dict (or a '
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
    value = transform(_numpy(sd[key]))
    expected = _get(template[collection], path)
    if expected is None:
      problems.append(f'{key}: no place {collection}/{"/".join(path)} in our model')
      continue
    if tuple(value.shape) != tuple(expected.shape):
      problems.append(f'{key}: shape {tuple(_numpy(sd[key]).shape)} converts to {value.shape}, '
                      f'but {collection}/{"/".join(path)} is {tuple(expected.shape)} for '
                      f'num_classes={num_classes}, n_harmonic={n_harmonic}, width={width}')
      continue
    _set(variables[collection], path, np.array(value, dtype=np.float32, order='C'))
  if problems:
    raise ValueError('cannot convert the HarmonicCNN state_dict: ' + '; '.join(problems))
  return variables


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


def hcnn_config(num_classes: int, n_harmonic: int, width: int, dataset: str = 'imported'):
  """The run config saved with an imported checkpoint: the reference HCNN at 5-s chunks."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from hcnn_jax.configs import base  # pylint: disable=import-outside-toplevel
  config = base.get_base_config()
  config.dataset.name = dataset
  config.dataset.data_dir = ''
  config.task = 'tagging'
  config.model.name = 'hcnn'
  config.model.kwargs = ml_collections.ConfigDict(dict(n_harmonic=n_harmonic, width=width))
  config.input_length = 80_000
  del num_classes  # the class count travels in the meta's class names
  return config


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


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m hcnn_jax.tools.import_torch',
      description='Convert a sota HarmonicCNN best_model.pth into an hcnn-jax checkpoint.')
  parser.add_argument('pth', help='the PyTorch state_dict file (best_model.pth)')
  parser.add_argument('--out', required=True, help='workdir to write (its best/ checkpoint)')
  parser.add_argument('--tags', default=None,
                      help='class names: mtat, msd, mtg_jamendo, a .npy (sota split/*/tags.npy) '
                           'or a text file with one name per line')
  args = parser.parse_args(argv)
  try:
    sd = load_torch_state_dict(args.pth)
    hp = infer_hcnn_hparams(sd)
    names = _tag_names(args.tags, hp['num_classes'])
    variables = convert_hcnn_state_dict(sd, **hp)
    config = hcnn_config(**hp, dataset=args.tags if args.tags in _TAG_SETS else 'imported')
    path = write_checkpoint(variables, args.out, names, config, source=os.path.abspath(args.pth))
  except ValueError as err:
    print(f'import_torch: error: {err}', file=sys.stderr)
    return 2
  print(f'wrote {path} (HCNN, {hp["num_classes"]} classes, n_harmonic {hp["n_harmonic"]}, '
        f'width {hp["width"]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
