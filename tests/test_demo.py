"""hcnn-demo's command line (`python demo.py` in a checkout); the demo itself runs end to end in
tests/test_packaging.py, from an installed wheel."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hcnn_jax import configs
from hcnn_jax.cli import demo

REPO = Path(__file__).resolve().parents[1]


def test_the_default_config_is_the_shipped_one_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  shipped = os.path.join(os.path.dirname(configs.__file__), 'hcnn_synth_tiny.py')
  assert demo.with_default_config(['hcnn-demo', '--workdir', 'w']) == [
      'hcnn-demo', '--config', shipped, '--workdir', 'w']
  for given in (['--config', 'c.py'], ['--config=c.py'], ['-config', 'c.py']):
    assert demo.with_default_config(['hcnn-demo', *given]) == ['hcnn-demo', *given]
  # An override of a key is no config file: the default still comes first.
  assert demo.with_default_config(['hcnn-demo', '--config.batch_size=2'])[1:3] == [
      '--config', shipped]


def test_a_mistyped_key_of_the_default_config_is_one_line(tmp_path):
  """ml_collections loads a flag's default config while defining the flag, where a bad override
  is a traceback; the demo gives its default on the command line, so flag_errors words it."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, str(REPO / 'demo.py'), '--workdir', 'run',
                         '--config.batchsize=8'], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 1
  assert done.stderr == ('demo.py: error: --config.batchsize: no such key in '
                         f'{os.path.join(os.path.dirname(configs.__file__), "hcnn_synth_tiny.py")}'
                         '; did you mean --config.batch_size\n')
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'data').exists()
