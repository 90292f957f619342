"""A checkpoint does not care how many devices wrote it.

One workdir goes back and forth between 4 fake CPU devices (train.py in a subprocess with
`--xla_force_host_platform_device_count=4`; the flag must be set before JAX starts) and this
process's single device: train on 4, evaluate and tag on 1, resume on 1, evaluate and tag on 4,
resume on 4. Each resume crosses a phase switch, so the best weights written on the other device
count are reloaded too.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf

from hcnn_jax.tools import tag
from hcnn_jax.training import loop
from tests.training.test_loop import tiny_config

REPO = Path(__file__).resolve().parents[2]
CONFIG = ['--config', 'hcnn_jax/configs/fake_tiny.py',
          '--config.dataset.config_name=tracks=16,classes=5,samples=24000',
          '--config.steps_per_epoch=2']


def _run(args, env, devices: int) -> str:
  env = dict(env, XLA_FLAGS=(env.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={devices}').strip())
  proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-4000:]
  assert 'Traceback' not in out, out[-4000:]
  return out


def _train(workdir, epochs, env, devices) -> str:
  return _run(['train.py'] + CONFIG + [f'--config.num_epochs={epochs}', '--workdir', workdir],
              env, devices)


def _logged(workdir, name, step) -> float:
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    rows = [r for r in csv.DictReader(f) if r['name'] == name and int(r['step']) == step]
  return float(rows[-1]['value'])


def _config(epochs):
  return tiny_config(tracks=16, num_epochs=epochs, steps_per_epoch=2)


# Evaluates and tags on all devices of a 4-device process, printing what the test compares.
_READ_ON_4 = '''
import json, sys, jax
from hcnn_jax.tools import tag
from hcnn_jax.training import loop
from tests.training.test_loop import tiny_config
workdir, wav = sys.argv[1:]
config = tiny_config(tracks=16, num_epochs=2, steps_per_epoch=2)
result = loop.evaluate(config, workdir, split='validation', checkpoint='best')
code = tag.main(['--workdir', workdir, '--json', wav])
print('RESULT', json.dumps({'devices': jax.device_count(), 'loss': result['loss'], 'tag': code}))
'''


@pytest.mark.slow
def test_train_on_4_devices_read_and_resume_on_1_and_back(tmp_path, env, capsys):
  if jax.device_count() != 1:
    pytest.skip('this process must have exactly one device')
  workdir = str(tmp_path / 'run')
  wav = str(tmp_path / 'tone.wav')
  t = np.arange(24000) / 16000
  sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)

  _train(workdir, 1, env, devices=4)
  # Read on 1 device what 4 wrote: the same validation loss as the run's own validation.
  result = loop.evaluate(_config(1), workdir, split='validation', checkpoint='best')
  assert result['loss'] == pytest.approx(_logged(workdir, 'val/loss', 2), rel=1e-5, abs=1e-6)
  capsys.readouterr()
  assert tag.main(['--workdir', workdir, '--json', wav]) == 0
  scores = json.loads(capsys.readouterr().out)['results'][0]['scores']
  assert len(scores) == 5 and all(0.0 <= s <= 1.0 for s in scores.values())

  # Resume on 1 device (the Adam -> SGD switch reloads the best weights written on 4).
  out = _train(workdir, 2, env, devices=1)
  assert 'written by 1 process(es) x 4 device(s), on 1 x 1' in out, out[-3000:]
  assert 'the data order is kept' in out
  assert 'reloaded the best weights (step 2)' in out, out[-3000:]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4'))

  # Read on 4 devices what 1 wrote.
  out = _run(['-c', _READ_ON_4, workdir, wav], env, devices=4)
  read = json.loads(out.split('RESULT ', 1)[1].splitlines()[0])
  best_step = int(sorted(os.listdir(os.path.join(workdir, 'best')))[-1])
  assert read['devices'] == 4 and read['tag'] == 0
  assert read['loss'] == pytest.approx(_logged(workdir, 'val/loss', best_step), rel=1e-5,
                                       abs=1e-6)

  # Resume on 4 devices what 1 wrote.
  out = _train(workdir, 3, env, devices=4)
  assert 'written by 1 process(es) x 1 device(s), on 1 x 4' in out, out[-3000:]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '6'))
