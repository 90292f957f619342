"""Checks a run config before anything is loaded or compiled, and builds its model.

`validate(config)` looks at every key the trainer reads and raises one `ValueError` listing every
problem, each naming the key and what to set, so a typo costs seconds rather than a compile (or an
hour of training before the first validation). The input length is checked with the model's own
shape arithmetic (`Classifier.check_input_length`, or a `jax.eval_shape` for other modules), which
traces no array work.
"""
from __future__ import annotations

import difflib
import numbers
from typing import Any, List, Optional

import jax
import jax.numpy as jnp
import ml_collections

from hcnn_jax import tasks
from hcnn_jax.models import registry
from hcnn_jax.training import precision, schedule

# Every top-level key the trainer reads (docs/architecture.md); anything else is a typo.
KNOWN_KEYS = frozenset({
    'dataset', 'task', 'selection_metric', 'selection_mode', 'model', 'input_length',
    'batch_size', 'num_epochs', 'steps_per_epoch', 'optimizer', 'seed', 'dtype', 'eval_chunks',
    'eval_tracks_per_batch', 'checkpoint_every_steps', 'checkpoints_to_keep', 'log_every_steps',
    'worker_count', 'final_eval_split', 'progress_bar', 'data_in_memory',
})
REQUIRED_KEYS = ('dataset', 'model', 'input_length', 'batch_size', 'num_epochs', 'optimizer',
                 'seed', 'dtype', 'eval_chunks', 'eval_tracks_per_batch')
DATASET_KEYS = frozenset({'name', 'data_dir', 'config_name'})
MODEL_KEYS = frozenset({'name', 'kwargs'})
SPLITS = ('train', 'validation', 'test')


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _tuples(value):
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
  """The keyword arguments `get_model` gets from `config.model.kwargs` and `config.dtype`."""
  kwargs = config.model.get('kwargs') or {}
  kwargs = kwargs.to_dict() if hasattr(kwargs, 'to_dict') else dict(kwargs)
  # Lists come back from JSON (a saved config) where the builder expects tuples, at every depth
  # (pools are lists of pairs): linen modules must stay hashable for jit's static arguments.
  kwargs = {k: _tuples(v) for k, v in kwargs.items()}
  return precision.model_kwargs(config.get('dtype', 'float32'), **kwargs)


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                bn_axis_name: Optional[str] = None):
  """The model of `config` for `num_classes` outputs.

  The trainer passes `bn_axis_name='data'` (BatchNorm statistics synced over the mesh); inference
  leaves it None.
  """
  return registry.get_model(config.model.name, int(num_classes), bn_axis_name=bn_axis_name,
                            **model_kwargs(config))


def check_input_length(model, input_length: int) -> None:
  """ValueError unless `input_length` samples go through `model` (no compilation)."""
  if hasattr(model, 'check_input_length'):
    model.check_input_length(int(input_length))
    return
  audio = jax.ShapeDtypeStruct((1, int(input_length)), jnp.float32)
  try:
    jax.eval_shape(lambda a: model.init(jax.random.key(0), a, train=False), audio)
  except (ValueError, TypeError, IndexError) as err:  # shape errors of a too-short input
    raise ValueError(f'An input of {input_length:,} samples does not fit this model: {err}') \
        from None


def _unknown_keys(where: str, unknown: List[str], known) -> str:
  """`where: unknown key(s) [...]` with the nearest known key of each, or the known ones."""
  near = {k: difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.7) for k in unknown}
  if not all(near.values()):
    return f'{where}unknown key(s) {unknown} (a typo?); known: {sorted(known)}'
  if len(unknown) == 1:
    return f'{where}unknown key(s) {unknown} (a typo?): did you mean {near[unknown[0]][0]!r}?'
  pairs = ', '.join(f'{m[0]!r} for {k!r}' for k, m in near.items())
  return f'{where}unknown key(s) {unknown} (typos?): did you mean {pairs}?'


def _check_dataset(config, problems: List[str]) -> None:
  ds = config.get('dataset')
  if not isinstance(ds, ml_collections.ConfigDict) or not ds.get('name'):
    problems.append('dataset.name: missing; name a prepared dataset (e.g. synth_gm, mtat) or '
                    "'fake'")
    return
  unknown = sorted(set(ds.keys()) - DATASET_KEYS)
  if unknown:
    problems.append(_unknown_keys('dataset: ', unknown, DATASET_KEYS))
  name = ds.name
  # Here, not at the top: build_model's users (hcnn-tag) must not pay for TFDS's import.
  from hcnn_jax.data import sources  # pylint: disable=import-outside-toplevel
  if name == sources.FAKE_NAME:
    try:
      sources.parse_fake_config(ds.get('config_name'))
    except ValueError as err:
      problems.append(f'dataset.config_name: {err}')
    return
  if not ds.get('data_dir'):
    problems.append(f'dataset.data_dir: dataset {name!r} needs the directory it is prepared in '
                    f'(hcnn-build {name} --data_dir DIR)')


def _check_task(config, problems: List[str]) -> None:
  task = config.get('task')
  if task is not None and task not in tasks.KINDS:
    problems.append(f'task: {task!r} is not a task; use one of {list(tasks.KINDS)} (or leave it '
                    'unset to take the dataset\'s)')
  mode = config.get('selection_mode')
  if mode is not None and mode not in ('min', 'max'):
    problems.append(f"selection_mode: {mode!r}; use 'min' or 'max'")


def _positive_int(config, key: str, problems: List[str], allow_zero: bool = False,
                  optional: bool = False) -> Optional[int]:
  value = config.get(key)
  if value is None and optional:
    return None
  low = 0 if allow_zero else 1
  if not _is_int(value) or value < low:
    problems.append(f'{key}: must be an integer >= {low}, got {value!r}')
    return None
  return int(value)


def _check_model(config, problems: List[str]) -> None:
  model_cfg = config.get('model')
  if not isinstance(model_cfg, ml_collections.ConfigDict) or not model_cfg.get('name'):
    problems.append(f'model.name: missing; use one of {registry.list_models()}')
    return
  unknown = sorted(set(model_cfg.keys()) - MODEL_KEYS)
  if unknown:
    problems.append(f'model: unknown key(s) {unknown}; put model options under model.kwargs')
  if model_cfg.name not in registry.list_models():
    problems.append(f'model.name: unknown model {model_cfg.name!r}; use one of '
                    f'{registry.list_models()}')
    return
  try:
    precision.compute_dtype(config.get('dtype'))
  except ValueError as err:
    problems.append(f'dtype: {err}')
    return
  try:
    model = build_model(config, num_classes=2, bn_axis_name='data')
  except (ValueError, TypeError) as err:
    problems.append(f'model.kwargs: {err}')
    return
  input_length = config.get('input_length')
  if _is_int(input_length) and input_length > 0:
    try:
      check_input_length(model, input_length)
    except ValueError as err:
      problems.append(f'input_length: {err} Set input_length (default for {model_cfg.name!r}: '
                      f'{registry.default_input_length(model_cfg.name):,}).')


def _check_sizes(config, problems: List[str]) -> None:
  _positive_int(config, 'input_length', problems)
  batch = _positive_int(config, 'batch_size', problems)
  devices, hosts = jax.device_count(), jax.process_count()
  if batch is not None and batch % devices:
    problems.append(f'batch_size: {batch} does not split over the {devices} devices; make it a '
                    f'multiple of {devices}')
  if batch is not None and batch % hosts:
    problems.append(f'batch_size: {batch} does not split over the {hosts} hosts')
  _positive_int(config, 'num_epochs', problems)
  _positive_int(config, 'steps_per_epoch', problems, optional=True)
  _positive_int(config, 'eval_chunks', problems)
  tracks = _positive_int(config, 'eval_tracks_per_batch', problems)
  local = jax.local_device_count()
  if tracks is not None and tracks % local:
    problems.append(f'eval_tracks_per_batch: {tracks} does not split over this host\'s {local} '
                    f'devices; make it a multiple of {local}')
  if not _is_int(config.get('seed')):
    problems.append(f'seed: must be an integer, got {config.get("seed")!r}')
  _positive_int(config, 'checkpoint_every_steps', problems, allow_zero=True, optional=True)
  _positive_int(config, 'checkpoints_to_keep', problems, optional=True)
  _positive_int(config, 'log_every_steps', problems, optional=True)
  _positive_int(config, 'worker_count', problems, allow_zero=True, optional=True)
  if not isinstance(config.get('data_in_memory', False), (bool, type(None))):
    problems.append(f'data_in_memory: must be True or False, got {config.get("data_in_memory")!r}')
  split = config.get('final_eval_split')
  if split is not None and split not in SPLITS:
    problems.append(f'final_eval_split: {split!r}; use one of {list(SPLITS)}')


def _check_optimizer(config, problems: List[str]) -> None:
  if not _is_int(config.get('num_epochs')):
    return  # reported by _check_sizes
  # adamw_cosine needs steps_per_epoch; when the loop derives it from the dataset, any positive
  # value checks the rest here and the loop checks the warmup again with the real one.
  spe = config.get('steps_per_epoch') or 10**9
  opt = config.get('optimizer')
  if isinstance(opt, ml_collections.ConfigDict) and opt.get('name', 'reference') in \
      schedule.DEFAULTS:
    known = {'name'} | set(schedule.DEFAULTS[opt.get('name', 'reference')])
    unknown = sorted(set(opt.keys()) - known)
    if unknown:
      problems.append(_unknown_keys('optimizer: ', unknown, known))
      return
  try:
    schedule.phases(config, spe)
  except (ValueError, TypeError) as err:
    problems.append(f'optimizer: {err}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises one ValueError listing every problem of `config`; returns None when it is usable."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f'config must be an ml_collections.ConfigDict, got {type(config).__name__}; '
                     'load it with --config hcnn_jax/configs/<name>.py')
  problems: List[str] = []
  missing = [k for k in REQUIRED_KEYS if config.get(k) is None]
  if missing:
    problems.append(f'missing key(s) {missing}; start from hcnn_jax/configs/base.py')
  unknown = sorted(set(config.keys()) - KNOWN_KEYS)
  if unknown:
    problems.append(_unknown_keys('', unknown, KNOWN_KEYS))
  _check_dataset(config, problems)
  _check_task(config, problems)
  _check_sizes(config, problems)
  _check_model(config, problems)
  _check_optimizer(config, problems)
  if problems:
    raise ValueError('bad config:\n  - ' + '\n  - '.join(problems))
