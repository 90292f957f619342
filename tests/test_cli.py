"""The command lines (train.py, eval.py) and the run configs they read."""
from __future__ import annotations

import glob
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hcnn_jax.configs import fake_tiny, paper
from hcnn_jax.data import sources
from hcnn_jax.models import registry
from hcnn_jax.configs import base as config_base
from hcnn_jax.training import loop

REPO = Path(__file__).resolve().parents[1]
FAKE = 'tracks=16,classes=5,samples=24000'


def _run(args, cache_dir, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, cache_dir):
  """One epoch of fake_tiny trained in this process."""
  config = fake_tiny.get_config()
  config.dataset.config_name = FAKE
  config.num_epochs = 1
  workdir = str(tmp_path_factory.mktemp('trained'))
  return workdir, loop.train_and_evaluate(config, workdir)


def test_eval_cli_reproduces_the_training_runs_test_metrics(trained, cache_dir):
  workdir, result = trained
  done = _run(['eval.py', '--config', 'hcnn_jax/configs/fake_tiny.py',
               f'--config.dataset.config_name={FAKE}', '--workdir', workdir, '--split', 'test'],
              cache_dir)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'test metrics of' in done.stdout and 'roc_auc' in done.stdout
  metrics = json.load(open(os.path.join(workdir, 'metrics_test.json')))
  # The same best weights, chunks and compiled program as the run's own final evaluation.
  for key in ('loss', 'roc_auc', 'pr_auc', 'num_examples'):
    assert metrics[key] == result[key], key
  assert metrics['split'] == 'test' and metrics['checkpoint'] == result['checkpoint']
  # How the scores were computed, and no absolute path: the file describes the run anywhere.
  assert metrics['checkpoint'].startswith('best' + os.sep)
  assert metrics['checkpoint_step'] == result['checkpoint_step'] == int(
      metrics['checkpoint'].split(os.sep)[-1])
  assert metrics['eval_chunks'] == result['eval_chunks'] == 4
  assert workdir not in open(os.path.join(workdir, 'metrics_test.json')).read()
  table = open(os.path.join(workdir, 'per_class_test.csv')).read().splitlines()
  assert table[0] == 'class,positives,pr_auc,roc_auc' and len(table) == 6
  assert os.path.exists(os.path.join(workdir, 'per_class_test.md'))


def test_evaluate_latest_checkpoint_on_validation(trained, cache_dir):
  workdir, _ = trained
  config = fake_tiny.get_config()
  config.dataset.config_name = FAKE
  result = loop.evaluate(config, workdir, split='validation', checkpoint='latest')
  assert result['checkpoint'] == os.path.join('checkpoints', str(result['checkpoint_step']))
  logged = json.load(open(os.path.join(workdir, 'metrics_validation.json')))
  assert logged['loss'] == result['loss'] and result['num_examples'] == 16
  other = fake_tiny.get_config()
  other.dataset.config_name = 'tracks=16,classes=4,samples=24000'
  with pytest.raises(ValueError, match='dataset: the validation split'):
    loop.evaluate(other, workdir, split='validation')


def test_train_cli_rejects_a_bad_config_in_words(tmp_path, cache_dir):
  workdir = tmp_path / 'run'
  done = _run(['train.py', '--config', 'hcnn_jax/configs/fake_tiny.py', '--workdir',
               str(workdir), '--config.input_length=1000'], cache_dir)
  assert done.returncode == 1
  assert 'train.py: error: bad config' in done.stderr
  assert '- input_length: An input of 1,000 samples does not fit' in done.stderr
  assert 'Traceback' not in done.stderr
  assert not workdir.exists()


def test_eval_cli_without_a_trained_run_says_so(tmp_path, cache_dir):
  done = _run(['eval.py', '--config', 'hcnn_jax/configs/fake_tiny.py', '--workdir',
               str(tmp_path)], cache_dir)
  assert done.returncode == 1
  assert 'eval.py: error: no checkpoint found under' in done.stderr
  assert 'train first' in done.stderr


def test_train_cli_builds_the_embedded_dataset_when_missing(tmp_path, cache_dir):
  code = ('from train import ensure_embedded_dataset\n'
          'from hcnn_jax.configs import hcnn_synth_tiny\n'
          'c = hcnn_synth_tiny.get_config()\n'
          f'c.dataset.data_dir = {str(tmp_path)!r}\n'
          "c.dataset.config_name = 'tiny'\n"
          'ensure_embedded_dataset(c)\n')
  done = _run(['-c', code], cache_dir)
  assert done.returncode == 0, done.stderr[-3000:]
  source, metadata = sources.load('synth_gm', 'train', str(tmp_path), 'tiny')
  assert len(source) > 0 and metadata['task'] == 'tagging'


CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    str(REPO / 'hcnn_jax' / 'configs' / '*.py')) if not p.endswith(('__init__.py', 'base.py',
                                                                       'paper.py')))


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_every_config_file_validates(name):
  module = importlib.import_module(f'hcnn_jax.configs.{name}')
  config = module.get_config()
  config_base.validate(config)
  assert 'python train.py --config hcnn_jax/configs/' + name + '.py' in module.__doc__


def test_paper_configs_cover_both_tables_with_registered_input_lengths():
  assert len(paper.PAIRS) == 12 * 3 + 2 * 3  # SMC: 12 models x 3 sets; ICASSP: 3 x 2 more
  for model, dataset in sorted(paper.PAIRS):
    config = paper.get_config(f'model={model},dataset={dataset}')
    assert config.input_length == registry.default_input_length(config.model.name)
    config_base.validate(config)
  assert paper.get_config('model=hcnn,dataset=speech_commands').model.name == 'hcnn_keywords'
  assert paper.get_config('model=musicnn,dataset=msd').model.kwargs.variant == 'msd'
  assert paper.get_config('model=hcnn,dataset=mtat,n_harmonic=3').model.kwargs.n_harmonic == 3
  with pytest.raises(ValueError, match='table cells'):
    paper.get_config('model=crnn,dataset=dcase')
