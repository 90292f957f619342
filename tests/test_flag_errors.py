"""A mistyped command line gets one line naming the flag, key or file and the nearest valid ones.

The real entry points run as subprocesses (absl parses their flags before `main`), each ending
before any data is read or anything compiled.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hcnn_jax.configs import fake_tiny, hcnn_synth_tiny
from hcnn_jax.configs import base as config_base

REPO = Path(__file__).resolve().parents[1]
TINY = 'hcnn_jax/configs/fake_tiny.py'
COSINE = 'hcnn_jax/configs/hcnn_synth_tiny.py'  # the adamw_cosine recipe
ENTRY_POINTS = {'train.py': ['train.py'], 'eval.py': ['eval.py'],
                'ablation': ['-m', 'hcnn_jax.tools.ablation'],
                'robustness': ['-m', 'hcnn_jax.tools.robustness']}


def _one_line_error(prog: str, args, tmp_path) -> str:
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, *ENTRY_POINTS[prog], *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 1, done.stderr[-3000:]
  assert len(lines) == 1 and 'Traceback' not in done.stderr, done.stderr[-3000:]
  assert lines[0].startswith(f'{prog}: error: ')
  assert not list(tmp_path.glob('run*')), 'nothing is created before the error'
  return lines[0]


@pytest.mark.parametrize('prog', sorted(ENTRY_POINTS))
def test_a_mistyped_override_names_the_nearest_key(prog, tmp_path):
  line = _one_line_error(prog, ['--config', TINY, '--config.batchsize=8', '--workdir',
                                str(tmp_path / 'run')], tmp_path)
  assert line.endswith(f'--config.batchsize: no such key in {TINY}; did you mean '
                       '--config.batch_size')


@pytest.mark.parametrize('prog', ['train.py', 'eval.py'])
def test_a_missing_config_file_names_the_nearest_files(prog, tmp_path):
  line = _one_line_error(prog, ['--config', 'hcnn_jax/configs/hcnn_synth_tin.py', '--workdir',
                                str(tmp_path / 'run')], tmp_path)
  assert line.endswith('--config hcnn_jax/configs/hcnn_synth_tin.py: no such file; did you mean '
                       'hcnn_jax/configs/hcnn_synth_tiny.py or hcnn_jax/configs/hcnn_synth.py')
  line = _one_line_error(prog, ['--config', 'hcnn_jax/configs/nope.py', '--workdir',
                                str(tmp_path / 'run')], tmp_path)
  assert 'nope.py: no such file; the config files there: fake_tiny.py, ' in line
  assert 'base.py' not in line and '_ErrorConfig' not in line


def test_a_workdir_that_is_a_file_is_named_and_warmup_steps_can_be_set(tmp_path):
  workdir = tmp_path / 'notes.txt'
  workdir.write_text('not a run')
  # The override is accepted (the error comes later, from the workdir): the adamw_cosine recipe
  # holds warmup_steps as a typed placeholder, as the schedule's own error message asks.
  line = _one_line_error('train.py', ['--config', COSINE, '--config.optimizer.warmup_steps=2',
                                      '--workdir', str(workdir)], tmp_path)
  assert line == (f'train.py: error: --workdir {workdir}: is a file, not a directory; pass a '
                  'directory')
  assert workdir.read_text() == 'not a run'


def test_an_optimizer_key_of_another_recipe_names_that_recipe(tmp_path):
  line = _one_line_error('train.py', ['--config', TINY, '--config.optimizer.warmup_steps=2',
                                      '--workdir', str(tmp_path / 'run')], tmp_path)
  assert "--config.optimizer.warmup_steps: no such key in" in line
  assert "warmup_steps belongs to the 'adamw_cosine' optimizer recipe" in line


def test_warmup_steps_is_a_typed_placeholder_and_typos_in_files_get_the_nearest_key():
  config = hcnn_synth_tiny.get_config()
  assert config.optimizer.warmup_steps is None
  assert config.optimizer.get_type('warmup_steps') is int
  config = fake_tiny.get_config()
  with config.unlocked():
    config.batchsize = 8
    config.dataset.nme = 'x'
    config.optimizer.adam_lrr = 1e-3
  with pytest.raises(ValueError) as err:
    config_base.validate(config)
  message = str(err.value)
  assert "- unknown key(s) ['batchsize'] (a typo?): did you mean 'batch_size'?" in message
  assert "- dataset: unknown key(s) ['nme'] (a typo?): did you mean 'name'?" in message
  assert "- optimizer: unknown key(s) ['adam_lrr'] (a typo?): did you mean 'adam_lr'?" in message
