"""Orbax checkpoints of a run: periodic ones for exact resume, the best-by-validation one for use.

Layout of a workdir:
  checkpoints/<step>/  state (TrainState pytree), data (grain iterator state, one JSON per process),
                       meta (bookkeeping: epoch, phase, best so far; class names), config (JSON)
  best/<step>/         variables ({'params', 'batch_stats'}), meta, config

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save (even by SIGKILL) leaves the previous checkpoint as the latest; leftover temporary
directories are removed when the manager is next opened.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import grain.checkpoint as grain_checkpoint
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'
BEST_DIR = 'best'
_STATE_ITEMS = ('state', 'data', 'meta', 'config')
_BEST_ITEMS = ('variables', 'meta', 'config')


class _IteratorState:
  """A captured grain iterator state, in the shape grain's orbax handler saves and restores.

  The state is taken when `save` is called, not when a background thread gets to it, so an async
  save never records a later position of the iterator.
  """

  def __init__(self, state: Optional[bytes] = None):
    self.state = state

  def get_state(self) -> bytes:
    return self.state

  def set_state(self, state: bytes) -> None:
    self.state = state

  def start_prefetch(self) -> None:  # called by grain's handler after set_state
    pass


def config_to_dict(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """A JSON-safe dict of `config` (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def _manager(directory: str, items, *, max_to_keep: Optional[int], read_only: bool = False,
             async_save: bool = True) -> ocp.CheckpointManager:
  # Readers neither create nor clean anything (a run may be writing there right now); orbax's own
  # read_only mode would do the same but warns on every open.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=items)


class RunCheckpoints:
  """The periodic and best checkpoint managers of one workdir.

  Args:
    workdir: the run's directory.
    max_to_keep: periodic checkpoints kept (the best one is kept separately).
    async_save: write in a background thread; `wait()` (or `close()`) before reading them back.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 2, async_save: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.periodic = _manager(os.path.join(self.workdir, CHECKPOINT_DIR), _STATE_ITEMS,
                             max_to_keep=max_to_keep, async_save=async_save)
    self.best = _manager(os.path.join(self.workdir, BEST_DIR), _BEST_ITEMS, max_to_keep=1,
                         async_save=async_save)

  # Periodic checkpoints -------------------------------------------------------------------------
  def latest_step(self) -> Optional[int]:
    return self.periodic.latest_step()

  def path(self, step: Optional[int]) -> Optional[str]:
    """The directory of periodic checkpoint `step` (None when there is none)."""
    return None if step is None else os.path.join(self.workdir, CHECKPOINT_DIR, str(step))

  def save(self, step: int, state: Any, *, data_state: Optional[bytes], meta: Dict[str, Any],
           config: ml_collections.ConfigDict) -> None:
    """Saves the full train state, the data iterator state and the bookkeeping at `step`."""
    if step in self.periodic.all_steps():
      return  # a deterministic re-run after a crash reached the same step: identical content
    self.periodic.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain_checkpoint.CheckpointSave(_IteratorState(data_state or b'{}')),
        meta=ocp.args.JsonSave(meta),
        config=ocp.args.JsonSave(config_to_dict(config))))

  def restore(self, template: Any, step: Optional[int] = None
              ) -> Tuple[Any, Optional[bytes], Dict[str, Any]]:
    """Restores `(state, data_state, meta)` of `step` (default: latest) shaped like `template`."""
    step = self.latest_step() if step is None else step
    holder = _IteratorState()
    out = self.periodic.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template),
        data=grain_checkpoint.CheckpointRestore(holder),
        meta=ocp.args.JsonRestore()))
    data_state = None if holder.state in (None, b'{}') else holder.state
    return out.state, data_state, dict(out.meta)

  def restore_meta(self, step: Optional[int] = None) -> Dict[str, Any]:
    """The bookkeeping meta of `step` (default: latest), with the saved config under 'config'.

    Read before the state: which optimiser the saved opt_state belongs to is in there.
    """
    step = self.latest_step() if step is None else step
    out = self.periodic.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
    return {**dict(out.meta), 'config': dict(out.config)}

  # Best checkpoint ------------------------------------------------------------------------------
  def best_step(self) -> Optional[int]:
    return self.best.latest_step()

  def best_path(self) -> Optional[str]:
    step = self.best_step()
    return None if step is None else os.path.join(self.workdir, BEST_DIR, str(step))

  def save_best(self, step: int, variables: Dict[str, Any], *, meta: Dict[str, Any],
                config: ml_collections.ConfigDict) -> None:
    """Replaces the best checkpoint with `variables` ({'params', 'batch_stats'}) at `step`."""
    if step in self.best.all_steps():
      return  # already written by the run that crashed after saving it; same content
    self.best.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        meta=ocp.args.JsonSave(meta),
        config=ocp.args.JsonSave(config_to_dict(config))))

  def restore_best(self, template: Optional[Dict[str, Any]] = None
                   ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """`(variables, meta)` of the best checkpoint, shaped (and sharded) like `template`."""
    step = self.best_step()
    if step is None:
      raise ValueError(f'no best checkpoint in {os.path.join(self.workdir, BEST_DIR)}: train '
                       'for at least one epoch (validation selects it) before reloading it')
    self.best.wait_until_finished()
    out = self.best.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
    return out.variables, dict(out.meta)

  # Lifetime ------------------------------------------------------------------------------------
  def wait(self) -> None:
    """Blocks until every pending save is on disk."""
    self.periodic.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.periodic.close()
    self.best.close()

  def __enter__(self) -> 'RunCheckpoints':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _is_step_dir(path: str) -> bool:
  return os.path.basename(path.rstrip('/')).isdigit() and os.path.isdir(path) and os.path.exists(
      os.path.join(path, 'meta'))


def resolve(path: str) -> Tuple[str, int, str]:
  """`(manager_dir, step, kind)` for a workdir, a `best/`/`checkpoints/` dir or one step dir.

  A workdir means its best checkpoint (falling back to the latest periodic one); kind is 'best'
  or 'periodic'.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ValueError(f'checkpoint path {path} does not exist: pass a training workdir, its best/ '
                     'or checkpoints/ directory, or one step directory inside them')
  if _is_step_dir(path):
    parent = os.path.dirname(path)
    kind = 'best' if os.path.exists(os.path.join(path, 'variables')) else 'periodic'
    return parent, int(os.path.basename(path)), kind
  candidates = []
  if os.path.basename(path) in (BEST_DIR, CHECKPOINT_DIR):
    candidates.append(path)
  else:
    candidates += [os.path.join(path, BEST_DIR), os.path.join(path, CHECKPOINT_DIR)]
  for directory in candidates:
    if not os.path.isdir(directory):
      continue
    steps = [int(n) for n in os.listdir(directory)
             if n.isdigit() and _is_step_dir(os.path.join(directory, n))]
    if steps:
      kind = 'best' if os.path.basename(directory) == BEST_DIR else 'periodic'
      return directory, max(steps), kind
  raise ValueError(f'no checkpoint found under {path}: train first (train.py --workdir {path}) '
                   'or pass the directory of a finished run')


def restore_variables(path: str) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
  """`(variables, meta, config_dict)` from any checkpoint `resolve` accepts."""
  directory, step, kind = resolve(path)
  items = _BEST_ITEMS if kind == 'best' else _STATE_ITEMS
  manager = _manager(directory, items, max_to_keep=None, read_only=True)
  try:
    item = 'variables' if kind == 'best' else 'state'
    # No template: arrays come back as saved (a nested dict), whatever the optimiser was.
    out = manager.restore(step, args=ocp.args.Composite(**{
        item: ocp.args.StandardRestore(), 'meta': ocp.args.JsonRestore(),
        'config': ocp.args.JsonRestore()}))
  finally:
    manager.close()
  tree = out[item]
  variables = {'params': tree['params'], 'batch_stats': tree.get('batch_stats') or {}}
  return variables, dict(out.meta), dict(out.config)


def load_for_inference(path: str):
  """`(model, variables, config, class_names)` for tools that tag, plot or evaluate.

  `path` is a training workdir (its best checkpoint is used), a `best/` or `checkpoints/` directory,
  or one step directory. The model is built from the saved config without `bn_axis_name`; apply it
  with `model.apply(variables, audio, train=False)`.
  """
  # Imported here: config_check pulls in the model zoo, which checkpoint users may not need.
  from hcnn_jax.training import config_check  # pylint: disable=import-outside-toplevel
  variables, meta, config_dict = restore_variables(path)
  config = ml_collections.ConfigDict(config_dict)
  class_names = list(meta['class_names'])
  model = config_check.build_model(config, num_classes=len(class_names))
  return model, variables, config, class_names
