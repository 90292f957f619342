"""The training loop: `train_and_evaluate(config, workdir)` and `evaluate(config, workdir, split)`.

One run, in order:
1. the config is checked (`configs.base.validate`) before any data is read or anything compiled;
2. the latest checkpoint in `workdir/checkpoints` is restored if there is one: train state, grain
   iterator state and bookkeeping (epochs done, phase, best so far), so a resumed run continues
   bit-for-bit where the saved one was;
3. each epoch: enter the schedule's phase for it (a phase switch reloads the best weights and
   changes the optimiser or its lr, `optim.enter_phase`), `steps_per_epoch` steps (the bar counts
   the steps the devices finished, `progress.py`), track-level validation (`track_eval.py`:
   `eval_chunks` chunks per track, mean of the predictions), the best checkpoint by the task's
   selection metric (validation loss, as sota) in `workdir/best`, a checkpoint, and one console
   line with every validation score, clips/s and the run's ETA;
4. the best checkpoint is evaluated on `final_eval_split` (test): `metrics.json`, `per_class.csv`
   and `per_class.md` (`writers.write_results`).

Guards: the step never applies an update that is non-finite or leaves a non-finite leaf in the
state, and records the first bad step in `state.nonfinite_step`; the host reads it at every log
step, before every save and at every epoch end, and stops with `FloatingPointError` naming the
step and the last good checkpoint, which no poisoned state ever overwrites (every save also checks
the whole state on the device). A resume skips damaged or non-finite checkpoints with a warning,
sets them aside in `checkpoints.damaged/` and continues from the newest intact one; it may run on
other devices or processes than the saved run. Pending asynchronous saves are always finished
before returning or raising.

Outputs in the workdir: `config.json`, `checkpoints/`, `best/`, `metrics.csv`, `tensorboard/`,
`metrics.json`, `per_class.csv`, `per_class.md`.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np

from hcnn_jax import models, tasks
from hcnn_jax.configs import base as config_base
from hcnn_jax.data import in_memory, pipeline, sources
from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.training import optim, parallel, schedule
from hcnn_jax.training import state as state_lib
from hcnn_jax.training import progress, resume, track_eval, writers

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ setup

def _load_split(config: ml_collections.ConfigDict, split: str):
  ds = config.dataset
  data_dir = ds.get('data_dir') or None
  if data_dir is not None:
    data_dir = os.path.expanduser(data_dir)
  return sources.load(ds.name, split, data_dir, ds.get('config_name') or None)


def _task(config: ml_collections.ConfigDict, metadata: Dict[str, Any]) -> tasks.Task:
  kind = config.get('task') or metadata.get('task')
  if kind is None:
    raise ValueError(f'task: dataset {config.dataset.name!r} names no task in its metadata; set '
                     f'config.task to one of {list(tasks.KINDS)}')
  if config.get('task') and metadata.get('task') and config.task != metadata['task']:
    log.warning('config.task %r overrides the dataset\'s task %r.', config.task, metadata['task'])
  return tasks.get_task(kind, config.get('selection_metric'), config.get('selection_mode'))


def _flatten(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def _warn_config_changes(saved: Optional[Dict[str, Any]], config) -> None:
  if not saved:
    return
  now = _flatten(ckpt_lib.config_to_dict(config))
  before = _flatten(saved)
  changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
  if changed:
    log.warning('Resuming with a config that differs from the checkpoint\'s in %s; the run is '
                'no longer an exact continuation.', changed)


# ---------------------------------------------------------------------------------- bookkeeping

def _fresh_book() -> Dict[str, Any]:
  return {'epochs_done': 0, 'epoch_start_step': 0, 'phase': None, 'best_value': None,
          'best_epoch': None, 'best_step': None}


def _meta(book: Dict[str, Any], class_names: List[str], task: tasks.Task) -> Dict[str, Any]:
  return {'bookkeeping': dict(book), 'class_names': list(class_names), 'task': task.kind,
          'selection_metric': task.selection_metric, 'selection_mode': task.selection_mode,
          'topology': ckpt_lib.topology()}


class _Guard:
  """Stops the run at the first non-finite step, naming it and the last good checkpoint."""

  def __init__(self, ckpts: ckpt_lib.RunCheckpoints):
    self.ckpts = ckpts

  def check(self, state: state_lib.TrainState, *, whole: bool = False) -> None:
    """Raises if a step was non-finite; `whole` also checks every leaf of `state` (before a
    save: whatever produced the state, a non-finite one is never written)."""
    bad = int(jax.device_get(state.nonfinite_step))
    if bad < 0 and not (whole and not resume.is_finite(state)):
      return
    self.ckpts.wait()
    last = self.ckpts.path(self.ckpts.latest_step())
    where = last or 'none (the failure came before the first checkpoint)'
    what = (f'non-finite loss, gradient or updated state at step {bad}' if bad >= 0 else
            f'non-finite values in the state at step {int(jax.device_get(state.step))}')
    raise FloatingPointError(f'{what}; last good checkpoint: {where}')


def _enter_phase(index: int, phase_list: List[schedule.Phase], previous: Optional[int],
                 state: state_lib.TrainState, ckpts: ckpt_lib.RunCheckpoints, mesh,
                 ) -> Tuple[state_lib.TrainState, Optional[Any], Dict[str, float]]:
  """The state entering phase `index` from phase `previous`, the new tx (if any), log entries."""
  new = phase_list[index]
  prev = None if previous is None else phase_list[previous]
  logged = {'schedule/phase': float(index)}
  if new.reload_best and prev is not None:
    if ckpts.best_step() is None:
      log.warning('Phase %d asks to reload the best weights, but no epoch had a usable '
                  'validation score yet; continuing with the current ones.', index)
    else:
      try:
        variables, _ = ckpts.restore_best({'params': state.params,
                                           'batch_stats': state.batch_stats})
      except ckpt_lib.CheckpointError as err:
        log.warning('Phase %d cannot reload the best weights (%s); continuing with the current '
                    'ones.', index, err)
      else:
        state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
        logged['schedule/reloaded_best_step'] = float(ckpts.best_step())
        log.info('Phase %d: reloaded the best weights (step %d).', index, ckpts.best_step())
  entry = optim.enter_phase(new, prev, state.params, state.opt_state)
  state = parallel.replicate(state.replace(opt_state=entry.opt_state), mesh)
  log.info('Phase %d from epoch %d: %s lr %g (%s).', index, new.start_epoch, new.optimizer_name,
           new.learning_rate, 'new optimiser' if entry.action == 'init' else 'lr change')
  return state, entry.tx, logged


# ------------------------------------------------------------------------------------- training

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming what is there) and returns the final test metrics.

  Returns the task's metrics of the best checkpoint on `config.final_eval_split` (default
  'test'): scalars such as `loss`, `roc_auc`, `pr_auc` / `accuracy` / `f1@0.1`, plus `per_class`
  and `positives` tables, what `track_eval.describe` records (`split`, `checkpoint` relative to
  the workdir, `checkpoint_step`, `eval_chunks`, `input_length`), `best_epoch` and `step` (the
  steps trained).
  """
  parallel.maybe_initialize_distributed()
  config_base.validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  train_source, metadata = _load_split(config, 'train')
  val_source, _ = _load_split(config, 'validation')
  class_names = [str(c) for c in metadata['class_names']]
  task = _task(config, metadata)
  batch_size = int(config.batch_size)
  steps_per_epoch = config.get('steps_per_epoch') or pipeline.steps_per_epoch(
      len(train_source), batch_size, jax.process_count())
  if steps_per_epoch < 1:
    raise ValueError(f'batch_size: the train split of {config.dataset.name!r} has '
                     f'{len(train_source)} tracks, fewer than one batch of {batch_size}; lower '
                     'batch_size')
  phase_list = schedule.phases(config, steps_per_epoch)
  model = models.build_model(config, len(class_names), bn_axis_name=parallel.DATA_AXIS)
  mesh = parallel.make_mesh()
  log_every = int(config.get('log_every_steps') or 50)
  ckpt_every = int(config.get('checkpoint_every_steps') or 0)
  if is_main:
    writers.write_json(os.path.join(workdir, 'config.json'), ckpt_lib.config_to_dict(config))

  ckpts = ckpt_lib.RunCheckpoints(workdir, max_to_keep=int(config.get('checkpoints_to_keep')
                                                           or 2))
  writer = decoded = None
  try:
    book = _fresh_book()
    rng = jax.random.PRNGKey(int(config.seed))

    def fresh_state(phase: int):
      # Also the restore target on resume: structure (the saved phase's optimiser state), dtypes
      # and the replicated sharding on this run's devices, whatever devices wrote the checkpoint.
      tx = optim.make_optimizer(phase_list[phase])
      return parallel.replicate(
          state_lib.create_train_state(model, tx, rng, int(config.input_length)), mesh)

    latest, state, data_state, saved_meta = resume.restore_intact(ckpts, fresh_state)
    if latest is None:
      book['phase'] = 0
      state = fresh_state(0)
    else:
      book.update(saved_meta['bookkeeping'])
      _warn_config_changes(saved_meta.get('config'), config)
      resume.warn_topology_change(saved_meta.get('topology'), ckpts.path(latest))
      log.info('Resumed from %s (epoch %d done).', ckpts.path(latest), book['epochs_done'])
    tx = optim.make_optimizer(phase_list[book['phase']])

    # This host's rows of every global batch, where the mesh puts them (parallel.data_shard).
    shard_index, shard_count = parallel.data_shard(mesh)
    if config.get('data_in_memory'):
      t = time.time()
      train_source = decoded = in_memory.DecodedSource(
          train_source, name=f'the train split of {config.dataset.name!r}',
          indices=pipeline.shard_tracks(len(train_source), batch_size, int(config.seed),
                                        shard_index, shard_count))
      log.info('Decoded this host\'s share of the train split into memory: %r, in %.0f s.',
               train_source, time.time() - t)
    # int16 crops: half the bytes through the loader and to the devices; the step rescales.
    loader = pipeline.train_loader(
        train_source, input_length=int(config.input_length), global_batch_size=batch_size,
        seed=int(config.seed), worker_count=int(config.get('worker_count') or 0),
        audio_dtype='int16', shard_index=shard_index, shard_count=shard_count)
    data_iter = iter(loader)
    if data_state is not None:
      data_iter.set_state(data_state)
    train_fn = parallel.make_train_step(model, task.loss, tx, mesh)
    eval_fn = parallel.make_eval_step(model, task.loss, task.predict, mesh)
    writer = writers.MetricWriter(workdir, resume_step=latest, enabled=is_main)
    guard = _Guard(ckpts)
    step = int(jax.device_get(state.step))
    num_epochs = int(config.num_epochs)
    bars = progress.RunProgress(num_epochs=num_epochs, steps_per_epoch=steps_per_epoch,
                                batch_size=batch_size, enabled=progress.bar_enabled(config))

    def save(state):
      guard.check(state, whole=True)  # a poisoned state never overwrites the last good one
      ckpts.save(step, state, data_state=data_iter.get_state(),
                 meta=_meta(book, class_names, task), config=config)

    for epoch in range(book['epochs_done'] + 1, num_epochs + 1):
      index = phase_list.index(schedule.phase_at(epoch, phase_list))
      if index != book['phase']:
        state, new_tx, logged = _enter_phase(index, phase_list, book['phase'], state, ckpts,
                                             mesh)
        book['phase'] = index
        writer.write_scalars(step, logged)
        if new_tx is not None:
          train_fn = parallel.make_train_step(model, task.loss, new_tx, mesh)
      done = step - book['epoch_start_step']
      window: List[Dict[str, jax.Array]] = []
      bars.start_epoch(epoch, step)
      tick, tick_step = time.time(), step
      for i in range(done, steps_per_epoch):
        batch = parallel.shard_batch(next(data_iter), mesh)
        state, metrics = train_fn(state, batch)
        step += 1
        window.append(metrics)
        bars.dispatched(metrics['loss'])  # the bar counts finished steps; ≤ 2 wait in flight
        last = i == steps_per_epoch - 1
        if step % log_every == 0 or last:
          guard.check(state)
          host = jax.device_get(window)
          now = time.time()
          logged = {k: float(np.mean([m[k] for m in host])) for k in ('loss', 'grad_norm')}
          logged['lr'] = float(jax.device_get(optim.learning_rate(state.opt_state)))
          logged['steps_per_sec'] = (step - tick_step) / max(now - tick, 1e-9)
          writer.write_scalars(step, logged, prefix='train/')
          bars.set_loss(logged['loss'])
          bars.poll()
          window, tick, tick_step = [], now, step
        if ckpt_every and step % ckpt_every == 0 and not last:
          save(state)
      bars.end_epoch()

      guard.check(state)
      timer = progress.ValidationTimer()
      val = track_eval.evaluate_source(eval_fn, state_lib.variables(state), val_source, config,
                                       task, class_names, mesh, f'validation {epoch}', timer)
      bars.validation_timed(timer)
      writer.write_scalars(step, {**val, 'epoch': epoch}, prefix='val/')
      if task.selection_metric not in val and not val.get('nonfinite_predictions'):
        raise ValueError(f'selection_metric: {task.selection_metric!r} is not among the '
                         f'validation metrics {sorted(k for k in val if k != "per_class")}')
      value = float(val.get(task.selection_metric, float('nan')))  # NaN never becomes the best
      if task.is_better(value, book['best_value']):
        book.update(best_value=value, best_epoch=epoch, best_step=step)
        ckpts.save_best(step, state_lib.variables(state), meta=_meta(book, class_names, task),
                        config=config)
      book.update(epochs_done=epoch, epoch_start_step=step)
      # One line per epoch with every validation score, whether or not a bar is drawn.
      best = book['best_value'] if book['best_value'] is not None else float('nan')
      log.info('epoch %d/%d step %d: validation %s; best %s %.4f at epoch %s; %s', epoch,
               num_epochs, step, track_eval.epoch_line(val), task.selection_metric, best,
               book['best_epoch'], bars.summary() or 'not timed yet')
      save(state)
    ckpts.wait()

    # Final evaluation of the best weights (the last ones if no epoch had a usable score).
    split = config.get('final_eval_split') or 'test'
    eval_source, _ = _load_split(config, split)
    variables = None
    if ckpts.best_step() is not None:
      try:
        variables, _ = ckpts.restore_best(state_lib.variables(state))
        used, used_step = ckpts.best_path(), ckpts.best_step()
      except ckpt_lib.CheckpointError as err:
        log.warning('%s; evaluating the last state instead.', err)
    else:
      log.warning('No best checkpoint (no usable validation score); evaluating the last state.')
    if variables is None:
      used_step = ckpts.latest_step()
      variables, used = state_lib.variables(state), ckpts.path(used_step)
    result = track_eval.evaluate_source(eval_fn, variables, eval_source, config, task,
                                        class_names, mesh, split)
    result.update(track_eval.describe(config, split, used, used_step, workdir),
                  best_epoch=book['best_epoch'], step=step)
    writer.write_scalars(step, result, prefix=f'{split}/')
    if is_main:
      writers.write_results(workdir, result, class_names)
    return result
  finally:
    if writer is not None:
      writer.close()
    ckpts.close()  # finishes pending saves: a failed run keeps its last good checkpoint
    if decoded is not None:
      decoded.remove_file()


# ----------------------------------------------------------------------------- evaluation only

def evaluate(config: ml_collections.ConfigDict, workdir: str, split: str = 'test',
             checkpoint: str = 'best') -> Dict[str, Any]:
  """Track-level evaluation of a trained run on `split`; writes `metrics_<split>.json` and the
  per-tag table `per_class_<split>.csv` / `.md` into `workdir`.

  checkpoint: 'best' (workdir/best), 'latest' (the newest periodic checkpoint) or a path to any
  checkpoint directory.
  """
  parallel.maybe_initialize_distributed()
  config_base.validate(config)
  if split not in config_base.SPLITS:
    raise ValueError(f'split: {split!r}; use one of {list(config_base.SPLITS)}')
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if checkpoint in ('best', 'latest'):
    sub = ckpt_lib.BEST_DIR if checkpoint == 'best' else ckpt_lib.CHECKPOINT_DIR
    path = os.path.join(workdir, sub)
    if not os.path.isdir(path):
      raise ValueError(f'no checkpoint found under {workdir} (it has no {sub}/): train first '
                       f'(hcnn-train --config ... --workdir {workdir}) or pass the workdir '
                       'of a trained run')
  else:
    path = checkpoint
  variables, meta, saved_config = ckpt_lib.restore_variables(path)
  directory, used_step, _ = ckpt_lib.resolve(path)  # the step directory restore_variables read
  saved_model = (saved_config.get('model') or {}).get('name')
  if saved_model and saved_model != config.model.name:
    raise ValueError(f'model.name: the checkpoint in {path} was trained as {saved_model!r}, but '
                     f'the config builds {config.model.name!r}; pass the run\'s own config')
  source, metadata = _load_split(config, split)
  class_names = [str(c) for c in meta['class_names']]
  if [str(c) for c in metadata['class_names']] != class_names:
    raise ValueError(f'dataset: the {split} split of {config.dataset.name!r} has classes '
                     f'{metadata["class_names"]}, the checkpoint {class_names}; evaluate on the '
                     'dataset the model was trained on')
  task = _task(config, metadata)
  model = models.build_model(config, len(class_names), bn_axis_name=parallel.DATA_AXIS)
  mesh = parallel.make_mesh()
  eval_fn = parallel.make_eval_step(model, task.loss, task.predict, mesh)
  variables = parallel.replicate(variables, mesh)
  result = track_eval.evaluate_source(eval_fn, variables, source, config, task, class_names,
                                      mesh, split)
  result.update(track_eval.describe(config, split, os.path.join(directory, str(used_step)),
                                    used_step, workdir),
                best_epoch=meta.get('bookkeeping', {}).get('best_epoch'))
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    writers.write_results(workdir, result, class_names, suffix=f'_{split}')
  return result
