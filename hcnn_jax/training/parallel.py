"""Data parallelism: a 1-D `('data',)` mesh over every device of every host, and the steps of
`step.py` run per device with `jax.shard_map`.

Why `check_vma=False`: the steps are written pmap-style, i.e. each device computes the gradient of
its own shard's loss and `lax.pmean` averages them. With `check_vma=True` shard_map instead tracks
which values vary over the mesh and transposes the implicit broadcast of the replicated parameters
into a `psum`, so the gradients come out of `jax.grad` already *summed* over devices and the
explicit `pmean` is a no-op on them: N times the true gradient. `check_vma=False` gives exactly the
semantics `jax.pmap` had (pmap is itself built on shard_map now), under which `pmean` of gradients
and the BatchNorm `pmean` of statistics are right; the 1-device ≡ N-device test pins this.

Multi-host: every host joins the job first (`multihost.maybe_initialize_distributed`, also
reachable here as the entry points' first call), then runs the same program, feeds its own rows of
the global batch (`data_shard`) through `shard_batch`, and reads replicated outputs directly or
sharded ones through `to_host`. Joining, failing and waiting together live in `multihost.py`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import numpy as np
import optax
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hcnn_jax.training import multihost
from hcnn_jax.training import step as step_lib
# The entry points' (train, eval, demo, dataset build) first calls, named where they always were.
from hcnn_jax.training.multihost import (  # pylint: disable=unused-import
    fail_together, maybe_initialize_distributed, wait_for_process0)

PyTree = Any
DATA_AXIS = 'data'


COMPILE_WAIT_S = 3600  # how long a process waits for the others to compile


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
      multihost.sync_processes(f'compiled {self.what}', COMPILE_WAIT_S)
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
