"""Orbax checkpoints of a run: periodic ones for exact resume, the best-by-validation one for use.

Layout of a workdir:
  checkpoints/<step>/  state (TrainState pytree), data (grain iterator state, one JSON per process),
                       meta (bookkeeping: epoch, phase, best so far; class names), config (JSON)
  best/<step>/         variables ({'params', 'batch_stats'}), meta, config

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save (even by SIGKILL) leaves the previous checkpoint as the latest; leftover temporary
directories are removed when the manager is next opened.

A checkpoint does not depend on the devices it was written from: arrays are always restored onto
the current devices (the training template's sharding, or the default device for readers),
never onto the saved mesh. A checkpoint damaged on disk raises `CheckpointError`, one line naming
the step directory (and the file, where it is known).
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

CHECKPOINT_DIR = 'checkpoints'
DAMAGED_DIR = 'checkpoints.damaged'  # where a resume moves checkpoints it could not read
BEST_DIR = 'best'
_STATE_ITEMS = ('state', 'data', 'meta', 'config')
_BEST_ITEMS = ('variables', 'meta', 'config')


class CheckpointError(ValueError):
  """A checkpoint that cannot be read back; the message is one line naming where and why."""


def one_line(err: BaseException, limit: int = 300) -> str:
  text = ' '.join(str(err).split()) or type(err).__name__
  return text if len(text) <= limit else text[:limit - 3] + '...'


def _check_item(step_dir: str, item: str) -> None:
  """Names the first thing missing or unparsable in `step_dir/item` (orbax's own errors on such
  damage are tracebacks dozens of lines long that name neither the step nor the file)."""
  path = os.path.join(step_dir, item)
  if not os.path.isdir(path):
    raise CheckpointError(f'checkpoint {step_dir} is damaged: its {item}/ directory is missing')
  for name in ('_METADATA', 'metadata'):
    target = os.path.join(path, name)
    if os.path.isfile(target):
      try:
        with open(target, 'rb') as f:
          json.loads(f.read().decode('utf-8'))
      except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f'checkpoint file {target} is damaged: not valid JSON '
                              f'({one_line(err, 120)})') from None
      return
  raise CheckpointError(f'checkpoint {step_dir} is damaged: {item}/ has no _METADATA or '
                        'metadata file')


def default_sharding() -> jax.sharding.Sharding:
  """Where readers put restored arrays: this process's default device, or every device
  (replicated) when several processes share the run."""
  if jax.process_count() == 1:
    return SingleDeviceSharding(jax.local_devices()[0])
  return NamedSharding(Mesh(jax.devices(), ('replica',)), PartitionSpec())


def abstract_item(step_dir: str, item: str, sharding: Optional[jax.sharding.Sharding] = None):
  """The saved tree of `step_dir/item` as shapes and dtypes placed with `sharding`, a restore
  target that ignores the device mesh the checkpoint was written from."""
  sharding = sharding or default_sharding()
  metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir) / item)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
                      metadata.tree)


def _is_stale_read(unraisable) -> bool:
  tb = unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed' and tb is not None
          and tb.tb_frame.f_code.co_name in ('_check_closed', 'call_soon_threadsafe'))


def _silence_stale_reads() -> None:
  """When a restore fails, the other reads tensorstore still has in flight complete into
  orbax's closed event loop, and each prints a 'RuntimeError: Event loop is closed' traceback
  (as an unraisable exception, from tensorstore's threads). Those, and only those, are dropped."""
  previous = sys.unraisablehook
  if getattr(previous, '_hcnn_stale_reads', False):
    return

  def hook(unraisable):
    if not _is_stale_read(unraisable):
      previous(unraisable)
  hook._hcnn_stale_reads = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _restore_guarded(step_dir: str, items, restore: Callable[[], Any]) -> Any:
  """`restore()`, with any damage of `step_dir` reported as one CheckpointError line."""
  for item in items:
    _check_item(step_dir, item)
  _silence_stale_reads()  # before: they can come while the first failure is still propagating
  try:
    return restore()
  except CheckpointError:
    raise
  except Exception as err:  # pylint: disable=broad-except
    # Orbax and tensorstore raise many types for truncated or corrupt files; tensorstore names
    # the file it failed on last ('... of local file "<path>"').
    text = ' '.join(str(err).split())
    files = [f for f in re.findall(r'local file "([^"]+)"', text) if os.path.isfile(f)]
    if files:
      reason = text.split(':', 1)[0] if ':' in text else type(err).__name__
      raise CheckpointError(f'checkpoint file {files[-1]} is damaged ({reason}: truncated or '
                            f'corrupt)') from None
    raise CheckpointError(f'checkpoint {step_dir} is damaged or unreadable: {one_line(err)}'
                          ) from None


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


def data_file_name() -> str:
  """The file grain's handler writes for this process into a checkpoint's data/ directory."""
  return f'process_{jax.process_index()}-of-{jax.process_count()}.json'


def topology() -> Dict[str, int]:
  """The device layout a checkpoint is written from (kept in its meta, compared on resume)."""
  return {'process_count': jax.process_count(), 'device_count': jax.device_count()}


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
    import grain.checkpoint as grain_checkpoint  # pylint: disable=import-outside-toplevel
    self.periodic.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain_checkpoint.CheckpointSave(_IteratorState(data_state or b'{}')),
        meta=ocp.args.JsonSave(meta),
        config=ocp.args.JsonSave(config_to_dict(config))))

  def restore(self, template: Any, step: Optional[int] = None
              ) -> Tuple[Any, Optional[bytes], Dict[str, Any]]:
    """Restores `(state, data_state, meta)` of `step` (default: latest) shaped like `template`.

    The arrays take the template's sharding, whatever mesh wrote them. `data_state` is None when
    the checkpoint holds no iterator state for this process count (it was written by a run with
    another number of processes): the caller starts a fresh iterator.
    """
    step = self.latest_step() if step is None else step
    step_dir = self.path(step)
    holder = _IteratorState()
    items = dict(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
    if os.path.isfile(os.path.join(step_dir, 'data', data_file_name())):
      import grain.checkpoint as grain_checkpoint  # pylint: disable=import-outside-toplevel
      items['data'] = grain_checkpoint.CheckpointRestore(holder)
    out = _restore_guarded(step_dir, ('state', 'meta'), lambda: self.periodic.restore(
        step, args=ocp.args.Composite(**items)))
    data_state = None if holder.state in (None, b'{}') else holder.state
    return out.state, data_state, dict(out.meta)

  def restore_meta(self, step: Optional[int] = None) -> Dict[str, Any]:
    """The bookkeeping meta of `step` (default: latest), with the saved config under 'config'.

    Read before the state: which optimiser the saved opt_state belongs to is in there.
    """
    step = self.latest_step() if step is None else step
    out = _restore_guarded(self.path(step), ('meta', 'config'), lambda: self.periodic.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(),
                                      config=ocp.args.JsonRestore())))
    return {**dict(out.meta), 'config': dict(out.config)}

  def set_aside(self, steps) -> list:
    """Moves periodic checkpoints `steps` into `workdir/checkpoints.damaged/` (kept for
    inspection; the run writes those steps again) and returns their new paths."""
    target_dir = os.path.join(self.workdir, DAMAGED_DIR)
    moved = []
    if jax.process_index() == 0:
      os.makedirs(target_dir, exist_ok=True)
      for step in steps:
        target = os.path.join(target_dir, str(step))
        suffix = 1
        while os.path.exists(target):
          target, suffix = os.path.join(target_dir, f'{step}.{suffix}'), suffix + 1
        os.replace(self.path(step), target)
        moved.append(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices('hcnn_jax checkpoints set aside')
    self.periodic.reload()
    return moved or [os.path.join(target_dir, str(s)) for s in steps]

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
    """`(variables, meta)` of the best checkpoint, shaped and sharded like `template` (default:
    as saved, on `default_sharding()`)."""
    step = self.best_step()
    if step is None:
      raise ValueError(f'no best checkpoint in {os.path.join(self.workdir, BEST_DIR)}: train '
                       'for at least one epoch (validation selects it) before reloading it')
    self.best.wait_until_finished()
    step_dir = self.best_path()

    def restore():
      target = template if template is not None else abstract_item(step_dir, 'variables')
      return self.best.restore(step, args=ocp.args.Composite(
          variables=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    out = _restore_guarded(step_dir, ('variables', 'meta'), restore)
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
  raise ValueError(f'no checkpoint found under {path}: train first (hcnn-train --workdir {path}) '
                   'or pass the directory of a finished run')


def restore_variables(path: str, sharding: Optional[jax.sharding.Sharding] = None
                      ) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
  """`(variables, meta, config_dict)` from any checkpoint `resolve` accepts.

  The arrays are placed with `sharding` (default `default_sharding()`), whatever devices wrote
  them. Raises CheckpointError (one line) when the checkpoint is damaged.
  """
  directory, step, kind = resolve(path)
  items = _BEST_ITEMS if kind == 'best' else _STATE_ITEMS
  item = 'variables' if kind == 'best' else 'state'
  step_dir = os.path.join(directory, str(step))
  manager = _manager(directory, items, max_to_keep=None, read_only=True)

  def restore():
    # The target comes from the saved tree itself: arrays come back as saved (a nested dict),
    # whatever the optimiser was, on the current devices. Of a training state only params and
    # batch_stats are read: the optimiser state (two more copies of the weights for Adam) and
    # the rest stay on disk.
    target = abstract_item(step_dir, item, sharding)
    if isinstance(target, dict) and 'params' in target:
      target = {k: target[k] for k in ('params', 'batch_stats') if k in target}
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
    return manager.restore(step, args=ocp.args.Composite(**{
        item: ocp.args.PyTreeRestore(target, restore_args, partial_restore=True),
        'meta': ocp.args.JsonRestore(), 'config': ocp.args.JsonRestore()}))
  try:
    out = _restore_guarded(step_dir, (item, 'meta', 'config'), restore)
  finally:
    manager.close()
  tree = out[item]
  if not isinstance(tree, dict) or 'params' not in tree:
    raise CheckpointError(f'checkpoint {step_dir} is damaged: its {item}/ holds no params')
  variables = {'params': tree['params'], 'batch_stats': tree.get('batch_stats') or {}}
  # Checked on the host: jnp.isfinite would compile two small programs per weight shape.
  bad = [jax.tree_util.keystr(key) for key, x in jax.tree_util.tree_leaves_with_path(variables)
         if jnp.issubdtype(x.dtype, jnp.inexact) and not np.isfinite(np.asarray(x)).all()]
  if bad:
    # Written by a run that diverged (before the step checked its own updates); its scores
    # would all be NaN.
    more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
    raise CheckpointError(f'checkpoint {step_dir} holds non-finite values in {", ".join(bad[:3])}'
                          f'{more}: use an earlier checkpoint of the run')
  return variables, dict(out.meta), dict(out.config)


def load_for_inference(path: str):
  """`(model, variables, config, class_names)` for tools that tag, plot or evaluate.

  `path` is a training workdir (its best checkpoint is used), a `best/` or `checkpoints/` directory,
  or one step directory. The model is built from the saved config without `bn_axis_name`; apply it
  with `model.apply(variables, audio, train=False)`.
  """
  # Imported here: the registry pulls in the model zoo, which checkpoint users may not need.
  from hcnn_jax.models import registry  # pylint: disable=import-outside-toplevel
  variables, meta, config_dict = restore_variables(path)
  config = ml_collections.ConfigDict(config_dict)
  class_names = list(meta['class_names'])
  model = registry.build_model(config, num_classes=len(class_names))
  return model, variables, config, class_names
