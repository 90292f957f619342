"""`train_and_evaluate` end to end on the fake set: outputs, the reference schedule, the guards.

Every run uses the fake_tiny model at batch 8 and 16,000 samples, so the Adam step, the SGD step and
the eval step compile once per machine (JAX's persistent cache in pytest's cache directory) and
are shared with test_resume.py and test_cli.py.
"""
from __future__ import annotations

import json
import logging
import os
import re

import jax
import numpy as np
import pytest

from hcnn_jax.configs import fake_tiny
from hcnn_jax.data import pipeline
from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.configs import base as config_base
from hcnn_jax.training import loop, optim, parallel, track_eval, writers
from hcnn_jax.training import state as state_lib

# Every test here shares JAX's persistent compilation cache (conftest's cache_dir).
pytestmark = pytest.mark.usefixtures('cache_dir')


def tiny_config(tracks: int = 24, **overrides):
  c = fake_tiny.get_config()
  c.dataset.config_name = f'tracks={tracks},classes=5,samples=24000'
  for key, value in overrides.items():
    c[key] = value
  return c


def _host(tree):
  return jax.tree.map(np.array, jax.device_get(tree))


def _equal(a, b) -> bool:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(leaves_a) == len(leaves_b) and all(
      x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
      for x, y in zip(leaves_a, leaves_b))


def _traces(opt_state):
  """The SGD momentum buffers (optax TraceState.trace) of an optimiser state."""
  found = []

  def visit(node):
    if type(node).__name__ == 'TraceState':
      found.append(node.trace)
      return
    if isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)
    elif hasattr(node, '_fields'):
      for child in node:
        visit(child)
  visit(opt_state)
  return found


# ------------------------------------------------------------------ the reference schedule run

# Validation losses scripted per epoch: epoch 1 stays the best, so every switch must bring its
# weights back, whatever training did since.
SCRIPTED_VAL_LOSS = (0.5, 0.9, 0.8, 0.7)


@pytest.fixture(scope='module')
def schedule_run(tmp_path_factory):
  """4 epochs of 3 steps: Adam (1 epoch), SGD 1e-3, SGD 1e-4, SGD 1e-5; all instrumented."""
  workdir = str(tmp_path_factory.mktemp('schedule_run'))
  config = tiny_config(num_epochs=4, checkpoints_to_keep=20)  # keep every step for the checks
  seen, builds, reloads = {}, [], []
  real_make, real_eval = parallel.make_train_step, track_eval.evaluate_source
  real_restore_best = ckpt_lib.RunCheckpoints.restore_best

  def make_train_step(model, loss_fn, tx, mesh, **kw):
    fn = real_make(model, loss_fn, tx, mesh, **kw)
    builds.append(int(len(seen)))

    def recorded(state, batch):  # copies first: the step donates the state's buffers
      seen[int(state.step)] = dict(
          params=_host(state.params),
          adam='ScaleByAdamState' in str(jax.tree.structure(state.opt_state)),
          lr=float(optim.learning_rate(state.opt_state)),
          traces=_host(_traces(state.opt_state)))
      return fn(state, batch)
    return recorded

  def evaluate_source(eval_fn, variables, source, config, task, class_names, mesh, desc,
                      timer=None):
    result = real_eval(eval_fn, variables, source, config, task, class_names, mesh, desc, timer)
    if desc.startswith('validation'):
      result['loss'] = SCRIPTED_VAL_LOSS[int(desc.split()[-1]) - 1]
    return result

  def restore_best(self, template=None):
    variables, meta = real_restore_best(self, template)
    reloads.append((self.best_step(), _host(variables['params'])))
    return variables, meta

  console = _Lines()  # what the CLIs print at INFO (writers.configure_cli_logging)
  logger = logging.getLogger('hcnn_jax')
  level = logger.level
  logger.setLevel(logging.INFO)
  logger.addHandler(console)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(parallel, 'make_train_step', make_train_step)
    mp.setattr(track_eval, 'evaluate_source', evaluate_source)
    mp.setattr(ckpt_lib.RunCheckpoints, 'restore_best', restore_best)
    try:
      result = loop.train_and_evaluate(config, workdir)
    finally:
      logger.removeHandler(console)
      logger.setLevel(level)
  return dict(workdir=workdir, result=result, seen=seen, builds=builds, reloads=reloads,
              config=config, console=console.lines)


class _Lines(logging.Handler):

  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def test_run_writes_checkpoints_logs_and_results(schedule_run):
  workdir, result = schedule_run['workdir'], schedule_run['result']
  # steps_per_epoch unset: 24 tracks // batch 8 = 3 steps per epoch.
  assert sorted(schedule_run['seen']) == list(range(12))
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  assert steps == [2, 3, 4, 6, 8, 9, 10, 12]  # every 2 steps, plus each epoch end
  assert os.listdir(os.path.join(workdir, 'best')) == ['3']

  metrics = json.load(open(os.path.join(workdir, 'metrics.json')))
  for key in ('roc_auc', 'pr_auc', 'loss', 'per_class', 'positives'):
    assert key in metrics and key in result
  assert metrics['split'] == 'test' and metrics['best_epoch'] == 1
  # How the scores were computed, with the checkpoint named inside the workdir: no file records
  # where the run lived.
  assert metrics['checkpoint'] == os.path.join('best', '3') and metrics['checkpoint_step'] == 3
  assert metrics['eval_chunks'] == schedule_run['config'].eval_chunks == 4
  assert metrics['input_length'] == schedule_run['config'].input_length
  for name in os.listdir(workdir):
    if name.endswith(('.json', '.csv', '.md')) and name != 'config.json':
      assert workdir not in open(os.path.join(workdir, name)).read(), name
  assert 0.0 <= metrics['roc_auc'] <= 1.0 and np.isfinite(metrics['loss'])
  assert json.load(open(os.path.join(workdir, 'config.json')))['num_epochs'] == 4

  lines = open(os.path.join(workdir, 'per_class.csv')).read().splitlines()
  assert lines[0] == 'class,positives,pr_auc,roc_auc'
  assert [line.split(',')[0] for line in lines[1:]] == [f'tone_{k:02d}' for k in range(5)]
  table = open(os.path.join(workdir, 'per_class.md')).read()
  assert '| class | positives | pr_auc | roc_auc |' in table and '| tone_04 |' in table

  rows = writers.read_csv(workdir)
  val = [(r['step'], r['value']) for r in rows if r['name'] == 'val/loss']
  assert val == [(3, 0.5), (6, 0.9), (9, 0.8), (12, 0.7)]
  assert {r['step'] for r in rows if r['name'] == 'train/loss'} == {2, 3, 4, 6, 8, 9, 10, 12}
  assert any(r['name'] == 'test/roc_auc' for r in rows)
  events = os.listdir(os.path.join(workdir, writers.TB_DIR))
  assert any(name.startswith('events.out.tfevents') for name in events)


def test_each_epoch_prints_its_validation_scores_and_the_runs_eta(schedule_run):
  lines = [line for line in schedule_run['console'] if re.match(r'epoch \d/4 step', line)]
  number = r'(\d+\.\d+|nan)'
  # Scripted validation losses; ROC-AUC and PR-AUC are the real ones of the tiny model.
  for epoch, line in enumerate(lines, 1):
    assert re.search(rf'validation loss {number}, pr_auc {number}, roc_auc {number}; '
                     rf'best loss 0\.5000 at epoch 1; ', line), line
    assert f'epoch {epoch}/4 step {3 * epoch}: validation loss ' \
        f'{SCRIPTED_VAL_LOSS[epoch - 1]:.4f}' in line, line
    # Timed from each epoch's first finished step: 2 of 3 steps, compiling left out.
    assert re.search(r'\d+\.\d clips/s, run ETA \d+:\d\d', line), line
  assert len(lines) == 4
  assert lines[-1].endswith('run ETA 0:00')  # nothing left after the last validation


def test_reference_schedule_optimiser_and_lr_per_epoch(schedule_run):
  seen = schedule_run['seen']
  expected = {0: (True, 1e-3), 1: (False, 1e-3), 2: (False, 1e-4), 3: (False, 1e-5)}
  for step, record in seen.items():
    adam, lr = expected[step // 3]
    assert record['adam'] == adam, step
    assert record['lr'] == pytest.approx(lr, rel=1e-6), step
  # One new optimiser (Adam → SGD); the lr drops keep the compiled step and its state.
  assert schedule_run['builds'] == [0, 3]
  assert all(not np.any(leaf) for leaf in jax.tree.leaves(seen[3]['traces']))  # fresh SGD
  for first in (6, 9):  # momentum survives the lr drops
    assert any(np.any(leaf) for leaf in jax.tree.leaves(seen[first]['traces']))
  rows = writers.read_csv(schedule_run['workdir'])
  assert [(r['step'], r['value']) for r in rows if r['name'] == 'schedule/phase'] == [
      (3, 1.0), (6, 2.0), (9, 3.0)]


def test_each_switch_reloads_the_best_weights(schedule_run):
  seen, workdir = schedule_run['seen'], schedule_run['workdir']
  best = seen[3]['params']  # the weights after epoch 1, the best by the scripted losses
  assert [step for step, _ in schedule_run['reloads'][:3]] == [3, 3, 3]
  for first in (3, 6, 9):
    assert _equal(seen[first]['params'], best), first
  # Without the reload, epoch 3 would have started from the end of epoch 2.
  end_of_epoch2, _, _ = ckpt_lib.restore_variables(os.path.join(workdir, 'checkpoints', '6'))
  assert not _equal(_host(end_of_epoch2['params']), best)
  rows = writers.read_csv(workdir)
  assert [(r['step'], r['value']) for r in rows if r['name'] == 'schedule/reloaded_best_step'] \
      == [(3, 3.0), (6, 3.0), (9, 3.0)]
  # The final evaluation used the best checkpoint too (the fourth restore).
  assert schedule_run['reloads'][3][0] == 3


def test_rerun_of_a_finished_run_only_re_evaluates(schedule_run, monkeypatch):
  calls = []
  monkeypatch.setattr(parallel, 'make_train_step',
                      lambda *a, **k: calls.append(1) or (lambda s, b: pytest.fail('trained')))
  result = loop.train_and_evaluate(schedule_run['config'], schedule_run['workdir'])
  assert result['roc_auc'] == schedule_run['result']['roc_auc']
  assert result['step'] == 12


# ------------------------------------------------------------------------------------ guards

class _PoisonedLoader:
  """A train loader whose batch number `bad` (0-based) carries NaN audio (float32: the loader's
  int16 crops cannot hold a NaN, and the step takes float audio as it is)."""

  def __init__(self, loader, bad: int):
    self.loader, self.bad = loader, bad

  def __iter__(self):
    return _PoisonedIterator(iter(self.loader), self.bad)


class _PoisonedIterator:

  def __init__(self, it, bad):
    self.it, self.bad, self.count = it, bad, 0

  def __next__(self):
    batch = next(self.it)
    if self.count == self.bad:
      batch = dict(batch, audio=np.full(batch['audio'].shape, np.nan, np.float32))
    self.count += 1
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def test_nan_stops_training_naming_the_step_and_keeps_last_good_checkpoint(tmp_path,
                                                                            monkeypatch):
  real_loader = pipeline.train_loader
  monkeypatch.setattr(pipeline, 'train_loader',
                      lambda *a, **k: _PoisonedLoader(real_loader(*a, **k), bad=3))
  config = tiny_config(tracks=16, num_epochs=2, steps_per_epoch=6)
  workdir = str(tmp_path / 'run')
  last_good = os.path.join(workdir, 'checkpoints', '2')
  with pytest.raises(FloatingPointError,
                     match=rf'non-finite loss, gradient or updated state at step 3; last good '
                           rf'checkpoint: '
                           rf'{last_good}$'):
    loop.train_and_evaluate(config, workdir)
  # The guard fired at the log step 4, before saving it; the checkpoint it names restores finite.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  assert not os.listdir(os.path.join(workdir, 'best'))
  variables, meta, _ = ckpt_lib.restore_variables(last_good)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(variables))
  assert meta['bookkeeping']['epochs_done'] == 0
  assert not os.path.exists(os.path.join(workdir, 'metrics.json'))


@pytest.mark.parametrize('change, key', [
    (dict(input_length=1000), 'input_length'),
    (dict(model={'name': 'no_such_model', 'kwargs': {}}), 'model.name'),
    (dict(batch_size=0), 'batch_size'),
    (dict(task='captioning'), 'task'),
    (dict(eval_chunks=0), 'eval_chunks'),
    (dict(dataset={'name': 'mtat', 'data_dir': '', 'config_name': ''}), 'dataset.data_dir'),
])
def test_config_errors_name_the_key_before_any_compile(tmp_path, monkeypatch, change, key):
  def no_compile(*a, **k):
    raise AssertionError('compiled before the config was checked')
  monkeypatch.setattr(state_lib, 'create_train_state', no_compile)
  monkeypatch.setattr(parallel, 'make_train_step', no_compile)
  monkeypatch.setattr(parallel, 'make_eval_step', no_compile)
  config = tiny_config()
  for k, v in change.items():
    config[k] = v
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=rf'bad config:[\s\S]*- {key}: '):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_validate_lists_every_problem_at_once():
  config = tiny_config(input_length=1000, worker_count=-1)
  config.optimizer.sgd_lrs = (1e-3,)
  with config.unlocked():
    config.batch_sizee = 8
  with pytest.raises(ValueError) as err:
    config_base.validate(config)
  message = str(err.value)
  assert "unknown key(s) ['batch_sizee']" in message
  assert '- worker_count: ' in message and '- optimizer: ' in message
  assert '- input_length: ' in message and 'the shortest input that fits is' in message


# ----------------------------------------------------------------------------------- writers

def test_metric_writer_resume_drops_later_rows_and_skips_non_scalars(tmp_path):
  workdir = str(tmp_path)
  with writers.MetricWriter(workdir) as w:
    for step in (1, 2, 3):
      w.write_scalars(step, {'loss': step / 10, 'per_class': {'a': 1.0}, 'name': 'x'},
                      prefix='train/')
    w.write_scalars(3, {'nan': float('nan')})
  with writers.MetricWriter(workdir, resume_step=2) as w:
    w.write_scalars(3, {'loss': 0.25}, prefix='train/')
  rows = [(r['step'], r['name'], r['value']) for r in writers.read_csv(workdir)]
  assert rows == [(1, 'train/loss', 0.1), (2, 'train/loss', 0.2), (3, 'train/loss', 0.25)]
  with writers.MetricWriter(workdir, enabled=False) as w:  # other hosts of a multi-host run
    w.write_scalars(4, {'loss': 1.0})
  assert len(writers.read_csv(workdir)) == 3
