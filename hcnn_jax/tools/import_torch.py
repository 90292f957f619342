"""Import the reference's PyTorch weights (sota `models/<dataset>/<model>/best_model.pth`, or a
HarmonicCNN trained with the ICASSP 2020 repository data-driven-harmonic-filters).

    python -m hcnn_jax.tools.import_torch best_model.pth --out DIR [--model NAME] [--force]
        [--tags mtat|FILE] [--n_mels N] [--model_kwargs JSON]

writes an orbax checkpoint in DIR (its `best/0`) that `checkpoint.load_for_inference(DIR)` loads,
so `hcnn-tag --workdir DIR song.mp3` tags with the published weights. A DIR that already holds a
checkpoint is refused; `--force` deletes its `best/` and `checkpoints/` first. The .pth is read
with `torch.load(..., weights_only=True)`: tensors only, no pickled code is ever executed. A file
wrapped as `{'model': sd}` or `{'state_dict': sd}`, or with DataParallel's `module.` prefixes, is
unwrapped. `--model` is inferred from the keys when left out.

Models (ours ← reference class): `hcnn` ← sota HarmonicCNN or ddhf Model (ResNet_mtat),
`hcnn_events` ← ddhf ResNet_dcase, `hcnn_keywords` ← ddhf ResNet_keyword, `short_chunk` ←
ShortChunkCNN, `short_chunk_res` ← ShortChunkCNN_Res, `fcn` ← FCN, `musicnn` ← Musicnn, `crnn` ←
CRNN, `sample` ← SampleCNN, `sample_se` ← SampleCNNSE, `attention` ← CNNSA. The key layouts and
tables are in `import_torch_layouts`, the conversion and its checks in `import_torch_convert`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

# The public API of the importer lives in its two modules; re-exported here.
from hcnn_jax.tools.import_torch_convert import (Converted, convert_hcnn_state_dict,  # noqa: F401
                                                 convert_state_dict, infer_hcnn_hparams)
from hcnn_jax.tools.import_torch_layouts import (MODEL_TABLES, REFERENCE_CLASSES,  # noqa: F401
                                                 SUPPORTED_MODELS, infer_model_name, unwrap)

# Dataset names whose tag order `--tags NAME` takes from the dataset builders of this repository.
# Modules inside the builders package (datasets/ of a checkout, hcnn_datasets of the wheel).
_TAG_SETS = {'mtat': 'mtat.mtat', 'msd': 'msd.msd', 'mtg_jamendo': 'mtg_jamendo.mtg_jamendo'}
# Our task of each model (tasks.py): ddhf's DCASE head is multi-label, its keyword head softmax.
_TASKS = {'hcnn_events': 'events', 'hcnn_keywords': 'keywords'}
# torch's advice around a weights_only refusal; the rest of its message is the reason.
_ADVICE = re.compile(r'weights.only|re-running|trusted source|documentation|safe_globals|'
                     r'file an issue', re.IGNORECASE)


def _tag_names(tags: Optional[str], num_classes: int) -> List[str]:
  """Class names from `--tags`: a dataset name of this repository, a .npy or a text file."""
  if tags is None:
    print(f'import_torch: no --tags given; naming the {num_classes} outputs class_00... '
          '(pass --tags mtat, msd, mtg_jamendo or a file for the real names)', file=sys.stderr)
    return [f'class_{i:02d}' for i in range(num_classes)]
  if tags in _TAG_SETS:
    from hcnn_jax.data import builders  # pylint: disable=import-outside-toplevel
    try:
      names = list(builders.module(_TAG_SETS[tags]).TAGS)
    except (ImportError, ValueError) as err:
      raise ValueError(f'--tags {tags}: the dataset builders are not importable ({err}); '
                       'pass a tag file') from None
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
  config.task = _TASKS.get(name, 'tagging')
  config.model.name = name
  config.model.kwargs = ml_collections.ConfigDict(dict(kwargs))
  config.input_length = registry.default_input_length(name)
  return config


def _existing_checkpoints(out_dir: str) -> List[str]:
  """The checkpoint folders (`best/`, `checkpoints/`) of workdir `out_dir` that hold anything."""
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  found = []
  for sub in (checkpoint.BEST_DIR, checkpoint.CHECKPOINT_DIR):
    path = os.path.join(out_dir, sub)
    if os.path.isdir(path) and os.listdir(path):
      found.append(path)
  return found


def write_checkpoint(variables: Mapping[str, Any], out_dir: str, class_names: Sequence[str],
                     config, source: str = '', force: bool = False) -> str:
  """Writes `variables` as the best checkpoint of a workdir `out_dir`; returns its path.

  A workdir that already holds a checkpoint is refused (ValueError), unless `force`: then its
  `best/` and `checkpoints/` are deleted first, so no old weights survive next to the new ones.
  """
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f'--out {out_dir} is a file, not a directory')
  existing = _existing_checkpoints(out_dir)
  if existing and not force:
    raise ValueError(f'--out {out_dir} already holds a checkpoint ({", ".join(existing)}); '
                     'choose another directory, or pass --force to replace it')
  for path in existing:
    shutil.rmtree(path)
  meta = {'class_names': list(class_names), 'task': str(config.get('task', 'tagging')),
          'imported_from': source,
          'bookkeeping': {'epochs_done': 0, 'best_epoch': None, 'best_step': 0}}
  with checkpoint.RunCheckpoints(out_dir, async_save=False) as ckpts:
    ckpts.save_best(0, dict(variables), meta=meta, config=config)
    ckpts.wait()
    return ckpts.best_path()


def _refusal(err: BaseException) -> str:
  """torch's weights_only refusal cut to its reason ("unsupported GLOBAL posix.system ..."), one
  line: the sentences advising to turn the check off are dropped, never the reason."""
  text = ' '.join(str(err).split())
  # torch 2.4-2.5 put the reason after "WeightsUnpickler error:" inside an advice sentence.
  tail = text.split('WeightsUnpickler error:', 1)[-1].strip()
  reasons = [s for s in re.split(r'(?<=[.!?])\s+', tail) if s and not _ADVICE.search(s)]
  return ' '.join(reasons or [text])[:400]


def load_torch_state_dict(path: str) -> Dict[str, Any]:
  """Tensors of a .pth file, loaded without executing pickled code, unwrapped."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    from hcnn_jax.cli import extras  # pylint: disable=import-outside-toplevel
    raise ValueError(extras.problem('reading .pth files', ['torch']) or
                     'reading .pth files needs PyTorch, which fails to import') from None
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as err:  # pylint: disable=broad-except
    raise ValueError(f'{path}: torch.load(weights_only=True) refused it, so nothing in it was '
                     f'run: {_refusal(err)}') from None
  sd = unwrap(obj)
  if not isinstance(sd, Mapping):
    raise ValueError(f'{path}: holds a {type(sd).__name__}, not a state_dict')
  return dict(sd)


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
      prog='hcnn-import-torch',
      description='Convert a reference best_model.pth (sota HarmonicCNN or a zoo model, or a ddhf '
                  'HarmonicCNN) into an hcnn-jax checkpoint.')
  parser.add_argument('pth', help='the PyTorch state_dict file (best_model.pth)')
  parser.add_argument('--out', required=True, help='workdir to write (its best/ checkpoint)')
  parser.add_argument('--force', action='store_true',
                      help='replace the checkpoints --out already holds (they are deleted)')
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
    existing = _existing_checkpoints(args.out)
    if existing and not args.force:  # before the (slow) conversion
      raise ValueError(f'--out {args.out} already holds a checkpoint ({", ".join(existing)}); '
                       'choose another directory, or pass --force to replace it')
    sd = load_torch_state_dict(args.pth)
    try:
      converted = convert_state_dict(sd, args.model, **_model_kwargs_arg(args.model_kwargs,
                                                                         args.n_mels))
    except ValueError as err:
      raise ValueError(f'{args.pth}: {err}') from None
    names = _tag_names(args.tags, converted.num_classes)
    config = model_config(converted.name, converted.kwargs,
                          dataset=args.tags if args.tags in _TAG_SETS else 'imported')
    path = write_checkpoint(converted.variables, args.out, names, config,
                            source=os.path.abspath(args.pth), force=args.force)
  except ValueError as err:
    print(f'import_torch: error: {" ".join(str(err).split())}', file=sys.stderr)
    return 2
  options = ', '.join(f'{k} {v}' for k, v in converted.kwargs.items())
  print(f'wrote {path} ({converted.name} from {REFERENCE_CLASSES[converted.name]}, '
        f'{converted.layout} layout, {converted.num_classes} classes, {options})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
