"""Kill `train.py` with SIGKILL mid-run, start it again, and get bit-identical final weights.

Three processes run the same command on the fake set: one uninterrupted, one killed as soon as a
mid-run checkpoint is on disk, and its restart. The run crosses the Adam → SGD switch (with a
reload of the best weights), so the optimiser swap, the best checkpoint and the grain iterator
state all have to come back exactly. Compiled programs are shared through JAX's persistent cache
(in pytest's cache directory), so only the first run of a session compiles.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.training import writers

REPO = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 12  # 2 epochs x 6 steps
COMMAND = [
    sys.executable, 'train.py', '--config', 'hcnn_jax/configs/fake_tiny.py',
    '--config.dataset.config_name=tracks=16,classes=5,samples=24000',
    '--config.num_epochs=2', '--config.steps_per_epoch=6', '--config.checkpoint_every_steps=2',
    '--config.log_every_steps=2',
]


def _run(workdir: Path, env, log: Path) -> subprocess.CompletedProcess:
  with open(log, 'w') as out:
    return subprocess.run(COMMAND + ['--workdir', str(workdir)], cwd=REPO, env=env, stdout=out,
                          stderr=subprocess.STDOUT, timeout=600, check=False)


def _finished_steps(workdir: Path) -> list:
  directory = workdir / ckpt_lib.CHECKPOINT_DIR
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _weights(path: Path):
  variables, meta, _ = ckpt_lib.restore_variables(str(path))
  return jax.device_get(variables), meta


def _assert_bitwise_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path, env):
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  done = _run(straight, env, tmp_path / 'straight.log')
  assert done.returncode == 0, (tmp_path / 'straight.log').read_text()[-3000:]

  with open(tmp_path / 'killed.log', 'w') as out:
    proc = subprocess.Popen(COMMAND + ['--workdir', str(killed)], cwd=REPO, env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
      deadline = time.time() + 600
      while proc.poll() is None and not _finished_steps(killed) and time.time() < deadline:
        time.sleep(0.02)
      proc.send_signal(signal.SIGKILL)
    finally:
      proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
  saved = _finished_steps(killed)
  assert saved and max(saved) < TOTAL_STEPS
  assert not (killed / 'metrics.json').exists()

  resumed = _run(killed, env, tmp_path / 'resumed.log')
  log = (tmp_path / 'resumed.log').read_text()
  assert resumed.returncode == 0, log[-3000:]
  assert f'Resumed from {killed / ckpt_lib.CHECKPOINT_DIR}' in log

  final_a, meta_a = _weights(straight / ckpt_lib.CHECKPOINT_DIR / str(TOTAL_STEPS))
  final_b, meta_b = _weights(killed / ckpt_lib.CHECKPOINT_DIR / str(TOTAL_STEPS))
  _assert_bitwise_equal(final_a, final_b)
  assert meta_a == meta_b  # epochs, phase and best-so-far bookkeeping
  best_a, _ = _weights(straight / ckpt_lib.BEST_DIR)
  best_b, _ = _weights(killed / ckpt_lib.BEST_DIR)
  _assert_bitwise_equal(best_a, best_b)
  results_a = json.loads((straight / 'metrics.json').read_text())
  results_b = json.loads((killed / 'metrics.json').read_text())
  assert results_a['checkpoint'].startswith('best' + os.sep)  # named inside the workdir
  assert results_a == results_b

  # The restarted run rewrote the metrics after its resume point instead of duplicating them.
  def series(workdir):
    return [(r['step'], r['name'], r['value']) for r in writers.read_csv(str(workdir))
            if r['name'] in ('train/loss', 'val/loss')]
  assert series(straight) == series(killed)
