"""Run in a subprocess with 8 fake CPU devices (the flag must be set before JAX is imported).

`python -m tests.training._multidevice_worker` prints one JSON object with what
`test_parallel.py` checks: the 1-device and 4-device trainings, the sharded evaluation, the
batch-splitting error and the collectives in the compiled 8-device train step.
"""
from __future__ import annotations

import os

# Backend optimisation level 0 only lowers LLVM's code-generation effort (a third of the compile
# time of the HCNN step); the HLO passes, the all-reduce combiner among them, run as usual and give
# the same collectives.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0').strip()
os.environ['JAX_PLATFORMS'] = 'cpu'

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from hcnn_jax.training import parallel, state as state_lib  # noqa: E402
from tests.training import _models  # noqa: E402

INPUT_LENGTH = _models.INPUT_LENGTH
NUM_CLASSES = 3
GLOBAL_BATCH = 8
STEPS = 3


def _batches(num, batch, seed):
  rng = np.random.default_rng(seed)
  return [{'audio': rng.uniform(-1, 1, (batch, INPUT_LENGTH)).astype(np.float32),
           'labels': (rng.uniform(size=(batch, NUM_CLASSES)) < 0.5).astype(np.float32)}
          for _ in range(num)]


def _train(model, tx, devices, batches, train_step=None):
  mesh = parallel.make_mesh(devices)
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), INPUT_LENGTH)
  state = parallel.replicate(state, mesh)
  train_step = train_step or parallel.make_train_step(model, _models.bce, tx, mesh)
  losses = []
  for batch in batches:
    state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return jax.device_get(state), losses


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _max_abs(a):
  return max(float(np.max(np.abs(x))) for x in jax.tree.leaves(a))


def equivalence():
  # Dropout off: masks are drawn per device, so only a deterministic model can match exactly.
  model = _models.make_model(NUM_CLASSES, dropout=False)
  tx = optax.sgd(0.1, momentum=0.9)
  batches = _batches(STEPS, GLOBAL_BATCH, seed=1)
  devices = jax.devices()
  one, losses1 = _train(model, tx, devices[:1], batches)
  four, losses4 = _train(model, tx, devices[:4], batches)
  init = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), INPUT_LENGTH)
  return {'params_diff': _max_abs_diff(one.params, four.params),
          'params_moved': _max_abs_diff(one.params, init.params),
          'params_scale': _max_abs(one.params),
          'stats_diff': _max_abs_diff(one.batch_stats, four.batch_stats),
          'stats_moved': _max_abs_diff(one.batch_stats, init.batch_stats),
          'losses1': losses1, 'losses4': losses4,
          'steps': [int(one.step), int(four.step)]}


def dropout_runs():
  """With dropout on, a 4-device run repeats itself exactly."""
  model = _models.make_model(NUM_CLASSES, dropout=True)
  tx = optax.sgd(0.1)
  batches = _batches(2, GLOBAL_BATCH, seed=2)
  devices = jax.devices()[:4]
  train_step = parallel.make_train_step(model, _models.bce, tx, parallel.make_mesh(devices))
  a, _ = _train(model, tx, devices, batches, train_step)
  b, _ = _train(model, tx, devices, batches, train_step)
  return {'rerun_diff': _max_abs_diff(a.params, b.params)}


def sharded_eval():
  model = _models.make_model(NUM_CLASSES, dropout=True)
  tx = optax.sgd(0.1)
  variables = state_lib.variables(
      state_lib.create_train_state(model, tx, jax.random.PRNGKey(3), INPUT_LENGTH))
  rng = np.random.default_rng(4)
  batch = {'audio': rng.uniform(-1, 1, (8, 2, INPUT_LENGTH)).astype(np.float32),
           'labels': (rng.uniform(size=(8, NUM_CLASSES)) < 0.5).astype(np.float32),
           'mask': np.array([True] * 6 + [False] * 2)}
  outs = {}
  for count in (1, 4):
    mesh = parallel.make_mesh(jax.devices()[:count])
    eval_step = parallel.make_eval_step(model, _models.bce, jax.nn.sigmoid, mesh)
    out = eval_step(parallel.replicate(variables, mesh), parallel.shard_batch(batch, mesh))
    outs[count] = parallel.to_host(out)
  error = ''
  try:
    parallel.shard_batch({k: v[:6] for k, v in batch.items()},
                         parallel.make_mesh(jax.devices()[:4]))
  except ValueError as e:
    error = str(e)
  return {'probs_diff': _max_abs_diff(outs[1]['probs'], outs[4]['probs']),
          'loss_diff': _max_abs_diff(outs[1]['loss'], outs[4]['loss']),
          'shapes': [list(outs[4]['probs'].shape), list(outs[4]['loss'].shape)],
          'indivisible_error': error}


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def collectives(model, input_length):
  """All-reduces in the compiled train step over all 8 devices, by origin.

  Lowered from shapes only (`jax.eval_shape` of the state), so no parameters are initialised.
  """
  tx = optax.adam(1e-3)
  mesh = parallel.make_mesh()
  state = jax.eval_shape(lambda: state_lib.create_train_state(model, tx, jax.random.PRNGKey(0),
                                                              input_length))
  batch = {'audio': jax.ShapeDtypeStruct((16, input_length), jnp.float32),
           'labels': jax.ShapeDtypeStruct((16, NUM_CLASSES), jnp.float32)}
  train_step = parallel.make_train_step(model, _models.bce, tx, mesh)
  hlo = train_step.lower(_abstract(state, NamedSharding(mesh, P())),
                         _abstract(batch, NamedSharding(mesh, P('data')))).compile().as_text()
  ops = [line for line in hlo.splitlines()
         if re.search(r'= \S+ all-reduce(-start)?\(', line)]
  # The step's own sync sits at the top of the shard_map; BatchNorm's pmean inside a module's
  # path, under transpose(...) when it is the backward pass.
  sync = [l for l in ops if 'op_name="jit(train_step)/shard_map/psum"' in l]
  backward = [l for l in ops if l not in sync and 'transpose(' in l]
  forward = [l for l in ops if l not in sync and 'transpose(' not in l]
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  num_stats = sum(x.size for x in jax.tree.leaves(state.batch_stats))

  def size(line):
    dims = re.search(r'f32\[([\d,]*)\]', line).group(1)
    return int(np.prod([int(d) for d in dims.split(',') if d]))

  return {'total': len(ops), 'forward_bn': len(forward), 'backward_bn': len(backward),
          'sync': len(sync), 'sync_sizes': [size(l) for l in sync],
          # Each BatchNorm all-reduces its batch mean and mean of squares: 2 × features.
          'forward_bn_size': sum(size(l) for l in forward), 'num_stats': int(num_stats),
          'expected_sync_size': int(num_params + 1 + num_stats),
          'bn_layers': len(jax.tree.leaves(state.batch_stats)) // 2,
          'programs': hlo.count('HloModule '),
          'all_gather_or_reduce_scatter': len(re.findall(r'all-gather|reduce-scatter', hlo)),
          'num_devices': jax.device_count()}


def main():
  print(json.dumps({'equivalence': equivalence(), 'dropout': dropout_runs(),
                    'eval': sharded_eval(),
                    'collectives': collectives(_models.make_model(NUM_CLASSES), INPUT_LENGTH),
                    'hcnn_collectives': collectives(_models.make_hcnn(NUM_CLASSES),
                                                    _models.HCNN_INPUT_LENGTH)}))


if __name__ == '__main__':
  main()
