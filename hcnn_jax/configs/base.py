"""The one schema of run-config keys, the defaults every config starts from, and the early check.

`SCHEMA` lists every key the trainer reads, with its type, default and what it means; nothing else
writes the list down (docs/architecture.md and the README point here; `python -m
hcnn_jax.configs.base` prints it as a table). A config file (one per model and dataset) overrides
what differs, and `--config.<key>=<value>` overrides any key. Optional values are typed
placeholders (None until set), so they can still be set from the command line.

`validate(config)` checks the types and ranges here, then asks each module about the keys it
owns: the dataset (`data.sources`), the task (`tasks`), the optimiser recipe (`training.optim`),
the model (`models.registry`: built, and its init run as a `jax.eval_shape`, which traces the
shapes and compiles nothing, so a bad option or an input too short for the model costs seconds)
and the devices (`training.parallel`). Every problem comes back at once, in one line naming each
key.
"""
from __future__ import annotations

import difflib
import importlib
import numbers
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import ml_collections
from ml_collections.config_dict import placeholder

SPLITS = ('train', 'validation', 'test')


class Key(NamedTuple):
  """One config key: dotted path, value type, default (None: unset), and what it means."""
  path: str
  type: type
  default: Any
  doc: str
  low: Optional[int] = None            # ints: the smallest value allowed
  choices: Optional[Tuple[Any, ...]] = None


SCHEMA: Tuple[Key, ...] = (
    Key('dataset.name', str, 'synth_gm', "prepared TFDS dataset (hcnn-build NAME) or 'fake'"),
    Key('dataset.data_dir', str, 'data', 'directory the dataset is prepared in'),
    Key('dataset.config_name', str, '', "builder config; '' = its default ('fake': see "
        'data/sources.py)'),
    Key('task', str, None, "'tagging' | 'keywords' | 'events'; unset = the dataset's metadata"),
    Key('selection_metric', str, None, "what picks the best checkpoint; unset = the task's "
        '(validation loss)'),
    Key('selection_mode', str, None, "'min' | 'max' for selection_metric; unset = the task's"),
    Key('model.name', str, 'hcnn', 'registered model (hcnn_jax/models/registry.py)'),
    Key('model.kwargs', dict, {}, "the model builder's options (e.g. build_hcnn's n_harmonic)"),
    Key('input_length', int, 80_000, 'training crop and eval chunk, in samples at 16 kHz', low=1),
    Key('batch_size', int, 16, 'global batch (all devices and hosts)', low=1),
    Key('num_epochs', int, 200, 'epochs to train', low=1),
    Key('steps_per_epoch', int, None, 'unset = len(train) // batch_size', low=1),
    Key('optimizer', dict, None, "the recipe of training/schedule.py (default: 'reference', "
        "variant 'sota'); its keys per recipe in schedule.DEFAULTS"),
    Key('seed', int, 0, 'PRNG seed'),
    Key('dtype', str, 'float32', "compute dtype, 'float32' | 'bfloat16' (training/precision.py; "
        'parameters stay float32)'),
    Key('eval_chunks', int, 16, 'track-level evaluation: chunks per track', low=1),
    Key('eval_tracks_per_batch', int, 4, 'track-level evaluation: tracks per batch', low=1),
    Key('checkpoint_every_steps', int, 1000, 'periodic checkpoints (0: only at epoch ends)', low=0),
    Key('checkpoints_to_keep', int, 2, 'periodic checkpoints kept', low=1),
    Key('log_every_steps', int, 50, 'steps between metric logs (and host syncs)', low=1),
    Key('worker_count', int, 0, 'grain worker processes (0: in the main process)', low=0),
    Key('data_in_memory', bool, False, 'decode the train split once into a shared int16 file in '
        '/dev/shm (data/in_memory.py)'),
    Key('final_eval_split', str, 'test', 'split evaluated with the best checkpoint after '
        'training', choices=SPLITS),
    Key('progress_bar', bool, True, 'tqdm bars on the training and evaluation loops'),
)
# Keys a config may leave out (older saved configs predate them); the others must be set.
OPTIONAL = frozenset({'dataset.data_dir', 'dataset.config_name', 'model.kwargs', 'task',
                      'selection_metric', 'selection_mode', 'steps_per_epoch',
                      'checkpoint_every_steps', 'checkpoints_to_keep', 'log_every_steps',
                      'worker_count', 'data_in_memory', 'final_eval_split', 'progress_bar'})

# Which module checks which keys: (module, function, the keys it reads). A function raises one
# ValueError naming the key; it is skipped when a key it reads already failed the type check.
OWNERS: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ('hcnn_jax.data.sources', 'check_config', ('dataset',)),
    ('hcnn_jax.tasks', 'check_config', ('task', 'selection_metric', 'selection_mode')),
    ('hcnn_jax.training.optim', 'check_config', ('optimizer', 'num_epochs', 'steps_per_epoch')),
    ('hcnn_jax.models.registry', 'check_config', ('model', 'dtype', 'input_length')),
    ('hcnn_jax.training.parallel', 'check_config', ('batch_size', 'eval_tracks_per_batch')),
)


def get_base_config() -> ml_collections.ConfigDict:
  """A ConfigDict of `SCHEMA`'s defaults (the reference optimiser recipe, variant 'sota')."""
  from hcnn_jax.training import schedule  # pylint: disable=import-outside-toplevel
  c = ml_collections.ConfigDict()
  for key in SCHEMA:
    node, *rest = key.path.split('.')
    target = c
    if rest:
      if node not in c:
        c[node] = ml_collections.ConfigDict()
      target, node = c[node], rest[0]
    if key.type is dict:
      value = ml_collections.ConfigDict(dict(key.default or {}))
    else:
      value = placeholder(key.type) if key.default is None else key.default
    target[node] = value
  c.optimizer = schedule.optimizer_config('reference', variant='sota')
  return c


def get_hcnn_tagging_config(dataset: str, config_name: str = '') -> ml_collections.ConfigDict:
  """sota's Harmonic CNN setting on a 50-tag dataset: width 128, 6 harmonics, 5-s crops (80,000
  samples), batch 16, 200 epochs of the reference recipe, 16-chunk track-level evaluation."""
  c = get_base_config()
  c.dataset.name = dataset
  c.dataset.config_name = config_name
  c.task = 'tagging'
  c.model.kwargs = ml_collections.ConfigDict(dict(width=128, n_harmonic=6))
  c.eval_tracks_per_batch = 8
  return c


def unknown_keys(where: str, unknown: Sequence[str], known) -> str:
  """`where: unknown key(s) [...]` with the nearest known key of each, or the known ones."""
  unknown = sorted(unknown)
  near = {k: difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.7) for k in unknown}
  if not all(near.values()):
    return f'{where}unknown key(s) {unknown} (a typo?); known: {sorted(known)}'
  if len(unknown) == 1:
    return f'{where}unknown key(s) {unknown} (a typo?): did you mean {near[unknown[0]][0]!r}?'
  pairs = ', '.join(f'{m[0]!r} for {k!r}' for k, m in near.items())
  return f'{where}unknown key(s) {unknown} (typos?): did you mean {pairs}?'


def _get(config, path: str):
  node = config
  for part in path.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return None
    node = node[part]
  return node


def _type_problem(key: Key, value) -> Optional[str]:
  """What is wrong with `value` for `key`, or None."""
  if key.type is dict:
    return None if hasattr(value, 'keys') else f'must be a group of keys, got {value!r}'
  if key.type is bool:
    return None if isinstance(value, bool) else f'must be True or False, got {value!r}'
  if key.type is int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or (
        key.low is not None and value < key.low):
      return (f'must be an integer >= {key.low}, got {value!r}' if key.low is not None else
              f'must be an integer, got {value!r}')
    return None
  if not isinstance(value, key.type):
    return f'must be a {key.type.__name__}, got {value!r}'
  if key.choices is not None and value not in key.choices:
    return f'{value!r}; use one of {list(key.choices)}'
  return None


def schema_problems(config) -> Tuple[List[str], set]:
  """(problems, keys with a problem) of `config` against SCHEMA: unknown, missing, mistyped."""
  problems: List[str] = []
  bad = set()
  groups = {k.path.split('.')[0] for k in SCHEMA}
  unknown = sorted(set(config.keys()) - groups)
  if unknown:
    problems.append(unknown_keys('', unknown, groups))
  for group in ('dataset', 'model'):
    node = config.get(group)
    known = {k.path.split('.', 1)[1] for k in SCHEMA if k.path.startswith(group + '.')}
    if hasattr(node, 'keys') and set(node.keys()) - known:
      extra = sorted(set(node.keys()) - known)
      problems.append(unknown_keys(f'{group}: ', extra, known) if group == 'dataset' else
                      f'model: unknown key(s) {extra}; put model options under model.kwargs')
  missing = [k.path for k in SCHEMA if k.path not in OPTIONAL and _get(config, k.path) is None]
  if missing:
    problems.append(f'missing key(s) {missing}; start from hcnn_jax/configs/base.py')
    bad.update(m.split('.')[0] for m in missing)
  for key in SCHEMA:
    value = _get(config, key.path)
    if value is None:
      continue
    problem = _type_problem(key, value)
    if problem:
      problems.append(f'{key.path}: {problem}')
      bad.add(key.path.split('.')[0])
  return problems, bad


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises one ValueError, one line, listing every problem of `config`; None when usable."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f'config must be an ml_collections.ConfigDict, got {type(config).__name__}; '
                     'load it with --config hcnn_jax/configs/<name>.py')
  problems, bad = schema_problems(config)
  for module, function, reads in OWNERS:
    if bad.intersection(reads) or (module.endswith('registry') and 'model' in bad):
      continue
    check: Callable = getattr(importlib.import_module(module), function)
    try:
      check(config)
    except ValueError as err:
      problems.append(' '.join(str(err).split()))
  if problems:
    raise ValueError('bad config: - ' + ' - '.join(problems))


def describe() -> str:
  """SCHEMA as a markdown table (key, type, default, meaning)."""
  rows = ['| key | type | default | meaning |', '|---|---|---|---|']
  for k in SCHEMA:
    default = 'unset' if k.default is None else repr(k.default)
    extra = f' ({" / ".join(map(str, k.choices))})' if k.choices else ''
    doc = (k.doc + extra).replace('|', '\\|')
    rows.append(f'| `{k.path}` | {k.type.__name__} | {default} | {doc} |')
  return '\n'.join(rows)


if __name__ == '__main__':
  print(describe())
