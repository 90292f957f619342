"""Many hosts, for real: several CPU processes on 127.0.0.1 form one JAX job (gloo collectives).

Every process is started the way the README's "Many hosts" section says: the same command, with
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by
`parallel.maybe_initialize_distributed`), and the coordinator bound to the loopback interface
only. `train.py` runs as 2 processes x 2 devices on the in-memory fake set, is killed and resumed,
and is compared with 1 process x 4 devices; a small worker (`_multihost_worker.py`) shows the
failure handling and the wait for a dataset build, which need no model.
"""
from __future__ import annotations

import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.training import writers

REPO = Path(__file__).resolve().parents[2]
STEPS = 4  # one epoch of 4 steps (batch 8: 4 rows per process, 2 per device), 16 tracks
TRAIN = [
    sys.executable, 'train.py', '--config', 'hcnn_jax/configs/fake_tiny.py',
    '--config.dataset.config_name=tracks=16,classes=5,samples=24000',
    '--config.num_epochs=1', f'--config.steps_per_epoch={STEPS}',
    '--config.checkpoint_every_steps=2', '--config.log_every_steps=1',
]
HEARTBEAT_S = 10  # HCNN_HEARTBEAT_TIMEOUT for these jobs: a dead peer stops the rest this fast


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def base_env(request):
  cache = request.config.cache.mkdir('jax_compilation_cache')
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_', 'XLA_', 'SLURM_', 'OMPI_', 'TPU_', 'HCNN_'))}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
             HCNN_HEARTBEAT_TIMEOUT=str(HEARTBEAT_S), HCNN_SHUTDOWN_TIMEOUT='20')
  return env


def _start(command, base_env, logs: Path, processes: int, devices: int, extra_env=None):
  """Starts `command` as `processes` processes of `devices` CPU devices each; logs/<i>.log."""
  port = _free_port()
  procs = []
  for i in range(processes):
    env = dict(base_env, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
               **(extra_env or {}))
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                 JAX_COORDINATOR_BIND_ADDRESS=f'127.0.0.1:{port}',
                 JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
    with open(logs / f'{i}.log', 'w') as out:
      procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                    stderr=subprocess.STDOUT))
  return procs


def _wait(procs, timeout=600):
  deadline = time.time() + timeout
  try:
    return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _train(workdir: Path, base_env, processes: int, devices: int, logs=None):
  logs = workdir.parent / (logs or f'{workdir.name}_logs')
  logs.mkdir()
  codes = _wait(_start(TRAIN + ['--workdir', str(workdir)], base_env, logs, processes, devices))
  texts = [(logs / f'{i}.log').read_text() for i in range(processes)]
  assert codes == [0] * processes, '\n=====\n'.join(t[-3000:] for t in texts)
  return texts


def _steps(workdir: Path) -> list:
  directory = workdir / ckpt_lib.CHECKPOINT_DIR
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.is_dir() else []


def _state(workdir: Path, step: int):
  """The saved train state as numpy arrays, whatever devices it was saved from (the test runs
  on one), and the checkpoint's bookkeeping."""
  path = str(workdir / ckpt_lib.CHECKPOINT_DIR / str(step) / 'state')
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                      is_leaf=lambda x: hasattr(x, 'shape'))
  state = checkpointer.restore(path, restore_args=args)
  with ckpt_lib.RunCheckpoints(str(workdir)) as ckpts:
    meta = ckpts.restore_meta(step)
  return state, meta


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_two_processes_train_resume_bit_exactly_and_match_one_process(tmp_path, base_env):
  straight, killed, single = tmp_path / 'straight', tmp_path / 'killed', tmp_path / 'single'
  logs = _train(straight, base_env, processes=2, devices=2)
  assert all('Process %d of 2' % i in logs[i] for i in range(2))
  assert all('test metrics of' in log for log in logs)  # both ran to the end

  # Only process 0 writes the logs: one tensorboard event file, no duplicated metric rows.
  events = list((straight / writers.TB_DIR).rglob('events.out.tfevents.*'))
  assert len(events) == 1, events
  rows = [(r['step'], r['name']) for r in writers.read_csv(str(straight))]
  assert rows and len(rows) == len(set(rows))
  assert {s for s, n in rows if n == 'train/loss'} == set(range(1, STEPS + 1))
  assert _steps(straight)[-1] == STEPS and (straight / 'metrics.json').exists()

  # Kill process 1 once a mid-run checkpoint exists: process 0 must stop by itself, non-zero,
  # naming the dead peer, within the heartbeat timeout (plus start-up slack); then the same
  # command resumes.
  (tmp_path / 'killed_logs').mkdir()
  procs = _start(TRAIN + ['--workdir', str(killed)], base_env, tmp_path / 'killed_logs', 2, 2)
  try:
    deadline = time.time() + 600
    while all(p.poll() is None for p in procs) and not _steps(killed) \
        and time.time() < deadline:
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    code0 = procs[0].wait(timeout=HEARTBEAT_S + 60)
    took = time.time() - killed_at
  finally:
    _wait(procs, timeout=1)
  log0 = (tmp_path / 'killed_logs' / '0.log').read_text()
  assert procs[1].returncode == -signal.SIGKILL, 'process 1 ended before it could be killed'
  assert code0 != 0, log0[-3000:]
  assert took < HEARTBEAT_S + 30, took
  assert 'The following tasks are unhealthy (stopped sending heartbeats):\n1\n' in log0, \
      log0[-3000:]
  assert 0 < max(_steps(killed)) < STEPS

  resumed = _train(killed, base_env, processes=2, devices=2, logs='resumed_logs')
  assert all(f'Resumed from {killed / ckpt_lib.CHECKPOINT_DIR}' in log for log in resumed)
  state_a, meta_a = _state(straight, STEPS)
  state_b, meta_b = _state(killed, STEPS)
  assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
  for x, y in zip(_leaves(state_a), _leaves(state_b)):  # parameters, optimiser, rng, step
    assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
  assert meta_a == meta_b
  results = [json.loads((d / 'metrics.json').read_text()) for d in (straight, killed)]
  for r in results:
    r.pop('checkpoint')
  assert results[0] == results[1]

  # One process with 4 devices, same seed and global batch: the same training to float
  # tolerance (the all-reduces sum in another order).
  _train(single, base_env, processes=1, devices=4)
  state_c, _ = _state(single, STEPS)
  earlier, _ = _state(straight, STEPS // 2)
  # Weights (kernels and BatchNorm scales) agree to float rounding. Biases are left out: those of
  # layers followed by BatchNorm, and any parameter behind a dead ReLU, have a zero true
  # gradient, and Adam turns its rounding noise into steps of ±lr whose sign depends on the
  # order of the sums; the losses below show that the functions agree all the same.
  differ, moved = {}, {}
  for (path, x), z, e in zip(jax.tree_util.tree_leaves_with_path(state_a['params']),
                             _leaves(state_c['params']), _leaves(earlier['params'])):
    name = jax.tree_util.keystr(path)
    if name.endswith(("['kernel']", "['scale']")):
      scale = float(np.max(np.abs(x)))
      differ[name] = float(np.max(np.abs(x - z))) / scale
      moved[name] = float(np.max(np.abs(x - e))) / scale  # two steps of training
  assert len(differ) > 20 and max(differ.values()) <= 1e-4, differ
  assert max(moved.values()) > 100 * max(differ.values()), (moved, differ)
  metrics = [json.loads((d / 'metrics.json').read_text()) for d in (straight, single)]
  assert metrics[1]['loss'] == pytest.approx(metrics[0]['loss'], rel=1e-4)
  loss = {d.name: [r['value'] for r in writers.read_csv(str(d))
                   if r['name'] in ('train/loss', 'val/loss')] for d in (straight, single)}
  assert len(loss['single']) == STEPS + 1
  np.testing.assert_allclose(loss['single'], loss['straight'], rtol=1e-4)

  # What 2 processes x 2 devices wrote is read by one process with one device: the readers
  # (eval, tag, interpret) restore onto the current device, whatever mesh saved the arrays ...
  for path in (straight, straight / ckpt_lib.CHECKPOINT_DIR / str(STEPS)):
    variables, meta, _ = ckpt_lib.restore_variables(str(path))
    assert all(np.isfinite(x).all() for x in _leaves(variables))
    assert meta['topology'] == {'process_count': 2, 'device_count': 4}
  # ... and training resumes on 1 process x 1 device, saying that the data order changes.
  moved = tmp_path / 'moved'
  shutil.copytree(straight, moved)
  one = [a for a in TRAIN if not a.startswith('--config.num_epochs=')] + [
      '--config.num_epochs=2', '--workdir', str(moved)]
  (tmp_path / 'moved_logs').mkdir()
  code, = _wait(_start(one, base_env, tmp_path / 'moved_logs', processes=1, devices=1))
  text = (tmp_path / 'moved_logs' / '0.log').read_text()
  assert code == 0, text[-3000:]
  assert 'written by 2 process(es) x 4 device(s), on 1 x 1' in text, text[-3000:]
  assert 'the data iterator restarts, so the data order changes' in text
  assert _steps(moved)[-1] == 2 * STEPS


def _worker(mode, base_env, tmp_path, extra_env=None, timeout=120):
  logs = tmp_path / mode
  logs.mkdir(parents=True)
  start = time.time()
  procs = _start([sys.executable, '-m', 'tests.training._multihost_worker', mode], base_env,
                 logs, 2, 2, extra_env)
  return procs, logs, start


def test_a_process_that_raises_stops_every_process_naming_it(tmp_path, base_env):
  procs, logs, start = _worker('raise', base_env, tmp_path)
  codes = _wait(procs, timeout=120)
  took = time.time() - start
  log0, log1 = ((logs / f'{i}.log').read_text() for i in range(2))
  assert codes[0] == 1 and codes[1] != 0, (log0[-2000:], log1[-2000:])
  assert ('worker: error: process 1 of 2 failed (RuntimeError: a bad track in the shard of '
          'process 1); stopping process 0 too') in log0
  assert 'RuntimeError: a bad track' in log1 and 'done' not in log0
  assert took < 60


def test_a_process_that_dies_stops_the_others_naming_it(tmp_path, base_env):
  procs, logs, _ = _worker('kill', base_env, tmp_path, {'HCNN_HEARTBEAT_TIMEOUT': '3'})
  try:
    code1 = procs[1].wait(timeout=120)
    died_at = time.time()
    code0 = procs[0].wait(timeout=60)
    took = time.time() - died_at
  finally:
    _wait(procs, timeout=1)
  log0 = (logs / '0.log').read_text()
  assert code1 == -signal.SIGKILL and code0 != 0, log0[-2000:]
  assert 'The following tasks are unhealthy (stopped sending heartbeats):\n1\n' in log0
  assert took < 3 + 20, took


def test_when_the_coordinator_dies_the_others_stop_naming_it(tmp_path, base_env):
  procs, logs, _ = _worker('kill_coordinator', base_env, tmp_path, {'HCNN_HEARTBEAT_TIMEOUT': '3'})
  try:
    code0 = procs[0].wait(timeout=120)
    died_at = time.time()
    code1 = procs[1].wait(timeout=60)
    took = time.time() - died_at
  finally:
    _wait(procs, timeout=1)
  log1 = (logs / '1.log').read_text()
  assert code0 == -signal.SIGKILL and code1 != 0, log1[-2000:]
  # Either our watcher's line or, when it comes first, the runtime's own fatal error (which
  # aborts the process from a C++ thread, with its stack, before Python can speak) names the
  # coordinator as the one that died.
  assert ('worker: error: process 1 of 2 lost the coordinator (process 0)' in log1
          or 'the leader task was preempted/died/restarted unexpectedly' in log1), log1[-2000:]
  assert 'Traceback' not in log1, log1[-2000:]
  assert took < 3 + 20, took


def test_a_stalled_process_stops_the_others_within_the_heartbeat_timeout(tmp_path, base_env):
  procs, logs, _ = _worker('stop', base_env, tmp_path, {'HCNN_HEARTBEAT_TIMEOUT': '3'})
  try:
    deadline = time.time() + 120
    while 'step 20' not in (logs / '1.log').read_text() and time.time() < deadline:
      time.sleep(0.05)
    time.sleep(0.5)
    stalled_at = time.time()
    code0 = procs[0].wait(timeout=60)
    took = time.time() - stalled_at
    procs[1].send_signal(signal.SIGCONT)  # woken up, it finds the job gone and stops too
    code1 = procs[1].wait(timeout=60)
  finally:
    _wait(procs, timeout=1)
  log0 = (logs / '0.log').read_text()
  assert code0 != 0 and code1 != 0, log0[-2000:]
  assert 'The following tasks are unhealthy (stopped sending heartbeats):\n1\n' in log0
  assert took < 3 + 20, took


def test_others_wait_for_a_dataset_build_longer_than_a_collective_deadline(tmp_path, base_env):
  """Process 0 "builds" for BUILD_S while process 1 waits in `build_on_first_process`.

  gloo's own deadline (30 s) cannot be shortened from Python, so a build longer than it is too
  slow for a test; instead the wait is shown to be bounded by the timeout we give it and by
  nothing else: a 1-s wait fails with a clear message, a long one outlasts the 6-s build.
  """
  procs, logs, _ = _worker('build', base_env, tmp_path, {'BUILD_S': '6', 'WAIT_S': '120'})
  codes = _wait(procs)
  texts = [(logs / f'{i}.log').read_text() for i in range(2)]
  assert codes == [0, 0], texts[1][-2000:]
  waited = float(texts[1].split('waited ')[1].split()[0])
  assert waited >= 5.5 and all('done' in t for t in texts)

  procs, logs, _ = _worker('build', base_env, tmp_path / 'short', {'BUILD_S': '6', 'WAIT_S': '1'})
  codes = _wait(procs)
  log1 = (logs / '1.log').read_text()
  assert codes == [1, 1], log1[-2000:]
  assert 'process 1 waited 1 s for process 0 to finish building synth_gm' in log1


@pytest.mark.parametrize('entry', ['train', 'eval', 'demo', 'ablation'])
def test_entry_points_join_the_job_before_touching_the_devices(entry, tmp_path):
  """jax.distributed.initialize fails once anything has initialised a backend (counting the
  devices in a config check is enough), so every entry point must ask to join first."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'XLA_'))}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'tests.training._init_order_worker', entry,
                         str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report == {'after_import': False, 'at_initialize': [False]}, report


def test_timeouts_come_from_the_environment(monkeypatch):
  # pylint: disable=protected-access
  from hcnn_jax.training import multihost  # pylint: disable=import-outside-toplevel
  for name in (multihost.HEARTBEAT_ENV, multihost.SHUTDOWN_ENV, multihost.INIT_ENV):
    monkeypatch.delenv(name, raising=False)
  assert multihost._timeouts() == {'heartbeat_timeout_seconds': 60,
                                   'shutdown_timeout_seconds': 60, 'initialization_timeout': 300}
  monkeypatch.setenv(multihost.HEARTBEAT_ENV, '7')
  assert multihost._timeouts()['heartbeat_timeout_seconds'] == 7
  monkeypatch.setenv(multihost.SHUTDOWN_ENV, 'soon')
  with pytest.raises(ValueError, match="HCNN_SHUTDOWN_TIMEOUT='soon' must be an integer"):
    multihost._timeouts()
  monkeypatch.setenv(multihost.SHUTDOWN_ENV, '0')
  with pytest.raises(ValueError, match='HCNN_SHUTDOWN_TIMEOUT=0 must be a positive'):
    multihost._timeouts()
