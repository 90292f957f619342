"""The logs of a run killed with SIGKILL and started again equal an uninterrupted run's.

`metrics.csv` (without its timing column and the `train/steps_per_sec` values) and the scalars
TensorBoard shows are compared with those of a straight run of the same command. The kills are
placed deterministically: a hook in the killed process (`_KILL_HOOK`, test code only) sends
SIGKILL to its own process right after a given metrics write, which is what `kill -9` from outside
at that moment does (no cleanup, no atexit, nothing flushed that was not yet flushed).

Attempt 1 dies at step 3, before the first checkpoint (step 4): attempt 2 starts from scratch and
must drop attempt 1's rows and events. Attempt 2 dies just after the phase switch of epoch 2 was
logged at step 6, after checkpoint 6 was saved: attempt 3 resumes at step 6 and logs that switch
again, which must appear once. TensorBoard's files are read with the protobufs tensorboardX ships
(the `tensorboard` package is not installed), merged the way TensorBoard merges them.
"""
from __future__ import annotations

import glob
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.training import writers

REPO = Path(__file__).resolve().parents[2]
# The fake set and shapes of test_resume.py / test_cli.py, so the compiled programs are shared.
ARGS = [
    'train.py', '--config', 'hcnn_jax/configs/fake_tiny.py',
    '--config.dataset.config_name=tracks=16,classes=5,samples=24000',
    '--config.num_epochs=2', '--config.steps_per_epoch=6', '--config.checkpoint_every_steps=4',
    '--config.log_every_steps=1',
]
# Runs train.py as `python train.py ...` does, with metrics writes that can end the process.
_KILL_HOOK = '''
import os, runpy, signal, sys, time
from hcnn_jax.training import writers
kill_step, kill_name, wait_for = os.environ['KILL_AT'].split(':')
write = writers.MetricWriter.write_scalars
def write_then_die(self, step, metrics, prefix=''):
  write(self, step, metrics, prefix)
  if int(step) == int(kill_step) and any(prefix + k == kill_name for k in metrics):
    deadline = time.time() + 120  # an asynchronous save still under way: let it finish
    while wait_for and not os.path.isdir(wait_for) and time.time() < deadline:
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
writers.MetricWriter.write_scalars = write_then_die
sys.argv = sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
'''
TIMING = 'train/steps_per_sec'


def _train(workdir: Path, env, log: Path, kill_at: str = '') -> int:
  command = [sys.executable] + (['-c', _KILL_HOOK] if kill_at else []) + ARGS
  with open(log, 'w') as out:
    done = subprocess.run(command + ['--workdir', str(workdir)], cwd=REPO, stdout=out,
                          stderr=subprocess.STDOUT, timeout=600, check=False,
                          env=dict(env, KILL_AT=kill_at))
  return done.returncode


def _csv(workdir: Path) -> list:
  """(step, name, value) per row; the timing column and the throughput values left out."""
  return [(r['step'], r['name'], None if r['name'] == TIMING else r['value'])
          for r in writers.read_csv(str(workdir))]


def _records(path: str):
  data = open(path, 'rb').read()
  pos = 0
  while pos < len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    pos += 12  # length and its CRC
    yield event_pb2.Event.FromString(data[pos:pos + length])
    pos += length + 4  # data and its CRC


def _tensorboard(workdir: Path) -> list:
  """(step, tag, value) as TensorBoard shows them: files in name order, and a SessionLog START
  at step s (tensorboardX's purge_step) hiding the events read before it at steps >= s."""
  shown = []
  for path in sorted(glob.glob(str(workdir / writers.TB_DIR / 'events.out.tfevents.*'))):
    for event in _records(path):
      if event.HasField('session_log') and event.session_log.status == event.session_log.START:
        shown = [e for e in shown if e[0] < event.step]
      for value in event.summary.value:
        shown.append((event.step, value.tag, None if value.tag == TIMING else value.simple_value))
  return shown


@pytest.mark.slow
def test_logs_after_sigkill_before_and_after_a_checkpoint_equal_a_straight_runs(tmp_path, env):
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  assert _train(straight, env, tmp_path / 'straight.log') == 0, \
      (tmp_path / 'straight.log').read_text()[-3000:]
  # train.py's console: one line per epoch with every validation score.
  console = (tmp_path / 'straight.log').read_text()
  number = r'(\d+\.\d+|nan)'
  for epoch in (1, 2):
    assert re.search(rf'epoch {epoch}/2 step {6 * epoch}: validation loss {number}, '
                     rf'pr_auc {number}, roc_auc {number}; best loss {number} at epoch', console)

  code = _train(killed, env, tmp_path / 'attempt1.log', kill_at='3:train/loss:')
  assert code == -signal.SIGKILL, (tmp_path / 'attempt1.log').read_text()[-3000:]
  assert not list((killed / ckpt_lib.CHECKPOINT_DIR).glob('[0-9]*'))  # nothing checkpointed
  assert [s for s, name, _ in _csv(killed) if name == 'train/loss'] == [1, 2, 3]

  six = killed / ckpt_lib.CHECKPOINT_DIR / '6'
  code = _train(killed, env, tmp_path / 'attempt2.log', kill_at=f'6:schedule/phase:{six}')
  assert code == -signal.SIGKILL, (tmp_path / 'attempt2.log').read_text()[-3000:]
  assert six.is_dir()
  rows = _csv(killed)
  assert [s for s, name, _ in rows if name == 'train/loss'] == [1, 2, 3, 4, 5, 6]  # not 1-3 twice
  assert (6, 'schedule/phase', 1.0) in rows

  assert _train(killed, env, tmp_path / 'attempt3.log') == 0, \
      (tmp_path / 'attempt3.log').read_text()[-3000:]
  assert 'Resumed from' in (tmp_path / 'attempt3.log').read_text()

  expected = _csv(straight)
  assert [s for s, name, _ in expected if name == 'schedule/phase'] == [6]
  assert len(expected) == len(set((s, name) for s, name, _ in expected))  # one row per step
  assert _csv(killed) == expected
  # TensorBoard holds every finite row once, as float32.
  shown = _tensorboard(straight)
  assert shown == [(s, name, None if v is None else float(np.float32(v)))
                   for s, name, v in expected if v is None or np.isfinite(v)]
  assert _tensorboard(killed) == shown
  assert len(glob.glob(str(killed / writers.TB_DIR / 'events.out.tfevents.*'))) == 1


def test_writer_restarts_drop_cut_lines_and_rebuild_the_events(tmp_path):
  workdir = tmp_path
  with writers.MetricWriter(str(workdir)) as w:
    w.write_scalars(1, {'loss': 0.5}, prefix='train/')
    w.write_scalars(2, {'loss': 0.25, 'inf': float('inf')}, prefix='train/')
    w.write_scalars(2, {'phase': 1.0}, prefix='schedule/')  # logged after checkpoint 2
  with open(workdir / writers.CSV_NAME, 'a') as f:
    f.write('3,train/loss,0.125,17')  # a line the kill cut (no newline): dropped
  (workdir / writers.TB_DIR / 'events.out.tfevents.0.other').write_bytes(b'')  # older attempt
  with writers.MetricWriter(str(workdir), resume_step=2) as w:
    w.write_scalars(2, {'phase': 1.0}, prefix='schedule/')  # the resumed run logs it again
    w.write_scalars(3, {'loss': 0.125}, prefix='train/')
  rows = [(r['step'], r['name'], r['value']) for r in writers.read_csv(str(workdir))]
  assert rows == [(1, 'train/loss', 0.5), (2, 'train/loss', 0.25), (2, 'train/inf', float('inf')),
                  (2, 'schedule/phase', 1.0), (3, 'train/loss', 0.125)]
  assert _tensorboard(workdir) == [(s, n, v) for s, n, v in rows if np.isfinite(v)]
  assert len(glob.glob(str(workdir / writers.TB_DIR / 'events.out.tfevents.*'))) == 1
  # Nothing was checkpointed: a fresh start keeps none of it.
  with writers.MetricWriter(str(workdir)) as w:
    w.write_scalars(1, {'loss': 0.75}, prefix='train/')
  assert [(r['step'], r['value']) for r in writers.read_csv(str(workdir))] == [(1, 0.75)]
  assert _tensorboard(workdir) == [(1, 'train/loss', 0.75)]
