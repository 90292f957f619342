"""Data parallelism: a 1-D `('data',)` mesh over every device of every host, and the steps of
`step.py` run per device with `jax.shard_map`.

Why `check_vma=False`: the steps are written pmap-style, i.e. each device computes the gradient of
its own shard's loss and `lax.pmean` averages them. With `check_vma=True` shard_map instead tracks
which values vary over the mesh and transposes the implicit broadcast of the replicated parameters
into a `psum`, so the gradients come out of `jax.grad` already *summed* over devices and the
explicit `pmean` is a no-op on them: N times the true gradient. `check_vma=False` gives exactly the
semantics `jax.pmap` had (pmap is itself built on shard_map now), under which `pmean` of gradients
and the BatchNorm `pmean` of statistics are right; the 1-device ≡ N-device test pins this.

Multi-host: call `maybe_initialize_distributed()` first thing (before any other JAX call); every
host then runs the same program, feeds its own rows of the global batch (`data_shard`) through
`shard_batch`, and reads replicated outputs directly or sharded ones through `to_host`.
`fail_together()` makes every process stop, naming the failed one, when one of them fails, and
`wait_for_process0()` waits for process 0 (e.g. building a dataset) through the coordination
service, not through a device collective with its short deadline.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hcnn_jax.training import step as step_lib

PyTree = Any
DATA_AXIS = 'data'


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
COMPILE_WAIT_S = 3600


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


class _CompiledTogether:
  """A jitted step that, in a multi-process job, compiles ahead and waits for every process
  before its first run with new shapes.

  The first run of a program opens its gloo context, and a process that arrives 30 s before
  another fails with "Gloo context initialization failed: DEADLINE_EXCEEDED". Compile times
  differ between hosts (one hits the persistent compilation cache, another compiles), so each
  process compiles first and the processes meet at a barrier of the coordination service, whose
  timeout is ours, before the collectives start.
  """

  def __init__(self, jitted, what: str):
    self.jitted, self.what = jitted, what
    self._compiled: Dict[Any, Any] = {}

  def lower(self, *args, **kwargs):
    return self.jitted.lower(*args, **kwargs)

  def __call__(self, *args):
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((np.shape(x), str(getattr(x, 'dtype', type(x))),
                           getattr(x, 'sharding', None)) for x in leaves))
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self._compiled[key] = self.jitted.lower(*args).compile()
      sync_processes(f'compiled {self.what}', COMPILE_WAIT_S)
    return compiled(*args)


def _together(jitted, what: str):
  if jax.process_count() == 1:
    return jitted
  return _CompiledTogether(jitted, what)


def data_shard(mesh: Mesh) -> Tuple[int, int]:
  """(index, count): this host's block of rows of every global batch, in the mesh's order.

  `shard_batch` places a host's rows on its devices where they sit in the mesh; the data
  pipeline must give the host exactly those rows (`pipeline.train_loader`'s shard_index and
  shard_count), so that the global batch is the same whatever the number of hosts.
  """
  flat = list(mesh.devices.flat)
  mine = sorted(i for i, d in enumerate(flat) if d.process_index == jax.process_index())
  if not mine or mine != list(range(mine[0], mine[0] + len(mine))) or len(flat) % len(mine):
    raise ValueError(f'process {jax.process_index()} holds mesh positions {mine} of '
                     f'{len(flat)}: each host needs one contiguous, equal block of the data axis')
  return mine[0] // len(mine), len(flat) // len(mine)


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis `'data'` over `devices` (default: all devices of all hosts).

  Axis type Auto: the steps are manual per-device code under shard_map, so nothing needs
  explicit-sharding types (and `jax.make_mesh`'s Explicit default would make shard_map reject
  unsharded inputs).
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError('make_mesh needs at least one device')
  if len(devices) == len(jax.devices()):
    # Let JAX order the devices for the interconnect (matters on multi-host GPU/TPU).
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places a copy of `tree` (the same on every host) on every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(host_batch: Dict[str, Any], mesh: Mesh) -> Dict[str, jax.Array]:
  """Turns this host's batch into global arrays split over `'data'` along the first axis.

  Each host passes its own `B_host` examples (what the data pipeline yields); the global batch is
  `B_host × process_count`. `B_host` must be a multiple of the host's devices in the mesh.
  """
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  local_devices = len(mesh.local_devices)
  out = {}
  for key, value in host_batch.items():
    array = np.asarray(value)
    if array.dtype.kind not in 'biuf':
      raise ValueError(f'batch field {key!r} has dtype {array.dtype}; only numeric and boolean '
                       'fields can go to the devices (drop ids and strings before shard_batch)')
    if array.ndim == 0 or array.shape[0] % local_devices:
      raise ValueError(
          f'batch field {key!r} of shape {array.shape} cannot be split over this host\'s '
          f'{local_devices} devices; make the per-host batch size (batch_size / process_count, '
          f'or eval_tracks_per_batch) a multiple of {local_devices}')
    out[key] = jax.make_array_from_process_local_data(sharding, array)
  return out


def to_host(tree: PyTree) -> PyTree:
  """Numpy copies of (possibly multi-host, sharded) arrays, gathered to every host."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _with_data_axis(module: nn.Module) -> nn.Module:
  """`module` with `bn_axis_name='data'` on it and on every sub-module held in a field.

  BatchNorm must average over the global batch for N devices to match one, so the step sets the
  axis itself and no caller can forget it. A composite model (the registry's Classifier exposes
  its back-end's axis as a read-only property) gets it through its front-end and back-end fields.
  """
  updates = {}
  for field in dataclasses.fields(module):
    if field.name in ('parent', 'name'):
      continue
    value = getattr(module, field.name)
    if field.name == 'bn_axis_name':
      if value not in (None, DATA_AXIS):
        raise ValueError(f'{type(module).__name__} has bn_axis_name={value!r}, but the mesh axis '
                         f'is {DATA_AXIS!r}; build the model with bn_axis_name={DATA_AXIS!r} or '
                         'None')
      if value is None:
        updates['bn_axis_name'] = DATA_AXIS
    elif isinstance(value, nn.Module):
      synced = _with_data_axis(value)
      if synced is not value:
        updates[field.name] = synced
  return module.clone(**updates) if updates else module


def make_train_step(model: nn.Module, loss_fn: Callable, tx: optax.GradientTransformation,
                    mesh: Mesh, donate: bool = True) -> Callable:
  """`fn(state, batch) -> (state, metrics)`, one jitted program over the whole mesh.

  `state` is replicated (see `replicate`), `batch` sharded on `'data'` (see `shard_batch`);
  outputs are replicated. With `donate` the input state's buffers are reused for the output, so do
  not touch the old state after the call. A new optimiser (the reference's Adam → SGD switch) is a
  new step built with the new `tx`, fed a state whose `opt_state` is `tx.init(params)`.
  """
  per_device = functools.partial(step_lib.train_step, model=_with_data_axis(model),
                                 loss_fn=loss_fn, tx=tx, axis_name=DATA_AXIS)
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                          out_specs=(P(), P()), check_vma=False)
  return _together(jax.jit(sharded, donate_argnums=(0,) if donate else ()), 'the train step')


def make_eval_step(model: nn.Module, loss_fn: Callable, predict_fn: Callable,
                   mesh: Mesh) -> Callable:
  """`fn(variables, batch) -> {'probs': (n, C), 'loss': (n,)}`, sharded on `'data'` like `batch`.

  `variables` replicated, `batch` = `shard_batch` of an eval batch `{'audio': (n, chunks, L),
  'labels', 'mask'}`; `to_host` brings the outputs back.
  """
  per_device = functools.partial(step_lib.eval_step, model=model, loss_fn=loss_fn,
                                 predict_fn=predict_fn)
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                          out_specs=P(DATA_AXIS), check_vma=False)
  return _together(jax.jit(sharded), 'the eval step')


def check_config(config) -> None:
  """ValueError naming the key when a batch does not split over the devices and hosts."""
  batch, devices, hosts = int(config.batch_size), jax.device_count(), jax.process_count()
  if batch % devices:
    raise ValueError(f'batch_size: {batch} does not split over the {devices} devices; make it a '
                     f'multiple of {devices}')
  if batch % hosts:
    raise ValueError(f'batch_size: {batch} does not split over the {hosts} hosts')
  tracks, local = int(config.eval_tracks_per_batch), jax.local_device_count()
  if tracks % local:
    raise ValueError(f"eval_tracks_per_batch: {tracks} does not split over this host's {local} "
                     f'devices; make it a multiple of {local}')
