"""Joining a multi-host job, and failing and waiting together in one.

Call `maybe_initialize_distributed()` first thing (before any other JAX call): it recognises the
launchers that start several processes (an explicit coordinator address, SLURM, Open MPI, Cloud
TPU slices) and joins them into one JAX job. `fail_together()` makes every process stop, naming
the failed one, when one of them fails; `wait_for_process0()` waits for process 0 (e.g. building a
dataset) and `sync_processes()` for every process, through the coordination service, not through
a device collective with its short deadline. Everything here is a no-op on one host.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from typing import Dict, Iterator, Optional

import jax


def _int_env(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == '':
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} must be an integer') from None


def multihost_environment() -> Optional[str]:
  """Names the launcher that started several processes for this job, or None for one host.

  Recognised: an explicit `JAX_COORDINATOR_ADDRESS` (with `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`,
  read here because JAX itself reads only the address), SLURM with more than one task, Open MPI
  (`mpirun`) with more than one rank, and multi-host Cloud TPU slices. These are the environments
  JAX's own cluster detection handles; this function only decides whether to ask it.
  """
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'coordinator'
  if 'SLURM_JOB_ID' in env and 'SLURM_PROCID' in env and (_int_env('SLURM_NTASKS') or 1) > 1:
    return 'slurm'
  if 'OMPI_MCA_orte_hnp_uri' in env and (_int_env('OMPI_COMM_WORLD_SIZE') or 1) > 1:
    return 'ompi'
  hosts = env.get('TPU_WORKER_HOSTNAMES') or env.get('TPU_PROCESS_ADDRESSES') or ''
  if ',' in hosts:
    return 'tpu'
  return None


# Environment variables that tune the distributed runtime (seconds); JAX reads none of them.
HEARTBEAT_ENV = 'HCNN_HEARTBEAT_TIMEOUT'  # a process silent this long is declared dead
SHUTDOWN_ENV = 'HCNN_SHUTDOWN_TIMEOUT'  # how long an exiting process waits for the others
INIT_ENV = 'HCNN_INIT_TIMEOUT'  # how long a process waits for the others to join
DEFAULT_HEARTBEAT_S, DEFAULT_SHUTDOWN_S, DEFAULT_INIT_S = 60, 60, 300


def _timeouts() -> Dict[str, int]:
  out = {}
  for env, key, default in ((HEARTBEAT_ENV, 'heartbeat_timeout_seconds', DEFAULT_HEARTBEAT_S),
                            (SHUTDOWN_ENV, 'shutdown_timeout_seconds', DEFAULT_SHUTDOWN_S),
                            (INIT_ENV, 'initialization_timeout', DEFAULT_INIT_S)):
    value = _int_env(env)
    if value is not None and value < 1:
      raise ValueError(f'environment variable {env}={value} must be a positive number of seconds')
    out[key] = default if value is None else value
  return out


def maybe_initialize_distributed() -> bool:
  """Joins the multi-host job when `multihost_environment()` finds one; a no-op on one host.

  Must run before anything else touches JAX devices. Returns whether JAX is now running
  distributed. For a hand-started job set on every host `JAX_COORDINATOR_ADDRESS=host:port`
  (process 0's address), `JAX_NUM_PROCESSES=N` and `JAX_PROCESS_ID=i`; SLURM (`srun`), Open MPI
  (`mpirun`) and Cloud TPU pods need nothing. Process 0 serves the coordinator on every
  interface at that port unless `JAX_COORDINATOR_BIND_ADDRESS` (read by JAX) says where.
  `HCNN_HEARTBEAT_TIMEOUT` (default 60 s), `HCNN_SHUTDOWN_TIMEOUT` (60 s) and
  `HCNN_INIT_TIMEOUT` (300 s) tune how fast a dead or stalled peer stops the job.
  """
  if jax.distributed.is_initialized():
    return True
  kind = multihost_environment()
  if kind is None:
    return False
  kwargs = _timeouts()
  if kind == 'coordinator':
    kwargs.update(coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
                  num_processes=_int_env('JAX_NUM_PROCESSES'),
                  process_id=_int_env('JAX_PROCESS_ID'))
  logging.info('Initialising multi-host JAX (%s environment).', kind)
  jax.distributed.initialize(**kwargs)
  logging.info('Process %d of %d (pid %d on %s), %d local / %d global devices.',
               jax.process_index(), jax.process_count(), os.getpid(), os.uname().nodename,
               jax.local_device_count(), jax.device_count())
  return True


# ------------------------------------------------------------------- failing and waiting together

_FAILED_DIR = 'hcnn_failed/'
_ACK_DIR = 'hcnn_failed_ack/'
_EXITING_DIR = 'hcnn_failed_exiting/'


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


def _stop_now(code: int) -> None:
  """Exits at once: skips JAX's shutdown barrier, which would wait for peers that are gone."""
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


class _PeerWatch:
  """A daemon thread that stops this process when another process announces a failure.

  The announcement is a key in the coordination service's key-value store, so it reaches a
  process that is blocked inside a device collective (the main thread waits in XLA with the
  GIL released). A peer that dies outright is caught by the runtime itself: the coordination
  service aborts every process with "The following tasks are unhealthy (stopped sending
  heartbeats): <ids>" as soon as the dead one's connection drops, or after the heartbeat
  timeout for one that stalls.
  """

  def __init__(self, prog: str, poll_s: float):
    self.prog, self.poll_s = prog, poll_s
    self.me, self.count = jax.process_index(), jax.process_count()
    self.client = _client()
    self.failed = False
    self._thread = threading.Thread(target=self._run, name='hcnn-peer-watch', daemon=True)

  def start(self) -> '_PeerWatch':
    self._thread.start()
    return self

  def stop(self) -> None:
    """Stops watching (the block ended normally: what the peers do next is not our failure)."""
    self.failed = True

  def _run(self) -> None:
    while not self.failed:
      try:
        entries = self.client.key_value_dir_get(_FAILED_DIR)
      except Exception as err:  # pylint: disable=broad-except
        if self.failed:  # this process is shutting down its client on its own
          return
        print(f'{self.prog}: error: process {self.me} of {self.count} lost the coordinator '
              f'(process 0): it died or stalled ({str(err).splitlines()[0][:200]})',
              file=sys.stderr)
        _stop_now(1)
      for key, message in entries:
        peer = key.rstrip('/').rsplit('/', 1)[-1]
        if peer == str(self.me):
          continue
        print(f'{self.prog}: error: process {peer} of {self.count} failed ({message}); '
              f'stopping process {self.me} too', file=sys.stderr)
        with contextlib.suppress(Exception):
          self.client.key_value_set(f'{_ACK_DIR}{self.me}', 'stopped')
          if self.me == 0:  # hosts the coordinator: let the failed one finish its message
            self.client.blocking_key_value_get(f'{_EXITING_DIR}{peer}', 5000)
            time.sleep(0.5)  # ... and exit, before the coordinator goes away under it
        _stop_now(1)
      time.sleep(self.poll_s)

  def exit(self) -> None:
    with contextlib.suppress(Exception):
      self.client.key_value_set(f'{_EXITING_DIR}{self.me}', 'exiting')
    _stop_now(1)

  def announce(self, err: BaseException, wait_s: float = 5.0) -> None:
    """Tells the peers that this process failed and waits (briefly) until they have read it."""
    self.failed = True
    message = f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}'[:300]
    print(f'{self.prog}: error: process {self.me} of {self.count} failed ({message}); '
          'stopping every process', file=sys.stderr)
    try:
      self.client.key_value_set(f'{_FAILED_DIR}{self.me}', message)
      deadline = time.time() + wait_s
      while time.time() < deadline:  # process 0 hosts the coordinator: stay until it is read
        if len(self.client.key_value_dir_get(_ACK_DIR)) >= self.count - 1:
          break
        time.sleep(0.1)
    except Exception:  # pylint: disable=broad-except
      pass  # the coordinator is gone: the peers stop on their own


def _lost_a_peer(err: BaseException) -> bool:
  text = str(err)
  return type(err).__name__ in ('JaxRuntimeError', 'XlaRuntimeError') and any(
      sign in text for sign in ('Connection closed by peer', 'Gloo', 'DEADLINE_EXCEEDED',
                                'UNAVAILABLE'))


@contextlib.contextmanager
def fail_together(prog: str, poll_s: float = 0.5) -> Iterator[None]:
  """In a multi-process job, a failure of any process stops all of them within seconds.

  An exception leaving the block is announced to the other processes (they print
  "process K of N failed (...)" and exit with status 1) and this process exits with status 1
  right after its own traceback or message, without JAX's shutdown barrier, which would wait
  `HCNN_SHUTDOWN_TIMEOUT` seconds for peers that will never arrive. On one host it does nothing.
  """
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    yield
    return
  watch = _PeerWatch(prog, poll_s).start()
  try:
    yield
  except BaseException as err:
    if isinstance(err, SystemExit) and not err.code:
      raise
    if _lost_a_peer(err):
      # A collective broke because another process died or stalled: blaming this one would
      # mislead. The runtime names the silent one after the heartbeat timeout (and ends this
      # process); a peer that failed in Python is named by the watch as soon as it says so.
      wait_s = _timeouts()['heartbeat_timeout_seconds'] + 15
      print(f'{prog}: error: process {watch.me} of {watch.count}: a collective failed '
            f'({str(err).splitlines()[0][:200]}); another process died or stalled, waiting up '
            f'to {wait_s} s for the runtime to name it', file=sys.stderr, flush=True)
      time.sleep(wait_s)
    watch.announce(err)
    atexit.register(watch.exit)  # runs before JAX's shutdown (registered at import, earlier)
    raise
  watch.stop()


def wait_for_process0(what: str, timeout_s: float) -> None:
  """Blocks every process until process 0 reaches the same call, for up to timeout_s seconds.

  A barrier of the coordination service (not a device collective, whose deadline on CPU is
  30 s): process 0 may spend minutes, e.g. building a dataset, before it arrives. A no-op on
  one host.
  """
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return
  name = 'hcnn_' + ''.join(c if c.isalnum() else '_' for c in what)
  try:
    _client().wait_at_barrier(name, int(timeout_s * 1000))
  except Exception as err:  # pylint: disable=broad-except
    raise ValueError(f'process {jax.process_index()} waited {timeout_s:.0f} s for process 0 '
                     f'to finish {what}, in vain ({str(err).splitlines()[0][:200]})') from None


_barriers = [0]


def sync_processes(what: str, timeout_s: float) -> None:
  """Every process waits here for all the others, for up to timeout_s (coordination service)."""
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return
  _barriers[0] += 1
  name = f'hcnn_sync_{_barriers[0]}_' + ''.join(c if c.isalnum() else '_' for c in what)
  try:
    _client().wait_at_barrier(name, int(timeout_s * 1000))
  except Exception as err:  # pylint: disable=broad-except
    raise ValueError(f'process {jax.process_index()} waited {timeout_s:.0f} s for the other '
                     f'processes ({what}), in vain ({str(err).splitlines()[0][:200]})') from None
