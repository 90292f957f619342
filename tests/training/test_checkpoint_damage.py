"""Damaged checkpoints: readers say in one line which file is damaged; a resume falls back.

The fixtures are real orbax checkpoints written by a short `train_and_evaluate` run (periodic
steps 2 and 4, best 4), then damaged on disk the ways disks and killed copies damage them: a data
file cut to half its bytes, a missing item directory, a `_METADATA` that is not JSON. A state
holding inf (what an older guard let through) is written with our own `RunCheckpoints.save`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from hcnn_jax.tools import tag
from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.models import registry
from hcnn_jax.training import loop, optim, parallel, schedule
from hcnn_jax.training import state as state_lib
from tests.training.test_loop import tiny_config

pytestmark = pytest.mark.usefixtures('cache_dir')
KINDS = ('truncated_data', 'missing_item', 'bad_metadata')


def _config():
  return tiny_config(tracks=16, num_epochs=1, steps_per_epoch=4, checkpoint_every_steps=2)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('damage') / 'run')
  loop.train_and_evaluate(_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  return workdir


def _copy(run, tmp_path) -> str:
  target = str(tmp_path / 'run')
  shutil.copytree(run, target)
  return target


def _damage(step_dir: str, kind: str) -> str:
  """Damages `step_dir`'s array item; returns the path a good message names."""
  item = os.path.join(step_dir, 'variables' if os.path.isdir(
      os.path.join(step_dir, 'variables')) else 'state')
  if kind == 'truncated_data':
    # The OCDBT data files the root manifest reads (not the per-process copies).
    data = os.path.join(item, 'd')
    path = max((os.path.join(data, n) for n in os.listdir(data)), key=os.path.getsize)
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
    return path
  if kind == 'missing_item':
    shutil.rmtree(item)
    return step_dir
  path = os.path.join(item, '_METADATA')
  with open(path, 'w') as f:
    f.write('{"tree_metadata": {"(\'params\',": ')
  return path


def _leaves_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
                                    for x, y in zip(la, lb))


@pytest.mark.parametrize('kind', KINDS)
def test_readers_name_the_damaged_file_in_one_line(run, tmp_path, kind, capsys):
  workdir = _copy(run, tmp_path)
  named = _damage(os.path.join(workdir, 'best', '4'), kind)
  with pytest.raises(ckpt_lib.CheckpointError) as info:
    ckpt_lib.restore_variables(workdir)
  message = str(info.value)
  assert '\n' not in message and named in message and 'damaged' in message, message
  # hcnn-tag: its checkpoint error (exit 2), one line on stderr, no traceback.
  assert tag.main(['--workdir', workdir, os.path.join(workdir, 'none.wav')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and named in err[0] and err[0].startswith('hcnn-tag: error:'), err
  # eval.py prints loop.evaluate's ValueError as its one line (tested in tests/test_cli.py).
  with pytest.raises(ValueError, match='damaged'):
    loop.evaluate(_config(), workdir, split='validation', checkpoint='best')
  # The periodic checkpoints are read the same way.
  named = _damage(os.path.join(workdir, 'checkpoints', '4'), kind)
  with pytest.raises(ckpt_lib.CheckpointError, match='damaged'):
    ckpt_lib.restore_variables(os.path.join(workdir, 'checkpoints'))


def _resume_and_compare(run, workdir, caplog, expected_warning):
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(_config(), workdir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(expected_warning in w for w in warnings), warnings
  assert os.path.isdir(os.path.join(workdir, ckpt_lib.DAMAGED_DIR, '4'))
  # Resumed from step 2 with its data iterator: step 4 comes out as in the undamaged run.
  again, _, _ = ckpt_lib.restore_variables(os.path.join(workdir, 'checkpoints', '4'))
  original, _, _ = ckpt_lib.restore_variables(os.path.join(run, 'checkpoints', '4'))
  assert _leaves_equal(again, original)


@pytest.mark.parametrize('kind', KINDS)
def test_resume_falls_back_to_the_newest_intact_checkpoint(run, tmp_path, kind, caplog):
  workdir = _copy(run, tmp_path)
  named = _damage(os.path.join(workdir, 'checkpoints', '4'), kind)
  _resume_and_compare(run, workdir, caplog, named)


def test_resume_skips_a_checkpoint_holding_non_finite_values(run, tmp_path, caplog):
  workdir = _copy(run, tmp_path)
  config = _config()
  phases = schedule.phases(config, 4)
  model = registry.build_model(config, 5, bn_axis_name=parallel.DATA_AXIS)
  template = state_lib.create_train_state(model, optim.make_optimizer(phases[0]),
                                          jax.random.PRNGKey(0), int(config.input_length))
  with ckpt_lib.RunCheckpoints(workdir, async_save=False) as ckpts:
    state, data_state, meta = ckpts.restore(template, 4)
    shutil.rmtree(ckpts.path(4))
    ckpts.periodic.reload()
    poisoned = state.replace(params=jax.tree.map(lambda x: x * np.inf, state.params))
    ckpts.save(4, poisoned, data_state=data_state, meta=meta, config=config)
  # Readers refuse it in one line instead of tagging with NaN scores.
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"checkpoints/4 holds non-finite values in \['params'\]"):
    ckpt_lib.restore_variables(os.path.join(workdir, 'checkpoints', '4'))
  _resume_and_compare(run, workdir, caplog, 'holds non-finite values')


def test_resume_from_another_process_count_restarts_the_data_iterator(run, tmp_path, caplog):
  """A checkpoint written by 2 processes holds `process_{i}-of-2.json` iterator states, none for
  a single process; its meta records the 2 processes. Built here from a 1-process checkpoint by
  giving its data/ and meta/ exactly those names and values (a 2-process run needs a cluster)."""
  workdir = _copy(run, tmp_path)
  step_dir = os.path.join(workdir, 'checkpoints', '4')
  data = os.path.join(step_dir, 'data')
  state = os.path.join(data, 'process_0-of-1.json')
  for index in (0, 1):
    shutil.copy(state, os.path.join(data, f'process_{index}-of-2.json'))
  os.remove(state)
  meta_path = os.path.join(step_dir, 'meta', 'metadata')
  with open(meta_path) as f:
    meta = json.load(f)
  meta['topology'] = {'process_count': 2, 'device_count': 4}
  with open(meta_path, 'w') as f:
    json.dump(meta, f)
  config = _config()
  config.num_epochs = 2
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(config, workdir)
  warnings = ' '.join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert 'written by 2 process(es) x 4 device(s), on 1 x 1' in warnings, warnings
  assert 'the data iterator restarts, so the data order changes' in warnings, warnings
  with ckpt_lib.RunCheckpoints(workdir) as ckpts:
    assert ckpts.latest_step() == 8


def test_final_evaluation_with_a_damaged_best_checkpoint_uses_the_last_state(run, tmp_path,
                                                                             caplog):
  workdir = _copy(run, tmp_path)
  named = _damage(os.path.join(workdir, 'best', '4'), 'truncated_data')
  with caplog.at_level(logging.WARNING):
    result = loop.train_and_evaluate(_config(), workdir)  # finished: only re-evaluates
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(named in w and 'evaluating the last state' in w for w in warnings), warnings
  assert result['checkpoint'] == os.path.join('checkpoints', '4')
  assert result['checkpoint_step'] == 4
  assert np.isfinite(result['loss'])
